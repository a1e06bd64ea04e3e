"""Study reports: `python -m src.report <dir> [--allow-stale]` turns the records of a grid into something to read.

It reads every `result.json` under <dir> (src.records.read_records) and writes, beside them:

- `results.csv`: one row per run (every status): run folder, status, stale, the varied keys, every
  metric (predicted_memory flattened, measured/predicted peak memory as peak_memory_ratio), OOM retries
  and the trainer settings finally used, the step a failed run reached, the error line, code key;
- `report.md`: one table of the successful runs (varied keys first, then cost and quality metrics,
  measured and predicted peak memory and their ratio, a note per row that needed OOM retries), the best
  value of each metric column in bold, the fixed settings, the plots, the runs that did not succeed
  (failed, invalid, oom, diverged, interrupted with their error line and step; skipped_oom cells with
  their predicted memory), and the run folders without a finished record;
- `plot-*.png`: chosen by what varied: metrics against each numeric key (e.g. rank), bars per
  categorical key (e.g. optimizer), the training-loss curves (from each run's metrics.jsonl), a
  Pareto plot of eval loss against peak memory and trainable parameters with the frontier marked, and
  measured against predicted peak memory.

Stale runs: a successful record whose `code_key` (git commit, torch/transformers/peft/bitsandbytes)
differs from the current records.code_key() ran other code. It stays in the table with status `stale`
but is left out of best-in-bold, the plots and the Pareto frontier, and never shares a replicate row
with current runs; `--allow-stale` compares it anyway (still flagged). `sweep.rerun_stale=true` re-runs it.

"Varied keys" are the settings whose values differ across runs: the keys a run's `overrides` name
(the swept ones, shown first; not hydra.* nor the sweep.* resume switches) and, from the resolved
config, top-level keys, config-group choices (`method`, `optim` …) and trainer / warm-up settings that
follow from them (e.g. `lr`). When `seed` varies the runs are replicates: one row per setting with
mean ± std and a 95% confidence interval.

Every file is written atomically (temp file + rename). With WANDB_MODE=online the table and plots
also go to the study's W&B group (optional; never required). Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import math
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from src import records
from src.config import REPO_ROOT, flatten
from src.records import RECORD, STATUSES, read_records

CSV_NAME = "results.csv"
MD_NAME = "report.md"
PLOT_PREFIX = "plot-"
METRICS_LOG = "metrics.jsonl"

# --------------------------------------------------------------------------- metric columns


def fmt_count(v: float) -> str:
    """12288 -> 12.3K, 124439808 -> 124.4M."""
    v = float(v)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.1f}{unit}"
    return f"{v:.0f}"


def fmt_bytes(v: float) -> str:
    v = float(v)
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(v) >= div:
            return f"{v / div:.1f} {unit}"
    return f"{v:.0f} B"


def fmt_mb(v: float) -> str:
    return f"{v / 1024:.2f} GiB" if v >= 1024 else f"{v:.0f} MiB"


def fmt_seconds(v: float) -> str:
    v = float(v)
    if v >= 3600:
        return f"{v / 3600:.2f} h"
    if v >= 120:
        return f"{v / 60:.1f} min"
    return f"{v:.1f} s"


def fmt_sig(v: float) -> str:
    return f"{v:.3g}"


def fmt_4(v: float) -> str:
    return f"{v:.4f}"


def fmt_2(v: float) -> str:
    return f"{v:.2f}"


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


@dataclass(frozen=True)
class Metric:
    key: str  # name in record["metrics"] (or a derived value, see Run.values)
    header: str  # column header in report.md
    fmt: Callable[[float], str]
    lower_is_better: bool
    label: str = ""  # axis label in plots
    ranked: bool = True  # False: never in bold (a prediction, or a ratio with no better direction)

    @property
    def axis(self) -> str:
        return self.label or self.header


TABLE_METRICS: tuple[Metric, ...] = (
    Metric("trainable_params", "trainable params", fmt_count, True),
    Metric("trainable_pct", "trainable %", fmt_sig, True),
    Metric("tokens_per_s", "tokens/s", fmt_rate, False),
    Metric("padding_share", "padding share", fmt_2, True, "padding tokens / tokens processed"),
    Metric("time_per_epoch_s", "time/epoch", fmt_seconds, True, "time/epoch (s)"),
    Metric("peak_memory_mb", "peak memory", fmt_mb, True, "peak memory (MiB)"),
    Metric(
        "predicted_memory_mb", "predicted memory", fmt_mb, True, "predicted peak memory (MiB)", ranked=False
    ),
    Metric(
        "peak_memory_ratio",
        "measured/predicted",
        fmt_2,
        True,
        "measured / predicted peak memory",
        ranked=False,
    ),
    Metric("checkpoint_bytes", "checkpoint", fmt_bytes, True, "checkpoint (bytes)"),
    Metric("eval_loss", "eval loss", fmt_4, True),
    Metric("perplexity", "perplexity", fmt_2, True),
)
BY_KEY = {m.key: m for m in TABLE_METRICS}
# Split-prefixed numbers that are bookkeeping, not task quality.
_NOT_TASK = {
    "loss",
    "perplexity",
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "epoch",
    "tokens_seen",
    "in_train_s",  # eval_in_train_s: evaluation time inside training, taken out of tokens/s
}
_LOWER_WORDS = ("loss", "perplexity", "ppl", "error", "forgetting", "wer", "ter_")


def task_metric(key: str) -> Metric:
    """A task metric column (test_rouge1, test/bleu, …): higher is better unless the name says loss/error."""
    bare = key.split("/", 1)[-1] if "/" in key else key
    lower = any(w in bare.lower() for w in _LOWER_WORDS)
    return Metric(key, key, fmt_4, lower)


def _is_task_key(key: str) -> bool:
    """test_rouge1, test/bleu, eval/forgetting …; not bookkeeping, nor a *_before baseline (same for all runs)."""
    m = re.match(r"^(test|eval)[_/](.+)$", key)
    return bool(m) and m.group(2) not in _NOT_TASK and key not in BY_KEY and not key.endswith("_before")


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


# --------------------------------------------------------------------------- statistics

# Two-sided 95% Student-t quantiles, df 1..30; beyond that a Cornish-Fisher correction of 1.96.
_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t95(df: int) -> float:
    if df < 1:
        return math.nan
    return _T95[df - 1] if df <= len(_T95) else 1.959964 + 2.3723 / df


@dataclass(frozen=True)
class Stat:
    """Mean over replicates with sample std (ddof=1) and a 95% t confidence interval for the mean."""

    mean: float
    std: float  # nan for n == 1
    n: int
    lo: float
    hi: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        xs = [x for x in values if x is not None and math.isfinite(x)]
        if not xs:
            return None
        n = len(xs)
        mean = sum(xs) / n
        if n == 1:
            return cls(mean, math.nan, 1, math.nan, math.nan)
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
        half = t95(n - 1) * std / math.sqrt(n)
        return cls(mean, std, n, mean - half, mean + half)


# --------------------------------------------------------------------------- loading

_MISSING = object()


SKIPPED_OOM = "skipped_oom"
SKIPPED_OOM_TEXT = "skipped (predicted not to fit)"
_PREDICTED_IN_ERROR = re.compile(r"predicted peak ([0-9.]+) MiB > device memory ([0-9.]+) MiB")


@dataclass
class Run:
    dir: Path
    name: str  # run folder relative to the report root
    record: dict[str, Any]
    settings: dict[str, Any]  # candidate keys -> values (see settings_of)
    override_keys: list[str]
    stale: bool = False  # ran with other code than the report's (see load)

    @property
    def status(self) -> str:
        return str(self.record.get("status"))

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record.get("metrics") or {}

    @functools.cached_property
    def values(self) -> dict[str, Any]:
        """The record's metrics plus the derived peak_memory_ratio (measured / predicted peak memory)."""
        out = dict(self.metrics)
        if self.status == SKIPPED_OOM and out.get("predicted_memory_mb") is None:
            out["predicted_memory_mb"] = self.predicted_skip()[0]
        peak, pred = _number(out.get("peak_memory_mb")), _number(out.get("predicted_memory_mb"))
        if peak is not None and pred:
            out["peak_memory_ratio"] = peak / pred
        return out

    @property
    def has_config(self) -> bool:
        return bool(self.record.get("config"))

    @property
    def device(self) -> str | None:
        return (self.record.get("env") or {}).get("device")

    @property
    def on_cpu(self) -> bool:
        return str(self.device).lower() == "cpu"

    def predicted_skip(self) -> tuple[float | None, float | None]:
        """(predicted peak MiB, device memory MiB) of a skipped_oom cell: from the record's metrics when it
        holds them, else from the SkippedOOM message src.metrics.check_fits writes."""
        pred = _number(self.metrics.get("predicted_memory_mb"))
        cap = None
        if m := _PREDICTED_IN_ERROR.search(str(self.record.get("error") or "")):
            pred = pred if pred is not None else float(m.group(1))
            cap = float(m.group(2))
        return pred, cap

    def oom_note(self) -> str | None:
        """What a run that succeeded after out-of-memory retries finally trained with; None without retries."""
        n = self.record.get("oom_retries")
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            return None
        used = self.record.get("trainer_used") or {}
        parts = [f"{k}={used[k]}" for k in ("batch_size", "grad_accum") if used.get(k) is not None]
        if used.get("gradient_checkpointing"):
            parts.append("gradient checkpointing")
        return f"{n} OOM {'retry' if n == 1 else 'retries'}" + (
            f": ran with {', '.join(parts)}" if parts else ""
        )


@dataclass
class Group:
    """One row of the table: the runs that share every varied key except seed (one run unless replicates)."""

    values: dict[str, Any]
    runs: list[Run]

    def stat(self, key: str) -> Stat | None:
        return Stat.of([v for r in self.runs if (v := _number(r.values.get(key))) is not None])

    @property
    def stale(self) -> int:
        """How many of the row's runs are stale."""
        return sum(r.stale for r in self.runs)


@dataclass
class Study:
    root: Path
    runs: list[Run]  # every finished record (any of records.STATUSES)
    skipped: list[tuple[str, str]]  # (run folder, why): folders without a finished record
    keys: list[str]  # varied keys without seed: swept ones first, then derived ones
    swept: list[str]  # the varied keys some run's overrides name
    fixed: dict[str, Any]  # settings that are the same in every run
    replicates: bool  # seed varies
    task_metrics: list[Metric] = field(default_factory=list)
    code: str = ""  # the current records.code_key() that runs are compared with
    allow_stale: bool = False  # stale runs count for bold, plots and the Pareto frontier

    @property
    def ok(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def failed(self) -> list[Run]:
        """Every run that did not succeed (skipped_oom cells included)."""
        return [r for r in self.runs if not r.ok]

    @property
    def stale(self) -> list[Run]:
        """Successful runs whose code_key differs from the current code (or that have none)."""
        return [r for r in self.ok if r.stale]

    @property
    def compared(self) -> list[Run]:
        """The successful runs that bold, plots and the Pareto frontier use: stale ones only with allow_stale."""
        return [r for r in self.ok if self.allow_stale or not r.stale]

    def counts(self) -> str:
        """'5 run(s): 3 succeeded (1 stale), 1 oom, 1 skipped (predicted not to fit)'."""
        parts = [f"{len(self.ok)} succeeded" + (f" ({len(self.stale)} stale)" if self.stale else "")]
        for status in STATUSES:  # load() keeps only records with one of these
            n = sum(r.status == status for r in self.runs)
            if status != "success" and n:
                parts.append(f"{n} {SKIPPED_OOM_TEXT if status == SKIPPED_OOM else status}")
        return f"{len(self.runs)} run(s): " + ", ".join(parts)

    @property
    def metrics(self) -> list[Metric]:
        return [*TABLE_METRICS, *self.task_metrics]

    @property
    def plot_keys(self) -> list[str]:
        """The keys plots are drawn against: the swept ones (derived keys follow from them)."""
        return self.swept or self.keys

    def groups(self) -> list[Group]:
        """Successful runs, grouped by the varied keys (seed aside) in the order they first appear. Stale
        runs never share a row with current ones (unless allow_stale)."""
        out: dict[str, Group] = {}
        for r in self.ok:
            values = {k: r.settings.get(k) for k in self.keys}
            ident = _ident(values) if self.replicates else r.name
            if r.stale and not self.allow_stale:
                ident += " stale"
            out.setdefault(ident, Group(values, [])).runs.append(r)
        return list(out.values())

    def compared_groups(self) -> list[Group]:
        """The rows that bold, plots and the Pareto frontier use: without stale runs unless allow_stale."""
        return [g for g in self.groups() if self.allow_stale or not g.stale]

    def label(self, values: dict[str, Any], keys: Sequence[str] | None = None) -> str:
        keys = self.plot_keys if keys is None else keys
        return ", ".join(f"{k}={show(values.get(k))}" for k in keys) or "run"

    @property
    def study_name(self) -> str | None:
        names = {n for r in self.runs if (n := r.settings.get("study") or r.settings.get("sweep"))}
        return names.pop() if len(names) == 1 else None


def _ident(values: Any) -> str:
    return json.dumps(values, sort_keys=True, default=str)


def _natural(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def parse_scalar(text: str) -> Any:
    """An override's value as the YAML scalar it denotes: '4' -> 4, '1e-3' -> 0.001, 'null' -> None."""
    low = text.strip().lower()
    if low in ("null", "none", "~"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip().strip("'\"")


# Config keys that are candidates for "varied keys" besides top-level scalars and group choices.
_DETAIL_PREFIXES = ("trainer.", "lr_schedule.warmup_", "data.max_seq_len", "eval.")
_NEVER = {"trainer.seed"}  # follows `seed`
# Override keys that are not settings of a run: Hydra's own, and the resume / skip switches (sweep.force,
# sweep.rerun_stale, sweep.skip_predicted_oom …) that a re-run of a grid adds.
_NOT_SETTINGS = ("hydra.", "sweep.")


def settings_of(record: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(settings, override keys) of one record. Settings: top-level scalars, each config group's choice
    (its `name`), trainer and warm-up scalars, and every key the overrides name (config value first) but
    hydra.* and sweep.* (resume switches)."""
    cfg = record.get("config") or {}
    flat = flatten(cfg) if cfg else {}
    s: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            if isinstance(v.get("name"), str | int | float):
                s[k] = v["name"]
        elif isinstance(v, list):
            s[k] = json.dumps(v)
        else:
            s[k] = v
    for k, v in flat.items():
        if k.startswith(_DETAIL_PREFIXES) and k not in _NEVER and not isinstance(v, dict | list):
            s[k] = v
    keys: list[str] = []
    for ov in record.get("overrides") or []:
        k, sep, v = str(ov).partition("=")
        k = k.lstrip("+~")
        if not sep or k.startswith(_NOT_SETTINGS) or k in keys:
            continue
        keys.append(k)
        if k not in s:
            s[k] = flat[k] if k in flat else parse_scalar(v)
    return s, keys


def _run_dirs(root: Path) -> list[Path]:
    """Folders that are (or were) one run: they hold .hydra/ or metrics.jsonl."""
    found = {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    found |= {p.parent for p in root.rglob(METRICS_LOG)}
    if (root / ".hydra").is_dir() or (root / METRICS_LOG).exists():
        found.add(root)
    return sorted(found, key=lambda p: _natural(str(p)))


def _rel(path: Path, root: Path) -> str:
    try:
        rel = path.resolve().relative_to(root.resolve())
        return str(rel) if str(rel) != "." else path.name
    except ValueError:
        return str(path)


def load(root: Path, allow_stale: bool = False, code: str | None = None) -> Study:
    """Read the records under root and work out what varied. A run is stale when its `code_key` differs
    from `code` (default: records.code_key(), the code and library versions of this checkout); a
    successful record without a code_key counts as stale too (as records.find_done treats it)."""
    root = Path(root)
    code = records.code_key() if code is None else code
    runs: list[Run] = []
    skipped: list[tuple[str, str]] = []
    finished: set[Path] = set()
    for rec in read_records(root):
        run_dir = Path(rec.pop("_path")).parent
        finished.add(run_dir.resolve())
        if rec.get("status") not in STATUSES:
            skipped.append((_rel(run_dir, root), f"record not finished (status {rec.get('status')!r})"))
            continue
        s, keys = settings_of(rec)
        key = rec.get("code_key")
        stale = key != code if rec.get("status") == "success" else key is not None and key != code
        runs.append(Run(run_dir, _rel(run_dir, root), rec, s, keys, stale))
    for d in _run_dirs(root):
        if d.resolve() not in finished:
            skipped.append((_rel(d, root), f"no {RECORD} (still running, killed, or not started)"))
    runs.sort(key=lambda r: _natural(r.name))
    skipped.sort(key=lambda t: _natural(t[0]))
    keys, swept, fixed = varied_keys(runs)
    replicates = "seed" in keys
    keys = [k for k in keys if k != "seed"]
    swept = [k for k in swept if k != "seed"]
    task: dict[str, Metric] = {}
    for r in runs:
        if r.ok:
            for k, v in r.metrics.items():
                if _is_task_key(k) and _number(v) is not None:
                    task.setdefault(k, task_metric(k))
    return Study(root, runs, skipped, keys, swept, fixed, replicates, list(task.values()), code, allow_stale)


def varied_keys(runs: Sequence[Run]) -> tuple[list[str], list[str], dict[str, Any]]:
    """(varied keys: swept first, then derived; swept keys; fixed settings).

    A key varies when two runs disagree on it. Runs without a resolved config (rejected before
    validation finished) only count for the keys their overrides name.
    """
    order: list[str] = []
    for r in runs:
        order += [k for k in r.settings if k not in order]
    varied: list[str] = []
    fixed: dict[str, Any] = {}
    for k in order:
        seen = set()
        for r in runs:
            if k in r.settings:
                seen.add(_ident(r.settings[k]))
            elif r.has_config:
                seen.add("<missing>")
        if len(seen) > 1:
            varied.append(k)
        elif runs and k in runs[0].settings:
            fixed[k] = runs[0].settings[k]
    swept: list[str] = []
    for r in runs:
        swept += [k for k in r.override_keys if k in varied and k not in swept]
    derived = [k for k in varied if k not in swept]
    return swept + derived, swept, fixed


# --------------------------------------------------------------------------- tables


def show(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _cell(m: Metric, st: Stat | None, replicates: bool) -> str:
    if st is None:
        return "—"
    if not replicates or st.n == 1:
        return m.fmt(st.mean)
    return f"{m.fmt(st.mean)} ± {m.fmt(st.std)} [{m.fmt(st.lo)}, {m.fmt(st.hi)}]"


def best_groups(groups: Sequence[Group], m: Metric, among: Iterable[int] | None = None) -> set[int]:
    """Indices of the groups holding the best mean of metric m (ties all count), only the indices in
    `among` competing (default all); none when they all agree or the metric is not ranked."""
    idx = range(len(groups)) if among is None else among
    means = {i: st.mean for i in idx if (st := groups[i].stat(m.key)) is not None}
    if not m.ranked or len(set(means.values())) < 2:
        return set()
    best = (min if m.lower_is_better else max)(means.values())
    return {i for i, v in means.items() if v == best}


def _row_status(g: Group) -> str:
    if not g.stale:
        return "current"
    return "stale" if g.stale == len(g.runs) else f"stale ({g.stale} of {len(g.runs)})"


def _row_notes(study: Study, g: Group) -> str:
    notes = []
    for r in g.runs:
        if note := r.oom_note():
            who = f"seed={show(r.settings.get('seed'))}: " if study.replicates and len(g.runs) > 1 else ""
            notes.append(who + note)
    return "; ".join(notes)


def table_rows(study: Study) -> tuple[list[str], list[list[str]]]:
    """The report table: header and rows (markdown cell text; best per metric in bold among the rows that
    are compared, i.e. not stale unless allow_stale). A `status` column (current / stale) appears when a
    row is stale, a `notes` column when a run needed out-of-memory retries."""
    groups = study.groups()
    metrics = [m for m in study.metrics if any(g.stat(m.key) for g in groups)]
    with_status = any(g.stale for g in groups)
    notes = [_row_notes(study, g) for g in groups]
    header = [
        *study.keys,
        *(["n"] if study.replicates else []),
        *(["status"] if with_status else []),
        *(m.header for m in metrics),
        *(["notes"] if any(notes) else []),
    ]
    rows = [
        [_md(show(g.values.get(k))) for k in study.keys]
        + ([str(len(g.runs))] if study.replicates else [])
        + ([_row_status(g)] if with_status else [])
        for g in groups
    ]
    among = [i for i, g in enumerate(groups) if study.allow_stale or not g.stale]
    for m in metrics:
        best = best_groups(groups, m, among)
        for i, g in enumerate(groups):
            text = _cell(m, g.stat(m.key), study.replicates)
            rows[i].append(f"**{text}**" if i in best else text)
    if any(notes):
        for row, note in zip(rows, notes, strict=True):
            row.append(_md(note) or "—")
    return header, rows


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


_TRAINER_USED = ("batch_size", "grad_accum", "gradient_checkpointing")


def csv_text(study: Study) -> str:
    """One row per run (every status): run, status, stale, varied keys (and seed), every metric (dicts such
    as predicted_memory flattened to predicted_memory.weights_mb …; peak_memory_ratio derived), the
    OOM retries and the trainer settings finally used, the step a failed run reached, error, code_key,
    config_hash, overrides."""
    keys = [*study.keys, *(["seed"] if study.replicates else [])]
    flat = {r.name: flatten(r.values) for r in study.runs}
    metric_keys = [m.key for m in TABLE_METRICS]
    for r in study.runs:
        metric_keys += [k for k in flat[r.name] if k not in metric_keys]
    used_keys = [f"trainer_used.{k}" for k in _TRAINER_USED]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["run", "status", "stale", *keys, *metric_keys, "oom_retries", *used_keys, "step", "error"]
        + ["code_key", "config_hash", "overrides"]
    )
    for r in study.runs:
        used = r.record.get("trainer_used") or {}
        w.writerow(
            [
                r.name,
                r.status,
                str(r.stale).lower() if r.ok or r.record.get("code_key") else "",
                *(_csv(r.settings.get(k)) for k in keys),
                *(_csv(flat[r.name].get(k)) for k in metric_keys),
                _csv(r.record.get("oom_retries")),
                *(_csv(used.get(k)) for k in _TRAINER_USED),
                _csv(r.record.get("step")),
                r.record.get("error") or "",
                r.record.get("code_key") or "",
                r.record.get("config_hash") or "",
                " ".join(r.record.get("overrides") or []),
            ]
        )
    return buf.getvalue()


def _csv(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def stdout_table(study: Study) -> str:
    """A short plain-text table: varied keys, (status when a row is stale), eval loss, peak memory, tokens/s."""
    groups = study.groups()
    cols = [BY_KEY["eval_loss"], BY_KEY["peak_memory_mb"], BY_KEY["tokens_per_s"]]
    with_status = any(g.stale for g in groups)
    header = [
        *(study.keys or ["run"]),
        *(["n"] if study.replicates else []),
        *(["status"] if with_status else []),
        *(m.header for m in cols),
    ]
    rows = []
    for g in groups:
        row = [show(g.values.get(k)) for k in study.keys] if study.keys else [g.runs[0].name]
        row += [str(len(g.runs))] if study.replicates else []
        row += [_row_status(g)] if with_status else []
        for m in cols:
            st = g.stat(m.key)
            row.append("—" if st is None else m.fmt(st.mean) + (f" ± {m.fmt(st.std)}" if st.n > 1 else ""))
        rows.append(row)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join("  " + line.rstrip() for line in lines)


# --------------------------------------------------------------------------- plots


@dataclass
class Plot:
    """What a plot shows (read back from its axes): for the report, W&B and tests."""

    file: str
    kind: str  # line | bars | curves | pareto | memory
    title: str
    xlabels: list[str]
    ylabels: list[str]
    series: list[str]  # legend entries
    points: list[str] = field(default_factory=list)  # the labels written next to points (Pareto, memory)


def _numeric(values: Iterable[Any]) -> bool:
    vals = [v for v in values if v is not None]
    return bool(vals) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)


def _slug(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def _new_figure(ncols: int, width: float = 4.6, height: float = 3.6):
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = list(fig.subplots(1, ncols, squeeze=False)[0])
    for ax in axes:
        ax.ticklabel_format(axis="y", useOffset=False)  # show 5.7418, not +5.741 and 0.0008
    return fig, axes


def _count_axis(ax, axis: str = "x") -> None:
    from matplotlib.ticker import FuncFormatter

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(FuncFormatter(lambda v, _: fmt_count(v)))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _info(fig, file: str, kind: str, title: str) -> Plot:
    series: list[str] = []
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is not None:
            series += [t.get_text() for t in leg.get_texts() if t.get_text() not in series]
    points: list[str] = []
    for ax in fig.axes:
        points += [t.get_text() for t in ax.texts if t.get_text() not in points]
    return Plot(
        file,
        kind,
        title,
        [ax.get_xlabel() for ax in fig.axes],
        [ax.get_ylabel() for ax in fig.axes],
        series,
        points,
    )


def _split_by(study: Study, groups: Sequence[Group], key: str) -> dict[str, list[Group]]:
    """Groups split into series by the other plot keys (one series when the key is the only one)."""
    others = [k for k in study.plot_keys if k != key]
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(study.label(g.values, others) if others else "", []).append(g)
    return out


def _time_metric(groups: Sequence[Group]) -> Metric:
    if any(g.stat("time_per_epoch_s") for g in groups):
        return BY_KEY["time_per_epoch_s"]
    return Metric("train_runtime_s", "train time", fmt_seconds, True, "train time (s)")


def plot_numeric(study: Study, key: str) -> tuple[Plot, bytes]:
    """Eval loss, peak memory and tokens/s against one numeric key; one line per setting of the other keys."""
    groups = study.compared_groups()
    metrics = [BY_KEY["eval_loss"], BY_KEY["peak_memory_mb"], BY_KEY["tokens_per_s"]]
    fig, axes = _new_figure(len(metrics))
    xs_all = [g.values.get(key) for g in groups if g.values.get(key) is not None]
    log2 = bool(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8
    series = _split_by(study, groups, key)
    for ax, m in zip(axes, metrics, strict=True):
        for name, gs in series.items():
            pts = sorted(
                ((g.values[key], st) for g in gs if g.values.get(key) is not None and (st := g.stat(m.key))),
                key=lambda p: p[0],
            )
            if not pts:
                continue
            xs, ys = [p[0] for p in pts], [p[1].mean for p in pts]
            errs = [0.0 if math.isnan(p[1].std) else p[1].std for p in pts]
            if study.replicates and any(errs):
                ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=name or None)
            else:
                ax.plot(xs, ys, marker="o", label=name or None)
        if log2:
            ax.set_xscale("log", base=2)
        ticks = sorted(set(xs_all))
        if len(ticks) <= 12:
            ax.set_xticks(ticks, [show(t) for t in ticks])
            ax.minorticks_off()
        if m.key == "trainable_params":
            _count_axis(ax, "y")
        ax.set_xlabel(key)
        ax.set_ylabel(m.axis)
        ax.grid(alpha=0.3)
    if len(series) > 1:
        axes[0].legend(fontsize=7)
    title = f"{', '.join(m.header for m in metrics)} against {key}"
    fig.suptitle(title, fontsize=10)
    file = f"{PLOT_PREFIX}{_slug(key)}.png"
    return _info(fig, file, "line", title), _png(fig)


def plot_bars(study: Study, key: str) -> tuple[Plot, bytes]:
    """Time, peak memory and eval loss per value of one categorical key; grouped bars per other setting."""
    groups = study.compared_groups()
    metrics = [_time_metric(groups), BY_KEY["peak_memory_mb"], BY_KEY["eval_loss"]]
    cats: list[Any] = []
    for g in groups:
        if g.values.get(key) not in cats:
            cats.append(g.values.get(key))
    series = _split_by(study, groups, key)
    fig, axes = _new_figure(len(metrics), width=max(4.6, 0.55 * len(cats) * max(1, len(series)) + 1.5))
    width = 0.8 / max(1, len(series))
    for ax, m in zip(axes, metrics, strict=True):
        for j, (name, gs) in enumerate(series.items()):
            by_cat = {_ident(g.values.get(key)): g.stat(m.key) for g in gs}
            xs, ys, errs = [], [], []
            for i, c in enumerate(cats):
                st = by_cat.get(_ident(c))
                if st is not None:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(st.mean)
                    errs.append(0.0 if math.isnan(st.std) else st.std)
            ax.bar(
                xs,
                ys,
                width=width,
                yerr=errs if study.replicates and any(errs) else None,
                capsize=3,
                label=name or None,
            )
        ax.set_xticks(
            range(len(cats)),
            [show(c) for c in cats],
            rotation=30 if len(cats) > 4 else 0,
            ha="right" if len(cats) > 4 else "center",
            fontsize=8,
        )
        ax.set_xlabel(key)
        ax.set_ylabel(m.axis)
        ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        axes[0].legend(fontsize=7)
    title = f"{', '.join(m.header for m in metrics)} per {key}"
    fig.suptitle(title, fontsize=10)
    file = f"{PLOT_PREFIX}{_slug(key)}-bars.png"
    return _info(fig, file, "bars", title), _png(fig)


def read_curve(run_dir: Path, key: str = "train/loss") -> list[tuple[int, float]]:
    """(step, value) pairs of one logged metric from a run's metrics.jsonl (bad lines skipped), by step.

    A run started again in its folder (retried after running out of memory, or resumed from a checkpoint)
    appends to the same file and logs the same steps again: the last value logged at a step wins, so the
    curve is that of the session that finished."""
    path = run_dir / METRICS_LOG
    out: dict[int, float] = {}
    if not path.exists():
        return []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
            step = int(row["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if key in row and (v := _number(row[key])) is not None:
            out[step] = v
    return sorted(out.items())


def plot_curves(study: Study) -> tuple[Plot, bytes] | None:
    """Training loss against step, one line per run (replicates share their setting's colour)."""
    groups = study.compared_groups()
    curves = [(g, r, c) for g in groups for r in g.runs if (c := read_curve(r.dir))]
    if not curves:
        return None
    fig, (ax,) = _new_figure(1, width=6.4, height=4.2)
    colours: dict[int, Any] = {}
    for g, r, c in curves:
        label = (study.label(g.values) if study.keys else r.name) + (" (stale)" if g.stale else "")
        first = id(g) not in colours
        if first:
            colours[id(g)] = f"C{len(colours) % 10}"
        ax.plot(
            [p[0] for p in c],
            [p[1] for p in c],
            color=colours[id(g)],
            alpha=0.85,
            lw=1.3,
            marker="o" if len(c) <= 25 else None,
            ms=3,
            label=label if first else None,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.grid(alpha=0.3)
    if len(colours) <= 20:
        ax.legend(fontsize=7, ncol=2 if len(colours) > 8 else 1)
    title = "training loss per run" + (" (seeds share a colour)" if study.replicates else "")
    fig.suptitle(title, fontsize=10)
    return _info(fig, f"{PLOT_PREFIX}loss-curves.png", "curves", title), _png(fig)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both cost (x) and loss (y), both minimised, by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(study: Study) -> tuple[Plot, bytes] | None:
    """Eval loss against cost (peak memory, trainable parameters), the Pareto frontier marked; stale rows
    are left out (unless allow_stale)."""
    groups = study.compared_groups()
    costs = [BY_KEY["peak_memory_mb"], BY_KEY["trainable_params"]]
    q = BY_KEY["eval_loss"]
    usable = [c for c in costs if sum(1 for g in groups if g.stat(c.key) and g.stat(q.key)) >= 2]
    if not usable:
        return None
    fig, axes = _new_figure(len(usable), width=5.2, height=4.2)
    for ax, c in zip(axes, usable, strict=True):
        gs = [g for g in groups if g.stat(c.key) and g.stat(q.key)]
        pts = [(g.stat(c.key).mean, g.stat(q.key).mean) for g in gs]  # type: ignore[union-attr]
        front = pareto_front(pts)
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], color="C0", alpha=0.7, label="run")
        ax.step(
            [pts[i][0] for i in front],
            [pts[i][1] for i in front],
            where="post",
            color="C3",
            lw=1.5,
            label="Pareto frontier",
        )
        ax.scatter([pts[i][0] for i in front], [pts[i][1] for i in front], color="C3", zorder=3)
        for g, (x, y) in zip(gs, pts, strict=True):
            ax.annotate(
                (study.label(g.values) if study.keys else g.runs[0].name) + (" (stale)" if g.stale else ""),
                (x, y),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
            )
        xs = [p[0] for p in pts]
        if c.key == "trainable_params":
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
            _count_axis(ax)
        ax.set_xlabel(c.axis)
        ax.set_ylabel(q.axis)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    title = "quality against cost: eval loss vs " + " and ".join(c.header for c in usable)
    fig.suptitle(title, fontsize=10)
    return _info(fig, f"{PLOT_PREFIX}pareto.png", "pareto", title), _png(fig)


def memory_points(study: Study) -> list[tuple[Run, float, float]]:
    """(run, predicted MiB, measured MiB) of every compared successful run that has both."""
    return [
        (r, pred, peak)
        for r in study.compared
        if (pred := _number(r.metrics.get("predicted_memory_mb"))) is not None
        and (peak := _number(r.metrics.get("peak_memory_mb"))) is not None
    ]


def plot_memory(study: Study) -> tuple[Plot, bytes] | None:
    """Measured against predicted peak memory, one point per run (GPU and CPU runs apart), with y = x."""
    pts = memory_points(study)
    if len(pts) < 2:
        return None
    fig, (ax,) = _new_figure(1, width=5.6, height=4.6)
    kinds = [
        ("GPU (CUDA peak allocated)", "C0", [p for p in pts if not p[0].on_cpu]),
        ("CPU (process peak RSS, runtime included)", "C1", [p for p in pts if p[0].on_cpu]),
    ]
    for label, colour, ps in kinds:
        if ps:
            ax.scatter([p[1] for p in ps], [p[2] for p in ps], color=colour, alpha=0.8, label=label, zorder=3)
    values = [v for _, pred, peak in pts for v in (pred, peak)]
    lo, hi = min(values), max(values)
    log = lo > 0 and hi / lo >= 10
    pad = 0.05 * (hi - lo or hi or 1.0)
    lo, hi = (lo / 1.3, hi * 1.3) if log else (lo - pad, hi + pad)
    ax.plot([lo, hi], [lo, hi], color="0.4", ls="--", lw=1, label="y = x (prediction exact)")
    for r, pred, peak in pts:
        label = (study.label(r.settings, study.keys) if study.keys else r.name) + (
            " (stale)" if r.stale else ""
        )
        ax.annotate(label, (pred, peak), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted peak memory (MiB)")
    ax.set_ylabel("measured peak memory (MiB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    title = "peak memory: measured against predicted"
    fig.suptitle(title, fontsize=10)
    return _info(fig, f"{PLOT_PREFIX}memory-predicted.png", "memory", title), _png(fig)


def make_plots(study: Study) -> list[tuple[Plot, bytes]]:
    """The plots that fit what varied: a line plot per numeric key, bars per categorical key, the loss
    curves, the Pareto plot, and measured against predicted peak memory. Stale runs are left out unless
    allow_stale."""
    groups = study.compared_groups()
    if not groups:
        return []
    out: list[tuple[Plot, bytes] | None] = []
    for key in study.plot_keys:
        values = [g.values.get(key) for g in groups]
        if len({_ident(v) for v in values}) < 2:
            continue
        out.append(plot_numeric(study, key) if _numeric(values) else plot_bars(study, key))
    out.append(plot_curves(study))
    if len(groups) >= 2:
        out.append(plot_pareto(study))
    out.append(plot_memory(study))
    return [p for p in out if p is not None]


# --------------------------------------------------------------------------- report.md


def study_question(name: str | None) -> str | None:
    """The first comment line after the package line of sweeps/<name>.yaml (the study's question)."""
    if not name:
        return None
    path = REPO_ROOT / "sweeps" / f"{name}.yaml"
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith("#") and "@package" not in line:
            return re.sub(r"^Study `[^`]*` — ", "", line.lstrip("# ").strip())
    return None


_FIXED_SHOWN = (
    "model",
    "method",
    "data",
    "optim",
    "lr_schedule",
    "rank",
    "alpha",
    "lr",
    "seed",
    "frozen_blocks",
    "trainer.batch_size",
    "trainer.grad_accum",
    "trainer.max_steps",
    "trainer.epochs",
)


def _stale_note(study: Study) -> str:
    stale, ok = study.stale, study.ok
    theirs: dict[str, int] = {}
    for r in stale:
        key = r.record.get("code_key") or "no code_key"
        theirs[key] = theirs.get(key, 0) + 1
    shown = ", ".join(f"`{k}` ({n})" for k, n in list(theirs.items())[:3]) + (" …" if len(theirs) > 3 else "")
    head = (
        f"**{len(stale)} of {len(ok)} successful run(s) are stale**: they ran with other code or library "
        f"versions than the current `{study.code}` (theirs: {shown}). They are in the table with status `stale`"
    )
    if study.allow_stale:
        head += " and, because of `--allow-stale`, compared with the others in bold, plots and the Pareto frontier."
    else:
        head += (
            " but left out of best-in-bold, the plots and the Pareto frontier (`--allow-stale` compares them "
            "anyway)."
        )
    return head + (
        f" `sweep.rerun_stale=true` re-runs them: the grid's command again with `hydra.sweep.dir={study.root}` "
        "`sweep.rerun_stale=true`."
    )


def _memory_note(study: Study) -> str:
    runs = [r for r in study.ok if _number(r.metrics.get("predicted_memory_mb")) is not None]
    cpu = sum(r.on_cpu for r in runs)
    gpus = sorted({str(r.device) for r in runs if not r.on_cpu})
    note = (
        "Peak memory is measured: on GPU the CUDA allocator's peak (torch.cuda.max_memory_allocated); on CPU "
        "the peak resident set size of the whole process, which includes the Python/torch runtime, so there "
        "measured/predicted is not a check of the prediction: the ratio is only meaningful on GPU. Predicted "
        "memory is weights + gradients + optimizer state + activations from sizes alone "
        "(src.metrics.predict_memory_mb; the parts per run are in results.csv)."
    )
    if cpu == len(runs):
        return note + " Every run here with a prediction ran on CPU."
    where = f"{len(runs) - cpu} run(s) on GPU ({', '.join(gpus)})" + (f", {cpu} on CPU" if cpu else "")
    return note + f" Here: {where}."


_OOM_NOTE = (
    "Notes: runs that ran out of memory and then succeeded on a retry (trainer.oom_retry: half the micro-batch "
    "and twice the accumulation, the same effective batch; then gradient checkpointing too); their memory and "
    "time are those of the settings they finally used."
)


def _run_label(study: Study, r: Run) -> str:
    if study.keys:
        return study.label(r.settings, study.keys + (["seed"] if study.replicates else []))
    return " ".join(r.record.get("overrides") or []) or "defaults"


def _failure_line(study: Study, r: Run) -> str:
    """One run that did not succeed: status, step reached, error line, traceback file; or a skipped_oom cell
    with its predicted peak."""
    head = f"- `{r.name}` {_run_label(study, r)}: "
    other = " (stale: ran with other code)" if r.stale else ""
    if r.status == SKIPPED_OOM:
        pred, cap = r.predicted_skip()
        if pred is None:
            return head + f"**{SKIPPED_OOM_TEXT}** — {_md(str(r.record.get('error') or '?'))}{other}"
        text = f"predicted peak {fmt_mb(pred)}" + (
            f" > device memory {fmt_mb(cap)}" if cap is not None else ""
        )
        parts = r.metrics.get("predicted_memory")
        if isinstance(parts, dict):
            text += (
                " ("
                + ", ".join(
                    f"{k.removesuffix('_mb')} {fmt_mb(v)}"
                    for k, v in parts.items()
                    if k != "total_mb" and _number(v) is not None
                )
                + ")"
            )
        return head + f"**{SKIPPED_OOM_TEXT}** — {text}{other}"
    step = r.record.get("step")
    at = f" at step {step}" if step is not None else ""
    tb = r.record.get("traceback_file")
    where = f" (traceback: `{r.name}/{tb}`)" if tb else ""
    return head + f"**{r.status}**{at} — {_md(str(r.record.get('error') or '?'))}{where}{other}"


def markdown(study: Study, plots: Sequence[Plot]) -> str:
    name = study.study_name
    lines = [f"# Study report{f': {name}' if name else ''}", ""]
    if q := study_question(name):
        lines += [f"*{q}*", ""]
    lines += [
        f"`{study.root}` · {study.counts()}"
        + (f" · {len(study.skipped)} unfinished" if study.skipped else "")
        + f" · generated {datetime.now(UTC).isoformat(timespec='seconds')}",
        "",
        "Varied: "
        + (", ".join(f"`{k}`" for k in study.keys) if study.keys else "nothing (one setting)")
        + (" · replicates over `seed`" if study.replicates else ""),
        "",
    ]
    fixed = {k: v for k, v in study.fixed.items() if k in _FIXED_SHOWN}
    if fixed:
        lines += ["Fixed: " + ", ".join(f"{k}={show(v)}" for k, v in fixed.items()), ""]
    if study.stale:
        lines += [_stale_note(study), ""]
    lines += ["## Results", ""]
    if study.ok:
        header, rows = table_rows(study)
        lines += [markdown_table(header, rows), ""]
        note = (
            "Best value per metric column in **bold** (lowest for loss, perplexity, time, memory, size and "
            "trainable parameters; highest for tokens/s and task metrics"
            + ("; stale rows never" if study.stale and not study.allow_stale else "")
            + ")."
        )
        if study.replicates:
            seeds = sorted({show(r.settings.get("seed")) for r in study.ok}, key=_natural)
            note += (
                f" Rows are replicates over seeds {', '.join(seeds)}: cells show mean ± std "
                "[95% confidence interval of the mean, Student t]; n is the number of runs."
            )
        lines += [note, ""]
        if BY_KEY["predicted_memory_mb"].header in header:
            lines += [_memory_note(study), ""]
        if "notes" in header:
            lines += [_OOM_NOTE, ""]
    else:
        lines += ["No run succeeded.", ""]
    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            lines += [f"![{p.title}]({p.file})", ""]
    if study.failed:
        lines += ["## Runs that did not succeed", ""]
        ordered = [r for r in study.failed if r.status != SKIPPED_OOM] + [
            r for r in study.failed if r.status == SKIPPED_OOM
        ]
        lines += [_failure_line(study, r) for r in ordered]
        lines.append("")
    if study.skipped:
        lines += ["## Unfinished", ""]
        lines += [f"- `{d}`: {why}" for d, why in study.skipped]
        lines.append("")
    lines += ["All runs, every metric: [results.csv](results.csv)", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- writing


def write_atomic(path: Path, data: str | bytes) -> None:
    """Temp file in the same folder, then rename: a reader never sees half a file."""
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Report:
    study: Study
    dir: Path
    files: list[Path]
    plots: list[Plot]


def write_report(
    root: Path, plots: bool = True, allow_stale: bool = False, code: str | None = None
) -> Report:
    """Read the records under root; write results.csv, report.md and the plots beside them. Stale runs (see
    load) are shown and flagged, and compared with the others only with allow_stale."""
    root = Path(root)
    study = load(root, allow_stale=allow_stale, code=code)
    drawn = make_plots(study) if plots else []
    files = []
    for info, png in drawn:
        write_atomic(root / info.file, png)
        files.append(root / info.file)
    for old in root.glob(f"{PLOT_PREFIX}*.png"):  # plots of an earlier report that no longer fit
        if old not in files:
            old.unlink(missing_ok=True)
    infos = [p for p, _ in drawn]
    write_atomic(root / CSV_NAME, csv_text(study))
    write_atomic(root / MD_NAME, markdown(study, infos))
    return Report(study, root, [root / MD_NAME, root / CSV_NAME, *files], infos)


def wandb_group(study: Study) -> str:
    """The W&B group the study's runs logged to: the record's own `group` if it has one, else the sweep
    folder's last two parts (what src/run.py uses)."""
    groups = {
        str(g)
        for r in study.runs
        if (g := r.record.get("group") or (r.record.get("wandb") or {}).get("group"))
    }
    if len(groups) == 1:
        return groups.pop()
    return "/".join(study.root.resolve().parts[-2:])


def log_wandb(report: Report) -> str | None:
    """With WANDB_MODE=online: one `report` run in the study's group holding the table and the plots.
    Returns the run URL, or None (offline, not installed, or any failure: the report on disk stands)."""
    if os.environ.get("WANDB_MODE", "").lower() != "online":
        return None
    try:
        import wandb

        study = report.study
        cfgs = [r.record.get("config") or {} for r in study.runs]
        wb = next((c["logger"]["wandb"] for c in cfgs if (c.get("logger") or {}).get("wandb")), {}) or {}
        run = wandb.init(
            project=wb.get("project", "tunegrid"),
            entity=wb.get("entity"),
            group=wandb_group(study),
            job_type="report",
            name=f"report {wandb_group(study)}",
            dir=str(report.dir),
            tags=[t for t in [study.study_name, "report"] if t],
            reinit="finish_previous",
        )
        header, rows = table_rows(study) if study.ok else ([], [])
        data: dict[str, Any] = {}
        if header:
            data["report/table"] = wandb.Table(
                columns=header, data=[[c.replace("**", "") for c in r] for r in rows]
            )
        for p in report.plots:
            data[f"report/{p.file.removesuffix('.png')}"] = wandb.Image(
                str(report.dir / p.file), caption=p.title
            )
        run.log(data)
        url = run.url
        run.finish()
        return url
    except Exception as e:  # never required
        print(f"tunegrid report: W&B upload skipped ({type(e).__name__}: {e})", file=sys.stderr)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m src.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="a grid's sweep folder (or any folder holding result.json files)")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    ap.add_argument(
        "--allow-stale",
        action="store_true",
        help="compare stale runs (other code or library versions than now) in bold, plots and the Pareto "
        "frontier too; they are flagged either way",
    )
    args = ap.parse_args(argv)
    if not args.dir.is_dir():
        print(f"tunegrid report: {args.dir}: not a folder", file=sys.stderr)
        return 2
    study = load(args.dir)
    if not study.runs:
        for d, why in study.skipped:
            print(f"tunegrid report: unfinished {d}: {why}", file=sys.stderr)
        print(f"tunegrid report: no finished {RECORD} under {args.dir}; nothing written", file=sys.stderr)
        return 1
    rep = write_report(args.dir, plots=not args.no_plots, allow_stale=args.allow_stale, code=study.code)
    st = rep.study
    print(
        f"tunegrid report: {args.dir}: {st.counts()}"
        + (f", {len(st.skipped)} unfinished" if st.skipped else "")
    )
    if st.ok:
        print(stdout_table(st))
    if st.stale:
        print(
            f"  {len(st.stale)} stale run(s) (other code than now): "
            + ("compared anyway (--allow-stale)" if st.allow_stale else "flagged, not compared")
            + "; sweep.rerun_stale=true re-runs them"
        )
    for r in st.failed:
        if r.status == SKIPPED_OOM:
            pred, _ = r.predicted_skip()
            why = f"predicted peak {fmt_mb(pred)}" if pred is not None else r.record.get("error")
            print(f"  {SKIPPED_OOM_TEXT} {r.name}: {why}")
        else:
            at = f" (step {r.record['step']})" if r.record.get("step") is not None else ""
            print(f"  {r.status:<11} {r.name}: {r.record.get('error')}{at}")
    for d, why in st.skipped:
        print(f"  unfinished  {d}: {why}")
    print(f"tunegrid report: wrote {args.dir / MD_NAME}, {CSV_NAME} and {len(rep.plots)} plot(s)")
    if url := log_wandb(rep):
        print(f"tunegrid report: W&B {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
