"""How a failure is recorded (records.record_failure / write_failure), in this process: no failure of any
kind replaces a `success` record (it goes beside it, in failure.json, which no glob for result.json finds),
the exit codes stay those of the docstring, the room reserved for the record is given back on every path,
and a record that cannot be written is one line, never an exception. The full disk itself is
tests/e2e/test_disk_full.py."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from src import records
from src.errors import ConfigError, Diverged, Interrupted, SkippedOOM

SUCCESS = {"schema_version": 1, "status": "success", "config_hash": "abc", "metrics": {"eval_loss": 1.5}}


def interrupted() -> Interrupted:
    e = Interrupted("signal 15 at step 7")
    e.signum = 15
    return e


def skipped() -> SkippedOOM:
    e = SkippedOOM("predicted peak 72 MiB > device memory 0 MiB")
    e.predicted = {"total_mb": 72.0}
    return e


FAILURES = {  # id -> (exception, status, exit code)
    "crash": (lambda: RuntimeError("injected failure at step 3"), "failed", 1),
    "oom": (lambda: MemoryError("injected out of memory"), "oom", 1),
    "diverged": (lambda: Diverged("training loss became nan at step 3"), "diverged", 1),
    "interrupted": (interrupted, "interrupted", 143),
    "skipped_oom": (skipped, "skipped_oom", 0),
    "disk_full": (lambda: OSError(errno.ENOSPC, "No space left on device"), "failed", 1),
    "empty_model_folder": (
        lambda: OSError("/models/x does not appear to have a file named config.json"),
        "failed",
        1,
    ),
}


def finished_run(tmp_path: Path) -> tuple[Path, bytes]:
    run = tmp_path / "run"
    run.mkdir()
    raw = json.dumps(SUCCESS, indent=2).encode()
    (run / records.RECORD).write_bytes(raw)
    return run, raw


def stderr_lines(capsys) -> list[str]:
    return capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("case", FAILURES)
def test_no_failure_replaces_a_success(tmp_path, capsys, case):
    make, status, code = FAILURES[case]
    run, raw = finished_run(tmp_path)
    records.reserve(run)
    try:
        raise make()  # raised for real: its traceback goes to traceback.txt
    except BaseException as e:
        exc = e
    exc.step_reached = 3
    assert records.record_failure(run, records.new_record(run, ["rank=4"]), exc) == code
    assert (run / records.RECORD).read_bytes() == raw  # untouched
    failure = json.loads((run / records.FAILURE).read_text())
    assert failure["status"] == status and failure["step"] == 3
    assert failure["error"] == records.error_summary(exc)
    assert (run / failure["traceback_file"]).read_text().startswith("Traceback")
    assert sorted(p.name for p in run.rglob(records.RECORD)) == [records.RECORD]
    assert not (run / records.RESERVE).exists()
    assert stderr_lines(capsys) == [
        f"tunegrid: run {status}: {records.error_summary(exc)} (earlier success kept in {run / records.RECORD}; "
        f"this failure recorded in {run / records.FAILURE})"
    ]


def test_a_failure_replaces_an_earlier_failure(tmp_path, capsys):
    run = tmp_path / "run"
    records.write_failure(run, records.new_record(run, []), RuntimeError("first"))
    records.reserve(run)
    exc = RuntimeError("second")
    assert records.record_failure(run, records.new_record(run, []), exc) == 1
    assert json.loads((run / records.RECORD).read_text())["error"] == "RuntimeError: second"
    assert sorted(p.name for p in run.iterdir()) == [records.RECORD, records.TRACEBACK]
    assert stderr_lines(capsys) == [
        f"tunegrid: run failed: RuntimeError: second (record: {run / records.RECORD})"
    ]


def test_a_bad_value_writes_nothing_beside_a_record(tmp_path, capsys):
    run, raw = finished_run(tmp_path)
    records.reserve(run)
    assert records.record_failure(run, records.new_record(run, []), ConfigError("rank=0: must be ≥ 1")) == 2
    assert sorted(p.name for p in run.iterdir()) == [records.RECORD]  # the reserve given back too
    assert (run / records.RECORD).read_bytes() == raw
    assert stderr_lines(capsys) == ["tunegrid: error: rank=0: must be ≥ 1"]


def test_a_traceback_that_cannot_be_written_goes_into_the_record(tmp_path, capsys):
    run = tmp_path / "run"
    (run / records.TRACEBACK).mkdir(parents=True)  # a real OSError (IsADirectoryError) when it is replaced
    assert records.record_failure(run, records.new_record(run, []), RuntimeError("boom")) == 1
    rec = json.loads((run / records.RECORD).read_text())
    assert rec["status"] == "failed" and rec["traceback_file"] is None
    assert "RuntimeError: boom" in rec["traceback"]
    assert stderr_lines(capsys) == [
        f"tunegrid: run failed: RuntimeError: boom (record: {run / records.RECORD})"
    ]


def test_a_record_that_cannot_be_written_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    run = blocker / "run"  # under a regular file: every write fails
    assert records.record_failure(run, records.new_record(run, []), RuntimeError("boom")) == 1
    [line] = stderr_lines(capsys)
    assert line.startswith(f"tunegrid: run failed: RuntimeError: boom (no record written in {run}: "), line


def test_the_reserve_is_room_taken_and_given_back(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    records.reserve(run)
    reserved = run / records.RESERVE
    assert reserved.name.startswith(".") and reserved.stat().st_size == records.RESERVE_BYTES
    records.release_reserve(run)
    assert not reserved.exists()
    records.release_reserve(run)  # nothing to give back: nothing happens


def test_a_large_record_fits_the_reserve_without_its_config(tmp_path):
    """What write_failure writes into the reserved room on a full disk: compact, the config dropped if need be."""
    rec = records.new_record(tmp_path, [])
    rec.update(config={"big": "x" * 2 * records.RESERVE_BYTES}, traceback="t" * records.TRACEBACK_TAIL)
    data = records._compact(rec)
    assert len(data) <= records.RESERVE_BYTES
    back = json.loads(data)
    assert "config" not in back and back["traceback"] == rec["traceback"] and back["status"] == "running"
