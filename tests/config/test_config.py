"""Config tier: every choice of every config group composes through Hydra's compose API and passes
src.config.validate; the keys studies sweep reach the places that read them; bad values fail in one
line naming the key. No model or data is loaded here (validation must not need them)."""

from __future__ import annotations

import copy
import functools
import importlib.util
import math
import os
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from src import specs
from src.config import CONF_DIR, REPO_ROOT, ConfigError, flatten, validate
from tests.helpers import compose_cfg

# --------------------------------------------------------------------------- discovery


def discover_choices() -> list[tuple[str, str]]:
    """(group, choice) for every YAML under conf/<group>/ (nested groups as a/b), read from disk so
    that a new choice is covered without touching this file."""
    out = []
    for folder, _, files in os.walk(CONF_DIR, followlinks=True):  # conf/sweep links to sweeps/
        group = Path(folder).relative_to(CONF_DIR).as_posix()
        if group == ".":
            continue  # the primary config, not a group choice
        out += [(group, Path(f).stem) for f in files if f.endswith(".yaml")]
    return sorted(out)


CHOICES = discover_choices()
GROUPS = sorted({g for g, _ in CHOICES})
# Groups in the primary config's defaults list are overridden (`group=choice`); any other group is added
# (`+group=choice`), as a user would.
IN_DEFAULTS = {
    next(iter(d))
    for d in OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml").defaults)
    if isinstance(d, dict)
}


def override_for(group: str, choice: str) -> str:
    # hydra/<group> (hydra/launcher) replaces a choice in Hydra's own defaults list
    return f"{group}={choice}" if group in IN_DEFAULTS or group.startswith("hydra/") else f"+{group}={choice}"


def partner(group: str, choice: str) -> list[str]:
    """Task and data must agree (src/specs.py): a labelled data set composes with the labelled task, the
    labelled task with a labelled data set (the first of each that the config folders hold)."""
    cfg = _composed(override_for(group, choice))
    if cfg.data.get("label_field") and not cfg.task.labelled:
        return [f"task={next(c for g, c in CHOICES if g == 'task' and _composed(f'task={c}').task.labelled)}"]
    if cfg.task.labelled and not cfg.data.get("label_field"):
        return [
            f"data={next(c for g, c in CHOICES if g == 'data' and _composed(f'data={c}').data.get('label_field'))}"
        ]
    return []


# Groups whose choices carry a `name` that the record reports (method, optimizer, ...): it must equal the choice.
NAMED = ("model", "method", "data", "optim", "lr_schedule")


@functools.cache
def _composed(*overrides: str) -> DictConfig:
    """compose_cfg, once per distinct override list (composing costs ~0.1-0.3 s); callers get a copy."""
    return compose_cfg(*overrides)


def composed(*overrides: str) -> DictConfig:
    return copy.deepcopy(_composed(*overrides))


_PARSER = OverridesParser.create()


def with_values(cfg: DictConfig, *overrides: str) -> DictConfig:
    """Apply `key=value` overrides the way Hydra applies them after composing (its grammar parses the
    value: `abc` a string, `nan` a float, `2.5` a float), without composing again."""
    cfg = copy.deepcopy(cfg)
    for o in _PARSER.parse_overrides(list(overrides)):
        assert not o.is_sweep_override(), o
        OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
    return cfg


def _compose_hydra(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def _validate_or_skip(cfg: DictConfig) -> DictConfig:
    """validate(), skipping (not failing) a choice whose optional dependency is not installed."""
    try:
        return validate(cfg)
    except ConfigError as e:
        if "not installed" in str(e):
            pytest.skip(f"optional dependency missing: {e}")
        raise


def _interpolations(node) -> list[str]:
    """Any string still holding `${...}` after resolution (there should be none)."""
    return [f"{k}={v}" for k, v in flatten(node).items() if isinstance(v, str) and "${" in v]


def test_discovery_finds_the_documented_groups():
    assert {"model", "method", "data", "optim", "lr_schedule", "trainer", "logger"} <= set(
        GROUPS
    ) & IN_DEFAULTS
    assert len(CHOICES) >= 30, CHOICES


# --------------------------------------------------------------------------- every choice


@pytest.mark.parametrize(("group", "choice"), CHOICES, ids=[f"{g}={c}" for g, c in CHOICES])
def test_every_choice_composes_and_validates(group, choice):
    override = override_for(group, choice)
    if group == "hydra":  # Hydra's own group only exists with the hydra node
        cfg = _compose_hydra(override)
        assert cfg.hydra.run.dir and cfg.hydra.sweep.dir
        assert cfg.hydra.callbacks.grid_summary._target_ == "src.grid.GridSummary"
        cfg = composed()
    else:
        cfg = composed(override, *partner(group, choice))
    if group in NAMED:
        assert cfg[group].name == choice, f"conf/{group}/{choice}.yaml says name={cfg[group].name!r}"

    resolved = _validate_or_skip(cfg)
    assert isinstance(resolved, DictConfig)
    assert not _interpolations(resolved)

    # The effective lr follows the documented product unless lr= is given.
    expected_lr = float(cfg.optim.base_lr) * float(cfg.method.lr_scale) * float(cfg.model.lr_scale)
    expected_lr *= float(cfg.objective.lr_scale)
    assert math.isclose(resolved.lr, expected_lr, rel_tol=1e-12)
    assert resolved.optim.optimizer.lr == resolved.lr
    assert resolved.optim.optimizer.weight_decay == resolved.weight_decay == cfg.optim.default_weight_decay
    assert resolved.trainer.seed == resolved.seed


@pytest.mark.parametrize("model", [c for g, c in CHOICES if g == "model"])
def test_lora_resolves_on_every_model(model):
    """The LoRA target presets and the blocks PEFT adapts come from the model's YAML."""
    base = composed(f"model={model}", "method=lora")
    for targets in base.model.lora_targets:
        cfg = _validate_or_skip(with_values(base, f"lora_targets={targets}", "frozen_blocks=2"))
        peft = cfg.method.peft
        assert peft.target_modules == cfg.model.lora_targets[targets]
        assert peft.layers_to_transform == list(range(2, cfg.model.num_layers))
        assert peft.layers_pattern == cfg.model.layers_pattern
        assert peft.fan_in_fan_out == cfg.model.conv1d


def test_every_target_is_importable():
    """Every `_target_` in every composed choice names something that exists (a typo fails here, not mid-grid)."""
    from hydra.utils import get_object

    targets: set[str] = set()
    for group, choice in CHOICES:
        if group == "hydra":
            cfg = _compose_hydra(f"{group}={choice}")
            targets.add(cfg.hydra.callbacks.grid_summary._target_)
            continue
        for key, value in flatten(
            OmegaConf.to_container(composed(override_for(group, choice)), resolve=False)
        ).items():
            if key.endswith("_target_"):
                targets.add(value)
    assert targets, "no _target_ found"
    optional = {"bitsandbytes"}
    for target in sorted(targets):
        if target.split(".")[0] in optional and importlib.util.find_spec(target.split(".")[0]) is None:
            continue
        assert callable(get_object(target)), target


# --------------------------------------------------------------------------- defaults and the README


def _readme_table() -> dict[str, tuple[list[str], str | None]]:
    """The README's `| group | choices |` table: group -> (backticked names in the row, the one marked default)."""
    out = {}
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        m = re.match(r"\|\s*`([\w/]+)`\s*\|(.*)\|\s*$", line)
        if not m:
            continue
        cells = m.group(2)
        choices = re.findall(r"`([^`]+)`", cells)
        default = re.search(r"`([^`]+)`\s*\(default\)", cells)
        out[m.group(1)] = (choices, default.group(1) if default else None)
    return out


def test_readme_lists_every_choice_and_the_defaults():
    """Every YAML of a group in README's table has its row (rows may name keys too), and the marked defaults hold."""
    table = _readme_table()
    assert table, "README's config table not found"
    cfg = composed()
    for group, (choices, default) in table.items():
        undocumented = sorted({c for g, c in CHOICES if g == group} - set(choices))
        assert not undocumented, f"conf/{group}/ choices missing from README's {group} row: {undocumented}"
        if default is not None and group in NAMED:
            assert cfg[group].name == default, group
    assert (cfg.logger.wandb is not None) == (table["logger"][1] == "wandb")


def test_default_config():
    cfg = validate(composed())
    assert (cfg.model.name, cfg.method.name, cfg.data.name, cfg.optim.name, cfg.lr_schedule.name) == (
        "tiny",
        "full",
        "synthetic",
        "adamw",
        "linear",
    )
    assert cfg.logger.wandb._target_ == "src.loggers.WandbLogger"
    assert cfg.model.build is not None, "the default model must build from config (no download)"
    assert cfg.data.hub is None and cfg.data.generator is not None, (
        "the default data must be generated (offline)"
    )


# --------------------------------------------------------------------------- the swept keys


def test_top_level_keys_reach_the_lora_config():
    cfg = validate(
        compose_cfg("method=lora", "rank=16", "alpha=32", "lora_dropout=0.1", "lora_targets=attn_mlp")
    )
    peft = cfg.method.peft
    assert (peft.r, peft.lora_alpha, peft.lora_dropout) == (16, 32, 0.1)
    assert peft.target_modules == list(cfg.model.lora_targets.attn_mlp)
    assert peft.layers_to_transform is None and peft.layers_pattern is None  # nothing frozen: every block


def test_qlora_is_lora_plus_quantisation():
    lora = validate(composed("method=lora")).method
    qlora = _validate_or_skip(composed("method=qlora")).method
    assert qlora.peft == lora.peft
    assert lora.quantization is None
    assert qlora.quantization.load_in_4bit is True and qlora.quantization.bnb_4bit_quant_type == "nf4"


def test_explicit_lr_and_weight_decay_win():
    cfg = validate(compose_cfg("optim=sgd", "lr=3e-4", "weight_decay=0.05"))
    assert cfg.lr == 3e-4 and cfg.optim.optimizer.lr == 3e-4
    assert cfg.weight_decay == 0.05 and cfg.optim.optimizer.weight_decay == 0.05


def test_seed_reaches_the_trainer():
    assert validate(with_values(composed(), "seed=7")).trainer.seed == 7


def test_flattened_config_is_what_wandb_gets():
    """The W&B run config is flatten(resolved config): dotted keys, the swept keys at the top."""
    flat = flatten(validate(compose_cfg("method=lora", "rank=16", "trainer.batch_size=4")))
    assert flat["rank"] == 16 and flat["method.peft.r"] == 16
    assert flat["method.name"] == "lora"
    assert flat["trainer.batch_size"] == 4
    assert not any(isinstance(v, dict) for v in flat.values())


# --------------------------------------------------------------------------- validation


TINY = _composed().model  # bounds that depend on the model are read from its YAML, not hard-coded

BAD = [
    ("rank=0", "rank"),
    ("rank=-4", "rank"),
    ("rank=abc", "rank"),
    ("rank=2.5", "rank"),
    (f"rank={TINY.hidden_size + 1}", "rank"),
    ("alpha=0", "alpha"),
    ("lr=-1", "lr"),
    ("lr=0", "lr"),
    ("lr=nan", "lr"),
    ("lr=inf", "lr"),
    ("weight_decay=-0.1", "weight_decay"),
    ("lora_dropout=1", "lora_dropout"),
    ("lora_targets=everything", "lora_targets"),
    ("frozen_blocks=-1", "frozen_blocks"),
    (f"frozen_blocks={TINY.num_layers + 1}", "frozen_blocks"),
    ("frozen_blocks=99", "frozen_blocks"),
    (f"frozen_blocks={TINY.num_layers}", "frozen_blocks"),  # LoRA needs a block
    ("seed=-1", "seed"),
    ("trainer.batch_size=0", "trainer.batch_size"),
    ("trainer.grad_accum=0", "trainer.grad_accum"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("trainer.max_steps=-2", "trainer.max_steps"),
    ("trainer.epochs=0", "trainer.epochs"),
    ("trainer.precision=fp64", "trainer.precision"),
    ("trainer.batching=bogus", "trainer.batching"),
    ("trainer.eval_every=0", "trainer.eval_every"),
    ("trainer.early_stopping_patience=0", "trainer.early_stopping_patience"),
    ("lr_schedule.warmup_ratio=1.0", "lr_schedule.warmup_ratio"),
    ("data.max_seq_len=4", "data.max_seq_len"),
    (f"data.max_seq_len={TINY.context_length + 1}", "data.max_seq_len"),
]


@pytest.mark.parametrize(("override", "key"), BAD, ids=[o for o, _ in BAD])
def test_bad_values_fail_in_one_line_naming_the_key(override, key):
    with pytest.raises(ConfigError) as info:
        validate(with_values(composed("method=lora"), override))
    msg = str(info.value)
    assert "\n" not in msg
    assert re.match(rf"{re.escape(key)}=\S+: \S", msg), msg  # key=value: what is allowed


def test_cross_key_constraints():
    # prompt tuning: max_seq_len + virtual tokens must fit the positions
    pt = composed("method=prompt_tuning")
    fits = TINY.context_length - pt.method.peft.num_virtual_tokens
    validate(with_values(pt, f"data.max_seq_len={fits}"))
    with pytest.raises(ConfigError, match=r"^method\.peft\.num_virtual_tokens="):
        validate(with_values(pt, f"data.max_seq_len={fits + 1}"))
    # Nesterov needs momentum
    with pytest.raises(ConfigError, match=r"^optim\.optimizer\.momentum="):
        validate(with_values(composed("optim=sgd_nesterov"), "optim.optimizer.momentum=0"))


GOOD = [
    "rank=1",
    f"rank={TINY.hidden_size}",
    "rank=8.0",
    "frozen_blocks=0",
    f"frozen_blocks={TINY.num_layers - 1}",
    "lora_dropout=0",
    "trainer.max_steps=-1",
    "trainer.max_steps=1",
    "trainer.early_stopping_patience=1",
    "lr_schedule.warmup_ratio=0",
    f"data.max_seq_len={TINY.context_length}",
    "lr=1e-9",
]


@pytest.mark.parametrize("override", GOOD)
def test_boundary_values_are_accepted(override):
    cfg = validate(with_values(composed("method=lora"), override))
    key, _, value = override.partition("=")
    assert float(OmegaConf.select(cfg, key)) == float(value)


def test_full_fine_tuning_may_freeze_every_block():
    cfg = validate(with_values(composed(), f"frozen_blocks={TINY.num_layers}"))
    assert cfg.frozen_blocks == TINY.num_layers


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (("method=lora",), "packing"),
        (("method=full",), "packing"),
        (("method=qlora",), "packing"),
        (
            ("method=prompt_tuning",),
            "dynamic",
        ),  # virtual tokens per row: packed examples would see each other
        (("task=classification", "data=synthetic_classification"), "dynamic"),  # one label per example
        (("method=lora", "trainer.batching=pad_to_max"), "pad_to_max"),
        (("method=prompt_tuning", "trainer.batching=group_by_length"), "group_by_length"),
    ],
)
def test_batching_auto_packs_where_packing_is_exact(overrides, expected):
    assert specs.of(validate(composed(*overrides))).batching == expected


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        (("method=prompt_tuning",), "method=prompt_tuning prepends virtual tokens"),
        (("task=classification", "data=synthetic_classification"), "one label per example"),
    ],
)
def test_explicit_packing_where_it_cannot_apply_fails_in_one_line(overrides, why):
    with pytest.raises(ConfigError) as info:
        validate(composed(*overrides, "trainer.batching=packing"))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("trainer.batching=packing: ") and why in msg, msg
    assert "trainer.batching=dynamic" in msg  # what to use instead


def test_rank_bound_follows_the_model():
    gpt2 = composed("model=gpt2", "method=lora")
    bigger = gpt2.model.hidden_size
    assert bigger > TINY.hidden_size
    validate(with_values(gpt2, f"rank={bigger}"))
    with pytest.raises(ConfigError, match="^rank="):
        validate(with_values(composed("method=lora"), f"rank={bigger}"))
