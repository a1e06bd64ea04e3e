"""Real data as its users have it, through `python -m src.run` (issue 15): a small local file with the data
set's default sizes trains, and its record shows the sizes and the records skipped for a missing field; bad
files (empty, `[]`, a JSON syntax error, a record without a field) stop the run with one line and exit 2
before anything trains. The files are written here, in the hub's format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from src.records import RECORD
from tests.helpers import no_traceback, record, run_cli

QUICK = (
    "trainer.max_steps=2",
    "trainer.eval_every=2",
    "trainer.batch_size=4",
    "logger=none",
    "eval.num_samples=2",
    "eval.forgetting=false",
)


def alpaca(n: int) -> list[dict]:
    return [{"instruction": f"Task {i}.", "input": "", "output": f"out {i}"} for i in range(n)]


def tunegrid_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("tunegrid:")]


@pytest.mark.slow
def test_a_small_file_with_the_defaults_trains_and_the_record_shows_the_data(tmp_path):
    recs = alpaca(203)
    for i in (5, 50, 150):
        del recs[i]["output"]
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    run = tmp_path / "run"
    proc = run_cli(
        "data=alpaca", f"data.path={path}", "data.on_bad_record=skip", *QUICK, f"hydra.run.dir={run}"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    no_traceback(proc)
    lines = tunegrid_lines(proc.stderr)
    assert any("skipped 3 of the 203 records lack one of instruction, input, output" in ln for ln in lines), (
        lines
    )
    assert any("200 usable records" in ln and "train=176, validation=22, test=2" in ln for ln in lines), lines
    info = record(run)["metrics"]["data_info"]
    assert info == {
        "split_records": {"train": 176, "validation": 22, "test": 2},
        "bad_records_skipped": 3,
        "sizes_fitted": True,
    }


BAD = {  # file name -> (content, what stderr says after `data.path='<file>': `)
    "empty.jsonl": ("", "the file holds no records"),
    "list.json": ("[]", "the file holds no records"),
    "syntax.json": (
        '[{"instruction": "a", "input": "", "output": "b"},\n {"instruction": "a" "input": ""}]',
        "line 2 column 22: not valid JSON (Expecting ',' delimiter)",
    ),
    "no_output.jsonl": (
        "".join(json.dumps(r) + "\n" for r in [*alpaca(3), {"instruction": "x", "input": ""}]),
        "line 4 lacks field output (1 of the 4 records lacks one of instruction, input, output; "
        "data.on_bad_record=skip drops such records)",
    ),
}


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    for name, (text, _) in BAD.items():
        (d / name).write_text(text)
    return d


@pytest.mark.slow
def test_bad_files_stop_a_run_with_one_line(bad_files, tmp_path):
    """One run exits 2 with the line alone on stderr; a grid over the rest records each cell `invalid`."""
    one = bad_files / "no_output.jsonl"
    run = tmp_path / "single"
    proc = run_cli("data=alpaca", f"data.path={one}", *QUICK, f"hydra.run.dir={run}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    no_traceback(proc)
    want = f"tunegrid: error: data.path='{one}': {BAD['no_output.jsonl'][1]}"
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [want]
    assert record(run)["status"] == "invalid" and not (run / "checkpoint").exists()

    sweep = tmp_path / "grid"
    paths = ",".join(str(bad_files / n) for n in BAD if n != "no_output.jsonl")
    proc = run_cli("data=alpaca", f"data.path={paths}", *QUICK, f"hydra.sweep.dir={sweep}", "-m")
    assert proc.returncode != 0
    no_traceback(proc)
    recs = {
        Path(r["config"]["data"]["path"]).name: r
        for r in map(json.loads, (p.read_text() for p in sweep.glob(f"*/{RECORD}")))
    }
    assert set(recs) == set(BAD) - {"no_output.jsonl"}
    for name, rec in recs.items():
        said = f"data.path='{bad_files / name}': {BAD[name][1]}"
        assert rec["status"] == "invalid" and rec["error"] == said, rec
        assert f"tunegrid: error: {said}" in proc.stderr.splitlines()
        assert not (Path(rec["run_dir"]) / "checkpoint").exists()
