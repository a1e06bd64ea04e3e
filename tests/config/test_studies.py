"""Studies as data: every sweeps/<study>.yaml composes as `+sweep=<study>`, sweeps what its question needs,
and every job of every study validates (tests/e2e/test_studies_run.py runs one end to end)."""

from __future__ import annotations

import functools
import itertools
import re

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from src import specs
from src.config import CONF_DIR, REPO_ROOT, ConfigError, validate, without_hydra
from tests.helpers import compose_cfg

SWEEPS = REPO_ROOT / "sweeps"
STUDIES = sorted(p.stem for p in SWEEPS.glob("*.yaml"))
GROUPS = ("model", "method", "optim", "lr_schedule", "data")

# What each study must sweep on its defaults (the tiny model): the issue's list, value for value.
EXPECTED = {
    "ranks": {"rank": [1, 2, 4, 8, 16, 32, 64]},
    "alphas": {"rank": [4, 8, 16], "alpha_multiple": [1, 2, 4]},
    "methods": {"method": ["full", "lora", "qlora", "prompt_tuning", "head_only"]},
    "optimizers": {
        "optim": ["adamw", "adam", "sgd_nesterov", "sgd_momentum", "sgd", "adamw_8bit", "paged_adamw_8bit"]
    },
    "lr_schedules": {
        "lr_schedule": ["linear", "cosine", "cosine_with_restarts", "polynomial", "constant_with_warmup"],
        "lr_schedule.warmup_ratio": [0.0, 0.03, 0.1],
    },
    "model_sizes": {"model": ["gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"], "method": ["full", "lora"]},
    "frozen_blocks": {"method": ["full", "lora"], "frozen_blocks": [0, 1, 2, 3, 4]},
    "batch": {"trainer.batch_size": [4, 8, 16, 32]},
    "batching": {"trainer.batching": ["pad_to_max", "dynamic", "packing", "group_by_length"]},
    "dpo": {"method": ["lora", "full"], "beta": [0.05, 0.1, 0.5]},
}


@functools.cache
def compose_study(*overrides: str) -> DictConfig:
    """The config Hydra composes for `python -m src.run -m <overrides>`, its hydra node included (read-only:
    cached, so tests change copies)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=True)


def sweep_values(cfg: DictConfig) -> dict[str, list]:
    """hydra.sweeper.params, resolved and parsed the way BasicSweeper parses them: key -> values."""
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    return {
        o.get_key_element(): list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
        for o in parsed
    }


def jobs(cfg: DictConfig, *extra: str) -> list[list[str]]:
    """Each job's overrides, exactly as BasicSweeper expands params + command line (cartesian product)."""
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True)
    parsed = OverridesParser.create().parse_overrides([*(f"{k}={v}" for k, v in params.items()), *extra])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def test_the_issue_studies_are_all_there():
    assert set(STUDIES) == set(EXPECTED)
    # `+sweep=<study>` reads sweeps/ through the conf/sweep symlink.
    assert (CONF_DIR / "sweep").resolve() == SWEEPS.resolve()


@pytest.mark.parametrize("study", STUDIES)
def test_study_composes_and_sweeps_its_question(study):
    text = (SWEEPS / f"{study}.yaml").read_text()
    first, question = text.splitlines()[:2]
    assert first == "# @package _global_"
    assert re.fullmatch(rf"# Study `{study}` — .+\?", question), "the second line states the study's question"

    cfg = compose_study(f"+sweep={study}")
    assert cfg.study == study
    assert OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["dir"].startswith(f"multirun/{study}/")
    values = sweep_values(cfg)
    assert values == EXPECTED[study]
    for key, vals in values.items():  # every config-group choice exists
        if key in GROUPS:
            assert all((CONF_DIR / key / f"{v}.yaml").exists() for v in vals), key

    # The jobs that differ in values only (no group change) validate on this composition.
    job = without_hydra(cfg)
    value_keys = [k for k in values if k not in GROUPS]
    for combo in itertools.product(*(values[k] for k in value_keys)):
        one = job.copy()
        for k, v in zip(value_keys, combo, strict=True):
            OmegaConf.update(one, k, v, merge=False)
        validate(one)
    if job.model.name == "tiny":  # the defaults run in minutes on CPU
        assert 0 < validate(job).trainer.max_steps <= 100
    assert len(jobs(cfg)) <= 16


def test_real_study_uses_the_full_trainer_config():
    cfg = compose_cfg("+sweep=ranks", "model=gpt2-medium", "data=alpaca")
    assert cfg.study == "ranks" and cfg.method.name == "lora" and cfg.trainer.max_steps == -1
    assert compose_cfg("+sweep=ranks", "trainer.max_steps=7").trainer.max_steps == 7  # the command line wins
    assert compose_study("+sweep=ranks").trainer.max_steps == 60


def test_frozen_blocks_grid_runs_from_none_to_all():
    grid = yaml.safe_load((SWEEPS / "frozen_blocks.yaml").read_text())["frozen_blocks_grid"]
    for name, values in grid.items():
        layers = yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text())["num_layers"]
        values = [int(x) for x in str(values).split(",")]
        assert values[0] == 0 and values[-1] == layers and values == sorted(values), name
    medium = sweep_values(compose_study("+sweep=frozen_blocks", "model=gpt2-medium"))
    assert medium["frozen_blocks"] == [0, 6, 12, 18, 24]
    unlisted = sweep_values(compose_study("+sweep=frozen_blocks", "~frozen_blocks_grid.tiny"))
    assert unlisted["frozen_blocks"] == [0, 4]  # a model missing from the table: none and all


def test_batch_study_keeps_the_effective_batch():
    cfg = compose_study("+sweep=batch")
    job = without_hydra(cfg)
    for bs in sweep_values(cfg)["trainer.batch_size"]:
        one = job.copy()
        OmegaConf.update(one, "trainer.batch_size", bs, merge=False)
        t = validate(one).trainer
        assert t.batch_size * t.grad_accum == cfg.effective_batch == 32


def test_command_line_replaces_a_swept_key():
    cfg = compose_study("+sweep=alphas")
    got = jobs(cfg, "rank=2", "+sweep=alphas", "model=gpt2")
    assert [j[:2] for j in got] == [
        ["rank=2", "alpha_multiple=1"],
        ["rank=2", "alpha_multiple=2"],
        ["rank=2", "alpha_multiple=4"],
    ]
    assert all(j[2:] == ["+sweep=alphas", "model=gpt2"] for j in got)
    # The params themselves can be set too (quoted: an unquoted comma would sweep Hydra's own config).
    assert sweep_values(compose_study("+sweep=ranks", "hydra.sweeper.params.rank='2,4'")) == {"rank": [2, 4]}


@pytest.mark.slow
def test_every_job_of_every_study_validates():
    """Each job of each study, composed as Hydra will compose it, passes validation (no training)."""
    for study in STUDIES:
        cfg = compose_study(f"+sweep={study}")
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            for job in jobs(cfg):
                cfg_job = compose(config_name="config", overrides=[*job, f"+sweep={study}"])
                if (
                    specs.method_spec(cfg_job.method).adapters
                    and cfg_job.frozen_blocks >= cfg_job.model.num_layers
                ):
                    # LoRA with every block frozen has nothing to adapt: recorded `invalid` by design
                    with pytest.raises(ConfigError, match="must stay unfrozen"):
                        validate(cfg_job)
                    continue
                validate(cfg_job)
