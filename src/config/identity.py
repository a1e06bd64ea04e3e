"""A run's identity: which keys decide what it computes, its hash, and the folder name built from both.

Two configs that compute different things never share a folder, and the same config always finds its own
folder again, whichever process, launcher or grid order runs it: the folder name is the config's overrides
(readable) plus the hash of the validated config (exact), not Hydra's job index.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys that do not change what a run computes: left out of the hash that folders and resume match on.
NOT_IDENTITY = ("logger", "sweep", "study", "cache_dir")
# Fault injection is identity; a slowed step is not, nor how batches reach the device.
TIMING_ONLY = {"debug": ("sleep_per_step",), "trainer": ("pin_memory",)}
# What the weights are called, not what a run computes: the hub model a saved adapter names (src/model_card.py).
LABELS_ONLY = {"model": ("hub_id",)}
# Keys added after runs were recorded, left out while they hold the value every earlier run had, so that those
# runs keep their hash and folder (and are found done) instead of training again.
ADDED_LATER = {
    "trainer": {
        "devices": 1,
        "strategy": "ddp",
        "tokens_per_batch": None,
        "attention": "sdpa",
        "weights_dtype": "fp32",
        "compile": False,
        "fused_loss": "none",
    },
    "data": {"on_bad_record": "error", "group_by": None, "max_new_tokens": 64, "stop": None},
}
# Top-level keys added later, left out while they hold the value every earlier run had (as ADDED_LATER).
ADDED_LATER_TOP = {
    "init_from": None,
    "objective": {
        "name": "sft",
        "recipe": "src.objectives.sft",
        "lr_scale": 1,
        "pairs": False,
        "settings": None,
    },
}
# Keys only one objective reads: left out of every other objective's identity (an SFT run's β means nothing).
OBJECTIVE_ONLY = {"dpo": ("dpo", "beta", "data.pairs", "eval.verdict")}
READABLE_CHARS = 160  # with the hash, well under the 255 bytes a file name may have


def identity(cfg: Any) -> dict[str, Any]:
    """The part of a (resolved) config that decides the run's results."""
    data = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    out = {k: v for k, v in data.items() if k not in NOT_IDENTITY and k != "hydra"}
    for group, keys in {**TIMING_ONLY, **LABELS_ONLY}.items():
        if isinstance(out.get(group), dict):
            out[group] = {k: v for k, v in out[group].items() if k not in keys}
    for group, earlier in ADDED_LATER.items():
        if isinstance(out.get(group), dict):
            out[group] = {k: v for k, v in out[group].items() if k not in earlier or v != earlier[k]}
    for key, earlier in ADDED_LATER_TOP.items():
        if key in out and out[key] == earlier:
            del out[key]
    objective = (data.get("objective") or {}).get("name", "sft")
    for name, keys in OBJECTIVE_ONLY.items():
        if name != objective:
            for key in keys:
                group, _, leaf = key.rpartition(".")
                if not group:
                    out.pop(leaf, None)
                elif isinstance(out.get(group), dict):
                    out[group] = {k: v for k, v in out[group].items() if k != leaf}
    return out


def config_hash(cfg: Any) -> str:
    return hashlib.sha256(json.dumps(identity(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _counts(override: str) -> bool:
    key = override.lstrip("+~").split("=", 1)[0]
    return key.split(".")[0].split("/")[0] not in (*NOT_IDENTITY, "hydra")


def cell_name(overrides: list[str], digest: str) -> str:
    """`<overrides>-<hash>`: `method=lora,rank=8-3f2a9c1b0d`, or `default-<hash>` without overrides.
    Top-level keys and group choices first (what studies sweep: rank, seed, method), then deeper keys;
    characters that do not belong in a file name become `_`; a long list is cut (the hash decides)."""
    chosen = sorted((o for o in overrides if _counts(o)), key=lambda o: (o.split("=", 1)[0].count("."), o))
    readable = ",".join(chosen)
    readable = re.sub(r"[^A-Za-z0-9=,.+_-]", "_", readable)[:READABLE_CHARS].strip("._-") or "default"
    return f"{readable}-{digest[:10]}"
