"""The figure machinery the plots share: figures drawn with matplotlib's object API on an Agg canvas (no pyplot
state, no display), axes that start at zero where a quantity does, point labels and tick labels that never
overprint (moved, rotated, thinned), and the Plot read back from the axes for report.md, W&B and the tests."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from src.report.columns import fmt_count

PLOT_PREFIX = "plot-"
_LABELS = "_tunegrid_point_labels"  # the point labels of an axes, spread apart by settle()


@dataclass
class Plot:
    """What a plot shows (read back from its axes after layout): for the report, W&B and tests."""

    file: str
    kind: str  # line | bars | curves | pareto | memory
    title: str
    xlabels: list[str]
    ylabels: list[str]
    series: list[str]  # legend entries
    points: list[str] = field(default_factory=list)  # the labels written next to points (Pareto, memory)
    ylims: list[tuple[float, float]] = field(default_factory=list)  # per axes
    xscales: list[str] = field(default_factory=list)  # per axes: linear, log …
    xticks: list[list[str]] = field(default_factory=list)  # per axes: the tick labels drawn
    hidden: list[str] = field(default_factory=list)  # point labels left out: no room without overprinting
    overprinted: list[tuple[str, str]] = field(default_factory=list)  # texts drawn over each other (none)


def new_figure(ncols: int, width: float = 4.6, height: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure text with, before any PNG is written
    axes = list(fig.subplots(1, ncols, squeeze=False)[0])
    for ax in axes:
        ax.ticklabel_format(axis="y", useOffset=False)  # show 5.7418, not +5.741 and 0.0008
    return fig, axes


def count_axis(ax, axis: str = "x") -> None:
    from matplotlib.ticker import FuncFormatter

    (ax.xaxis if axis == "x" else ax.yaxis).set_major_formatter(FuncFormatter(lambda v, _: fmt_count(v)))


def from_zero(ax) -> None:
    """A quantity that starts at zero (memory, throughput, time) gets an axis that does: a 768–800 MiB span
    cropped to itself looks like a steep climb."""
    ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1e-9))


def label_point(ax, text: str, xy: tuple[float, float]) -> None:
    """A label beside a data point; settle() moves it off other labels (or leaves it out)."""
    a = ax.annotate(text, xy, fontsize=6, xytext=(4, 4), textcoords="offset points")
    a.set_in_layout(False)  # a label must not squeeze the axes
    labels = getattr(ax, _LABELS, None)
    if labels is None:
        labels = []
        setattr(ax, _LABELS, labels)
    labels.append(a)


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _inside(box, frame) -> bool:
    return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def _spread(ax, renderer, dpi: float) -> None:
    """Greedy: each label by its point's x, at the first offset (right of the point, then left, each at up to
    ±6 label heights) where it stays inside the axes and overprints no label placed before it; left out
    (hidden) when there is none."""
    frame = ax.get_window_extent(renderer)
    placed = []
    for a in sorted(getattr(ax, _LABELS, []), key=lambda a: tuple(a.xy)):
        box = a.get_window_extent(renderer)
        w, h = box.width * 72 / dpi, box.height * 72 / dpi + 1
        for k in (0, 1, -1, 2, -2, 3, -3, 4, -4, 5, -5, 6, -6):
            for dx in (4, -4 - w):
                a.xyann = (dx, 4 + k * h)
                box = a.get_window_extent(renderer)
                if _inside(box, frame) and not any(_overlap(box, p) for p in placed):
                    break
            else:
                continue
            placed.append(box)
            break
        else:
            a.set_visible(False)


def _tick_texts(ax):
    """The x tick labels drawn: visible, not empty, inside the axis' view."""
    lo, hi = sorted(ax.get_xlim())
    return [
        t
        for t in ax.get_xticklabels()
        if t.get_visible()
        and t.get_text()
        and lo - 1e-9 * abs(lo) <= t.get_position()[0] <= hi + 1e-9 * abs(hi)
    ]


def tick_clashes(ax, renderer, dpi: float) -> list[tuple[str, str]]:
    """Neighbouring x tick labels that overprint: their boxes overlap when level; when rotated (parallel
    slanted lines) when the gap between their ticks, across the slant, is less than a line of text."""
    import math

    texts = sorted(_tick_texts(ax), key=lambda t: ax.transData.transform((t.get_position()[0], 0))[0])
    out = []
    for a, b in zip(texts, texts[1:], strict=False):
        angle = math.radians(a.get_rotation() % 180)
        if abs(math.sin(angle)) < 1e-6:
            clash = _overlap(a.get_window_extent(renderer), b.get_window_extent(renderer))
        else:
            xa = ax.transData.transform((a.get_position()[0], 0))[0]
            xb = ax.transData.transform((b.get_position()[0], 0))[0]
            clash = abs(xb - xa) * abs(math.sin(angle)) < a.get_fontsize() * dpi / 72
        if clash:
            out.append((a.get_text(), b.get_text()))
    return out


def _fit_ticks(fig, ax) -> None:
    """x tick labels that overprint are rotated, then thinned (every k-th kept) until they do not."""
    renderer = fig.canvas.get_renderer()
    if not tick_clashes(ax, renderer, fig.dpi):
        return
    ax.tick_params(axis="x", labelrotation=45)
    for t in ax.get_xticklabels():
        t.set_horizontalalignment("right")
        t.set_rotation_mode("anchor")
    fig.draw_without_rendering()
    texts = sorted(_tick_texts(ax), key=lambda t: ax.transData.transform((t.get_position()[0], 0))[0])
    for k in range(2, len(texts) + 1):
        if not tick_clashes(ax, renderer, fig.dpi):
            return
        for i, t in enumerate(texts):
            t.set_visible(i % k == 0)
        fig.draw_without_rendering()


def settle(fig) -> None:
    """Lay the figure out, then make every tick label and point label readable."""
    fig.draw_without_rendering()
    for ax in fig.axes:
        _fit_ticks(fig, ax)
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        _spread(ax, renderer, fig.dpi)
    fig.draw_without_rendering()


def overprinted(fig) -> list[tuple[str, str]]:
    """Pairs of visible texts in one axes (point labels, x tick labels) whose boxes overlap."""
    renderer = fig.canvas.get_renderer()
    out = []
    for ax in fig.axes:
        texts = [t for t in ax.texts if t.get_visible() and t.get_text()]
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
        out += [(s, u) for i, (s, a) in enumerate(boxes) for u, b in boxes[i + 1 :] if _overlap(a, b)]
        out += tick_clashes(ax, renderer, fig.dpi)
    return out


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def info(fig, file: str, kind: str, title: str) -> Plot:
    """Settle the figure (layout, labels apart) and read back what it shows."""
    settle(fig)
    series: list[str] = []
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is not None:
            series += [t.get_text() for t in leg.get_texts() if t.get_text() not in series]
    points: list[str] = []
    hidden: list[str] = []
    for ax in fig.axes:
        points += [t.get_text() for t in ax.texts if t.get_visible() and t.get_text() not in points]
        hidden += [t.get_text() for t in ax.texts if not t.get_visible() and t.get_text() not in hidden]
    return Plot(
        file,
        kind,
        title,
        [ax.get_xlabel() for ax in fig.axes],
        [ax.get_ylabel() for ax in fig.axes],
        series,
        points,
        ylims=[tuple(float(v) for v in ax.get_ylim()) for ax in fig.axes],
        xscales=[ax.get_xscale() for ax in fig.axes],
        xticks=[[t.get_text() for t in _tick_texts(ax)] for ax in fig.axes],
        hidden=hidden,
        overprinted=overprinted(fig),
    )
