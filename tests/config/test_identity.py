"""A run's identity: keys added later leave earlier runs' hashes (and so their folders) as they were."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from src.config import validate
from src.config.identity import ADDED_LATER, config_hash
from tests.helpers import compose_cfg

pytestmark = pytest.mark.config


def test_keys_added_later_do_not_change_the_hash_at_their_earlier_value():
    cfg = validate(compose_cfg())
    before = OmegaConf.to_container(cfg, resolve=True)
    for group, keys in ADDED_LATER.items():
        for key in keys:
            del before[group][key]  # the config as it was before the key existed
    assert config_hash(cfg) == config_hash(before)


@pytest.mark.parametrize("override", ["trainer.devices=2", "seed=1", "debug.fail_at_step=3"])
def test_a_key_that_changes_the_run_changes_the_hash(override):
    assert config_hash(validate(compose_cfg(override))) != config_hash(validate(compose_cfg()))


def test_timing_and_logging_do_not_change_the_hash():
    base = config_hash(validate(compose_cfg()))
    assert config_hash(validate(compose_cfg("debug.sleep_per_step=0.5", "logger=none"))) == base
