"""`python -m src.status <sweep dir>`: where a grid stands, at any time, from the records and the claims
(src/claim.py), whichever launcher ran it: done, running, pending, failed, and cells whose process ended
without a record. The cells a launcher was asked to run are in jobs.json (src/scaleout/cells.py); for SLURM
jobs the scheduler's accounting (sacct) tells a job that waits in the queue from one that died.

Never takes a claim to test it: a job starting at that moment would find its folder claimed and skip it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from src.claim import OWNER
from src.records import read_json, read_record
from src.scaleout.cells import MANIFEST, folder_overrides

DONE = {"success": "done", "skipped_oom": "skipped"}
ORDER = ("done", "skipped", "running", "pending", "interrupted", "failed", "died")
SLURM_WAITING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED"}
SLURM_LIVE = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"}


def _alive(owner: dict[str, Any]) -> bool | None:
    """Whether the process an owner file names still runs (None: on another host, this one cannot tell)."""
    if owner.get("host") != platform.node():
        return None
    try:
        os.kill(int(owner["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    """Each job's state from sacct, array ranges (`12_[3-5]`, still queued) expanded; {} without SLURM."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run(
            [
                "sacct",
                "-n",
                "-P",
                "-X",
                "-o",
                "JobID,State",
                "-j",
                ",".join(sorted({j.split("_")[0] for j in job_ids})),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return parse_sacct(out)


def parse_sacct(out: str) -> dict[str, str]:
    """`sacct -n -P -o JobID,State` lines as {job id: state}; a queued array's range (`12_[3-5%2]`) expanded."""
    states = {}
    for line in out.splitlines():
        job, _, state = line.partition("|")
        state = state.split()[0] if state.strip() else "UNKNOWN"  # "CANCELLED by 0"
        m = re.fullmatch(r"(\d+)_\[([\d,\-]+)(?:%\d+)?\]", job)
        if not m:
            states[job] = state
            continue
        for part in m.group(2).split(","):
            lo, _, hi = part.partition("-")
            for task in range(int(lo), int(hi or lo) + 1):
                states[f"{m.group(1)}_{task}"] = state
    return states


def cell_state(folder: Path, job_state: str | None) -> tuple[str, str]:
    """(category, detail) of one cell folder (which may not exist yet)."""
    owner = read_json(folder / OWNER)
    if owner is not None:  # claimed: a live run, or one that ended without releasing (killed)
        alive = _alive(owner)
        if alive is None and job_state is not None:
            alive = job_state in SLURM_LIVE
        holder = f"pid {owner.get('pid')} on {owner.get('host')} since {owner.get('since')}"
        if alive is not False:
            return "running", holder + ("" if alive else " (another host: not checked)")
    record = read_record(folder)
    if record is not None and record.get("status") != "running":
        status = record["status"]
        category = DONE.get(status) or ("interrupted" if status == "interrupted" else "failed")
        if status == "interrupted" and job_state in SLURM_WAITING | SLURM_LIVE:
            category = "pending"  # requeued after preemption: it resumes from its checkpoint
        metrics = record.get("metrics") or {}
        detail = f"eval_loss={metrics['eval_loss']:.4f}" if metrics.get("eval_loss") is not None else ""
        return category, record.get("error") or detail
    if owner is not None:
        return "died", f"{holder}: ended without a record" + (f" (SLURM: {job_state})" if job_state else "")
    if job_state is not None and job_state not in SLURM_WAITING | SLURM_LIVE:
        return "died", f"SLURM job {job_state} before writing a record"
    return "pending", f"SLURM: {job_state}" if job_state else ""


def status(sweep_dir: Path) -> list[dict[str, Any]]:
    """One entry per cell: those jobs.json lists (found in their folders by their overrides), and any other
    folder of the sweep."""
    sweep_dir = Path(sweep_dir)
    folders = {p: folder_overrides(p) for p in sorted(sweep_dir.iterdir()) if p.is_dir() and p.name[0] != "."}
    by_overrides = {tuple(o): p for p, o in folders.items() if o is not None}
    entries = [
        (c, by_overrides.get(tuple(c["overrides"])))
        for c in (read_json(sweep_dir / MANIFEST) or {}).get("cells", [])
    ]
    used = {folder for _, folder in entries}
    entries += [({"overrides": o, "job_id": None}, p) for p, o in folders.items() if p not in used]
    states = slurm_states([c["job_id"] for c, _ in entries if c.get("job_id")])
    out = []
    for cell, folder in entries:
        category, detail = cell_state(
            folder or sweep_dir / ".not-started", states.get(cell.get("job_id") or "")
        )
        out.append({**cell, "dir": folder.name if folder else None, "state": category, "detail": detail})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m src.status", description=__doc__.split("\n")[0])
    ap.add_argument("sweep_dir", type=Path, help="a grid's folder, e.g. multirun/2026-12-02/10-00-00")
    ap.add_argument("--json", action="store_true", help="one JSON object per cell instead of the table")
    args = ap.parse_args(argv)
    if not args.sweep_dir.is_dir():
        print(f"tunegrid: error: {args.sweep_dir}: no such folder", file=sys.stderr)
        return 2
    cells = status(args.sweep_dir)
    if args.json:
        for cell in cells:
            print(json.dumps(cell))
        return 0
    counts = Counter(c["state"] for c in cells)
    said = ", ".join(f"{counts[k]} {k}" for k in ORDER if counts[k])
    print(f"tunegrid: {args.sweep_dir}: {len(cells)} cell(s): {said or 'none yet'}")
    for cell in sorted(cells, key=lambda c: ORDER.index(c["state"])):
        label = ",".join(cell["overrides"]) if cell["overrides"] is not None else cell["dir"]
        job = f" [{cell['job_id']}]" if cell.get("job_id") else ""
        print(f"  {cell['state']:<11} {label}{job} {cell['detail']}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
