"""Study reports: `python -m src.report <dir>` turns the records of a grid into something to read.

It reads every `result.json` under <dir> (src.records.read_records) and writes, beside them:

- `results.csv`: one row per run: run folder, status, the varied keys, every metric, the error line;
- `report.md`: one table (varied keys first, then cost and quality metrics), the best value of each
  metric column in bold, the fixed settings, the plots, failed runs with their error line, and the
  run folders that were skipped because they hold no finished record;
- `plot-*.png`: chosen by what varied: metrics against each numeric key (e.g. rank), bars per
  categorical key (e.g. optimizer), the training-loss curves (from each run's metrics.jsonl), and a
  Pareto plot of eval loss against peak memory and trainable parameters with the frontier marked.

"Varied keys" are the settings whose values differ across runs: the keys a run's `overrides` name
(the swept ones, shown first) and, from the resolved config, top-level keys, config-group choices
(`method`, `optim` …) and trainer / warm-up settings that follow from them (e.g. `lr`). When `seed`
varies the runs are replicates: one row per setting with mean ± std and a 95% confidence interval.

Every file is written atomically (temp file + rename). With WANDB_MODE=online the table and plots
also go to the study's W&B group (optional; never required). Nothing here imports torch.
"""

from __future__ import annotations

import argparse
import csv
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
    key: str  # name in record["metrics"]
    header: str  # column header in report.md
    fmt: Callable[[float], str]
    lower_is_better: bool
    label: str = ""  # axis label in plots

    @property
    def axis(self) -> str:
        return self.label or self.header


TABLE_METRICS: tuple[Metric, ...] = (
    Metric("trainable_params", "trainable params", fmt_count, True),
    Metric("trainable_pct", "trainable %", fmt_sig, True),
    Metric("tokens_per_s", "tokens/s", fmt_rate, False),
    Metric("time_per_epoch_s", "time/epoch", fmt_seconds, True, "time/epoch (s)"),
    Metric("peak_memory_mb", "peak memory", fmt_mb, True, "peak memory (MiB)"),
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


@dataclass
class Run:
    dir: Path
    name: str  # run folder relative to the report root
    record: dict[str, Any]
    settings: dict[str, Any]  # candidate keys -> values (see settings_of)
    override_keys: list[str]

    @property
    def status(self) -> str:
        return str(self.record.get("status"))

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record.get("metrics") or {}

    @property
    def has_config(self) -> bool:
        return bool(self.record.get("config"))


@dataclass
class Group:
    """One row of the table: the runs that share every varied key except seed (one run unless replicates)."""

    values: dict[str, Any]
    runs: list[Run]

    def stat(self, key: str) -> Stat | None:
        return Stat.of([v for r in self.runs if (v := _number(r.metrics.get(key))) is not None])


@dataclass
class Study:
    root: Path
    runs: list[Run]  # every finished record (success, failed, invalid)
    skipped: list[tuple[str, str]]  # (run folder, why)
    keys: list[str]  # varied keys without seed: swept ones first, then derived ones
    swept: list[str]  # the varied keys some run's overrides name
    fixed: dict[str, Any]  # settings that are the same in every run
    replicates: bool  # seed varies
    task_metrics: list[Metric] = field(default_factory=list)

    @property
    def ok(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def failed(self) -> list[Run]:
        return [r for r in self.runs if not r.ok]

    @property
    def metrics(self) -> list[Metric]:
        return [*TABLE_METRICS, *self.task_metrics]

    @property
    def plot_keys(self) -> list[str]:
        """The keys plots are drawn against: the swept ones (derived keys follow from them)."""
        return self.swept or self.keys

    def groups(self) -> list[Group]:
        """Successful runs, grouped by the varied keys (seed aside) in the order they first appear."""
        out: dict[str, Group] = {}
        for r in self.ok:
            values = {k: r.settings.get(k) for k in self.keys}
            ident = _ident(values) if self.replicates else r.name
            out.setdefault(ident, Group(values, [])).runs.append(r)
        return list(out.values())

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


def settings_of(record: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(settings, override keys) of one record. Settings: top-level scalars, each config group's choice
    (its `name`), trainer and warm-up scalars, and every key the overrides name (config value first)."""
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
        if not sep or k.startswith("hydra.") or k in keys:
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


def load(root: Path) -> Study:
    """Read the records under root and work out what varied."""
    root = Path(root)
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
        runs.append(Run(run_dir, _rel(run_dir, root), rec, s, keys))
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
    return Study(root, runs, skipped, keys, swept, fixed, replicates, list(task.values()))


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


def best_groups(groups: Sequence[Group], m: Metric) -> set[int]:
    """Indices of the groups holding the best mean of metric m (ties all count); none when all agree."""
    means = {i: st.mean for i, g in enumerate(groups) if (st := g.stat(m.key)) is not None}
    if len(set(means.values())) < 2:
        return set()
    best = (min if m.lower_is_better else max)(means.values())
    return {i for i, v in means.items() if v == best}


def table_rows(study: Study) -> tuple[list[str], list[list[str]]]:
    """The report table: header and rows (markdown cell text; best per metric in bold)."""
    groups = study.groups()
    metrics = [m for m in study.metrics if any(g.stat(m.key) for g in groups)]
    header = [*study.keys, *(["n"] if study.replicates else []), *(m.header for m in metrics)]
    rows = [
        [_md(show(g.values.get(k))) for k in study.keys] + ([str(len(g.runs))] if study.replicates else [])
        for g in groups
    ]
    for m in metrics:
        best = best_groups(groups, m)
        for i, g in enumerate(groups):
            text = _cell(m, g.stat(m.key), study.replicates)
            rows[i].append(f"**{text}**" if i in best else text)
    return header, rows


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def csv_text(study: Study) -> str:
    """One row per run (failed ones included): run, status, varied keys (and seed), every metric, error."""
    keys = [*study.keys, *(["seed"] if study.replicates else [])]
    metric_keys = [m.key for m in TABLE_METRICS]
    for r in study.runs:
        metric_keys += [k for k in r.metrics if k not in metric_keys]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run", "status", *keys, *metric_keys, "error", "overrides"])
    for r in study.runs:
        w.writerow(
            [
                r.name,
                r.status,
                *(_csv(r.settings.get(k)) for k in keys),
                *(_csv(r.metrics.get(k)) for k in metric_keys),
                r.record.get("error") or "",
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
    """A short plain-text table: varied keys, eval loss, peak memory, tokens/s."""
    groups = study.groups()
    cols = [BY_KEY["eval_loss"], BY_KEY["peak_memory_mb"], BY_KEY["tokens_per_s"]]
    header = [*(study.keys or ["run"]), *(["n"] if study.replicates else []), *(m.header for m in cols)]
    rows = []
    for g in groups:
        row = [show(g.values.get(k)) for k in study.keys] if study.keys else [g.runs[0].name]
        row += [str(len(g.runs))] if study.replicates else []
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
    kind: str  # line | bars | curves | pareto
    title: str
    xlabels: list[str]
    ylabels: list[str]
    series: list[str]  # legend entries


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
    return Plot(
        file, kind, title, [ax.get_xlabel() for ax in fig.axes], [ax.get_ylabel() for ax in fig.axes], series
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
    groups = study.groups()
    metrics = [BY_KEY["eval_loss"], BY_KEY["peak_memory_mb"], BY_KEY["tokens_per_s"]]
    fig, axes = _new_figure(len(metrics))
    xs_all = [g.values.get(key) for g in groups if g.values.get(key) is not None]
    log2 = min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8
    series = _split_by(study, groups, key)
    for ax, m in zip(axes, metrics, strict=True):
        for name, gs in series.items():
            pts = sorted(
                (g.values[key], st) for g in gs if g.values.get(key) is not None and (st := g.stat(m.key))
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
    groups = study.groups()
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
    """(step, value) pairs of one logged metric from a run's metrics.jsonl (bad lines skipped)."""
    path = run_dir / METRICS_LOG
    out: list[tuple[int, float]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if key in row and "step" in row and (v := _number(row[key])) is not None:
            out.append((int(row["step"]), v))
    return out


def plot_curves(study: Study) -> tuple[Plot, bytes] | None:
    """Training loss against step, one line per run (replicates share their setting's colour)."""
    groups = study.groups()
    curves = [(g, r, c) for g in groups for r in g.runs if (c := read_curve(r.dir))]
    if not curves:
        return None
    fig, (ax,) = _new_figure(1, width=6.4, height=4.2)
    colours: dict[int, Any] = {}
    for g, r, c in curves:
        label = study.label(g.values) if study.keys else r.name
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
    """Eval loss against cost (peak memory, trainable parameters), the Pareto frontier marked."""
    groups = study.groups()
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
                study.label(g.values) if study.keys else g.runs[0].name,
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


def make_plots(study: Study) -> list[tuple[Plot, bytes]]:
    """The plots that fit what varied: a line plot per numeric key, bars per categorical key, the loss
    curves, and the Pareto plot."""
    groups = study.groups()
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


def markdown(study: Study, plots: Sequence[Plot]) -> str:
    name = study.study_name
    n_ok, n_bad = len(study.ok), len(study.failed)
    lines = [f"# Study report{f': {name}' if name else ''}", ""]
    if q := study_question(name):
        lines += [f"*{q}*", ""]
    lines += [
        f"`{study.root}` · {len(study.runs)} run(s): {n_ok} succeeded, {n_bad} did not"
        + (f", {len(study.skipped)} skipped" if study.skipped else "")
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
    lines += ["## Results", ""]
    if study.ok:
        header, rows = table_rows(study)
        lines += [markdown_table(header, rows), ""]
        note = (
            "Best value per metric column in **bold** (lowest for loss, perplexity, time, memory, size and "
            "trainable parameters; highest for tokens/s and task metrics)."
        )
        if study.replicates:
            seeds = sorted({show(r.settings.get("seed")) for r in study.ok}, key=_natural)
            note += (
                f" Rows are replicates over seeds {', '.join(seeds)}: cells show mean ± std "
                "[95% confidence interval of the mean, Student t]; n is the number of runs."
            )
        lines += [note, ""]
    else:
        lines += ["No run succeeded.", ""]
    if plots:
        lines += ["## Plots", ""]
        for p in plots:
            lines += [f"![{p.title}]({p.file})", ""]
    if study.failed:
        lines += ["## Failed runs", ""]
        for r in study.failed:
            label = (
                study.label(r.settings, study.keys + (["seed"] if study.replicates else []))
                if study.keys
                else " ".join(r.record.get("overrides") or []) or "defaults"
            )
            tb = r.record.get("traceback_file")
            where = f" (traceback: `{r.name}/{tb}`)" if tb else ""
            lines.append(
                f"- `{r.name}` {label}: **{r.status}** — {_md(str(r.record.get('error') or '?'))}{where}"
            )
        lines.append("")
    if study.skipped:
        lines += ["## Skipped", ""]
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


def write_report(root: Path, plots: bool = True) -> Report:
    """Read the records under root; write results.csv, report.md and the plots beside them."""
    root = Path(root)
    study = load(root)
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
    args = ap.parse_args(argv)
    if not args.dir.is_dir():
        print(f"tunegrid report: {args.dir}: not a folder", file=sys.stderr)
        return 2
    study = load(args.dir)
    if not study.runs:
        for d, why in study.skipped:
            print(f"tunegrid report: skipped {d}: {why}", file=sys.stderr)
        print(f"tunegrid report: no finished {RECORD} under {args.dir}; nothing written", file=sys.stderr)
        return 1
    rep = write_report(args.dir, plots=not args.no_plots)
    st = rep.study
    print(
        f"tunegrid report: {len(st.runs)} run(s) in {args.dir}: {len(st.ok)} succeeded, {len(st.failed)} did not"
        + (f", {len(st.skipped)} skipped" if st.skipped else "")
    )
    if st.ok:
        print(stdout_table(st))
    for r in st.failed:
        print(f"  {r.status:<8} {r.name}: {r.record.get('error')}")
    for d, why in st.skipped:
        print(f"  skipped  {d}: {why}")
    print(f"tunegrid report: wrote {args.dir / MD_NAME}, {CSV_NAME} and {len(rep.plots)} plot(s)")
    if url := log_wandb(rep):
        print(f"tunegrid report: W&B {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
