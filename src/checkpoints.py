"""The Trainer's checkpoints of a run (<run_dir>/checkpoints/checkpoint-N): which one a re-run resumes from
(the checks of a saved folder are src/integrity.py).

A checkpoint of another config or code is moved aside (never deleted) so that the run starts over. One that
fails the checks is moved out of checkpoints/ into checkpoints.corrupt/ (still never deleted): the Trainer's
rotation and resume match `checkpoint-<digits>` there, and would delete it or resume from it. The run then
resumes from the newest intact checkpoint, or starts over, and says so in one line.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from src.atomic import write_json
from src.config.identity import config_hash
from src.integrity import folder_problem
from src.records import code_key

CHECKPOINTS = "checkpoints"  # <run_dir>/checkpoints/checkpoint-N: the Trainer's output_dir


def _move_corrupt(ckpt: Path) -> Path:
    """<run_dir>/checkpoints.corrupt/checkpoint-N-<UTC time>: out of the Trainer's reach, never deleted."""
    aside = ckpt.parent.with_name(f"{ckpt.parent.name}.corrupt")
    aside.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    dest, n = aside / f"{ckpt.name}-{stamp}", 1
    while dest.exists():
        n += 1
        dest = aside / f"{ckpt.name}-{stamp}-{n}"
    ckpt.rename(dest)
    return dest


def _read_marker(marker: Path) -> dict[str, Any] | None:
    try:
        stamp = json.loads(marker.read_text())
    except (OSError, ValueError):  # missing, or unreadable: the checkpoints' config and code are unknown
        return None
    return stamp if isinstance(stamp, dict) else None


def resumable_checkpoint(folder: Path, cfg: Any, force: bool = False) -> str | None:
    """The newest complete (trainer_state.json is written last) and intact checkpoint of this same config and
    code, or None. Checkpoints of another config or code, or any under sweep.force, are moved aside (never
    deleted) so that the run starts over; a corrupt one is moved to checkpoints.corrupt/ with one line."""
    folder = Path(folder)
    stamp = {"config_hash": config_hash(cfg), "code_key": code_key()}
    marker = folder / "tunegrid.json"

    def number(p: Path) -> int:
        tail = p.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    found = sorted((p for p in folder.glob("checkpoint-*") if p.is_dir()), key=number)
    if found:
        same = _read_marker(marker) == stamp
        if force or cfg.resume != "auto" or not same:
            aside = folder.with_name(f"{folder.name}.old-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}")
            folder.rename(aside)
            print(f"tunegrid: earlier checkpoints (another config or code, or sweep.force) moved to {aside}")
            found = []
    write_json(marker, stamp)
    corrupt: list[str] = []
    chosen = None
    for ckpt in reversed(found):
        if not (ckpt / "trainer_state.json").is_file():
            print(f"tunegrid: skipping incomplete checkpoint {ckpt}")
            continue
        problem = folder_problem(ckpt)
        if problem is None:
            chosen = ckpt
            break
        file, reason = problem
        corrupt.append(
            f"checkpoint {ckpt.name} is unreadable ({file}: {reason}); moved to {_move_corrupt(ckpt)}"
        )
    then = f"resuming from {chosen.name}" if chosen else "no intact checkpoint left, starting over"
    for line in corrupt:
        print(f"tunegrid: {line}; {then}", file=sys.stderr)
    return str(chosen) if chosen else None
