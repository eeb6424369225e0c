"""The `dqn` console script in a subprocess: a tiny train run, eval to JSON, help, and clean errors."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import catches_signal

from dqn_cli.checkpoint import load_checkpoint
from dqn_cli.config import config_dir

# The console script installed next to this interpreter; `python -m dqn_cli` where it is missing.
_SCRIPT = Path(sys.executable).with_name("dqn")
DQN = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "dqn_cli"]

# Few steps, small buffer, CPU: a whole `dqn train` takes a second or two beyond interpreter start-up.
TINY = [
    "env=cartpole", "total_steps=300", "device=cpu", "buffer.capacity=500", "agent.batch_size=16",
    "agent.learning_starts=32", "eval.interval=150", "eval.episodes=2", "checkpoint.interval=0",
    "log.interval=100", "log.progress=false",
]  # fmt: skip


def dqn(*args: str, cwd: Path, timeout: float = 120, **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | env_vars
    return subprocess.run([*DQN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def output(proc: subprocess.CompletedProcess) -> str:
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The run dir of one `dqn train` subprocess."""
    cwd = tmp_path_factory.mktemp("cli")
    run_dir = cwd / "run"
    proc = dqn("train", *TINY, f"hydra.run.dir={run_dir}", cwd=cwd)
    assert proc.returncode == 0, output(proc)
    return run_dir


def test_train_writes_the_run_dir(trained):
    assert (trained / ".hydra" / "config.yaml").is_file()
    assert (trained / ".hydra" / "overrides.yaml").is_file()
    assert list(trained.glob("events.out.tfevents.*"))
    assert (trained / "checkpoints" / "last.pt").is_file()
    assert (trained / "checkpoints" / "best.pt").is_file()
    log = (trained / "train.log").read_text()
    assert "done: 300 steps" in log and "final greedy eval" in log


def test_train_writes_nothing_into_the_working_directory(trained):
    assert sorted(p.name for p in trained.parent.iterdir()) == ["run"]


def test_eval_writes_json(trained, tmp_path):
    ckpt = trained / "checkpoints" / "last.pt"
    proc = dqn("eval", f"checkpoint={ckpt}", "episodes=2", "device=cpu", "output=x.json", cwd=tmp_path)
    assert proc.returncode == 0, output(proc)
    result = json.loads((tmp_path / "x.json").read_text())
    for key in ("mean_return", "std_return", "min_return", "max_return", "returns", "lengths", "episodes", "env",
                "checkpoint", "step"):  # fmt: skip
        assert key in result, key
    assert result["episodes"] == 2 and len(result["returns"]) == 2 and len(result["lengths"]) == 2
    assert result["env"] == "CartPole-v1" and result["checkpoint"] == str(ckpt) and result["step"] == 300
    assert result["mean_return"] == pytest.approx(sum(result["returns"]) / 2)
    assert result["returns"] == [float(n) for n in result["lengths"]]  # CartPole pays 1 per step
    assert "mean return" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no run dir, no log file for eval


def test_hydras_own_flags_and_the_end_of_flags_pass_the_flag_check(tmp_path):
    """Only flags Hydra lacks are refused: `--` (the end of the flags) and Hydra's own flags stay Hydra's."""
    proc = dqn("train", "--cfg", "job", "--", "seed=7", cwd=tmp_path)
    assert proc.returncode == 0 and "seed: 7" in proc.stdout, output(proc)


def test_the_console_handler_drops_what_a_closed_pipe_cannot_take_and_still_reports_other_errors():
    """Lines logged after the reader has gone (the pipe's read end closed first) end without a word; a
    record that cannot be formatted is still reported as logging reports it."""
    script = """
import logging, sys, time
from dqn_cli.console import ConsoleHandler
time.sleep(0.5)
log = logging.getLogger("t")
log.addHandler(ConsoleHandler(sys.stdout))
log.setLevel(logging.INFO)
for i in range(3):
    log.info("line %d", i)
log.info("bad %d", "x")
print("done", file=sys.stderr)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # the reader goes before the first line
    stderr = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, stderr
    assert stderr.count("--- Logging error ---") == 1 and "TypeError" in stderr, stderr  # the bad record only
    assert "BrokenPipeError" not in stderr and stderr.rstrip().endswith("done"), stderr


def test_eval_piped_into_head_ends_quietly_and_still_writes_its_json(trained, tmp_path):
    """`dqn eval ... | head -1`: the reader goes after one line. The lines logged after that (at least
    "wrote x.json", after the TensorBoard write) printed a "--- Logging error ---" traceback each
    (BrokenPipeError); now the rest of the output is dropped."""
    ckpt = trained / "checkpoints" / "last.pt"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    args = [*DQN, "eval", f"checkpoint={ckpt}", "episodes=2", "device=cpu", "output=x.json"]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()  # the table's first line, then the pipe closes: the "| head -1"
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, stderr
    assert "checkpoint step 300" in first
    assert "Logging error" not in stderr and "Traceback" not in stderr, stderr
    assert json.loads((tmp_path / "x.json").read_text())["episodes"] == 2


def test_eval_sweep_writes_each_jobs_scores_into_its_job_dir(trained, tmp_path):
    """`dqn eval -m`: Hydra makes a dir per job; each holds its job's JSON (no empty dirs), unless output= is set."""
    ckpt = trained / "checkpoints" / "last.pt"
    sweep = tmp_path / "sweep"
    args = (f"checkpoint={ckpt}", "episodes=1,2", "device=cpu", "tensorboard=false", f"hydra.sweep.dir={sweep}")
    proc = dqn("eval", "-m", *args, cwd=tmp_path)
    assert proc.returncode == 0, output(proc)
    for job, episodes in (("0", 1), ("1", 2)):
        result = json.loads((sweep / job / "eval.json").read_text())
        assert result["episodes"] == episodes and len(result["returns"]) == episodes
    assert sorted(p.name for p in (sweep / "0").iterdir()) == ["eval.json"]


@pytest.mark.parametrize(
    "overrides, said",
    [
        (["checkpoint={ckpt},nowhere.pt", "episodes=1"],
         "in the sweep's job with checkpoint=nowhere.pt: checkpoint='nowhere.pt' does not exist. No job was started."),
        (["checkpoint={ckpt}", "episodes=1,0"], "in the sweep's job with episodes=0: invalid config: episodes=0"),
        (["checkpoint={ckpt}", "episodes=1,2", "output=x.json"],
         "output=x.json in a sweep: every job would write that one file"),
    ],
)  # fmt: skip
def test_an_eval_sweep_is_checked_before_its_first_job(trained, tmp_path, overrides, said):
    """Each job's config and checkpoint file, and an output= that every job would write over the one before."""
    ckpt = trained / "checkpoints" / "last.pt"
    args = [o.format(ckpt=ckpt) for o in overrides]
    proc = dqn("eval", "-m", *args, "device=cpu", "tensorboard=false", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in output(proc), output(proc)
    assert said in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "sweep").exists() and not (tmp_path / "x.json").exists()


def test_an_eval_sweep_may_name_a_file_per_job(trained, tmp_path):
    ckpt = trained / "checkpoints" / "last.pt"
    proc = dqn("eval", "-m", f"checkpoint={ckpt}", "episodes=1,2", "output=e_${hydra:job.num}.json", "device=cpu",
               "tensorboard=false", "hydra.sweep.dir=sweep", cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, output(proc)
    assert [json.loads((tmp_path / f"e_{n}.json").read_text())["episodes"] for n in (0, 1)] == [1, 2]


def test_eval_video_of_a_classic_env_on_a_headless_machine(trained, tmp_path):
    ckpt = trained / "checkpoints" / "last.pt"
    proc = dqn("eval", f"checkpoint={ckpt}", "episodes=1", "device=cpu", "video=true", cwd=tmp_path, XDG_RUNTIME_DIR="")
    assert proc.returncode == 0, output(proc)
    video = trained / "videos" / "eval_greedy_step300.mp4"
    assert f"wrote {video}" in output(proc) and video.stat().st_size > 1000
    assert "error" not in output(proc).lower(), output(proc)  # pygame's SDL found no display and said so


def test_top_level_help(tmp_path):
    proc = dqn("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "train" in proc.stdout and "eval" in proc.stdout


@pytest.mark.parametrize("args", [["--version"], ["train", "--version"], ["eval", "--version"]])
def test_version_names_dqn_cli(tmp_path, args):
    from dqn_cli import __version__

    proc = dqn(*args, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == f"dqn_cli {__version__}", output(proc)


def test_no_arguments_print_the_usage_and_exit_2(tmp_path):
    proc = dqn(cwd=tmp_path)
    assert proc.returncode == 2, output(proc)
    assert proc.stdout.startswith("usage: dqn {train,eval}")


def test_train_help_lists_groups_options_and_keys(tmp_path):
    proc = dqn("train", "--help", cwd=tmp_path)
    assert proc.returncode == 0, output(proc)
    text = proc.stdout
    assert "== Config groups ==" in text
    # every group folder of configs/ (nested ones too) is listed with all its options
    configs = Path(config_dir())
    groups = [p for p in configs.rglob("*") if p.is_dir() and "hydra" not in p.relative_to(configs).parts]
    assert groups
    for group in groups:
        options = ", ".join(sorted(p.stem for p in group.glob("*.yaml")))
        line = f"{group.relative_to(configs).as_posix()}: {options}"
        assert line in text.splitlines(), line
    for key in ("total_steps:", "gamma:", "capacity:", "hidden_sizes:"):
        assert key in text, key


def test_eval_help(tmp_path):
    """eval's own help: its keys and its one group, not train's groups, examples and sweeps."""
    proc = dqn("eval", "--help", cwd=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert "checkpoint: ???" in proc.stdout and "episodes:" in proc.stdout
    assert "Usage: dqn eval checkpoint=PATH" in proc.stdout and "eval_protocol: greedy, nature" in proc.stdout
    for train_only in ("agent.lr", "buffer:", "hparams_search", "-m for sweeps", "dqn train env="):
        assert train_only not in proc.stdout, train_only


# ---- mistakes end with a short message, a non-zero code and no traceback ---------------------------------

BAD = [
    (["train", "env=foo"], ["env", "foo"]),
    (["train", "foo=1"], ["foo"]),
    (["train", "agent.learning_rate=1e-3"], ["agent.learning_rate is not a known key", "Did you mean agent.lr"]),
    (["train", "agent.exploraton_fraction=0.2"], ["Did you mean agent.exploration_fraction?"]),
    (["train", "env=cartpole", "env.vectorization=ale"], ["env.vectorization", "have it: atari, breakout, pong"]),
    (["train", "buffer.alpha=0.5"], ["buffer.alpha", "have it: prioritized"]),
    (["eval", "episodez=3"], ["episodez is not a known key", "Did you mean episodes"]),
    (["train", "netwrk=mlp"], ["netwrk is not a known key. Did you mean network?"]),
    (["train", "evn=pong"], ["evn is not a known key. Did you mean env?"]),  # short names: one letter off
    (["train", "env=atari", "env.game=Pongg"], ["env.game='Pongg' is not an ALE game", "Close matches: Pong"]),
    (["train", "env=cartpole", "env.id=CartPole-v9"], ["env.id='CartPole-v9' is not a registered"]),
    (["train", "seed=0,1"], ["Ambiguous value for argument 'seed=0,1'", "--multirun", "quote the value: key='value1"]),
    (["train", "agent.lr"], ["'agent.lr' has no value: write agent.lr=VALUE (overrides are KEY=VALUE;"]),
    # the keys of the uniform buffer this run composes, not the prioritized one's alpha, beta0, eps
    (["train", "buffer.size=100"], ["buffer.size is not a known key. (known in buffer: buffer.capacity, buffer.kind, "
                                    "buffer.storage.)"]),
    (["train", "--cfg", "job", "agent.lr"], ["'agent.lr' has no value"]),  # (job: the flag's value)
    # CleanRL's and argparse scripts' flags: the key meant, with the flag's value
    (["train", "--total-timesteps", "1000"], ["--total-timesteps is not a dqn train flag: settings are Hydra overrides",
                                              "--total-timesteps is total_steps here: write total_steps=1000."]),
    (["train", "--learning-rate=3e-4"], ["--learning-rate is agent.lr here: write agent.lr=3e-4."]),
    (["train", "--batch-size", "64"], ["--batch-size is agent.batch_size here: write agent.batch_size=64."]),
    (["eval", "--episodes", "3"], ["not a dqn eval flag", "--episodes is episodes here: write episodes=3."]),
    (["train", "--capture-video"], ["--capture-video is not a dqn train flag: settings are Hydra overrides"]),
    (["train", "--lr", "-0.001"], ["--lr is agent.lr here: write agent.lr=-0.001."]),  # a negative value
    (["train", "--cuda", "False"], ["--cuda is device here: write device=cuda (or device=cpu)."]),
    (["train", "--info", "--total-timesteps", "1000"], ["--total-timesteps is total_steps here"]),  # (--info's value?)
    # a key spelled with hyphens (Hydra would advise +total-timesteps=1000)
    (["train", "total-timesteps=1000"], ["total-timesteps is not a known key. Did you mean total_steps"]),
    (["train", "agent.learning-starts=5"],
     ["agent.learning-starts is not a known key. Did you mean agent.learning_starts?"]),
    (["eval", "runs/a/checkpoints/last.pt"], ["has no key: the checkpoint to evaluate is given as checkpoint=runs/a/"]),
    (["train", "runs/a"], ["'runs/a' has no key: the run dir to continue is given as resume=runs/a."]),
    (["train", "agent={lr:1}"], ["the agent group takes one option, not a mapping", "with agent.lr=VALUE"]),
    (["train", "env/preset=machado"], ["env/preset is a config group of the env options atari, breakout, pong"]),
    (["train", "agent.lr=abc"], ["agent.lr", "abc"]),
    (["train", "agent.gamma=1.5"], ["agent.gamma", "1.5"]),
    # 5,001 digits: past Python's int-from-text limit, which Hydra's parser would raise as a ValueError
    (["train", "total_steps=1" + "0" * 5000], ["total_steps is invalid: it is beyond 64-bit integers"]),
    (["eval", "checkpoint=missing.pt"], ["missing.pt", "does not exist"]),
    (["eval"], ["no checkpoint given"]),
    (["eval", "checkpoint=x.pt", "env=acrobot"], ["env=... and env.* are not dqn eval settings", "checkpoint"]),
    (["eval", "checkpoint=x.pt", "agent.lr=1"], ["agent=... and agent.* are not dqn eval settings"]),
    (["train", "agent.gamma=null"], ["agent.gamma=null is invalid: it must be a number in [0, 1]"]),
    (["train", "log.progress=maybe"], ["log.progress='maybe' is invalid: it must be one of auto, true, false."]),
    (["train", "resume="], ["resume='' is invalid: it must be a non-empty string or null"]),
    (["train", "env=pong", "env.preset=machado"], ["env.preset='machado' replaces the whole", "env/preset=machado"]),
    (["train", "env.kind=atari"], ["env.kind=atari needs the Atari settings", "use env=atari env.game=GAME"]),
    (["train", "network.hidden_sizes=[64,"], ["'network.hidden_sizes=[64,' cannot be read", "Lists are [a,b]"]),
    (["train", "env=pong", "env.num_envs=8", "buffer.capacity=16", "agent.batch_size=16", "agent.learning_starts=16"],
     ["buffer.capacity=16 keeps 2 steps per env", "needs at least 5"]),  # sampling never found a slot: a hang
    (["train", "total_steps=1e4"], ["total_steps=10000.0 is invalid", "(write 10000: 1e4 and 10000.0 are floats)"]),
    (["frobnicate"], ["frobnicate", "unknown command"]),
    # a group needs one option (Hydra raised a ValueError for null, and merged a list's options)
    (["train", "env=null"], ["env=null: the env group takes one option, not null; allowed: acrobot, atari"]),
    (["train", "--cfg", "job", "env=null"], ["env=null: the env group takes one option, not null"]),
    (["train", "experiment=null"], ["the experiment group takes one option", "leave experiment= out"]),
    (["train", "env=[cartpole,acrobot]"], ["env group takes one option, not a list", "dqn train -m env=a,b"]),
    # an unknown group option: Hydra's "Could not find 'env/Pong'" named no option meant
    (["train", "env=Pong"], ["env=Pong: not an option of the env group; allowed: acrobot, atari", "env=pong, or env"]),
    (["train", "env=1"], ["env=1: the env group takes an option's name; allowed: acrobot, atari, breakout"]),
    (["train", "env=CartPole-v1"], ["A gymnasium id goes in env.id: env=cartpole, or env=classic env.id=CartPole-v1."]),
    (["train", "agent=ddqn"], ["agent=ddqn: not an option of the agent group; allowed: dqn. For ddqn: agent.double"]),
    (["eval", "checkpoint=x.pt", "eval_protocol=greed"], ["Did you mean eval_protocol=greedy?"]),
    (["eval", "eval_protocol=null"], ["the eval_protocol group takes one option, not null; allowed: greedy, nature"]),
    (["train", "experiment=pong_fast", "env=cartpole"], ["experiment=pong_fast is a bundle of settings for env=pong"]),
    (["train", "-m", "seed=0,1", "--cfg", "hydra"], ["Only one of --run, --multirun, --cfg"]),
    (["train", "-m", "hparams_search=cartpole_optuna", "hydra.sweeper.n_trials=0"],
     ["hydra.sweeper.n_trials=0 is invalid: it must be an integer >= 1"]),
    (["train", "resume=nothere"], ["resume='nothere' does not exist"]),  # (Hydra made that dir before)
    # launcher settings that crashed inside the plugin (tracebacks) or left the sweep waiting forever
    (["train", "-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=0"],
     ["hydra.launcher.n_jobs=0 is invalid", "a whole number other than 0"]),
    (["train", "-m", "seed=0,1", "hydra/launcher=ray", "+hydra.launcher.ray.remote.num_cpus=4096"],
     ["hydra.launcher.ray.remote.num_cpus=4096 asks Ray for more per job", "no job would ever start"]),
    *([(["train", "-m", "seed=0,1", "hydra/launcher=submitit_slurm"], ["Slurm's srun is not on this machine's PATH"])]
      if shutil.which("srun") is None else []),
    # a hydra key that is not there: Hydra's advice (+KEY) only fits an open mapping
    (["train", "-m", "seed=0,1", "hydra/launcher=joblb"], ["Available options in 'hydra/launcher': basic, joblib",
                                                          "Did you mean hydra/launcher=joblib?"]),
    (["train", "-m", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.njobs=2"],
     ["hydra.launcher.njobs is not a key of hydra.launcher (JobLibLauncherConf); did you mean hydra.launcher.n_jobs?"]),
    (["train", "hydra.job.chdr=true"], ["hydra.job.chdr is not a key of hydra.job (JobConf)", "mean hydra.job.chdir?"]),
    (["train", "-m", "seed=0,1", "hydra/launcher=ray", "hydra.launcher.ray.remote.num_cpus=1"],
     ["takes a `+`: +hydra.launcher.ray.remote.num_cpus=VALUE"]),
    # env ids the classic builder cannot run
    (["train", "env.id=ALE/Pong-v5"], ["is an Atari game", "env=atari env.game=GAME"]),
    (["train", "env.id=Pong-v4"], ["env.id='Pong-v4' is an Atari game"]),  # (ale-py's own id: raw frames)
    (["train", "env.id=MountainCarContinuous-v0"], ["DQN needs a Discrete action space"]),
    (["train", "env=pong", "env.id=Breakout-v4"], ["env.id='Breakout-v4' plays 'breakout', not env.game='Pong'"]),
    (["train", "env=pong", "env.id=CartPole-v1"], ["env.id='CartPole-v1' is no ALE game's id, and env=pong plays"]),
    # found while building the parts, after Hydra made the run dir: the dir is removed again
    (["train", "network=nature_cnn"], ["network=nature_cnn needs image observations"]),
    (["train", "buffer.capacity=4000000000000"], ["buffer.capacity=4000000000000 needs", "Lower buffer.capacity"]),
]  # fmt: skip


@pytest.mark.parametrize("args, words", BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_input_fails_cleanly(tmp_path, args, words):
    proc = dqn(*args, "hydra.run.dir=run" if args[0] == "train" else "device=cpu", cwd=tmp_path)
    text = output(proc)
    assert proc.returncode == 2, text  # a mistake in the input, as a UserError says too
    assert "Traceback" not in text and "Error executing job" not in text, text  # no Hydra line above it
    for word in words:
        assert word in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 12, proc.stderr  # short: no stack, no config dump
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # checked before Hydra makes the run dir


@pytest.mark.skipif(importlib.util.find_spec("Box2D") is not None, reason="needs gymnasium without its box2d extra")
def test_an_env_whose_extra_is_not_installed_fails_cleanly(tmp_path):
    proc = dqn("train", "env.id=LunarLander-v3", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in output(proc), output(proc)
    assert "env.id='LunarLander-v3' needs a package that is not installed: Box2D" in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_new_run_into_a_used_run_dir_is_refused(trained, tmp_path):
    """Hydra reuses a run dir it is given: a new run there would replace the earlier run's checkpoints."""
    last = trained / "checkpoints" / "last.pt"
    before = last.read_bytes()
    proc = dqn("train", *TINY, f"hydra.run.dir={trained}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in output(proc), output(proc)
    assert f"hydra.run.dir={trained} already holds a run" in proc.stderr
    assert f"dqn train resume={trained}" in proc.stderr
    assert last.read_bytes() == before


def test_resume_points_from_a_checkpoint_file_to_its_run_dir_and_keeps_the_run_in_it(trained, tmp_path):
    proc = dqn("train", f"resume={trained / 'checkpoints' / 'last.pt'}", "total_steps=400", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in output(proc), output(proc)
    assert "is a file; resume= takes the run dir" in proc.stderr and f"resume={trained}." in proc.stderr
    proc = dqn("train", f"resume={trained}", "total_steps=400", "hydra.run.dir=elsewhere", cwd=tmp_path)
    assert proc.returncode == 2 and "drop hydra.run.dir=" in proc.stderr, output(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["-cd", "hydra.searchpath"])
def test_an_option_of_a_config_dir_of_ones_own_is_no_unknown_option(tmp_path, how):
    """`-cd DIR` (or hydra.searchpath) adds DIR to Hydra's search path: env/mycart.yaml there is an env option
    that configs/ lacks."""
    (tmp_path / "mine" / "env").mkdir(parents=True)
    shutil.copy(Path(config_dir()) / "env" / "cartpole.yaml", tmp_path / "mine" / "env" / "mycart.yaml")
    tiny = [a for a in TINY if not a.startswith("env=")]
    where = ["-cd", str(tmp_path / "mine")] if how == "-cd" else [f"hydra.searchpath=[file://{tmp_path / 'mine'}]"]
    proc = dqn("train", *where, "env=mycart", *tiny, "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 0, output(proc)
    hydra = (tmp_path / "run" / ".hydra" / "hydra.yaml").read_text()
    assert "env: mycart" in hydra and (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_a_relative_resume_path_holds_when_the_job_changes_into_the_run_dir(trained, tmp_path):
    """With hydra.job.chdir=true the job ran in the run dir, where resume=copy named nothing."""
    shutil.copytree(trained, tmp_path / "copy")
    proc = dqn("train", "resume=copy", "total_steps=400", "hydra.job.chdir=true", cwd=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert load_checkpoint(tmp_path / "copy" / "checkpoints" / "last.pt")["counters"]["step"] == 400


@pytest.mark.parametrize(
    "path", ["/runs/a", "/my runs/it's=1,2", "/x\\y [1]", "/a\\'b\\", "/end\\\\", "/r${x}", "/s/agent.lr=0.001,seed=1"]
)
def test_a_path_handed_to_hydra_reads_back_unchanged(path):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from dqn_cli.cli import _hydra_string, _resumed

    (override,) = OverridesParser.create().parse_overrides([f"resume={_hydra_string(path)}"])
    assert OmegaConf.create({"resume": override.value()}).resume == path  # as the job's config reads it
    assert _resumed([f"resume={_hydra_string(path)}"]) == path == _resumed([f"resume={path}"])  # quoted or as typed


@pytest.mark.parametrize("name", ["agent.lr=0.001,seed=1", "run (2)"])
@pytest.mark.parametrize("relative", [True, False], ids=["relative", "absolute"])
def test_a_run_dir_whose_name_hydra_cannot_read_unquoted_resumes(trained, tmp_path, name, relative):
    """Job dirs named by hydra.job.override_dirname hold = and ,: the stop report's resume command for them
    failed ("Ambiguous value", "mismatched input '='")."""
    shutil.copytree(trained, tmp_path / name)
    proc = dqn("train", f"resume={name if relative else tmp_path / name}", "total_steps=400", cwd=tmp_path)
    assert proc.returncode == 0, output(proc)
    assert load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")["counters"]["step"] == 400


def test_eval_output_never_replaces_a_checkpoint(trained, tmp_path):
    last = trained / "checkpoints" / "last.pt"
    before = last.read_bytes()
    for out in (last, trained / "checkpoints" / "best.pt"):
        proc = dqn("eval", f"checkpoint={last}", "episodes=1", "device=cpu", f"output={out}", cwd=tmp_path)
        assert proc.returncode == 2 and "would replace a checkpoint or replay file" in proc.stderr, output(proc)
    assert last.read_bytes() == before


def test_a_run_dir_that_cannot_be_made_fails_cleanly(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    proc = dqn("train", "env=cartpole", f"hydra.run.dir={tmp_path / 'file' / 'run'}", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in output(proc), output(proc)
    assert proc.stderr.strip() == (
        f"dqn train: error: Not a directory: {tmp_path / 'file' / 'run'}. The run dir is hydra.run.dir "
        "(outputs/DATE/TIME under the working directory unless set)."
    )


@pytest.mark.parametrize("path", ["file/x.json", "."])
def test_an_eval_output_that_cannot_be_written_fails_before_the_games(trained, tmp_path, path):
    (tmp_path / "file").write_text("not a folder")
    ckpt = trained / "checkpoints" / "last.pt"
    proc = dqn("eval", f"checkpoint={ckpt}", "episodes=2", "device=cpu", f"output={path}", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in output(proc), output(proc)
    assert f"dqn eval: error: output='{path}' cannot be written (" in proc.stderr, proc.stderr
    assert "mean return" not in output(proc)  # no game was played
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_compile_without_a_cpp_compiler_fails_cleanly(tmp_path):
    """compile=true on the CPU where inductor finds no C++ compiler ($CXX names none): a message at
    start-up, not a traceback from deep inside torch.compile at the first update."""
    proc = dqn("train", *TINY, "compile=true", "hydra.run.dir=run", cwd=tmp_path, CXX=str(tmp_path / "no-g++"))
    assert proc.returncode == 2, output(proc)
    assert "Traceback" not in output(proc)
    assert "compile=true" in proc.stderr and "C++ compiler" in proc.stderr and "no-g++ is not one" in proc.stderr
    assert "none was found. Install it, or drop compile=true" in proc.stderr  # (not "this machine has none")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is present")
def test_cuda_without_a_gpu_fails_cleanly(tmp_path):
    proc = dqn("train", *TINY, "device=cuda", "hydra.run.dir=run", cwd=tmp_path)
    assert proc.returncode == 2, output(proc)
    assert "Traceback" not in output(proc)
    assert "device=" in proc.stderr and "cuda" in proc.stderr and "no CUDA GPU" in proc.stderr


def test_eval_of_a_checkpoint_whose_env_is_not_here_says_what_to_install(trained, tmp_path):
    """The env id comes from the checkpoint: the advice of dqn train (env=cartpole|..., env.id=...) is refused
    by dqn eval, which takes no env= at all."""
    state = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
    state["config"]["env"]["id"] = "NotInstalledHere-v0"  # (a package that registered it on the training machine)
    torch.save(state, tmp_path / "elsewhere.pt")
    proc = dqn("eval", "checkpoint=elsewhere.pt", "device=cpu", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in output(proc), output(proc)
    assert proc.stderr.strip() == (
        "dqn eval: error: checkpoint='elsewhere.pt' was trained on an env this machine cannot build: "
        "env.id='NotInstalledHere-v0' is not a registered gymnasium environment. dqn eval plays the checkpoint's "
        "own env: install what registers it (the package the run used)."
    )


@pytest.mark.parametrize("damage", ["cut off", "no config"])
def test_damaged_checkpoint_fails_cleanly(trained, tmp_path, damage):
    bad = tmp_path / "bad.pt"
    if damage == "cut off":
        bad.write_bytes((trained / "checkpoints" / "last.pt").read_bytes()[:500])
    else:  # the format tag passes; eval read state["config"]: a KeyError traceback
        state = torch.load(trained / "checkpoints" / "last.pt", weights_only=True)
        del state["config"]
        torch.save(state, bad)
    proc = dqn("eval", f"checkpoint={bad}", "device=cpu", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in output(proc), output(proc)
    assert "bad.pt" in proc.stderr and (damage == "cut off" or "config is missing" in proc.stderr), proc.stderr


def test_module_entry_point_matches_the_script(tmp_path):
    if shutil.which("dqn") is None and not _SCRIPT.exists():
        pytest.skip("no dqn console script installed")
    proc = subprocess.run([sys.executable, "-m", "dqn_cli", "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == dqn("--help", cwd=tmp_path).stdout


def test_resume_null_or_empty_is_a_fresh_run_and_the_last_resume_wins():
    from dqn_cli.cli import _resumed

    assert _resumed(["train", "resume=null"]) is None and _resumed(["train", "resume="]) is None
    assert _resumed(["train", "resume=a", "seed=1", "resume=b"]) == "b"


def test_openmp_threads_sleep_unless_the_user_said_otherwise(monkeypatch):
    from dqn_cli.cli import configure_openmp

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    configure_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    configure_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def test_sigterm_outside_training_ends_with_one_line_and_exit_143(trained, tmp_path):
    """Before, SIGTERM killed `dqn eval` (or a run still building its envs) silently: exit -15, no line."""
    last = trained / "checkpoints" / "last.pt"
    cmd = [*DQN, "eval", f"checkpoint={last}", "episodes=1000000", "device=cpu"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not catches_signal(proc.pid, signal.SIGTERM):  # dqn's handler is in place
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "dqn set no SIGTERM handler of its own"
            time.sleep(0.05)
        time.sleep(2.0)  # into the evaluation
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "Traceback" not in err, err
    assert err.strip() == "dqn eval: aborted by SIGTERM", err
