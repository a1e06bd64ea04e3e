"""The tables: the markdown table of report.md (one row per setting; bold, † and ~ as src.report.marks
decides), results.csv (one row per run, every number at full precision) and the short table the CLI prints."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from src.config import flatten
from src.report.columns import BY_KEY, TABLE_METRICS, Metric, show
from src.report.marks import best_groups, busy_reasons, marked
from src.report.stats import Stat
from src.report.study import Group, Study


def _cell(m: Metric, st: Stat | None, replicates: bool) -> str:
    if st is None:
        return "—"
    if not replicates or st.n == 1:
        return m.fmt(st.mean)
    return f"{m.fmt(st.mean)} ± {m.fmt(st.std)} [{m.fmt(st.lo)}, {m.fmt(st.hi)}]"


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
    """The report table: header and rows (markdown cell text; bold where marks.best_groups says, among the
    rows that are compared, i.e. not stale unless allow_stale; timings on a busy machine marked †,
    extrapolated time/epoch ~). A `status` column (current / stale) appears when a row is stale, a `notes`
    column when a run needed out-of-memory retries."""
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
        [md_escape(show(g.values.get(k))) for k in study.keys]
        + ([str(len(g.runs))] if study.replicates else [])
        + ([_row_status(g)] if with_status else [])
        for g in groups
    ]
    among = [i for i, g in enumerate(groups) if study.allow_stale or not g.stale]
    for m in metrics:
        best = best_groups(groups, m, among, study.replicates)
        for i, g in enumerate(groups):
            text = marked(m, g, _cell(m, g.stat(m.key), study.replicates))
            rows[i].append(f"**{text}**" if i in best else text)
    if any(notes):
        for row, note in zip(rows, notes, strict=True):
            row.append(md_escape(note) or "—")
    return header, rows


def md_escape(text: str) -> str:
    """Text safe inside one markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    # Hand-built: DataFrame.to_markdown needs the `tabulate` package (not a dependency) and pads every
    # cell to its column's width, which makes report.md's diffs noisy.
    lines = [
        "| " + " | ".join(md_escape(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


_TRAINER_USED = ("batch_size", "grad_accum", "gradient_checkpointing")


def csv_text(study: Study) -> str:
    """One row per run (every status): run, status, stale, varied keys (and seed), every metric (dicts such
    as predicted_memory and contention flattened to predicted_memory.weights_mb, contention.load1_max …;
    peak_memory_ratio and memory_added_mb derived), why its timing is marked busy (empty: not busy), the OOM
    retries and the trainer settings finally used, the step a failed run reached, error, code_key,
    config_hash, overrides."""
    keys = [*study.keys, *(["seed"] if study.replicates else [])]
    flat = {r.name: flatten(r.values) for r in study.runs}
    metric_keys = [m.key for m in TABLE_METRICS]
    for r in study.runs:
        metric_keys += [k for k in flat[r.name] if k not in metric_keys]
    used_keys = [f"trainer_used.{k}" for k in _TRAINER_USED]
    columns = [
        "run",
        "status",
        "stale",
        *keys,
        *metric_keys,
        "busy",
        "oom_retries",
        *used_keys,
        "step",
        "error",
    ]
    columns += ["code_key", "config_hash", "overrides"]
    rows = []
    for r in study.runs:
        used = r.record.get("trainer_used") or {}
        rows.append(
            [
                r.name,
                r.status,
                str(r.stale).lower() if r.ok or r.record.get("code_key") else "",
                *(_csv(r.settings.get(k)) for k in keys),
                *(_csv(flat[r.name].get(k)) for k in metric_keys),
                "; ".join(busy_reasons(r)),
                _csv(r.record.get("oom_retries")),
                *(_csv(used.get(k)) for k in _TRAINER_USED),
                _csv(r.record.get("step")),
                r.record.get("error") or "",
                r.record.get("code_key") or "",
                r.record.get("config_hash") or "",
                " ".join(r.record.get("overrides") or []),
            ]
        )
    # dtype=object: each cell stays the Python value given (ints as ints, no column turned float by a gap).
    frame = pd.DataFrame(rows, columns=columns, dtype=object)
    return frame.to_csv(index=False, lineterminator="\n")


def _csv(v: Any) -> Any:
    """A CSV cell: None empty, floats at full precision (repr), the rest as they are."""
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v)
    return v


def stdout_table(study: Study) -> str:
    """A short plain-text table: varied keys, (status when a row is stale), eval loss, peak memory, tokens/s
    († when timed on a busy machine)."""
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
            text = "—" if st is None else m.fmt(st.mean) + (f" ± {m.fmt(st.std)}" if st.n > 1 else "")
            row.append(marked(m, g, text))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    # to_string right-aligns text and puts one space between columns; the table is left-aligned with two:
    # each cell is padded to its column's width plus one, header labels justified left to match.
    widths = [max(len(h), *(len(c) for c in frame.iloc[:, i])) for i, h in enumerate(header)]
    text = frame.to_string(
        index=False, justify="left", formatters=[(lambda c, w=w: c.ljust(w + 1)) for w in widths]
    )
    return "\n".join("  " + line.rstrip() for line in text.splitlines())
