"""One process per run folder. Two copies of a grid, or many cluster jobs over one sweep folder, split the
cells between them: a process that finds a folder claimed moves on to the next cell.

The claim is a file lock from `filelock` (flock on Linux, also over NFS): the operating system releases it
when its holder dies, so a killed run never leaves a stale claim behind. Beside it, an owner file says who
holds it (for the message others print); one left behind by a process that died is reported and replaced.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

from filelock import FileLock, Timeout

from src.atomic import write_json

LOCK = ".tunegrid.lock"
OWNER = ".tunegrid.owner"


class Claim:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(self.run_dir / LOCK), timeout=0, thread_local=False)

    def owner(self) -> dict | None:
        try:
            return json.loads((self.run_dir / OWNER).read_text())
        except (OSError, ValueError):
            return None

    def holder(self) -> str:
        o = self.owner() or {}
        return f"pid {o.get('pid', '?')} on {o.get('host', '?')} since {o.get('since', '?')}"

    def acquire(self, since: str) -> bool:
        """Claim the folder, or False when another live process holds it."""
        try:
            self.lock.acquire(timeout=0)
        except Timeout:
            return False
        left = self.owner()
        if left is not None and left.get("pid") != os.getpid():
            print(
                f"tunegrid: {self.run_dir}: the run of {self.holder()} ended without releasing the folder "
                f"(killed?); taking it over",
                file=sys.stderr,
            )
        write_json(
            self.run_dir / OWNER, {"pid": os.getpid(), "host": platform.node(), "since": since}, fsync=False
        )
        return True

    def release(self) -> None:
        if self.lock.is_locked:
            (self.run_dir / OWNER).unlink(missing_ok=True)
            self.lock.release()
