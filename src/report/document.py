"""report.md: the table, the notes a reader needs to trust it (which bold rule applied, timings taken on a
busy machine, extrapolated time/epoch, stale runs, what peak memory measures, OOM retries), the plots (and
why memory is shown as it is) and every run that did not succeed, with its error line."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime

from src.config import REPO_ROOT
from src.report import marks
from src.report.columns import BY_KEY, fmt_mb, show
from src.report.plots import Plot
from src.report.stats import number
from src.report.study import SKIPPED_OOM, SKIPPED_OOM_TEXT, Run, Study, natural
from src.report.tables import markdown_table, md_escape, table_rows


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
    runs = [r for r in study.ok if number(r.metrics.get("predicted_memory_mb")) is not None]
    cpu = sum(r.on_cpu for r in runs)
    gpus = sorted({str(r.device) for r in runs if not r.on_cpu})
    note = (
        "Peak memory is measured: on GPU the CUDA allocator's peak (torch.cuda.max_memory_allocated); on CPU "
        "the peak resident set size of the whole process, which includes the Python/torch runtime, so there "
        "measured/predicted is not a check of the prediction: the ratio is only meaningful on GPU. Predicted "
        "memory is weights + gradients + optimizer state + activations from sizes alone "
        "(src.costs.predict_memory_mb; the parts per run are in results.csv)."
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
            return head + f"**{SKIPPED_OOM_TEXT}** — {md_escape(str(r.record.get('error') or '?'))}{other}"
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
                    if k.endswith("_mb") and k != "total_mb" and number(v) is not None
                )
                + ")"
            )
        return head + f"**{SKIPPED_OOM_TEXT}** — {text}{other}"
    step = r.record.get("step")
    at = f" at step {step}" if step is not None else ""
    tb = r.record.get("traceback_file")
    where = f" (traceback: `{r.name}/{tb}`)" if tb else ""
    return head + f"**{r.status}**{at} — {md_escape(str(r.record.get('error') or '?'))}{where}{other}"


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
        groups = study.groups()
        shown = [m for m in study.metrics if m.header in header]
        compared = [g for g in groups if study.allow_stale or not g.stale]
        note = marks.bold_note(study, shown, compared)
        if study.replicates:
            seeds = sorted({show(r.settings.get("seed")) for r in study.ok}, key=natural)
            note += (
                f" Rows are replicates over seeds {', '.join(seeds)}: cells show mean ± std "
                "[95% confidence interval of the mean, Student t]; n is the number of runs."
            )
        lines += [note, ""]
        if any(m.timing for m in shown) and (busy := marks.contention_note(study, groups)):
            lines += [busy, ""]
        if BY_KEY["time_per_epoch_s"].header in header and (extra := marks.extrapolation_note(groups)):
            lines += [extra, ""]
        if BY_KEY["memory_added_mb"].header in header:
            lines += [marks.MEMORY_ADDED_NOTE, ""]
        if BY_KEY["predicted_memory_mb"].header in header:
            lines += [_memory_note(study), ""]
        if "notes" in header:
            lines += [_OOM_NOTE, ""]
    else:
        lines += ["No run succeeded.", ""]
    if plots:
        lines += ["## Plots", ""]
        if why := marks.memory_view(study)[1]:
            lines += [why, ""]
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
