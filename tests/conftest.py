"""Test configuration only (the helpers are in tests/helpers.py): offline settings for every test, and each
test's tier as a marker from its folder, as the README describes them:

    tests/config/  -m config   every config choice composed with Hydra's compose API and validated
    tests/unit/    -m unit     tiny models and files the tests write, in this process, exact expectations
    tests/e2e/     -m e2e      real `python -m src.run` subprocesses: runs, grids, reports, kills
    -m slow                    the long ones (any tier); `make test-fast` leaves them out
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import SESSION_CACHE

TIERS = ("config", "unit", "e2e")
# For fixtures of every scope too: a module-scoped fixture runs before the function-scoped monkeypatch below,
# and would otherwise load the tiny model from the default cache, which may hold another pretraining of it
# (pretraining is reproducible only at the same thread count).
os.environ["TUNEGRID_CACHE"] = str(SESSION_CACHE)


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TUNEGRID_CACHE", str(SESSION_CACHE))


def pytest_collection_modifyitems(config, items):
    here = Path(__file__).parent
    for item in items:
        tier = Path(item.fspath).relative_to(here).parts[0]
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


def pytest_sessionstart(session):
    """With xdist, pretrain the tiny model into the session cache once, here, before the workers start: else
    every worker whose first test needs it pretrains its own copy at the same time (a minute each)."""
    if hasattr(session.config, "workerinput") or not getattr(session.config.option, "numprocesses", None):
        return
    from omegaconf import OmegaConf

    from src import models
    from src.config import CONF_DIR

    models.materialise_tiny(OmegaConf.load(CONF_DIR / "model" / "tiny.yaml"), SESSION_CACHE)
