"""The report's plots, chosen by what varied. Each is drawn with matplotlib's object API (src.report.figures)
and described by a Plot read back from its axes, for report.md, W&B and the tests.

Memory and throughput axes start at zero; a numeric sweep gets a numeric axis (log2 when its values span 8× or
more, as ranks do) labelled with the swept values; point labels are the swept values alone and are moved or
left out rather than overprinted; timings taken on a busy machine are marked (src.report.marks); on CPU the
memory panels show what training added, or are left out (marks.memory_view)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from src.report import figures
from src.report.columns import BY_KEY, TRAIN_TIME, Metric, show
from src.report.curves import plot_curves, read_curve
from src.report.figures import PLOT_PREFIX, Plot
from src.report.marks import BUSY, busy, memory_view
from src.report.stats import number
from src.report.study import Group, Run, Study, ident

__all__ = ["PLOT_PREFIX", "Plot", "make_plots", "plot_curves", "read_curve"]

BUSY_LABEL = f"timed on a busy machine ({BUSY})"


def _numeric(values: Iterable[Any]) -> bool:
    vals = [v for v in values if v is not None]
    return bool(vals) and all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)


def _slug(key: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


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
    return TRAIN_TIME


def _from_zero(m: Metric) -> bool:
    return m.timing or m.key.endswith("_mb")


def point_label(study: Study, values: dict[str, Any], keys: Sequence[str] | None = None) -> str:
    """A point's label: the swept values alone (the keys are named in the title), "/"-joined."""
    keys = study.plot_keys if keys is None else keys
    return " / ".join(show(values.get(k)) for k in keys) or "run"


def _labels_of(study: Study) -> str:
    return f" (points: {' / '.join(study.plot_keys)})" if study.plot_keys else ""


def plot_numeric(study: Study, key: str) -> tuple[Plot, bytes]:
    """Eval loss, memory and tokens/s against one numeric key; one line per setting of the other keys."""
    groups = study.compared_groups()
    memory, _ = memory_view(study, groups)
    metrics = [BY_KEY["eval_loss"], *([memory] if memory else []), BY_KEY["tokens_per_s"]]
    fig, axes = figures.new_figure(len(metrics))
    xs_all = [g.values.get(key) for g in groups if g.values.get(key) is not None]
    log2 = bool(xs_all) and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 8
    series = _split_by(study, groups, key)
    for ax, m in zip(axes, metrics, strict=True):
        flagged: list[tuple[Any, float]] = []
        for name, gs in series.items():
            pts = sorted(
                (
                    (g.values[key], st, g)
                    for g in gs
                    if g.values.get(key) is not None and (st := g.stat(m.key))
                ),
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
            if m.timing:
                flagged += [(p[0], p[1].mean) for p in pts if busy(p[2])]
        if flagged:
            ax.scatter(
                [p[0] for p in flagged],
                [p[1] for p in flagged],
                marker="x",
                s=60,
                color="C3",
                zorder=4,
                label=BUSY_LABEL,
            )
            ax.legend(fontsize=7)
        if log2:
            from matplotlib.ticker import FuncFormatter, NullFormatter

            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ticks = sorted(set(xs_all))
        if len(ticks) <= 12:
            ax.set_xticks(ticks, [show(t) for t in ticks])
            ax.minorticks_off()
        if _from_zero(m):
            figures.from_zero(ax)
        ax.set_xlabel(key)
        ax.set_ylabel(m.axis)
        ax.grid(alpha=0.3)
    if len(series) > 1:
        axes[0].legend(fontsize=7)
    title = f"{', '.join(m.header for m in metrics)} against {key}"
    fig.suptitle(title, fontsize=10)
    file = f"{PLOT_PREFIX}{_slug(key)}.png"
    return figures.info(fig, file, "line", title), figures.png(fig)


def plot_bars(study: Study, key: str) -> tuple[Plot, bytes]:
    """Time, memory and eval loss per value of one categorical key; grouped bars per other setting."""
    groups = study.compared_groups()
    memory, _ = memory_view(study, groups)
    metrics = [_time_metric(groups), *([memory] if memory else []), BY_KEY["eval_loss"]]
    cats: list[Any] = []
    for g in groups:
        if g.values.get(key) not in cats:
            cats.append(g.values.get(key))
    series = _split_by(study, groups, key)
    fig, axes = figures.new_figure(len(metrics), width=max(4.6, 0.55 * len(cats) * max(1, len(series)) + 1.5))
    width = 0.8 / max(1, len(series))
    for ax, m in zip(axes, metrics, strict=True):
        any_busy = False
        for j, (name, gs) in enumerate(series.items()):
            by_cat = {ident(g.values.get(key)): g for g in gs}
            xs, ys, errs, hatches = [], [], [], []
            for i, c in enumerate(cats):
                g = by_cat.get(ident(c))
                st = g.stat(m.key) if g is not None else None
                if st is not None:
                    xs.append(i - 0.4 + width * (j + 0.5))
                    ys.append(st.mean)
                    errs.append(0.0 if math.isnan(st.std) else st.std)
                    hatches.append("//" if m.timing and busy(g) else None)
            bars = ax.bar(
                xs,
                ys,
                width=width,
                yerr=errs if study.replicates and any(errs) else None,
                capsize=3,
                label=name or None,
            )
            for bar, hatch in zip(bars, hatches, strict=True):
                if hatch:
                    bar.set_hatch(hatch)
                    bar.set_edgecolor("C3")
                    any_busy = True
        if any_busy:
            from matplotlib.patches import Patch

            handles, _ = ax.get_legend_handles_labels()
            ax.legend(
                handles=[*handles, Patch(facecolor="white", edgecolor="C3", hatch="//", label=BUSY_LABEL)],
                fontsize=7,
            )
        ax.set_xticks(range(len(cats)), [show(c) for c in cats], fontsize=8)
        if _from_zero(m):
            figures.from_zero(ax)
        ax.set_xlabel(key)
        ax.set_ylabel(m.axis)
        ax.grid(axis="y", alpha=0.3)
    if len(series) > 1:
        axes[0].legend(fontsize=7)
    title = f"{', '.join(m.header for m in metrics)} per {key}"
    fig.suptitle(title, fontsize=10)
    file = f"{PLOT_PREFIX}{_slug(key)}-bars.png"
    return figures.info(fig, file, "bars", title), figures.png(fig)


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
    """Eval loss against cost (memory, trainable parameters), the Pareto frontier marked; stale rows are left
    out (unless allow_stale). Memory as marks.memory_view says (on CPU: what training added, or none)."""
    groups = study.compared_groups()
    memory, _ = memory_view(study, groups)
    costs = [*([memory] if memory else []), BY_KEY["trainable_params"]]
    q = BY_KEY["eval_loss"]
    usable = [c for c in costs if sum(1 for g in groups if g.stat(c.key) and g.stat(q.key)) >= 2]
    if not usable:
        return None
    fig, axes = figures.new_figure(len(usable), width=5.2, height=4.2)
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
            text = (point_label(study, g.values) if study.keys else g.runs[0].name) + (
                " (stale)" if g.stale else ""
            )
            figures.label_point(ax, text, (x, y))
        xs = [p[0] for p in pts]
        if c.key == "trainable_params":
            if min(xs) > 0 and max(xs) / min(xs) >= 10:
                ax.set_xscale("log")
            figures.count_axis(ax)
        else:  # memory: from zero, like every memory axis
            ax.set_xlim(left=0, right=max(ax.get_xlim()[1], 1e-9))
        ax.set_xlabel(c.axis)
        ax.set_ylabel(q.axis)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    title = "quality against cost: eval loss vs " + " and ".join(c.header for c in usable) + _labels_of(study)
    fig.suptitle(title, fontsize=10)
    return figures.info(fig, f"{PLOT_PREFIX}pareto.png", "pareto", title), figures.png(fig)


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
    fig, (ax,) = figures.new_figure(1, width=5.6, height=4.6)
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
    lo, hi = (lo / 1.3, hi * 1.3) if log else (min(0.0, lo - pad), hi + pad)
    ax.plot([lo, hi], [lo, hi], color="0.4", ls="--", lw=1, label="y = x (prediction exact)")
    for r, pred, peak in pts:
        keys = study.keys + (["seed"] if study.replicates else [])
        text = (point_label(study, r.settings, keys) if study.keys else r.name) + (
            " (stale)" if r.stale else ""
        )
        figures.label_point(ax, text, (pred, peak))
    if log:
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("predicted peak memory (MiB)")
    ax.set_ylabel("measured peak memory (MiB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    keys = [*study.keys, *(["seed"] if study.replicates else [])]
    title = "peak memory: measured against predicted" + (f" (points: {' / '.join(keys)})" if keys else "")
    fig.suptitle(title, fontsize=10)
    return figures.info(fig, f"{PLOT_PREFIX}memory-predicted.png", "memory", title), figures.png(fig)


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
