"""Atomic writes (src/atomic.py): what they leave on disk. Files and folders follow the umask as `open` does
(0644 under umask 022, 0664 under 002), never mkstemp's 0600, whatever wrote them: records, reports,
samples, metrics logs, cached folders with safetensors weights inside; a failed write leaves nothing behind;
the room reserved for a record is real bytes that a later write fills in place."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from src import atomic, records
from src.evaluation.generation import write_samples
from src.loggers import JsonlLogger


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def mask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): mode(p) for p in sorted(root.rglob("*"))}


def test_umask_is_read_without_changing_it(mask):
    assert atomic.umask() == mask
    assert os.umask(mask) == mask  # still what the fixture set


def test_every_writer_follows_the_umask(tmp_path, mask):
    """Each way tunegrid creates a file, with nothing but the umask deciding its mode."""
    file, folder = 0o666 & ~mask, 0o777 & ~mask
    out = tmp_path / "out"
    atomic.write_bytes(out / "report.md", "# report\n")
    atomic.write_bytes(out / "plot.png", b"\x89PNG")
    atomic.write_json(out / "result.json", {"status": "success"})
    atomic.write_lines(out / "data.jsonl", ['{"a": 1}'])
    write_samples(out / "samples.jsonl", [{"prompt": "p", "generation": "g"}])
    log = JsonlLogger(out / "metrics.jsonl")
    log.log({"train/loss": 1.0}, 1)
    log.finish({})

    def build(tmp: Path) -> None:  # a cached model folder: safetensors writes its file 0600
        import numpy as np
        from safetensors.numpy import save_file

        (tmp / "sub").mkdir()
        save_file({"w": np.zeros(2, dtype=np.float32)}, str(tmp / "sub" / "model.safetensors"))
        (tmp / "config.json").write_text("{}")

    atomic.publish_dir(out / "model", build)
    atomic.reserve_file(out / ".reserve", 1024)
    atomic.fill_reserved(out / ".reserve", out / "filled.json", b"{}")
    got = modes(out)
    want = {
        name: folder if (out / name).is_dir() else file
        for name in (
            "report.md",
            "plot.png",
            "result.json",
            "data.jsonl",
            "samples.jsonl",
            "metrics.jsonl",
            "model",
            "model/sub",
            "model/sub/model.safetensors",
            "model/config.json",
            "filled.json",
        )
    }
    assert got == want, {k: oct(v) for k, v in got.items()}


def test_failure_records_follow_the_umask(tmp_path, mask):
    run = tmp_path / "run"
    run.mkdir()
    records.reserve(run)
    assert mode(run / records.RESERVE) == 0o666 & ~mask
    records.write_failure(run, records.new_record(run, []), RuntimeError("boom"))
    assert modes(run) == {records.RECORD: 0o666 & ~mask, records.TRACEBACK: 0o666 & ~mask}


def test_share_widens_to_the_umask_and_never_narrows(tmp_path):
    old = os.umask(0o022)
    try:
        (tmp_path / "d").mkdir(mode=0o700)
        for name, m in {"private": 0o600, "script": 0o750, "open": 0o666}.items():
            (tmp_path / "d" / name).write_text(name)
            os.chmod(tmp_path / "d" / name, m)
        atomic.share(tmp_path / "d")
        got = modes(tmp_path)
    finally:
        os.umask(old)
    assert got == {"d": 0o755, "d/private": 0o644, "d/script": 0o754, "d/open": 0o666}


def test_a_failed_write_leaves_the_earlier_file_and_no_temporary(tmp_path):
    path = atomic.write_lines(tmp_path / "samples.jsonl", ["old"])

    def lines():
        yield "new"
        raise RuntimeError("generation failed half-way")

    with pytest.raises(RuntimeError):
        atomic.write_lines(path, lines())
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["samples.jsonl"]


def test_reserved_room_is_real_bytes_filled_in_place(tmp_path):
    reserved = atomic.reserve_file(tmp_path / ".reserve", 16 * 1024)
    st = reserved.stat()
    assert st.st_size == 16 * 1024 and st.st_blocks * 512 >= 16 * 1024  # allocated, not a sparse file
    inode = st.st_ino
    data = json.dumps({"status": "failed"}).encode()
    path = atomic.fill_reserved(reserved, tmp_path / "result.json", data)
    assert path.read_bytes() == data and path.stat().st_ino == inode  # the same file, renamed
    assert not reserved.exists()


def test_reserved_room_refuses_what_does_not_fit(tmp_path):
    reserved = atomic.reserve_file(tmp_path / ".reserve", 100)
    with pytest.raises(OSError) as e:
        atomic.fill_reserved(reserved, tmp_path / "result.json", b"x" * 101)
    assert e.value.errno == errno.EFBIG
    assert reserved.stat().st_size == 100 and not (tmp_path / "result.json").exists()


def test_probe_writes_and_leaves_nothing(tmp_path):
    atomic.probe(tmp_path, records.RESERVE_BYTES)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(OSError):
        atomic.probe(tmp_path / "missing", 10)
