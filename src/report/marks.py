"""What the report marks, and the sentences under the table that say why, so that it does not claim more than
the runs show: which value is bold (only what is distinguishable), which timings were taken on a busy
machine (†), which time/epoch is extrapolated from part of an epoch (~), and which memory a plot can show.

The rules, each stated in report.md where it applies:

- **Bold.** Exact sizes (trainable parameters, trainable %, checkpoint bytes: they follow from the config) are
  bold at their best. A measured value (losses, perplexity, task metrics, tokens/s, time, memory) is bold
  only with replicates, when its row's 95% interval lies entirely on the better side of every other row's
  interval. With a single seed no measured value is bold. Timings are never bold while a row is marked †.
- **†, contention.** A run is busy when its threads waited for a CPU for WAIT_LIMIT or more of the time they
  were ready to run, or the 1-minute load average went above its CPUs + LOAD_MARGIN, or another process
  computed on its GPU (record: metrics.contention, src/callbacks.Conditions). Its row's timings are marked.
- **~, extrapolation.** time/epoch of a session that trained less than one epoch is its time scaled up.
- **Memory.** On CPU the peak is the process's resident set, mostly the Python/torch runtime: plots show the
  memory training added (peak minus the memory in use when training began) or, in records without that
  baseline, no memory at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from src.report.columns import BY_KEY, Metric, show
from src.report.stats import number
from src.report.study import Group, Run, Study

WAIT_LIMIT = 0.10  # share of the runnable time the run's threads spent waiting for a CPU
LOAD_MARGIN = 1.0  # the 1-minute load average above the run's CPUs by more than this: oversubscribed
BUSY = "†"
EXTRAPOLATED = "~"


# --------------------------------------------------------------------------- contention


def busy_reasons(run: Run) -> list[str]:
    """Why the run's timing is not comparable (empty: not busy, or not measured; see Run.contention)."""
    c = run.contention
    if not c:
        return []
    out = []
    share = number(c.get("cpu_wait_share"))
    if share is not None and share >= WAIT_LIMIT:
        out.append(f"threads waited for a CPU {share:.0%} of the time")
    load, cpus = number(c.get("load1_max")), number(c.get("cpus"))
    if load is not None and cpus and load > cpus + LOAD_MARGIN:
        out.append(f"load average up to {load:.1f} on {cpus:.0f} CPUs")
    gpu = number(c.get("gpu_other_processes"))
    if gpu:
        out.append(f"{gpu:.0f} other process{'es' if gpu > 1 else ''} on its GPU")
    return out


def busy(g: Group) -> bool:
    return any(busy_reasons(r) for r in g.runs)


def extrapolated(g: Group) -> bool:
    return any(r.extrapolated for r in g.runs if number(r.metrics.get("time_per_epoch_s")) is not None)


def marked(m: Metric, g: Group, text: str) -> str:
    """A cell's text with its marks: ~ before an extrapolated time/epoch, † after a timing taken on a busy machine."""
    if text == "—":
        return text
    if m.key == "time_per_epoch_s" and extrapolated(g):
        text = EXTRAPOLATED + text
    if m.timing and busy(g):
        text += f" {BUSY}"
    return text


# --------------------------------------------------------------------------- bold


def best_groups(
    groups: Sequence[Group], m: Metric, among: Iterable[int] | None = None, replicates: bool = False
) -> set[int]:
    """Indices of the rows whose value of m is bold, among `among` (default all); see the module's rule."""
    idx = range(len(groups)) if among is None else among
    stats = {i: st for i in idx if (st := groups[i].stat(m.key)) is not None}
    if not m.ranked or len(stats) < 2 or len({st.mean for st in stats.values()}) < 2:
        return set()
    if m.timing and any(busy(groups[i]) for i in stats):
        return set()
    best_value = (min if m.lower_is_better else max)(st.mean for st in stats.values())
    best = [i for i, st in stats.items() if st.mean == best_value]
    if m.exact:
        return set(best)
    if not replicates or len(best) > 1 or any(st.n < 2 for st in stats.values()):
        return set()
    b = stats[best[0]]
    others = [st for i, st in stats.items() if i != best[0]]
    below, above = all(b.hi < o.lo for o in others), all(b.lo > o.hi for o in others)
    apart = below if m.lower_is_better else above
    return {best[0]} if apart else set()


def _loss_spread(groups: Sequence[Group]) -> float | None:
    means = [st.mean for g in groups if (st := g.stat("eval_loss")) is not None]
    return max(means) - min(means) if len(means) >= 2 else None


def bold_note(study: Study, metrics: Sequence[Metric], groups: Sequence[Group]) -> str:
    """The sentence under the table that says which bold rule applied."""
    ranked = [m for m in metrics if m.ranked]
    exact = [m.header for m in ranked if m.exact]
    measured = [m.header for m in ranked if not m.exact]
    if study.replicates:
        text = (
            "**Bold** marks a measured value only where it is distinguishable from seed noise: its row's 95% "
            "interval lies entirely below (above, for tokens/s and task metrics) the interval of every other "
            "row. Where intervals overlap, or a row has a single run, the column has no bold."
        )
    else:
        spread = _loss_spread(groups)
        text = (
            "**Single seed**: every row is one run, so no measured column"
            + (f" ({', '.join(measured)})" if measured else "")
            + " is marked best: one run per setting cannot tell a difference from seed noise"
            + (
                f" (here eval loss differs by at most {spread:.4f} between rows)"
                if spread is not None
                else ""
            )
            + ". Run the grid with `seed=0,1,2` for intervals; bold then marks a value whose interval "
            "separates from every other row's."
        )
    if exact:
        text += (
            f" Sizes ({', '.join(exact)}) follow from the config, exact and without noise: the lowest of each "
            "is bold (ties all bold)."
        )
    timings = [m.header for m in metrics if m.timing]
    if timings and any(busy(g) for g in groups):
        text += (
            f" No bold for {', '.join(timings)}: some of their cells were timed on a busy machine ({BUSY})."
        )
    if study.stale and not study.allow_stale:
        text += " Stale rows are never bold."
    return text


def contention_note(study: Study, groups: Sequence[Group]) -> str | None:
    """What † means, which rows carry it and why, the load the timed runs saw, and the runs not measured."""
    runs = [r for g in groups for r in g.runs]
    measured = [r for r in runs if r.contention]
    flagged = [(g, r, why) for g in groups for r in g.runs if (why := busy_reasons(r))]
    if not runs:
        return None
    parts = []
    if flagged:
        parts.append(
            f"{BUSY} timing not comparable: the run trained while the machine was busy (its threads waited "
            f"for a CPU {WAIT_LIMIT:.0%} or more of the time they were ready to run, or the 1-minute load "
            f"average went above its CPUs + {LOAD_MARGIN:g}, or another process computed on its GPU). Marked: "
            + "; ".join(f"{_who(study, g, r)} ({', '.join(why)})" for g, r, why in flagged)
            + "."
            + (
                " The other timings were taken with the run's threads waiting for a CPU less than that."
                if len(flagged) < len(measured)
                else " No timing here was taken on an idle machine: re-run the grid when the machine is idle."
            )
        )
    if measured:
        loads = [v for r in measured if (v := number(r.contention.get("load1_max"))) is not None]
        waits = [v for r in measured if (v := number(r.contention.get("cpu_wait_share"))) is not None]
        cpus = sorted({show(r.contention.get("cpus")) for r in measured})
        seen = []
        if loads:
            seen.append(f"1-minute load average {_span(loads, '{:.1f}')} on {'/'.join(cpus)} CPU(s)")
        if waits:
            seen.append(f"CPU wait {_span(waits, '{:.0%}')} of runnable time")
        if seen:
            parts.append("Load while the timed runs trained: " + ", ".join(seen) + ".")
    if len(measured) < len(runs):
        parts.append(
            f"{len(runs) - len(measured)} run(s) hold no load measurement (recorded before tunegrid measured "
            "it): whether their timings were taken on a busy machine is unknown."
        )
    return " ".join(parts) or None


def _span(values: Sequence[float], fmt: str) -> str:
    lo, hi = fmt.format(min(values)), fmt.format(max(values))
    return lo if lo == hi else f"{lo}–{hi}"


def _who(study: Study, g: Group, r: Run) -> str:
    label = study.label(g.values, study.keys) if study.keys else r.name
    if study.replicates and len(g.runs) > 1:
        label += f", seed={show(r.settings.get('seed'))}"
    return label


def extrapolation_note(groups: Sequence[Group]) -> str | None:
    runs = [
        r
        for g in groups
        for r in g.runs
        if r.extrapolated and number(r.metrics.get("time_per_epoch_s")) is not None
    ]
    if not runs:
        return None
    epochs = [v for r in runs if (v := number(r.metrics.get("epochs"))) is not None]
    span = ""
    if epochs:
        lo, hi = min(epochs), max(epochs)
        span = f" ({lo:.2g} of an epoch)" if lo == hi else f" ({lo:.2g}–{hi:.2g} of an epoch)"
    return (
        f"{EXTRAPOLATED} time/epoch extrapolated: the run trained less than one epoch{span}, and time/epoch is "
        "its training time divided by the part of an epoch it covered, not a measured epoch."
    )


# --------------------------------------------------------------------------- memory


def memory_view(study: Study, groups: Sequence[Group] | None = None) -> tuple[Metric | None, str | None]:
    """The memory metric plots show, and the sentence that says why when it is not the peak: peak memory when
    a run was on GPU; on CPU the memory training added, or nothing for records without its baseline."""
    groups = study.compared_groups() if groups is None else groups
    runs = [r for g in groups for r in g.runs if number(r.values.get("peak_memory_mb")) is not None]
    if not runs or not all(r.on_cpu for r in runs):
        return BY_KEY["peak_memory_mb"], None
    if all(number(r.values.get("memory_added_mb")) is not None for r in runs):
        return BY_KEY["memory_added_mb"], (
            "On CPU the plots show the memory added in training (peak resident set minus the resident set "
            "when training began), not the peak: the peak is mostly the Python/torch runtime and the weights, "
            "the same in every run."
        )
    return None, (
        "Memory is left out of the plots: these runs ran on CPU, where the peak resident set is mostly the "
        "Python/torch runtime, and their records hold no baseline (memory when training began) to subtract."
    )


MEMORY_ADDED_NOTE = (
    "memory added: peak memory minus the memory in use when training began (after the weights and data "
    "loaded), i.e. what training itself added: gradients, optimizer state, activations and allocator caches."
)
