"""Loss curves from each run's metrics.jsonl: the training loss and, beside it, the eval loss at every
evaluation (before training, every trainer.eval_every steps, at the end)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from src.report import figures
from src.report.figures import PLOT_PREFIX, Plot
from src.report.stats import number
from src.report.study import METRICS_LOG, Study

TRAIN_LOSS = "train/loss"
EVAL_LOSS = "eval/loss"


def read_curve(run_dir: Path, key: str = TRAIN_LOSS) -> list[tuple[int, float]]:
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
    """Training loss against step and, beside it, eval loss against step: one line per run (replicates share
    their setting's colour). The eval panel is left out when no run logged an evaluation."""
    groups = study.compared_groups()
    runs = [(g, r, read_curve(r.dir), read_curve(r.dir, EVAL_LOSS)) for g in groups for r in g.runs]
    runs = [x for x in runs if x[2] or x[3]]
    if not any(x[2] for x in runs):
        return None
    panels = [("train loss", 2)] + ([("eval loss", 3)] if any(x[3] for x in runs) else [])
    fig, axes = figures.new_figure(len(panels), width=5.2, height=4.2)
    colours: dict[int, Any] = {}
    for g, *_ in runs:
        colours.setdefault(id(g), f"C{len(colours) % 10}")
    for ax, (ylabel, i) in zip(axes, panels, strict=True):
        labelled: set[int] = set()
        for g, r, *curves in runs:
            c = curves[i - 2]
            if not c:
                continue
            first = id(g) not in labelled
            labelled.add(id(g))
            label = (study.label(g.values) if study.keys else r.name) + (" (stale)" if g.stale else "")
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
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    if len(colours) <= 20:
        axes[0].legend(fontsize=7, ncol=2 if len(colours) > 8 else 1)
    title = (
        " and ".join(p for p, _ in panels)
        + " per run"
        + (" (seeds share a colour)" if study.replicates else "")
    )
    fig.suptitle(title, fontsize=10)
    return figures.info(fig, f"{PLOT_PREFIX}loss-curves.png", "curves", title), figures.png(fig)
