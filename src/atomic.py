"""Atomic writes: every file tunegrid leaves (records, reports, samples, cached data and models) is written
to a temporary sibling and renamed into place, so a reader (another cell of a grid, a report run while
the grid trains, a run killed half-way) never sees half a file or half a folder.

Files and folders are created with modes 0666/0777 less the umask, as `open` would (0644 under umask 022,
0664 under 002): never mkstemp's 0600, which would hide shared results from the other users of a group.
Room reserved ahead (`reserve_file`, `fill_reserved`) lets a record be written on a disk that has filled up.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any


def umask() -> int:
    """The process's umask, read without changing it (os.umask(0), even restored at once, lets a file that
    another thread creates meanwhile be world-writable); os.umask where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _sibling(path: Path, make: Callable[[Path], Any]) -> tuple[Any, Path]:
    """make(a fresh hidden name beside path), retried on a name that exists: what mkstemp/mkdtemp do, but with
    the caller's mode, so that the kernel applies the umask (and a default ACL) itself."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}"
        try:
            return make(tmp), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def _create(path: Path) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    return _sibling(path, lambda tmp: os.open(tmp, flags, 0o666))


def _fsync_dir(folder: Path) -> None:
    """A rename survives a crash once its folder is synced (not every platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _replace(path: Path, write: Callable[[IO[bytes]], None], fsync: bool) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)
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
    _, tmp = _sibling(final, lambda t: os.mkdir(t, 0o777))
    try:
        build(tmp)
        share(tmp)  # libraries that write 0600 files (safetensors) inside it
        tmp.rename(final)
    except OSError:
        if not final.exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def share(path: Path) -> Path:
    """Widen a file, or every file and folder under a folder, to the modes the umask allows (0644/0755 under
    umask 022): safetensors creates its files 0600 whatever the umask, which would hide a run's weights
    from the other users of a group. Never narrows a mode; symlinks are left alone."""
    path = Path(path)
    mask = umask()
    for p in [path, *path.rglob("*")] if path.is_dir() else [path]:
        if p.is_symlink():
            continue
        mode = p.stat().st_mode & 0o7777
        wanted = mode | ((0o777 if p.is_dir() else 0o666) & ~mask)
        if wanted != mode:
            os.chmod(p, wanted)
    return path


def _write_all(fd: int, data: bytes, offset: int = 0) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def reserve_file(path: Path, size: int) -> Path:
    """`size` real bytes (not a sparse file, not fallocate: some file systems do not keep either), fsynced,
    so that the room is taken now and `fill_reserved` can later overwrite it without allocating. On failure
    nothing is left behind and the OSError (ENOSPC on a full disk) is raised."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o666)
    try:
        _write_all(fd, os.urandom(size))  # incompressible: a compressing file system allocates it all
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return path


def probe(folder: Path, size: int) -> None:
    """Show that `size` real bytes can be written in folder (then removed): an empty test file is created
    even on a full disk. Raises the OSError that stops them."""
    fd, tmp = _create(Path(folder) / "tunegrid-write-test")
    os.close(fd)
    try:
        reserve_file(tmp, size)
    finally:
        tmp.unlink(missing_ok=True)


def fill_reserved(reserved: Path, path: Path, data: bytes) -> Path:
    """Write `data` over the bytes `reserve_file` took (in place: no block is allocated on a full disk, on file
    systems that overwrite in place), cut the rest off, and rename the file to `path`, atomically as ever."""
    reserved, path = Path(reserved), Path(path)
    fd = os.open(reserved, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        if len(data) > os.fstat(fd).st_size:
            raise OSError(errno.EFBIG, "larger than the reserved room", str(reserved))
        _write_all(fd, data)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(reserved, path)
    _fsync_dir(path.parent)
    return path
