"""The report's plots, chosen by what varied. Each is drawn with matplotlib's object API (no pyplot
state, no display) and described by a Plot read back from its axes, for report.md, W&B and the tests."""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src.report.columns import BY_KEY, Metric, fmt_count, fmt_seconds, show
from src.report.stats import number
from src.report.study import METRICS_LOG, Group, Run, Study, ident

PLOT_PREFIX = "plot-"


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
    xlabels, ylabels = [ax.get_xlabel() for ax in fig.axes], [ax.get_ylabel() for ax in fig.axes]
    return Plot(file, kind, title, xlabels, ylabels, series, points)


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
            by_cat = {ident(g.values.get(key)): g.stat(m.key) for g in gs}
            xs, ys, errs = [], [], []
            for i, c in enumerate(cats):
                st = by_cat.get(ident(c))
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
        if key in row and (v := number(row[key])) is not None:
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
        if (pred := number(r.metrics.get("predicted_memory_mb"))) is not None
        and (peak := number(r.metrics.get("peak_memory_mb"))) is not None
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
        if len({ident(v) for v in values}) < 2:
            continue
        out.append(plot_numeric(study, key) if _numeric(values) else plot_bars(study, key))
    out.append(plot_curves(study))
    if len(groups) >= 2:
        out.append(plot_pareto(study))
    out.append(plot_memory(study))
    return [p for p in out if p is not None]
