"""A small real rank grid and its report: the records carry what the report needs to not mislead (the
machine's load while each run trained, the memory in use when training began, whether time/epoch is
extrapolated), and the report uses it (single-seed rule, ~ marks, memory added on CPU, eval-loss curves)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from src import records, report
from src.report import marks
from tests.helpers import run_cli

GRID = (
    "-m",
    "method=lora",
    "rank=1,2",
    "trainer.max_steps=3",
    "trainer.eval_every=2",
    "trainer.logging_steps=1",
    "trainer.batch_size=8",
    "data.splits.validation=32",
    "data.splits.test=16",
    "eval.num_samples=0",
    "eval.forgetting=false",
    "logger=none",
)


@pytest.mark.slow
def test_a_small_grid_records_load_and_its_report_says_what_it_can_tell(tmp_path):
    sweep = tmp_path / "ranks"
    proc = run_cli(*GRID, f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    recs = sorted(records.read_records(sweep), key=lambda r: r["config"]["rank"])
    assert [r["status"] for r in recs] == ["success", "success"]
    for rec in recs:
        m = rec["metrics"]
        assert m["time_per_epoch_extrapolated"] is True  # 3 steps: a small part of an epoch
        assert m["epochs"] < 1 and m["time_per_epoch_s"] > 0
        assert 0 < m["memory_before_training_mb"] <= m["peak_memory_mb"]
        c = m["contention"]
        assert set(c) == {
            "cpus",
            "threads",
            "load1_start",
            "load1_end",
            "load1_max",
            "load_samples",
            "cpu_wait_share",
            "gpu_other_processes",
        }
        assert c["cpus"] >= 1 and c["threads"] >= 1 and c["load_samples"] >= 2
        assert c["load1_max"] >= max(c["load1_start"], c["load1_end"]) >= 0
        assert c["cpu_wait_share"] is None or 0 <= c["cpu_wait_share"] <= 1
        assert c["gpu_other_processes"] is None  # CPU run
        assert set(records.SESSION_METRICS) >= {"contention", "memory_before_training_mb"}
        # eval loss logged at every evaluation: before training, at step 2 and at the end
        steps = [
            row["step"]
            for row in map(json.loads, (Path(rec["_path"]).parent / "metrics.jsonl").open())
            if "eval/loss" in row
        ]
        assert {0, 2, 3} <= set(steps)

    # Other engineers' edits to src/ between the two cells would make one of them stale: compare them anyway.
    rep = report.write_report(sweep, allow_stale=True)
    md = (sweep / "report.md").read_text()
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split(" | ")]
    table = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines[2:]]
    col = {h: i for i, h in enumerate(header)}
    assert "**Single seed**" in md
    assert not any(r[col["eval loss"]].startswith("**") for r in table)
    assert all(r[col["time/epoch"]].lstrip("*").startswith(marks.EXTRAPOLATED) for r in table)
    assert "time/epoch extrapolated" in md and "memory added" in header
    assert "Load while the timed runs trained: 1-minute load average" in md
    busy = [marks.busy_reasons(r) for r in rep.study.ok]
    assert all((marks.BUSY in r[col["tokens/s"]]) == bool(b) for r, b in zip(table, busy, strict=True))
    plots = {p.kind: p for p in rep.plots}
    assert plots["curves"].ylabels == ["train loss", "eval loss"]
    line = plots["line"]
    assert line.ylabels[1] == "memory added in training (MiB)"  # CPU: the memory training added
    assert line.ylims[1][0] == 0 and line.ylims[2][0] == 0  # memory and tokens/s from zero
    assert all(not p.overprinted for p in rep.plots)
