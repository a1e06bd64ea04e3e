"""The embedded tiny model is pretrained once (src/pretrain.py) on tasks the studies never fine-tune on; the
pretrained base in the session cache is what every default run fine-tunes."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from src import models
from src.config import CONF_DIR
from src.data.synthetic import pretraining_records, synthetic_records
from tests.helpers import SESSION_CACHE


def _tiny(**pretrain) -> OmegaConf:
    cfg = OmegaConf.load(CONF_DIR / "model" / "tiny.yaml")
    for key, value in pretrain.items():
        cfg.pretrain[key] = value
    return cfg


def test_pretraining_tasks_are_not_the_fine_tuning_tasks():
    pre = {r["instruction"] for r in pretraining_records(2000, seed=7)}
    fine = {r["instruction"] for r in synthetic_records(2000, seed=1234)}
    assert len(pre) >= 5 and len(fine) >= 4
    assert not pre & fine
    # ... but on the same material: every digit, and every word in both cases, occurs in the pretraining text
    text = " ".join(r["input"] + " " + r["output"] for r in pretraining_records(2000, seed=7))
    fine_text = " ".join(r["input"] + " " + r["output"] for r in synthetic_records(2000, seed=1234))
    assert set(fine_text.split()) <= set(text.split()) | {str(n) for n in range(100)} | {"+"}


def test_the_default_tiny_model_is_pretrained():
    folder = models.materialise_tiny(_tiny(), SESSION_CACHE)
    info = json.loads((folder / "pretraining.json").read_text())
    assert info["steps"] == OmegaConf.load(CONF_DIR / "model" / "tiny.yaml").pretrain.steps
    assert info["last_loss"] < info["first_loss"] / 4, info  # it learned the pretraining tasks


def test_steps_zero_keeps_the_random_init_and_is_another_cache_entry(tmp_path: Path):
    pretrained = models.materialise_tiny(_tiny(steps=3), tmp_path)
    random_init = models.materialise_tiny(_tiny(steps=0), tmp_path)
    assert pretrained != random_init  # the pretraining settings are part of the cache key
    assert not (random_init / "pretraining.json").exists()
    a, b = load_file(pretrained / "model.safetensors"), load_file(random_init / "model.safetensors")
    assert a.keys() == b.keys()
    changed = [k for k in a if not torch.equal(a[k], b[k])]
    assert changed and len(changed) == len(a), "pretraining trains every tensor from the same init"
