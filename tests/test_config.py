"""Every config and group option composes, resolves, validates and builds; every rule rejects bad values."""

from __future__ import annotations

import importlib.util
import itertools
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from dqn_cli.agent import make_agent
from dqn_cli.buffers import make_buffer
from dqn_cli.config import OTHER_NAMES, TRAIN_RULES, Rule, config_dir, options_with, validate_eval, validate_train
from dqn_cli.envs import make_env
from dqn_cli.errors import UserError

CONFIGS = Path(config_dir())
# Every config group is a folder of YAML options next to train.yaml (hydra/ holds Hydra's own groups).
# A group with a default in train.yaml feeds a builder and is crossed with every other such group; a group
# whose default is null (e.g. hparams_search) is an add-on, composed one option at a time. A folder inside
# a group's folder (env/preset) is a nested group, tried with each option of its parent that uses it.
_DEFAULTS = {
    k: v
    for d in OmegaConf.to_container(OmegaConf.load(CONFIGS / "train.yaml").defaults)
    if isinstance(d, dict)
    for k, v in d.items()
}
ALL_GROUPS = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name != "hydra")
GROUPS = [g for g in ALL_GROUPS if _DEFAULTS.get(g) is not None]
ADDON_GROUPS = [g for g in ALL_GROUPS if g not in GROUPS]
NESTED_GROUPS = sorted(f"{g}/{p.name}" for g in ALL_GROUPS for p in (CONFIGS / g).iterdir() if p.is_dir())
OPTIONS = {group: sorted(p.stem for p in (CONFIGS / group).glob("*.yaml")) for group in ALL_GROUPS + NESTED_GROUPS}
COMBOS = [dict(zip(GROUPS, choice, strict=True)) for choice in itertools.product(*(OPTIONS[g] for g in GROUPS))]
ADDONS = [(g, o) for g in ADDON_GROUPS for o in OPTIONS[g]]
PAIRS = [(e, n) for e in OPTIONS["env"] for n in OPTIONS["network"]]

# Keys an option leaves `???` for the user, with a value to fill in when composing it.
REQUIRED_EXAMPLES = {"env.game": "Pong", "env.id": "CartPole-v1"}


def _combo_id(combo: dict[str, str]) -> str:
    return ",".join(f"{g}={o}" for g, o in combo.items())


def _missing_keys(cfg) -> list[str]:
    out = []

    def walk(node, prefix):
        for key in node:
            if OmegaConf.is_missing(node, key):
                out.append(prefix + str(key))
            elif OmegaConf.is_interpolation(node, key):
                continue  # resolving it could hit the very `???` being looked for
            elif isinstance(node[key], DictConfig):
                walk(node[key], f"{prefix}{key}.")

    walk(cfg, "")
    return out


def compose_filled(compose_cfg, overrides: list[str]):
    """Compose, check that a `???` key is reported as required, then fill it from REQUIRED_EXAMPLES."""
    cfg = compose_cfg("train", overrides)
    missing = _missing_keys(cfg)
    if missing:
        with pytest.raises(UserError, match=re.escape(f"{missing[0]} is required")):
            validate_train(cfg)
        unknown = [k for k in missing if k not in REQUIRED_EXAMPLES]
        assert not unknown, f"add an example value for {unknown} to REQUIRED_EXAMPLES"
        cfg = compose_cfg("train", [*overrides, *(f"{k}={REQUIRED_EXAMPLES[k]}" for k in missing)])
    OmegaConf.resolve(cfg)  # a stale interpolation fails here
    return cfg


def test_groups_are_discovered():
    # The builders exist for these four groups; a renamed folder must not silently drop out of the tests.
    assert {"env", "network", "buffer", "agent"} <= set(GROUPS)
    assert all(OPTIONS[g] for g in ALL_GROUPS + NESTED_GROUPS)
    for group in GROUPS:  # each default names an option that exists
        assert _DEFAULTS[group] in OPTIONS[group]


@pytest.mark.parametrize("combo", COMBOS, ids=_combo_id)
def test_every_group_combination_composes_and_validates(compose_cfg, combo):
    cfg = compose_filled(compose_cfg, [f"{g}={o}" for g, o in combo.items()])
    validate_train(cfg)
    for group, option in combo.items():
        # the option's own name field shows the option really was selected
        assert cfg[group].get("name", cfg[group].get("kind")) == option, group


@pytest.mark.parametrize("nested", NESTED_GROUPS)
def test_every_nested_group_option_composes_under_each_parent_that_uses_it(compose_cfg, nested):
    parent, child = nested.split("/")
    users = [
        o
        for o in OPTIONS[parent]
        if OmegaConf.select(compose_filled(compose_cfg, [f"{parent}={o}"]), nested.replace("/", "."))
    ]
    assert users, f"no {parent} option uses {nested}"
    for option in users:
        for choice in OPTIONS[nested]:
            cfg = compose_filled(compose_cfg, [f"{parent}={option}", f"{nested}={choice}"])
            validate_train(cfg)
            assert cfg[parent][child].name == choice


def _build_error(cfg, obs_shape: tuple[int, ...]) -> str | None:
    """The UserError a builder must raise for a combination that is invalid by design, else None."""
    if cfg.network.name == "nature_cnn" and len(obs_shape) != 3:
        return "network=nature_cnn needs image observations"
    return None


@pytest.mark.skipif(importlib.util.find_spec("Box2D") is not None, reason="needs gymnasium without its box2d extra")
def test_make_env_itself_names_a_missing_extra(compose_cfg):
    """`dqn eval` and the Trainer build envs without the CLI's pre-check: the builder says it too."""
    with pytest.raises(UserError, match=r"env.id='LunarLander-v3' needs a package that is not installed: Box2D"):
        make_env(compose_cfg("train", ["env.id=LunarLander-v3"]).env, seed=0)


@pytest.mark.parametrize("env_option, network", PAIRS, ids=[f"env={e},network={n}" for e, n in PAIRS])
def test_every_env_and_network_builds(compose_cfg, env_option, network, caplog):
    """The builders turn each env x network pair into a working env, agent and (small) replay buffer,
    or refuse a pair that cannot work with a UserError that says why; an MLP over frames is warned of."""
    cfg = compose_filled(compose_cfg, [f"env={env_option}", f"network={network}", "buffer.capacity=1000"])
    validate_train(cfg)
    env = make_env(cfg.env, seed=0)
    try:
        obs_space, n_actions = env.single_observation_space, int(env.single_action_space.n)
        expected_error = _build_error(cfg, obs_space.shape)
        if expected_error is not None:
            with pytest.raises(UserError, match=re.escape(expected_error)):
                make_agent(cfg, obs_space.shape, n_actions, torch.device("cpu"))
            return
        with caplog.at_level("WARNING", logger="dqn_cli.networks"):
            agent = make_agent(cfg, obs_space.shape, n_actions, torch.device("cpu"))
        warned = [r.getMessage() for r in caplog.records if "network=mlp flattens" in r.getMessage()]
        assert len(warned) == (network == "mlp" and len(obs_space.shape) == 3), warned
        obs, _ = env.reset(seed=0)
        with torch.no_grad():
            q = agent.q_net(torch.as_tensor(obs))
        assert q.shape == (env.num_envs, n_actions)
        actions = agent.act(obs, 0.0, np.random.default_rng(0))
        next_obs, rewards, terminated, truncated, _ = env.step(actions)
        for buffer_option in OPTIONS["buffer"]:
            buf_cfg = compose_cfg("train", [f"buffer={buffer_option}", "buffer.capacity=1000"]).buffer
            stacks = cfg.env.kind == "atari"
            buffer = make_buffer(buf_cfg, obs_space.shape, obs_space.dtype, env.num_envs, 1, cfg.agent.gamma, stacks)
            for _ in range(8):
                buffer.add(obs, actions, rewards, next_obs, terminated, truncated)
            assert len(buffer) == 8 * env.num_envs
            assert agent.update(buffer.sample(4, np.random.default_rng(0)))["td_loss"] >= 0
    finally:
        env.close()


@pytest.mark.skipif(not ADDONS, reason="no optional config group")
@pytest.mark.parametrize("group, option", ADDONS, ids=[f"{g}={o}" for g, o in ADDONS])
def test_every_optional_group_option_composes_and_validates(compose_cfg, group, option):
    cfg = compose_cfg("train", [f"{group}={option}"])
    OmegaConf.resolve(cfg)
    validate_train(cfg)
    # a sweeper searches over keys of the task config: each must be a key that exists and is checked
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        full = compose(config_name="train", overrides=[f"{group}={option}"], return_hydra_config=True)
    params = OmegaConf.select(full, "hydra.sweeper.params") or {}
    for key in params:
        assert key in TRAIN_RULES and OmegaConf.select(cfg, key) is not None, key


def test_eval_config_composes_and_needs_a_checkpoint(compose_cfg):
    cfg = compose_cfg("eval", ["checkpoint=run/checkpoints/last.pt"])
    OmegaConf.resolve(cfg)
    validate_eval(cfg)
    with pytest.raises(UserError, match="no checkpoint given"):
        validate_eval(compose_cfg("eval"))


def test_shrunk_config_is_valid(small_cfg):
    validate_train(small_cfg)
    assert small_cfg.total_steps == 300 and small_cfg.device == "cpu"


# ---- value rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["agent.gamma=1.5"], "agent.gamma"),
        (["buffer.capacity=-5"], "buffer.capacity"),
        (["agent.batch_size=600", "agent.learning_starts=1000"], "agent.batch_size"),  # capacity is 500
        (["agent.batch_size=64", "agent.learning_starts=10"], "agent.learning_starts"),
        (["agent.lr=0"], "agent.lr"),
        (["agent.lr=abc"], "agent.lr"),
        (["+foo=1"], "foo"),
        (["+agent.n_steps=3"], "agent.n_steps"),
        (["agent.exploration_initial_eps=0.5", "agent.exploration_final_eps=0.9"], "agent.exploration_final_eps"),
        (["agent.loss=l1"], "agent.loss"),
        (["agent.tau=0"], "agent.tau"),
        (["network.hidden_sizes=[64,0]"], "network.hidden_sizes"),
        (["env.num_envs=0"], "env.num_envs"),
        (["log.progress=sometimes"], "log.progress"),
        (["total_steps=1.5"], "total_steps"),
        (["agent.n_step=501"], "agent.n_step"),  # longer than the 500 steps the buffer keeps
    ],
)
def test_bad_override_is_a_user_error_naming_the_key(small_cfg_factory, overrides, key):
    cfg = small_cfg_factory(*overrides)
    with pytest.raises(UserError) as info:
        validate_train(cfg)
    message = str(info.value)
    assert re.search(rf"(?<![\w.]){re.escape(key)}\b", message), message
    assert "\n" not in message  # one paragraph


@pytest.mark.parametrize(
    "key, hint",
    [
        ("agent.learning_rate", "Did you mean agent.lr (what Stable-Baselines3, CleanRL or the ALE call learning_rate"),
        ("env.preset.repeat_action_probability", "Did you mean env.preset.sticky_actions"),
        ("buffer.buffer_size", "Did you mean buffer.capacity"),
        ("total_timesteps", "Did you mean total_steps"),
        ("agent.exploraton_fraction", "Did you mean agent.exploration_fraction?"),
        ("agent.gama", "Did you mean agent.gamma?"),
        ("foo", "(known at the top: agent, batched_targets, buffer,"),
    ],
)
def test_an_unknown_key_names_the_key_meant(small_cfg_factory, key, hint):
    with pytest.raises(UserError) as info:
        validate_train(small_cfg_factory(f"+{key}=1"))
    assert f"{key} is not a known key." in str(info.value) and hint in str(info.value), str(info.value)


def test_an_unknown_key_lists_the_keys_of_the_options_the_run_composes(small_cfg_factory, compose_cfg):
    """Not the keys of every option: env=cartpole has no env.game or env.preset.*, which it would refuse."""
    with pytest.raises(UserError) as info:
        validate_train(small_cfg_factory("+env.foo=1"))
    assert "(known in env: env.id, env.kind, env.max_episode_steps, env.name, env.num_envs, env.solved_return.)" in str(
        info.value
    )
    with pytest.raises(UserError) as info:
        validate_train(compose_cfg("train", ["env=pong", "+env.foo=1"]))
    assert "env.game, env.id" in str(info.value) and "env.preset.sticky_actions" in str(info.value)


def test_an_eval_key_is_not_pointed_at_a_train_only_key(compose_cfg):
    # learning_rate is SB3's agent.lr, a key `dqn eval` does not have: no hint, the eval config's keys
    with pytest.raises(UserError) as info:
        validate_eval(compose_cfg("eval", ["checkpoint=last.pt", "+learning_rate=1"]))
    assert str(info.value) == (
        "invalid config: learning_rate is not a known key. (known at the top: checkpoint, device, episodes, epsilon, "
        "eval_protocol, output, seed, tensorboard, torch_threads, video.)"
    )


def test_an_added_train_key_in_eval_says_eval_takes_it_from_the_checkpoint(compose_cfg):
    with pytest.raises(UserError) as info:
        validate_eval(compose_cfg("eval", ["checkpoint=last.pt", "+env.foo=1"]))
    assert str(info.value).startswith("invalid config: env=... and env.* are not dqn eval settings: the env, network")


@pytest.mark.parametrize(
    "key, meant",
    [("network.net_arch", "network.hidden_sizes"), ("n_timesteps", "total_steps"), ("cuda", "device"),
     ("agent.target_update_freq", "agent.target_update_interval"), ("agent.capacity", "buffer.capacity")],
)  # fmt: skip
def test_other_tools_names_and_keys_of_another_group_point_at_ours(small_cfg_factory, key, meant):
    with pytest.raises(UserError) as info:
        validate_train(small_cfg_factory(f"+{key}=1"))
    assert f"{key} is not a known key. Did you mean {meant}" in str(info.value), str(info.value)


def test_every_other_name_points_at_a_key_that_exists():
    for name, key in OTHER_NAMES.items():
        assert key in TRAIN_RULES, key
        assert {k for k in TRAIN_RULES if k.rsplit(".", 1)[-1] == name} <= {key}  # never away from a key of ours


def test_options_with_a_key_are_found_by_composing_each_option():
    assert options_with("env.vectorization") == ["atari", "breakout", "pong"]
    assert options_with("buffer.alpha") == ["prioritized"]
    assert options_with("network.activation") == ["mlp"] and options_with("network.hidden") == ["nature_cnn"]
    assert options_with("env.game") == ["atari", "breakout", "pong"]  # atari's is ??? (required)
    assert options_with("seed") == [] and options_with("agent.no_such_key") == []


def _bad_values(rule: Rule) -> list:
    """Values that `rule` must refuse, derived from the rule itself so a new key is covered at once."""
    if rule.kind == "bool":
        return ["yes", 1]
    if rule.kind == "str":
        return ["", 7]
    if rule.kind == "choice":
        return ["__not_an_option__"]
    if rule.kind == "int_list":
        return [[], [0], [16, -1], "64", [True]]
    bad = ["abc", float("nan"), True] + ([1.5] if rule.kind == "int" else [])  # a bool is not a number
    if rule.lo is not None:
        bad.append(rule.lo if rule.lo_open else rule.lo - 1)
    if rule.hi is not None:
        bad.append(rule.hi + 1)
    if not rule.nullable:
        bad.append(None)
    return bad


RULE_CASES = [(key, bad) for key, rule in TRAIN_RULES.items() for bad in _bad_values(rule)]


@pytest.mark.parametrize("key, bad", RULE_CASES, ids=[f"{k}={b!r}" for k, b in RULE_CASES])
def test_every_rule_rejects_a_bad_value(small_cfg, key, bad):
    OmegaConf.update(small_cfg, key, bad, force_add=True)
    with pytest.raises(UserError, match=re.escape(f"{key}=")):
        validate_train(small_cfg)


@pytest.mark.parametrize("key", [k for k, r in TRAIN_RULES.items() if r.kind in ("int", "float", "int_list")], ids=str)
def test_an_integer_beyond_64_bits_is_refused_by_name(small_cfg, key):
    # Python reads it; numpy, torch and math.isfinite cannot (an OverflowError and a traceback, before)
    is_list = TRAIN_RULES[key].kind == "int_list"
    OmegaConf.update(small_cfg, key, [64, 2**63] if is_list else -(10**400), force_add=True)
    with pytest.raises(UserError, match=re.escape(f"{key} is invalid: it is beyond 64-bit integers")):
        validate_train(small_cfg)
    OmegaConf.update(small_cfg, key, [64, 2**63 - 1] if is_list else 2**63 - 1, force_add=True)
    try:  # the largest int64 is read: refused, if at all, by the key's own range
        validate_train(small_cfg)
    except UserError as e:
        assert "64-bit" not in str(e) and f"{key}=" in str(e)


# The smallest and largest value each number key takes, written out by hand (not read from its rule, so a
# bound moved in TRAIN_RULES shows): 0 where it turns a feature off (eval.interval, checkpoint.interval,
# keep_last) or means "none" (noop_max, sticky_actions), probabilities on [0, 1], rates just above 0.
EDGES = {
    "seed": [0, 2**32 - 1], "torch_threads": [1], "total_steps": [1],
    "eval.interval": [0], "eval.episodes": [1], "eval.epsilon": [0, 1, 0.0, 1.0], "eval.stop_return": [None, -5.0],
    "eval.seed_offset": [0], "checkpoint.interval": [0], "checkpoint.keep_last": [0], "log.interval": [1],
    "env.num_envs": [1], "env.max_episode_steps": [None, 1], "env.solved_return": [None, -5.0],
    "env.num_threads": [0], "env.preset.noop_max": [0], "env.preset.frame_skip": [1], "env.preset.screen_size": [36],
    "env.preset.frame_stack": [1], "env.preset.sticky_actions": [0, 1, 0.0, 1.0],
    "env.preset.max_episode_frames": [1], "eval_protocol.epsilon": [0, 1, 0.0, 1.0], "eval_protocol.episodes": [1],
    "eval_protocol.max_episode_frames": [None, 1], "eval_protocol.noop_max": [None, 0], "network.hidden": [1],
    "buffer.capacity": [1], "buffer.alpha": [0, 1, 0.0, 1.0], "buffer.beta0": [0, 1, 0.0, 1.0], "buffer.eps": [1e-12],
    "agent.gamma": [0, 1, 0.0, 1.0], "agent.n_step": [1], "agent.lr": [1e-12], "agent.adam_eps": [1e-12],
    "agent.batch_size": [1], "agent.learning_starts": [0], "agent.train_freq": [1], "agent.gradient_steps": [1],
    "agent.target_update_interval": [1], "agent.tau": [1e-12, 1, 1.0], "agent.max_grad_norm": [None, 1e-12],
    "agent.exploration_initial_eps": [0, 1, 0.0, 1.0], "agent.exploration_final_eps": [0, 1, 0.0, 1.0],
    "agent.exploration_fraction": [0, 1, 0.0, 1.0],
}  # fmt: skip


def _good_values(key: str, rule: Rule) -> list:
    """Values that the rule of `key` must accept: a number key's EDGES, each choice, both bools."""
    if rule.kind in ("int", "float"):
        return EDGES[key]
    return {"bool": [True, False], "str": ["cpu"], "choice": list(rule.choices), "int_list": [[1], [3, 1]]}[rule.kind]


def test_every_number_key_has_its_edges_written_out():
    assert set(EDGES) == {k for k, r in TRAIN_RULES.items() if r.kind in ("int", "float")}


GOOD_CASES = [(key, good) for key, rule in TRAIN_RULES.items() for good in _good_values(key, rule)]


@pytest.mark.parametrize("key, good", GOOD_CASES, ids=[f"{k}={g!r}" for k, g in GOOD_CASES])
def test_every_rule_accepts_the_ends_of_its_range(small_cfg, key, good):
    # the value itself passes; a rule tying it to other keys may still object (capacity=1 < batch_size)
    OmegaConf.update(small_cfg, key, good, force_add=True)
    try:
        validate_train(small_cfg)
    except UserError as e:
        assert f"{key}={good!r} is invalid" not in str(e), str(e)


def test_good_values_at_the_edges_pass(small_cfg_factory):
    cfg = small_cfg_factory(
        "agent.gamma=0",
        "agent.tau=1",
        "agent.max_grad_norm=null",
        "agent.exploration_fraction=0",
        "agent.exploration_initial_eps=0.1",
        "agent.exploration_final_eps=0.1",
        "agent.learning_starts=16",  # == batch_size
        "buffer.capacity=16",  # == batch_size
        "env.max_episode_steps=50",
    )
    validate_train(cfg)


def test_gamma_of_one_is_allowed(small_cfg_factory):
    validate_train(small_cfg_factory("agent.gamma=1"))  # undiscounted, [0, 1] as the rule says
    validate_train(small_cfg_factory("agent.gamma=1.0"))


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # seed 4294957295 + seed_offset 10000 = 4294967295 = 2**32 - 1, the largest seed numpy takes
        (["seed=4294957295"], None),
        (["seed=4294957296"], "evaluation seed 4294967296, above 2**32 - 1"),
        # each of the 16 envs keeps one step of the 16: enough for 1-step returns
        (["env.num_envs=16", "buffer.capacity=16", "agent.n_step=1"], None),
        (["env.num_envs=17", "buffer.capacity=16", "agent.n_step=1"], "capacity=16 must be at least env.num_envs=17"),
        # an n-step window as long as the 500 steps one env keeps still fits
        (["agent.n_step=500"], None),
        (["agent.n_step=501"], "agent.n_step=501 is longer than the 500 steps each env keeps"),
        (["env.num_envs=2", "agent.n_step=251"], "agent.n_step=251 is longer than the 250 steps each env keeps"),
        # a batch as large as the buffer, collected before the first update, is the edge that still works
        (["buffer.capacity=500", "agent.batch_size=500", "agent.learning_starts=500"], None),
        (
            ["agent.batch_size=501", "agent.learning_starts=600"],
            "agent.batch_size=501 is larger than buffer.capacity=500",
        ),
        (["agent.batch_size=16", "agent.learning_starts=16"], None),
        (
            ["agent.batch_size=16", "agent.learning_starts=15"],
            "agent.learning_starts=15 is smaller than agent.batch_size=16",
        ),
    ],
)
def test_cross_key_rules_at_their_bounds(small_cfg_factory, overrides, expected):
    cfg = small_cfg_factory(*overrides)
    if expected is None:
        validate_train(cfg)
    else:
        with pytest.raises(UserError, match=re.escape(expected)):
            validate_train(cfg)


@pytest.mark.parametrize(
    "n_step, capacity, expected",
    [
        # a sampled slot needs its 4 stacked frames and its n-step window's next frame among one env's steps
        (1, 5, None),
        (1, 4, "buffer.capacity=4 keeps 4 steps per env (env.num_envs=1); a transition of 4 stacked frames and "
               "agent.n_step=1 needs at least 5"),
        (3, 7, None),
        (3, 6, "a transition of 4 stacked frames and agent.n_step=3 needs at least 7"),
    ],
)  # fmt: skip
def test_atari_capacity_per_env_must_cover_the_frame_stack_plus_n_step(compose_cfg, n_step, capacity, expected):
    """A bug that left n_step out of the steps a Pong transition needs, or refused the exact fit, passed the
    cross-key bounds above: they run CartPole."""
    overrides = ["env=pong", "env.num_envs=1", "agent.batch_size=4", "agent.learning_starts=4"]
    cfg = compose_cfg("train", [*overrides, f"agent.n_step={n_step}", f"buffer.capacity={capacity}"])
    if expected is None:
        validate_train(cfg)
    else:
        with pytest.raises(UserError, match=re.escape(expected)):
            validate_train(cfg)


def test_a_missing_game_is_the_only_complaint_not_the_ids_built_from_it(compose_cfg):
    # env.id and env.preset.id interpolate env.game; that they cannot resolve says nothing new
    with pytest.raises(UserError) as info:
        validate_train(compose_cfg("train", ["env=atari"]))
    assert (
        str(info.value)
        == "invalid config: env.game is required; set it with env.game=..., it must be a non-empty string."
    )


def test_an_interpolation_that_cannot_resolve_is_named(small_cfg_factory):
    with pytest.raises(UserError) as info:
        validate_train(small_cfg_factory("agent.lr=${agent.nope}"))
    assert str(info.value) == "invalid config: agent.lr cannot be resolved: Interpolation key 'agent.nope' not found."


@pytest.mark.parametrize("env_option", ["pong", "atari"])
def test_an_atari_config_without_a_preset_key_is_refused(compose_cfg, env_option):
    overrides = [f"env={env_option}", "~env.preset.frame_skip"] + (["env.game=Pong"] if env_option == "atari" else [])
    with pytest.raises(UserError) as info:
        validate_train(compose_cfg("train", overrides))
    assert "env.preset.frame_skip is missing; every train config needs it (an integer >= 1)." in str(info.value)


def test_an_unknown_key_in_a_group_lists_only_that_groups_keys(small_cfg_factory):
    # eval. and eval_protocol. share the prefix "eval": only eval's own keys are listed
    with pytest.raises(UserError) as info:
        validate_train(small_cfg_factory("+eval.foo=1"))
    assert str(info.value) == (
        "invalid config: eval.foo is not a known key. (known in eval: eval.episodes, eval.epsilon, "
        "eval.interval, eval.seed_offset, eval.stop_on_solved, eval.stop_return.)"
    )


@pytest.mark.parametrize(
    "group, value, hint",
    [
        ("env", "Breakout", " An Atari game goes in env.game: env=breakout, or env=atari env.game=Breakout."),
        ("env", "Tetris", " An Atari game goes in env.game: env=atari env.game=Tetris."),
        ("env", "PongNoFrameskip-v4", " An Atari game goes in env.game: env=pong, or env=atari env.game=Pong."),
        ("env", "Pong-v4", " An Atari game goes in env.game: env=pong, or env=atari env.game=Pong."),
        ("env", "ALE/SpaceInvaders-v5", " An Atari game goes in env.game: env=atari env.game=SpaceInvaders."),
        ("env", "MountainCar-v0", " A gymnasium id goes in env.id: env=mountaincar, or env=classic "
                                  "env.id=MountainCar-v0."),
        ("env", "LunarLander-v3", " A gymnasium id goes in env.id: env=classic env.id=LunarLander-v3."),
        ("env", "carpole", " Did you mean env=cartpole?"),
        ("env", "MiniGrid-Empty-5x5-v0", " A gymnasium env goes in env=classic env.id=ID (a registered id); an "
                                         "Atari game in env=atari env.game=GAME."),
        ("buffer", "PER", " For PER: buffer=prioritized."),
        ("network", "dueling", " For dueling: network.dueling=true."),
        ("agent", "n-step", " For n-step: agent.n_step=3 (or another n)."),
        ("eval_protocol", "greed", " Did you mean eval_protocol=greedy?"),
        ("network", "cnn", ""),
    ],
)  # fmt: skip
def test_an_unknown_group_option_is_told_where_it_belongs(group, value, hint):
    from dqn_cli.config import _hint

    names = sorted(p.stem for p in (Path(config_dir()) / group).glob("*.yaml"))
    assert _hint(group, value, names) == hint
