"""The Trainer's checkpoints of a run (<run_dir>/checkpoints/checkpoint-N): which one a re-run resumes from.

A checkpoint of another config or code is moved aside (never deleted) so that the run starts over.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from src.atomic import write_json
from src.records import code_key, config_hash


def resumable_checkpoint(folder: Path, cfg: Any, force: bool = False) -> str | None:
    """The newest complete checkpoint (trainer_state.json is written last) of this same config and code,
    or None. Checkpoints of another config or code, or any under sweep.force, are moved aside (never
    deleted) so that the run starts over."""
    stamp = {"config_hash": config_hash(cfg), "code_key": code_key()}
    marker = folder / "tunegrid.json"

    def number(p: Path) -> int:
        tail = p.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    found = sorted(folder.glob("checkpoint-*"), key=number)
    if found:
        same = marker.is_file() and json.loads(marker.read_text()) == stamp
        if force or cfg.resume != "auto" or not same:
            aside = folder.with_name(f"{folder.name}.old-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}")
            folder.rename(aside)
            print(f"tunegrid: earlier checkpoints (another config or code, or sweep.force) moved to {aside}")
            found = []
    write_json(marker, stamp)
    for ckpt in reversed(found):
        if (ckpt / "trainer_state.json").is_file():
            return str(ckpt)
        print(f"tunegrid: skipping incomplete checkpoint {ckpt}")
    return None
