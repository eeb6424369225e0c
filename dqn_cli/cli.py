"""The `dqn` command: `dqn train ...` and `dqn eval ...`, each a Hydra app over configs/."""

from __future__ import annotations

import sys

USAGE = """usage: dqn {train,eval} [KEY=VALUE ...] [GROUP=OPTION ...] [-m] [--help]

  dqn train env=cartpole                    train, log to TensorBoard, write checkpoints
  dqn train -m env=cartpole seed=0,1,2      a sweep, one run dir per job
  dqn eval checkpoint=PATH episodes=20      evaluate a checkpoint

Each subcommand's --help lists its config groups and keys."""


def _hydra_app(config_name: str, task):
    import hydra

    from dqn_cli.config import config_dir
    from dqn_cli.errors import UserError

    @hydra.main(config_path=config_dir(), config_name=config_name, version_base="1.3")
    def app(cfg):
        try:
            return task(cfg)
        except UserError as e:
            print(f"dqn {config_name}: error: {e}", file=sys.stderr)
            sys.exit(2)

    return app


def _train(cfg):
    from hydra.core.hydra_config import HydraConfig

    from dqn_cli.trainer import train

    return train(cfg, HydraConfig.get().runtime.output_dir)


def _eval(cfg):
    from dqn_cli.evaluate import evaluate

    return evaluate(cfg)["mean_return"]


COMMANDS = {"train": ("train", _train), "eval": ("eval", _eval)}


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        sys.exit(0 if args else 2)
    command = args[0]
    if command not in COMMANDS:
        print(f"dqn: error: unknown command {command!r}; allowed: {', '.join(COMMANDS)}.\n\n{USAGE}", file=sys.stderr)
        sys.exit(2)
    config_name, task = COMMANDS[command]
    sys.argv = [f"dqn {command}", *args[1:]]
    _hydra_app(config_name, task)()


if __name__ == "__main__":
    main()
