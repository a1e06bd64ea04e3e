"""Studies end to end: `make` targets pass their overrides on, a small study runs through the CLI and
`make sweep-ranks`, and its report (report.md, results.csv, plots) matches the records."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from src import records
from src.config import REPO_ROOT
from tests.helpers import SESSION_CACHE, run_cli

STUDIES = sorted(p.stem for p in (REPO_ROOT / "sweeps").glob("*.yaml"))


def _make(*args: str) -> subprocess.CompletedProcess:
    """make with sweeps/sweeps.mk (included by the Makefile, or named alongside it until it is)."""
    files = (
        []
        if "sweeps/sweeps.mk" in (REPO_ROOT / "Makefile").read_text()
        else ["-f", "Makefile", "-f", "sweeps/sweeps.mk"]
    )
    return subprocess.run(
        ["make", "--no-print-directory", *files, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_make_targets_pass_overrides_and_report():
    out = _make("-n", "sweep-ranks", "ARGS=model=gpt2 data=alpaca", "PY=python").stdout
    assert 'python -m src.run -m +sweep=ranks hydra.sweep.dir="$dir" model=gpt2 data=alpaca' in out
    assert 'dir="multirun/ranks/$(date' in out  # the grid itself writes its report (GridSummary)
    out = _make("-n", "sweep-ranks", "LAUNCHER=ray", "PY=python").stdout
    assert 'python -m src.run -m +sweep=ranks hydra.sweep.dir="$dir" hydra/launcher=ray' in out
    assert 'python -m src.status "/tmp/x"' in _make("-n", "status", "DIR=/tmp/x", "PY=python").stdout
    out = _make("-n", "sweep-batch", "DIR=/tmp/b", "PY=python").stdout
    assert 'dir="/tmp/b"' in out
    assert 'python -m src.report "/tmp/x"' in _make("-n", "report", "DIR=/tmp/x", "PY=python").stdout
    listing = _make("studies").stdout
    assert all(f"make sweep-{s} " in listing for s in STUDIES)


def _check_report_matches(sweep_dir: Path, ranks: list[int]) -> None:
    recs = sorted(records.read_records(sweep_dir), key=lambda r: r["config"]["rank"])
    assert [r["status"] for r in recs] == ["success"] * len(ranks)
    assert [r["config"]["rank"] for r in recs] == ranks
    assert all(r["config"]["study"] == "ranks" and "+sweep=ranks" in r["overrides"] for r in recs)

    rows = sorted(csv.DictReader((sweep_dir / "results.csv").open()), key=lambda r: int(r["rank"]))
    assert [int(r["rank"]) for r in rows] == ranks
    for row, rec in zip(rows, recs, strict=True):
        for k in ("eval_loss", "peak_memory_mb", "tokens_per_s", "trainable_params", "checkpoint_bytes"):
            assert float(row[k]) == rec["metrics"][k], k

    lines = [ln for ln in (sweep_dir / "report.md").read_text().splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    table = [[c.strip().strip("*") for c in ln.strip("|").split(" | ")] for ln in lines[2:]]
    assert header[0] == "rank" and [int(r[0]) for r in table] == ranks
    loss, params = header.index("eval loss"), header.index("trainable params")
    for row, rec in zip(table, recs, strict=True):
        assert row[loss] == f"{rec['metrics']['eval_loss']:.4f}"
        assert row[params] == f"{rec['metrics']['trainable_params'] / 1e3:.1f}K"
    pngs = sorted(p.name for p in sweep_dir.glob("plot-*.png"))
    assert pngs == ["plot-loss-curves.png", "plot-memory-predicted.png", "plot-pareto.png", "plot-rank.png"]
    assert all((sweep_dir / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)


SMALL = (
    "trainer.max_steps=5",
    "trainer.eval_every=5",
    "trainer.logging_steps=1",
    "data.splits.validation=32",
    "data.splits.test=16",
    "logger=none",
)


@pytest.mark.slow
def test_study_end_to_end_then_report(tmp_path):
    sweep_dir = tmp_path / "ranks"
    res = run_cli(
        "-m", "+sweep=ranks", "hydra.sweeper.params.rank='2,4'", *SMALL, f"hydra.sweep.dir={sweep_dir}"
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (sweep_dir / "report.md").exists() and "tunegrid: report:" in res.stdout
    rep = subprocess.run(
        [sys.executable, "-m", "src.report", str(sweep_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stderr
    assert f"wrote {sweep_dir / 'report.md'}" in rep.stdout and "rank" in rep.stdout
    _check_report_matches(sweep_dir, [2, 4])


@pytest.mark.slow
def test_make_sweep_runs_the_study_and_its_report(tmp_path):
    sweep_dir = tmp_path / "ranks"
    assert os.environ["TUNEGRID_CACHE"] == str(SESSION_CACHE)  # make inherits conftest's offline env
    res = _make(
        "sweep-ranks",
        f"PY={sys.executable}",
        f"DIR={sweep_dir}",
        "ARGS=rank=1 " + " ".join(SMALL),
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert f"tunegrid: report: {sweep_dir / 'report.md'}" in res.stdout  # the grid wrote its own report
    [path] = sweep_dir.glob(f"*/{records.RECORD}")  # rank=1 overrides the study's grid: one cell
    rec = json.loads(path.read_text())
    assert rec["config"]["rank"] == 1 and (sweep_dir / "report.md").exists()
