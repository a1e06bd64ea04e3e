"""Atomic writes: every file tunegrid leaves (records, reports, samples, cached data and models) is written
to a temporary sibling and renamed into place, so a reader (another cell of a grid, a report run while
the grid trains, a run killed half-way) never sees half a file or half a folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _replace(path: Path, write: Callable[[IO[bytes]], None], fsync: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide shared results from other users
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: Path, data: bytes | str, fsync: bool = False) -> Path:
    raw = data.encode() if isinstance(data, str) else data
    return _replace(path, lambda f: f.write(raw), fsync)


def write_json(path: Path, obj: Any, fsync: bool = True) -> Path:
    """Indented JSON (non-JSON values as str); fsynced by default: records must survive a crash."""
    return write_bytes(path, json.dumps(obj, indent=2, default=str), fsync)


def write_lines(path: Path, lines: Iterable[str]) -> Path:
    """One line per item (newline added), streamed: for JSONL files of any size."""

    def write(f: IO[bytes]) -> None:
        for line in lines:
            f.write(line.encode() + b"\n")

    return _replace(path, write, fsync=False)


def publish_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder under a temporary name beside `final`, then rename it into place. When another
    process published it first (concurrent cells building the same cache entry), theirs is kept."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        build(tmp)
        tmp.rename(final)
    except OSError:
        if not final.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
