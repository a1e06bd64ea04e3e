"""A full disk, for real: `python -m src.run` (and `python -m src.train`) in a user and mount namespace in
which the run folder is a small tmpfs, filled by the test before the run or while it runs (no mocks).

Already full before the run: one line and exit 2 before Hydra writes anything (CheckOutputDir writes and
syncs real bytes, since an empty file is created even on a full disk); without Hydra's check, one line that
no record could be written. Full once the run has claimed its folder: the failure record is still written,
into the room the run reserved (records.reserve), with the tail of the traceback in it; never a traceback
on the terminal, never an empty traceback.txt. Skipped only where unprivileged namespaces are not allowed.
"""

from __future__ import annotations

import json
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from src.config import REPO_ROOT
from src.records import RECORD, RESERVE, TRACEBACK
from tests.helpers import cli_env, compose_cfg, no_traceback, short

FILL = 'cat /dev/zero > "$DISK/fill" 2>/dev/null'  # stops at ENOSPC: not a byte left


def _unshare_works(tmp: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = ["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(tmp))}"]
    return subprocess.run(probe, capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def namespaces(tmp_path_factory):
    if not _unshare_works(tmp_path_factory.mktemp("probe")):
        pytest.skip("needs `unshare -rm` (an unprivileged user namespace that may mount a tmpfs)")


def small_disk(tmp_path: Path, script: str, size: str = "1m", timeout: int = 300) -> SimpleNamespace:
    """Run `script` (sh; $DISK is a fresh tmpfs of `size`, $PY this Python, $OUT on the real disk, the run's
    exit code goes to $OUT/rc); what it left on the small disk is copied to OUT/disk before the tmpfs goes."""
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    wrapped = (
        f'mount -t tmpfs -o size={size} tmpfs "$DISK" && umask 022 && {{ {script}; }}; '
        'rm -f "$DISK/fill"; cp -a "$DISK" "$OUT/disk"'
    )
    proc = subprocess.run(
        ["unshare", "-rm", "sh", "-c", wrapped],
        cwd=REPO_ROOT,
        env=cli_env({"DISK": str(disk), "OUT": str(out), "PY": sys.executable}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    rc = (out / "rc").read_text().strip() if (out / "rc").exists() else None
    return SimpleNamespace(proc=proc, rc=int(rc) if rc else None, disk=out / "disk", root=disk)


def src_run(*args: str) -> str:
    return '"$PY" -m src.run ' + shlex.join(args)


def tunegrid_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("tunegrid:")]


@pytest.mark.parametrize("grid", [False, True], ids=["run", "grid"])
def test_a_disk_full_before_the_run_is_one_line_before_hydra_writes(tmp_path, namespaces, grid):
    key = "hydra.sweep.dir" if grid else "hydra.run.dir"
    where = f"$DISK/{'grid' if grid else 'run'}"
    args = ["seed=0,1", "-m"] if grid else []
    cmd = f'{FILL}; {src_run(*short())} {key}="{where}" {shlex.join(args)}; echo $? > "$OUT/rc"'
    got = small_disk(tmp_path, cmd)
    no_traceback(got.proc)
    folder = got.root / ("grid" if grid else "run")
    assert got.rc == 2, got.proc.stdout[-2000:] + got.proc.stderr[-2000:]
    assert got.proc.stderr.splitlines() == [
        f"tunegrid: error: {key}={folder}: cannot write there (No space left on device); "
        "free some space or choose another folder"
    ]
    left = got.disk / folder.name
    assert sorted(p.name for p in left.rglob("*")) == []  # not even Hydra's .hydra/


def test_a_disk_that_fills_once_the_run_claimed_its_folder_still_gets_the_record(tmp_path, namespaces):
    """The disk fills the moment the run has reserved its room: one of its next writes (config.yaml, the
    checkpoints' marker) fails, before training."""
    run = "$DISK/run"
    cmd = (
        f'{src_run(*short())} hydra.run.dir="{run}" & pid=$!; i=0; '
        f'while [ ! -e "{run}/{RESERVE}" ] && kill -0 $pid 2>/dev/null && [ $i -lt 1200 ]; '
        "do sleep 0.05; i=$((i+1)); done; "
        f'{FILL}; wait $pid; echo $? > "$OUT/rc"'
    )
    got = small_disk(tmp_path, cmd)
    no_traceback(got.proc)
    assert got.rc == 1, got.proc.stdout[-2000:] + got.proc.stderr[-2000:]
    run_dir = got.root / "run"
    assert tunegrid_lines(got.proc.stderr) == [
        f"tunegrid: run failed: OSError: [Errno 28] No space left on device (record: {run_dir / RECORD}; "
        "No space left on device: written into the room reserved for it)"
    ]
    left = got.disk / "run"
    rec = json.loads((left / RECORD).read_text())
    assert rec["status"] == "failed" and "No space left on device" in rec["error"], rec
    assert rec["config_hash"] and rec["config"]["trainer"]["max_steps"] == 12  # the whole record, config too
    assert rec["traceback_file"] is None, rec  # traceback.txt found no room: its tail is in the record
    assert rec["traceback"].rstrip().endswith("OSError: [Errno 28] No space left on device"), rec["traceback"]
    log = left / "metrics.jsonl"
    assert rec["step"] is None and (not log.exists() or log.stat().st_size == 0)  # before training
    assert not (left / TRACEBACK).exists() and not (left / RESERVE).exists()
    assert stat.S_IMODE((left / RECORD).stat().st_mode) == 0o644  # umask 022, not mkstemp's 0600


def test_a_disk_full_before_a_run_without_hydra_is_one_line(tmp_path, namespaces):
    """`python -m src.train <run>/config.yaml` has no Hydra check: the claim is its first write, and there is
    no room for any record; one line says so."""
    from src.config import save_resolved, validate

    save_resolved(validate(compose_cfg(*short())), tmp_path / "made")
    cmd = (
        f'mkdir "$DISK/run" && cp {shlex.quote(str(tmp_path / "made" / "config.yaml"))} "$DISK/run/" && {FILL}; '
        '"$PY" -m src.train "$DISK/run/config.yaml"; echo $? > "$OUT/rc"'
    )
    got = small_disk(tmp_path, cmd)
    no_traceback(got.proc)
    assert got.rc == 1, got.proc.stdout[-2000:] + got.proc.stderr[-2000:]
    run_dir = got.root / "run"
    [line] = tunegrid_lines(got.proc.stderr)
    assert line.startswith("tunegrid: run failed: OSError: [Errno 28] No space left on device"), line
    assert line.endswith(f"(no record written in {run_dir}: No space left on device)"), line
    assert not (got.disk / "run" / RECORD).exists()


@pytest.mark.slow
def test_a_disk_that_fills_while_training_still_gets_the_record(tmp_path, namespaces):
    """The disk fills once training logs its first step; a later log line finds no room, mid-training."""
    run = "$DISK/run"
    steps = 60
    args = short(f"trainer.max_steps={steps}", "trainer.logging_steps=1", f"trainer.eval_every={steps}")
    cmd = (
        f'{src_run(*args)} hydra.run.dir="{run}" & pid=$!; i=0; '
        f'while [ ! -s "{run}/metrics.jsonl" ] && kill -0 $pid 2>/dev/null && [ $i -lt 3000 ]; '
        "do sleep 0.05; i=$((i+1)); done; "
        f'{FILL}; wait $pid; echo $? > "$OUT/rc"'
    )
    got = small_disk(tmp_path, cmd)
    no_traceback(got.proc)
    assert got.rc == 1, got.proc.stdout[-2000:] + got.proc.stderr[-2000:]
    [line] = tunegrid_lines(got.proc.stderr)
    assert "No space left on device: written into the room reserved for it" in line, line
    left = got.disk / "run"
    rec = json.loads((left / RECORD).read_text())
    assert rec["status"] == "failed" and "No space left on device" in rec["error"], rec
    assert isinstance(rec["step"], int) and 1 <= rec["step"] < steps, rec["step"]  # stopped mid-training
    assert not (left / "checkpoint").exists() and not (left / RESERVE).exists()
    assert not (left / TRACEBACK).exists() or (left / TRACEBACK).stat().st_size > 0  # never an empty one
