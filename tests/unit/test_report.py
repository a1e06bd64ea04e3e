"""Unit tier for src/report/: synthetic records in the exact schema src/run.py writes (result.json with
the resolved config from Hydra's compose API, metrics.jsonl beside it), then the report read back."""

from __future__ import annotations

import copy
import csv
import functools
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src import records, report
from src.atomic import write_json
from src.config import flatten, validate
from src.report import columns, figures, plots, stats, tables, wandb_upload
from src.report.study import parse_scalar, settings_of
from tests.helpers import compose_cfg

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Reference two-sided 95% Student-t quantiles t(0.975, df), written out (not computed with scipy).
T975 = {1: 12.7062047, 2: 4.3026527, 40: 2.0210754, 10_000: 1.9602012}

# A real record's metrics (python -m src.run -m method=lora rank=4 trainer.max_steps=10 logger=none).
CONTENTION = {  # an idle machine: the run's threads rarely waited, the load about the run's own threads
    "cpus": 2,
    "threads": 2,
    "load1_start": 1.21,
    "load1_end": 1.93,
    "load1_max": 1.93,
    "load_samples": 3,
    "cpu_wait_share": 0.021,
    "gpu_other_processes": None,
}
PREDICTED = {
    "weights_mb": 3.4482421875,
    "gradients_mb": 0.046875,
    "optimizer_mb": 0.09375,
    "activations_mb": 116.0,
    "total_mb": 119.5888671875,
}
METRICS = {
    "initial_eval_loss": 6.229938983917236,
    "peak_memory_mb": 755.1640625,
    "predicted_memory_mb": PREDICTED["total_mb"],
    "predicted_memory": PREDICTED,
    "eval_loss": 5.741847038269043,
    "test_loss": 5.719903469085693,
    "train_loss": 5.907478332519531,
    "perplexity": 311.6394897853997,
    "test_perplexity": 304.8754916264584,
    "tokens_trained": 9824,
    "tokens_per_s": 1156.66282054301,
    "padding_share": 0.0862,
    "train_runtime_s": 8.4934,
    "time_per_epoch_s": 138.44242,
    "time_per_epoch_extrapolated": True,  # 10 steps: 0.06 of an epoch
    "steps": 10,
    "epochs": 0.06134969325153374,
    "memory_before_training_mb": 690.0,
    "contention": CONTENTION,
    "checkpoint_bytes": 51136,
    "trainable_params": 12288,
    "total_params": 903936,
    "trainable_pct": 1.3593882752761257,
    "precision": "fp32",
    "weights_bytes": 3615744,
    "gradients_bytes": 49152,
    "optimizer_state_bytes": 98368,
}


@functools.cache
def _resolved(*overrides: str) -> dict:
    """The resolved config src/run.py stores in the record (compose + validate: no torch, well under a second)."""
    return OmegaConf.to_container(validate(compose_cfg(*overrides)))


def config_for(method: str = "lora", rank: int = 8, seed: int = 0) -> dict:
    """The resolved config of method=<method> rank=<rank> seed=<seed>, from one compose per method."""
    cfg = copy.deepcopy(_resolved(f"method={method}", "logger=none"))
    cfg["rank"], cfg["seed"], cfg["trainer"]["seed"] = rank, seed, seed
    if (cfg["method"].get("peft") or {}).get("r") is not None:
        cfg["method"]["peft"]["r"] = rank
    return cfg


@functools.cache
def current_code() -> str:
    """records.code_key() of this checkout (git and package metadata: asked once per session)."""
    return records.code_key()


@pytest.fixture(autouse=True)
def _frozen_code(monkeypatch):
    """This checkout's code key, asked once for the session: an edit to src/ while the tests run (another
    terminal, an editor saving) would otherwise make every record written here stale to the report."""
    code = current_code()
    monkeypatch.setattr(records, "code_key", lambda: code)


OTHER_CODE = (
    "0123456789abcdef0123456789abcdef01234567 torch=2.0.0 transformers=4.40.0 peft=0.10.0 bitsandbytes=None"
)


def new_record(run_dir: Path, overrides: list[str], config: dict | None, code: str | None = None) -> dict:
    """The record src/run.py has built before training: identity, resolved config, config hash, code key."""
    rec: dict = {
        "schema_version": records.SCHEMA_VERSION,
        "status": "running",
        "error": None,
        "overrides": overrides,
        "run_dir": str(run_dir),
        "started_at": "2026-01-01T00:00:00+00:00",
    }
    if config is not None:
        rec.update(
            method=config["method"]["name"],
            method_settings=config["method"],
            frozen_blocks=config["frozen_blocks"],
            optimizer=config["optim"]["name"],
            lr_schedule=config["lr_schedule"]["name"],
            lr=config["lr"],
            seed=config["seed"],
            config=config,
            config_hash=records.config_hash(config),
            code_key=code or current_code(),
        )
    return rec


def write_run(
    run_dir: Path,
    overrides: list[str],
    metrics: dict | None = None,
    status: str = "success",
    error: str | None = None,
    config: dict | None = None,
    curve: list[float] | None = None,
    code: str | None = None,
    device: str = "cpu",
    oom_retries: int = 0,
    trainer_used: dict | None = None,
) -> dict:
    """One run folder as src/run.py leaves it: result.json (+ traceback.txt on failure), metrics.jsonl, .hydra/.
    `code` is the record's code_key (default: this checkout's)."""
    run_dir.mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    rec = new_record(run_dir, overrides, config, code)
    rec.update(status=status, error=error)
    if status == "success":
        t = (config or {}).get("trainer") or {}
        rec["oom_retries"] = oom_retries
        rec["trainer_used"] = trainer_used or {
            "batch_size": t.get("batch_size"),
            "grad_accum": t.get("grad_accum"),
            "gradient_checkpointing": t.get("gradient_checkpointing"),
        }
        rec["metrics"] = {**METRICS, **(metrics or {})}
        rec["env"] = records.env_info(device)
    else:
        (run_dir / "traceback.txt").write_text(f"Traceback (most recent call last):\n{error}\n")
        rec["traceback_file"] = "traceback.txt"
    rec["ended_at"] = "2026-01-01T00:01:00+00:00"
    write_json(run_dir / records.RECORD, rec)
    if curve:
        lines = [{"step": 0, "time": 0.0, "eval/loss": 6.2, "eval/perplexity": 500.0}]
        lines += [
            {"step": 10 * (i + 1), "time": float(i), "train/loss": v, "train/lr": 1e-3}
            for i, v in enumerate(curve)
        ]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return rec


RANK_METRICS = {  # rank -> metrics that differ; rank 4 has the best eval loss, rank 1 the least memory
    1: {
        "eval_loss": 5.9,
        "perplexity": math.exp(5.9),
        "peak_memory_mb": 700.0,
        "tokens_per_s": 1500.0,
        "trainable_params": 3072,
        "checkpoint_bytes": 13000,
    },
    2: {
        "eval_loss": 5.8,
        "perplexity": math.exp(5.8),
        "peak_memory_mb": 710.0,
        "tokens_per_s": 1400.0,
        "trainable_params": 6144,
        "checkpoint_bytes": 26000,
    },
    4: {
        "eval_loss": 5.7,
        "perplexity": math.exp(5.7),
        "peak_memory_mb": 720.0,
        "tokens_per_s": 1600.0,
        "trainable_params": 12288,
        "checkpoint_bytes": 51136,
    },
    8: {
        "eval_loss": 5.75,
        "perplexity": math.exp(5.75),
        "peak_memory_mb": 760.0,
        "tokens_per_s": 1300.0,
        "trainable_params": 24576,
        "checkpoint_bytes": 100296,
    },
}


def rank_grid(root: Path, ranks=(1, 2, 4, 8), code: dict | None = None) -> list[dict]:
    """The rank study's records; `code` maps a rank to another code_key (a stale run)."""
    out = []
    for i, r in enumerate(ranks):
        out.append(
            write_run(
                root / str(i),
                [f"rank={r}", "+sweep=ranks", "logger=none"],
                RANK_METRICS[r],
                config={**config_for("lora", r), "study": "ranks"},  # as +sweep=ranks composes it
                curve=[6.0 - 0.1 * r, 5.5, 5.0 - 0.01 * r],
                code=(code or {}).get(r),
            )
        )
    return out


class SkippedOOM(Exception):
    """Stands in for src.callbacks.SkippedOOM (same name, so the same error line) without importing torch."""


def write_failed(
    run_dir: Path,
    overrides: list[str],
    exc: BaseException,
    status: str,
    config: dict | None = None,
    step=None,
) -> dict:
    """A run that did not succeed, recorded the way src/run.py does it: records.write_failure (error line,
    traceback.txt, the step reached)."""
    run_dir.mkdir(parents=True)
    (run_dir / ".hydra").mkdir()
    if step is not None:
        exc.step_reached = step  # set by src/run.py's train() on the exception
    return records.write_failure(run_dir, new_record(run_dir, overrides, config), exc, status=status)


def skipped_oom_error(predicted_mb: float, capacity_mb: float) -> SkippedOOM:
    """The exception src.costs.check_fits raises for a cell predicted not to fit."""
    return SkippedOOM(f"predicted peak {predicted_mb:.0f} MiB > device memory {capacity_mb:.0f} MiB")


def csv_rows(root: Path) -> list[dict]:
    return list(csv.DictReader((root / "results.csv").open()))


def md_table(text: str) -> tuple[list[str], list[list[str]]]:
    """The first markdown table in report.md: header and rows of cell text."""
    lines = [ln for ln in text.splitlines() if ln.startswith("|")]
    cells = [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines]
    return cells[0], cells[2:]


def bare(cell: str) -> str:
    return cell.strip("*")


# --------------------------------------------------------------------------- table and CSV


def test_csv_and_table_match_records(tmp_path):
    recs = rank_grid(tmp_path)
    rep = report.write_report(tmp_path, plots=False)
    assert rep.study.keys == ["rank"] and rep.study.swept == ["rank"] and not rep.study.replicates
    assert rep.study.fixed["method"] == "lora" and rep.study.fixed["model"] == "tiny"

    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [r["run"] for r in rows] == ["0", "1", "2", "3"]
    for row, rec in zip(rows, recs, strict=True):
        assert (
            row["status"] == "success"
            and row["stale"] == "false"
            and int(row["rank"]) == rec["config"]["rank"]
        )
        for k, v in flatten(rec["metrics"]).items():  # every metric, at full precision (dicts flattened)
            assert row[k] == ("" if v is None else repr(v) if isinstance(v, float) else str(v)), k
        assert row["predicted_memory.activations_mb"] == "116.0" and row["oom_retries"] == "0"
        assert row["code_key"] == rec["code_key"] and row["config_hash"] == rec["config_hash"]

    md = (tmp_path / "report.md").read_text()
    assert md.startswith(
        "# Study report: ranks\n\n*how do memory, time and quality change with the LoRA rank?*"
    )
    header, table = md_table(md)
    assert header[0] == "rank"
    sft = [
        m.header for m in columns.TABLE_METRICS if m.key != "eval_pref_loss"
    ]  # these runs hold no DPO loss
    assert header[1:] == sft
    col = {h: i for i, h in enumerate(header)}
    for row, rec in zip(table, recs, strict=True):
        m = rec["metrics"]
        assert row[0] == str(rec["config"]["rank"])
        assert bare(row[col["eval loss"]]) == f"{m['eval_loss']:.4f}"
        assert bare(row[col["perplexity"]]) == f"{m['perplexity']:.2f}"
        assert bare(row[col["tokens/s"]]) == f"{m['tokens_per_s']:,.0f}"
        assert bare(row[col["padding share"]]) == f"{m['padding_share']:.2f}"
        assert bare(row[col["peak memory"]]) == f"{m['peak_memory_mb']:.0f} MiB"
        assert bare(row[col["trainable params"]]) == columns.fmt_count(m["trainable_params"])
        assert bare(row[col["checkpoint"]]) == columns.fmt_bytes(m["checkpoint_bytes"])
        assert bare(row[col["time/epoch"]]) == "~" + columns.fmt_seconds(m["time_per_epoch_s"])
        assert bare(row[col["memory added"]]) == columns.fmt_mb(m["peak_memory_mb"] - 690.0)
        assert row[-1] == bare(row[-1])  # no bold: a single seed
    assert [r["busy"] for r in rows] == [""] * 4


def test_single_seed_bolds_only_exact_sizes(tmp_path):
    rank_grid(tmp_path)
    md = _report_md(tmp_path)
    header, table = md_table(md)
    col = {h: i for i, h in enumerate(header)}
    bold = {h: [r[0] for r in table if r[i].startswith("**")] for h, i in col.items()}
    # one run per rank: no loss, memory or throughput difference can be told from seed noise
    for h in ("eval loss", "perplexity", "peak memory", "memory added", "tokens/s", "time/epoch", "rank"):
        assert bold[h] == [], h
    assert bold["trainable params"] == ["1"] and bold["checkpoint"] == ["1"]  # exact sizes: the smallest
    assert "**Single seed**: every row is one run, so no measured column" in md
    assert "(here eval loss differs by at most 0.2000 between rows)" in md
    assert "Sizes (trainable params, trainable %, checkpoint) follow from the config" in md


def _report_md(root: Path) -> str:
    report.write_report(root, plots=False)
    return (root / "report.md").read_text()


def test_task_metrics_become_columns(tmp_path):
    write_run(
        tmp_path / "0",
        ["rank=4"],
        {**RANK_METRICS[4], "test_rouge1": 0.31, "test/bleu": 12.5},
        config=config_for("lora", 4),
    )
    write_run(
        tmp_path / "1",
        ["rank=8"],
        {**RANK_METRICS[8], "test_rouge1": 0.35, "test/bleu": 11.0},
        config=config_for("lora", 8),
    )
    header, table = md_table(_report_md(tmp_path))
    assert header[-2:] == ["test_rouge1", "test/bleu"]
    assert [r[-2] for r in table] == ["0.3100", "0.3500"]  # one seed: measured, never bold
    assert [r[-1] for r in table] == ["12.5000", "11.0000"]
    assert (
        columns.task_metric("eval/forgetting").lower_is_better
        and not columns.task_metric("test/reward").lower_is_better
    )
    assert not columns._is_task_key("eval/generic_loss_before") and not columns._is_task_key("test_loss")
    assert not columns._is_task_key("eval_in_train_s")  # a timing, not task quality


def test_failed_and_invalid_runs_listed(tmp_path):
    rank_grid(tmp_path, ranks=(2, 4))
    write_run(
        tmp_path / "2",
        ["rank=8", "+sweep=ranks", "logger=none"],
        status="failed",
        config={**config_for("lora", 8), "study": "ranks"},
        error="RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
    )
    write_run(
        tmp_path / "3",
        ["rank=1000", "+sweep=ranks", "logger=none"],
        status="invalid",
        error="rank=1000: must be an integer ≥ 1 and ≤ 128",
    )  # rejected before the config resolved
    rep = report.write_report(tmp_path, plots=False)
    assert rep.study.keys == ["rank"]  # the invalid run (no config) does not make lr etc. look varied
    md = (tmp_path / "report.md").read_text()
    header, table = md_table(md)
    assert [r[0] for r in table] == ["2", "4"]  # the table holds successful runs only
    failed = md.split("## Runs that did not succeed")[1]
    assert "`2` rank=8: **failed** — RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB" in failed
    assert "(traceback: `2/traceback.txt`)" in failed
    assert "`3` rank=1000: **invalid** — rank=1000: must be an integer ≥ 1 and ≤ 128" in failed
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert [(r["rank"], r["status"]) for r in rows] == [
        ("2", "success"),
        ("4", "success"),
        ("8", "failed"),
        ("1000", "invalid"),
    ]
    assert rows[2]["error"].startswith("RuntimeError: CUDA out of memory") and rows[2]["eval_loss"] == ""


def test_unfinished_runs_skipped_and_said(tmp_path, capsys):
    rank_grid(tmp_path, ranks=(2, 4))
    (tmp_path / "2" / ".hydra").mkdir(parents=True)  # a run that never wrote its record
    (tmp_path / "2" / "metrics.jsonl").write_text('{"step": 10, "train/loss": 5.0}\n')
    write_run(tmp_path / "3", ["rank=8"], status="running", config=config_for("lora", 8))
    assert report.main([str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "2 run(s): 2 succeeded, 2 unfinished" in out
    assert f"unfinished  2: no {records.RECORD}" in out and "unfinished  3: record not finished" in out
    md = (tmp_path / "report.md").read_text()
    assert "## Unfinished" in md and "- `2`: no result.json" in md and "- `3`: record not finished" in md
    assert "2 run(s): 2 succeeded · 2 unfinished" in md
    header, table = md_table(md)
    assert [r[0] for r in table] == ["2", "4"]


def test_empty_folder_writes_nothing(tmp_path, capsys):
    (tmp_path / "0" / ".hydra").mkdir(parents=True)
    assert report.main([str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "no finished result.json" in err and "unfinished 0" in err
    assert not (tmp_path / "report.md").exists() and not (tmp_path / "results.csv").exists()


# --------------------------------------------------------------------------- statuses


class Diverged(RuntimeError):
    """Stands in for src.callbacks.Diverged (same name, same error line)."""


class Interrupted(Exception):
    """Stands in for src.callbacks.Interrupted."""


def test_every_status_listed_with_error_and_step(tmp_path, capsys):
    def cfg(r):
        return {**config_for("lora", r), "study": "ranks"}

    def ov(r):
        return [f"rank={r}", "+sweep=ranks", "logger=none"]

    rank_grid(tmp_path, ranks=(2, 4))
    oom = MemoryError("injected out of memory at step 3 (debug.oom_at_step)")
    write_failed(tmp_path / "2", ov(8), oom, "oom", cfg(8), step=3)
    write_failed(
        tmp_path / "3", ov(16), Diverged("training loss became nan at step 5"), "diverged", cfg(16), 5
    )
    stop = Interrupted(
        "signal 15 at step 7; checkpoint saved in x/checkpoints, re-run the same command to resume"
    )
    write_failed(tmp_path / "4", ov(32), stop, "interrupted", cfg(32), step=7)
    crash = RuntimeError("injected failure at step 2 (debug.fail_at_step)")
    write_failed(tmp_path / "5", ov(1), crash, "failed", cfg(1), step=2)
    write_failed(tmp_path / "6", ov(1000), ValueError("rank=1000: must be ≤ 128"), "invalid")  # no config
    write_failed(tmp_path / "7", ov(64), skipped_oom_error(90_000, 81_559), "skipped_oom", cfg(64))

    assert report.main([str(tmp_path), "--no-plots"]) == 0
    out = capsys.readouterr().out
    counts = "8 run(s): 2 succeeded, 1 failed, 1 invalid, 1 oom, 1 diverged, 1 interrupted, 1 skipped (predicted not to fit)"
    assert counts in out
    assert (
        "  oom         2: MemoryError: injected out of memory at step 3 (debug.oom_at_step) (step 3)" in out
    )
    assert f"  skipped (predicted not to fit) 7: predicted peak {columns.fmt_mb(90_000)}" in out

    md = (tmp_path / "report.md").read_text()
    assert f"` · {counts} · generated " in md
    header, table = md_table(md)
    assert [r[0] for r in table] == ["2", "4"] and "status" not in header  # successful runs only, none stale
    section = md.split("## Runs that did not succeed\n\n")[1].split("\n\n")[0].splitlines()
    assert section == [
        "- `2` rank=8: **oom** at step 3 — MemoryError: injected out of memory at step 3 (debug.oom_at_step)"
        " (traceback: `2/traceback.txt`)",
        "- `3` rank=16: **diverged** at step 5 — Diverged: training loss became nan at step 5"
        " (traceback: `3/traceback.txt`)",
        f"- `4` rank=32: **interrupted** at step 7 — Interrupted: {stop} (traceback: `4/traceback.txt`)",
        "- `5` rank=1: **failed** at step 2 — RuntimeError: injected failure at step 2 (debug.fail_at_step)"
        " (traceback: `5/traceback.txt`)",
        "- `6` rank=1000: **invalid** — rank=1000: must be ≤ 128 (traceback: `6/traceback.txt`)",
        "- `7` rank=64: **skipped (predicted not to fit)** — predicted peak 87.89 GiB > device memory 79.65 GiB",
    ]
    rows = {r["run"]: r for r in csv_rows(tmp_path)}
    statuses = ["success", "success", "oom", "diverged", "interrupted", "failed", "invalid", "skipped_oom"]
    assert [r["status"] for r in rows.values()] == statuses
    assert [rows[k]["step"] for k in "234567"] == ["3", "5", "7", "2", "", ""]
    assert rows["7"]["predicted_memory_mb"] == "90000.0" and rows["7"]["eval_loss"] == ""
    assert rows["2"]["error"] == "MemoryError: injected out of memory at step 3 (debug.oom_at_step)"


# --------------------------------------------------------------------------- stale runs


@pytest.fixture
def no_render(monkeypatch):
    """Plots are built (axes, labels, legends, point labels) but not rendered to PNG: for tests that read
    only what a plot shows, not its pixels (rendering is most of a plot's cost)."""
    monkeypatch.setattr(figures, "png", lambda fig: PNG_SIGNATURE)


def bold_by_column(md: str) -> dict[str, list[str]]:
    header, table = md_table(md)
    return {h: [r[0] for r in table if r[i].startswith("**")] for i, h in enumerate(header)}


def test_stale_runs_flagged_and_not_compared(tmp_path, capsys, no_render):
    rank_grid(tmp_path, code={1: OTHER_CODE})  # rank 1 has the fewest parameters, but ran other code
    rep = report.write_report(tmp_path, plots=False)
    assert [r.name for r in rep.study.stale] == ["0"] and rep.study.code == current_code()
    md = (tmp_path / "report.md").read_text()
    header, table = md_table(md)
    assert header[:2] == ["rank", "status"]
    assert [(r[0], r[1]) for r in table] == [
        ("1", "stale"),
        ("2", "current"),
        ("4", "current"),
        ("8", "current"),
    ]
    bold = bold_by_column(md)
    assert bold["trainable params"] == ["2"] and bold["checkpoint"] == ["2"]
    assert not any(c.startswith("**") for c in table[0])  # the stale row is never best
    assert "Stale rows are never bold." in md
    assert "**1 of 4 successful run(s) are stale**" in md and f"(theirs: `{OTHER_CODE}` (1))" in md
    assert f"current `{current_code()}`" in md and "`sweep.rerun_stale=true` re-runs them" in md
    assert "1 succeeded" not in md and "4 succeeded (1 stale)" in md
    assert plots.plot_pareto(rep.study)[0].points == ["2", "4", "8"]  # no stale point
    assert plots.plot_memory(rep.study)[0].points == ["2", "4", "8"]
    rows = csv_rows(tmp_path)
    assert [(r["rank"], r["status"], r["stale"]) for r in rows] == [
        ("1", "success", "true"),
        ("2", "success", "false"),
        ("4", "success", "false"),
        ("8", "success", "false"),
    ]
    assert rows[0]["code_key"] == OTHER_CODE and float(rows[0]["eval_loss"]) == RANK_METRICS[1]["eval_loss"]

    # --allow-stale: still flagged, but compared like the others.
    assert report.main([str(tmp_path), "--allow-stale", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "1 stale run(s) (other code than now): compared anyway (--allow-stale)" in out
    md = (tmp_path / "report.md").read_text()
    assert md_table(md)[1][0][1] == "stale" and "because of `--allow-stale`" in md
    bold = bold_by_column(md)
    assert bold["trainable params"] == ["1"] and bold["checkpoint"] == ["1"]
    pareto = plots.plot_pareto(report.load(tmp_path, allow_stale=True))[0]
    assert "1 (stale)" in pareto.points  # compared, still flagged


def test_stale_replicates_never_share_a_row(tmp_path):
    for i, (seed, code) in enumerate([(0, None), (1, None), (2, OTHER_CODE)]):
        write_run(
            tmp_path / str(i),
            ["rank=4", f"seed={seed}"],
            {"eval_loss": 5.7 + seed / 100},
            config=config_for("lora", 4, seed),
            code=code,
        )
    write_run(tmp_path / "3", ["rank=8", "seed=0"], {"eval_loss": 5.6}, config=config_for("lora", 8, 0))
    path = tmp_path / "3" / records.RECORD
    old = json.loads(path.read_text())
    del old["code_key"], old["config_hash"]  # a record from before code keys: stale (as resume treats it)
    path.write_text(json.dumps(old))

    md = _report_md(tmp_path)
    header, table = md_table(md)
    assert header[:3] == ["rank", "n", "status"]
    assert [r[:3] for r in table] == [["4", "2", "current"], ["4", "1", "stale"], ["8", "1", "stale"]]
    col = header.index("eval loss")
    assert bare(table[0][col]).startswith(f"{statistics.mean([5.7, 5.71]):.4f} ± ")  # the stale seed left out
    assert bold_by_column(md)["eval loss"] == []  # one current row: nothing to single out
    assert "**2 of 4 successful run(s) are stale**" in md and "`no code_key` (1)" in md

    study = report.load(tmp_path, allow_stale=True)
    assert [(len(g.runs), tables._row_status(g)) for g in study.groups()] == [
        (3, "stale (1 of 3)"),
        (1, "stale"),
    ]


# --------------------------------------------------------------------------- memory prediction

MEMORY_RUNS = {  # rank -> (measured peak MiB, predicted peak MiB, device)
    1: (700.0, 119.5888671875, "cpu"),
    2: (1234.5, 1100.25, "NVIDIA H100 80GB HBM3"),
    4: (2600.0, 2900.0, "NVIDIA H100 80GB HBM3"),
}


def test_memory_predicted_against_measured(tmp_path):
    recs = {}
    for i, (rank, (peak, pred, device)) in enumerate(MEMORY_RUNS.items()):
        parts = {"weights_mb": pred / 4, "gradients_mb": pred / 8, "optimizer_mb": pred / 4}
        parts |= {"activations_mb": pred - sum(parts.values()), "total_mb": pred}
        recs[rank] = write_run(
            tmp_path / str(i),
            [f"rank={rank}"],
            {"peak_memory_mb": peak, "predicted_memory_mb": pred, "predicted_memory": parts},
            config=config_for("lora", rank),
            device=device,
        )
    rep = report.write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    header, table = md_table(md)
    peak_col = header.index("peak memory")
    assert header[peak_col : peak_col + 3] == ["peak memory", "predicted memory", "measured/predicted"]
    for row, (peak, pred, _) in zip(table, MEMORY_RUNS.values(), strict=True):
        assert bare(row[peak_col]) == columns.fmt_mb(peak)
        assert (
            row[peak_col + 1] == columns.fmt_mb(pred) and row[peak_col + 2] == f"{peak / pred:.2f}"
        )  # never bold
    assert table[0][peak_col] == "700 MiB" and table[1][peak_col + 2] == "1.12"  # one seed: no bold
    assert (
        "on CPU the peak resident set size of the whole process, which includes the Python/torch runtime"
        in md
    )
    assert "the ratio is only meaningful on GPU" in md
    assert "Here: 2 run(s) on GPU (NVIDIA H100 80GB HBM3), 1 on CPU." in md

    for row, rec in zip(csv_rows(tmp_path), recs.values(), strict=True):
        m = rec["metrics"]
        assert float(row["peak_memory_mb"]) == m["peak_memory_mb"]
        assert float(row["predicted_memory_mb"]) == m["predicted_memory_mb"]
        assert float(row["peak_memory_ratio"]) == m["peak_memory_mb"] / m["predicted_memory_mb"]
        for k, v in m["predicted_memory"].items():
            assert float(row[f"predicted_memory.{k}"]) == v

    plot = next(p for p in rep.plots if p.kind == "memory")
    assert plot.file == "plot-memory-predicted.png" and f"]({plot.file})" in md
    assert plot.xlabels == ["predicted peak memory (MiB)"] and plot.ylabels == ["measured peak memory (MiB)"]
    assert plot.series == [
        "GPU (CUDA peak allocated)",
        "CPU (process peak RSS, runtime included)",
        "y = x (prediction exact)",
    ]
    assert plot.points == ["1", "2", "4"] and plot.title.endswith("(points: rank)")
    assert (tmp_path / plot.file).read_bytes()[:8] == PNG_SIGNATURE

    # Fewer than 2 runs with both numbers: no memory plot.
    for i in (1, 2):
        path = tmp_path / str(i) / records.RECORD
        rec = json.loads(path.read_text())
        del rec["metrics"]["predicted_memory_mb"], rec["metrics"]["predicted_memory"]  # an older record
        path.write_text(json.dumps(rec))
    rep = report.write_report(tmp_path, plots=False)
    assert plots.plot_memory(rep.study) is None
    header, table = md_table((tmp_path / "report.md").read_text())
    assert [r[header.index("measured/predicted")] for r in table] == [
        f"{700.0 / 119.5888671875:.2f}",
        "—",
        "—",
    ]
    assert "Every run here with a prediction ran on CPU." in (tmp_path / "report.md").read_text()


# --------------------------------------------------------------------------- OOM retries


def test_oom_retries_noted_per_row(tmp_path):
    used = {
        16: (0, None),
        32: (1, {"batch_size": 16, "grad_accum": 2, "gradient_checkpointing": False}),
        64: (2, {"batch_size": 32, "grad_accum": 2, "gradient_checkpointing": True}),
    }
    for i, (batch, (retries, trainer_used)) in enumerate(used.items()):
        cfg = config_for("lora", 4)
        cfg["trainer"]["batch_size"] = batch
        write_run(
            tmp_path / str(i),
            [f"trainer.batch_size={batch}"],
            {"eval_loss": 5.7 + i / 10},
            config=cfg,
            oom_retries=retries,
            trainer_used=trainer_used,
        )
    md = _report_md(tmp_path)
    header, table = md_table(md)
    assert header[0] == "trainer.batch_size" and header[-1] == "notes"
    assert [r[-1] for r in table] == [
        "—",
        "1 OOM retry: ran with batch_size=16, grad_accum=2",
        "2 OOM retries: ran with batch_size=32, grad_accum=2, gradient checkpointing",
    ]
    assert "Notes: runs that ran out of memory and then succeeded on a retry" in md
    rows = csv_rows(tmp_path)
    assert [r["oom_retries"] for r in rows] == ["0", "1", "2"]
    assert [r["trainer_used.batch_size"] for r in rows] == ["16", "16", "32"]
    assert [r["trainer_used.gradient_checkpointing"] for r in rows] == ["False", "False", "True"]
    # No retries anywhere: no notes column.
    assert "notes" not in md_table(_report_md_of(rank_grid, tmp_path / "ranks"))[0]


def _report_md_of(make, root: Path) -> str:
    make(root)
    return _report_md(root)


# --------------------------------------------------------------------------- varied keys


def test_derived_keys_follow_swept_ones(tmp_path):
    write_run(tmp_path / "0", ["method=full", "+sweep=methods"], config=config_for("full"))
    write_run(tmp_path / "1", ["method=lora", "+sweep=methods"], config=config_for("lora"))
    study = report.load(tmp_path)
    # method is swept; lr follows from method.lr_scale (a derived column, not a plot axis)
    assert study.keys == ["method", "lr"] and study.swept == ["method"] and study.plot_keys == ["method"]
    assert "trainer.seed" not in study.keys and "sweep" not in study.keys


def test_settings_of_reads_overrides_and_config():
    rec = {
        "overrides": [
            "+sweep=batch",
            "trainer.batch_size=8",
            "hydra.verbose=true",
            "foo.bar=1e-3",
            "sweep.rerun_stale=true",  # a resume switch a re-run adds: not a setting of the run
        ],
        "config": config_for("lora", 4),
    }
    s, keys = settings_of(rec)
    assert keys == ["sweep", "trainer.batch_size", "foo.bar"]
    assert s["sweep"] == "batch" and s["foo.bar"] == 0.001 and s["method"] == "lora" and s["rank"] == 4
    assert s["trainer.batch_size"] == 16  # the config's value wins over the override's text
    assert "sweep.rerun_stale" not in s
    assert parse_scalar("null") is None and parse_scalar("4") == 4 and parse_scalar("x") == "x"


# --------------------------------------------------------------------------- replicates


def test_seeds_give_mean_std_and_ci(tmp_path):
    losses = {(4, 0): 5.70, (4, 1): 5.74, (4, 2): 5.66, (8, 0): 5.80, (8, 1): 5.90, (8, 2): 5.85}
    for i, ((rank, seed), loss) in enumerate(losses.items()):
        write_run(
            tmp_path / str(i),
            [f"rank={rank}", f"seed={seed}"],
            {**RANK_METRICS[rank], "eval_loss": loss, "perplexity": math.exp(loss)},
            config=config_for("lora", rank, seed),
        )
    rep = report.write_report(tmp_path, plots=False)
    assert rep.study.replicates and rep.study.keys == ["rank"]
    md = (tmp_path / "report.md").read_text()
    header, table = md_table(md)
    assert header[:2] == ["rank", "n"] and len(table) == 2  # one row per rank, not per seed
    col = header.index("eval loss")
    for row, rank in zip(table, (4, 8), strict=True):
        xs = [v for (r, _), v in losses.items() if r == rank]
        mean, std = statistics.mean(xs), statistics.stdev(xs)
        half = T975[2] * std / math.sqrt(3)
        assert row[1] == "3"
        assert bare(row[col]) == f"{mean:.4f} ± {std:.4f} [{mean - half:.4f}, {mean + half:.4f}]"
    assert not any(r[col].startswith("**") for r in table)  # the 95% intervals overlap: not distinguishable
    assert "seeds 0, 1, 2" in md and "95% confidence interval" in md
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 6 and [int(r["seed"]) for r in rows] == [0, 1, 2, 0, 1, 2]


def test_stat_and_t_quantiles():
    st = stats.Stat.of([1.0, 2.0, 3.0])
    assert (st.mean, st.std, st.n) == (2.0, 1.0, 3)
    half = T975[2] / math.sqrt(3)  # t(0.975, df=2) * std / sqrt(n)
    assert st.lo == pytest.approx(2.0 - half) and st.hi == pytest.approx(2.0 + half)
    one = stats.Stat.of([5.0])
    assert one.n == 1 and math.isnan(one.std) and math.isnan(one.lo) and math.isnan(one.hi)
    assert stats.Stat.of([]) is None and stats.Stat.of([math.nan, None]) is None
    assert stats.Stat.of([1.0, math.nan, 3.0, math.inf, None, 2.0]) == st  # non-finite values ignored
    for df, t in T975.items():
        assert stats.t95(df) == pytest.approx(t, abs=1e-6), df
    assert math.isnan(stats.t95(0))


# --------------------------------------------------------------------------- plots


def test_plots_fit_what_varied(tmp_path):
    rank_grid(tmp_path)
    rep = report.write_report(tmp_path)
    by_kind = {p.kind: p for p in rep.plots}
    assert set(by_kind) == {"line", "curves", "pareto", "memory"}  # rank is numeric: no bars
    line = by_kind["line"]
    assert line.file == "plot-rank.png" and line.xlabels == ["rank"] * 3
    assert line.ylabels == [
        "eval loss",
        "memory added in training (MiB)",
        "tokens/s",
    ]  # CPU: what training added
    assert by_kind["curves"].xlabels == ["step"] * 2
    assert by_kind["curves"].ylabels == ["train loss", "eval loss"]
    assert by_kind["curves"].series == ["rank=1", "rank=2", "rank=4", "rank=8"]
    assert by_kind["pareto"].xlabels == ["memory added in training (MiB)", "trainable params"]
    assert by_kind["pareto"].ylabels == ["eval loss"] * 2 and "Pareto frontier" in by_kind["pareto"].series
    for p in rep.plots:
        data = (tmp_path / p.file).read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000
    md = (tmp_path / "report.md").read_text()
    assert all(f"]({p.file})" in md for p in rep.plots)
    # No temp files left behind by the atomic writes.
    assert not list(tmp_path.glob(".*.png.*")) and not list(tmp_path.glob(".report.md.*"))

    # A categorical key gets bars; the old plots that no longer fit are removed.
    for d in tmp_path.iterdir():
        if d.is_dir():
            for f in sorted(d.rglob("*"), reverse=True):
                f.rmdir() if f.is_dir() else f.unlink()
            d.rmdir()
    write_run(tmp_path / "0", ["optim=adamw"], {"peak_memory_mb": 800.0}, config=config_for("full"))
    cfg = config_for("full")
    cfg["optim"]["name"] = "sgd"
    write_run(tmp_path / "1", ["optim=sgd"], {"peak_memory_mb": 600.0}, config=cfg)
    rep = report.write_report(tmp_path)
    bars = next(p for p in rep.plots if p.kind == "bars")
    assert bars.file == "plot-optim-bars.png" and bars.xlabels == ["optim"] * 3
    assert bars.ylabels == ["time/epoch (s)", "memory added in training (MiB)", "eval loss"]
    assert not (tmp_path / "plot-rank.png").exists()


def test_two_swept_keys_give_series(tmp_path, no_render):
    for i, (rank, mult) in enumerate([(4, 1), (4, 2), (8, 1), (8, 2)]):
        cfg = config_for("lora", rank)
        cfg["alpha_multiple"] = mult
        cfg["alpha"] = float(mult * rank)
        write_run(
            tmp_path / str(i),
            [f"rank={rank}", f"alpha_multiple={mult}", "+sweep=alphas"],
            {"eval_loss": 5.0 + i / 10},
            config=cfg,
        )
    study = report.load(tmp_path)
    assert study.keys == ["rank", "alpha_multiple", "alpha"] and study.plot_keys == ["rank", "alpha_multiple"]
    drawn = {
        p.file: p for p, _ in (plots.plot_numeric(study, "rank"), plots.plot_numeric(study, "alpha_multiple"))
    }
    assert drawn["plot-rank.png"].series == ["alpha_multiple=1", "alpha_multiple=2"]
    assert drawn["plot-alpha_multiple.png"].series == ["rank=4", "rank=8"]


def test_curve_of_a_restarted_run(tmp_path):
    """An OOM retry starts over and a resumed run goes on from its checkpoint, both appending to metrics.jsonl
    (each with its eval at step 0 first): the curve is the finishing session's, one point per step."""
    lines = [
        {"step": 0, "eval/loss": 6.2},
        *({"step": s, "train/loss": 6.0 - s / 100} for s in (3, 6)),  # attempt 1: out of memory at step 7
        {"step": 0, "eval/loss": 6.2},
        *({"step": s, "train/loss": 5.0 - s / 100} for s in (3, 6, 9, 12)),  # attempt 2, killed after 12
        {"step": 0, "eval/loss": 6.2},
        *({"step": s, "train/loss": 4.0 - s / 100} for s in (12, 15)),  # resumed from the checkpoint at 10
        {"step": 15, "eval/loss": 4.6},
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines) + "not json\n" + '{"train/loss": 1.0}\n'
    (tmp_path / "metrics.jsonl").write_text(text)
    assert plots.read_curve(tmp_path) == [(3, 4.97), (6, 4.94), (9, 4.91), (12, 3.88), (15, 3.85)]
    assert plots.read_curve(tmp_path, "eval/loss") == [(0, 6.2), (15, 4.6)]


def test_pareto_front():
    pts = [(1.0, 5.0), (2.0, 4.0), (3.0, 4.5), (4.0, 3.0), (5.0, 3.0)]
    assert plots.pareto_front(pts) == [0, 1, 3]
    assert plots.pareto_front([(1.0, 1.0)]) == [0]


def test_wandb_upload_is_optional(tmp_path, monkeypatch):
    root = tmp_path / "multirun" / "ranks"
    rank_grid(root, ranks=(2, 4))
    rep = report.write_report(root, plots=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_upload.log_wandb(rep) is None  # only WANDB_MODE=online uploads
    assert wandb_upload.wandb_group(rep.study) == "multirun/ranks"  # the sweep folder's last two parts
    for r in rep.study.runs:
        r.record["group"] = "ranks-v2"  # the group the runs logged to wins
    assert wandb_upload.wandb_group(rep.study) == "ranks-v2"


def test_wandb_online_logs_table_and_plots(tmp_path, monkeypatch, no_render):
    """The online path against a stand-in `wandb` module: one report run in the study's group."""
    import types

    calls: dict = {}

    class FakeRun:
        url = "https://wandb.example/run"

        def log(self, data):
            calls["log"] = data

        def finish(self):
            calls["finished"] = True

    fake = types.SimpleNamespace(
        init=lambda **kw: calls.setdefault("init", kw) and FakeRun(),
        Table=lambda columns, data: ("table", columns, data),
        Image=lambda path, caption: ("image", path, caption),
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "online")
    rank_grid(tmp_path, ranks=(2, 4))
    rep = report.write_report(tmp_path)
    assert wandb_upload.log_wandb(rep) == FakeRun.url and calls["finished"]
    assert (
        calls["init"]["group"] == wandb_upload.wandb_group(rep.study)
        and calls["init"]["job_type"] == "report"
    )
    assert calls["init"]["project"] == "tunegrid" and calls["init"]["tags"] == ["ranks", "report"]
    kind, columns, data = calls["log"]["report/table"]
    assert columns[0] == "rank" and [row[0] for row in data] == ["2", "4"]
    assert not any("**" in c for row in data for c in row)
    assert {k for k in calls["log"] if k != "report/table"} == {f"report/{p.file[:-4]}" for p in rep.plots}
