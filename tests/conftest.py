"""Shared fixtures: Hydra's compose API for the config tier, an isolated cache and a subprocess runner
for the end-to-end tier. Every test writes its own data; nothing depends on ../shared or the network."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

import src.config  # noqa: F401  (registers the tg.* resolvers)
from src.config import CONF_DIR, REPO_ROOT

# A shared cache for the whole session: the tiny model and tokenised data are built once.
SESSION_CACHE = Path(os.environ.get("TUNEGRID_TEST_CACHE", REPO_ROOT / ".cache" / "tests"))


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TUNEGRID_CACHE", str(SESSION_CACHE))


def compose_cfg(*overrides: str) -> DictConfig:
    """The config `python -m src.run <overrides>` would get (without Hydra's runtime keys)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """`python -m src.run <args>` in a subprocess, the way a user runs it. Returns CompletedProcess."""
    full_env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "TUNEGRID_CACHE": str(SESSION_CACHE),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "src.run", *args],
        cwd=cwd or REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Short-training overrides for tests: a few steps of the tiny model, no W&B unless a test asks.
QUICK = (
    "trainer.max_steps=12",
    "trainer.eval_every=6",
    "trainer.logging_steps=3",
    "trainer.batch_size=8",
    "data.splits.validation=32",
    "data.splits.test=16",
    "logger=none",
    "eval.num_samples=0",
    "eval.forgetting=false",
)


def train_inprocess(run_dir: Path, *overrides: str):
    """Validate and train in this process (the unit tier): returns (metrics, env, trainer)."""
    from src.config import validate
    from src.run import train

    cfg = validate(compose_cfg(*QUICK, *overrides))
    run_dir.mkdir(parents=True, exist_ok=True)
    return train(cfg, run_dir, name=",".join(overrides) or "default", group="tests")
