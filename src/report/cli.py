"""Study reports: `python -m src.report <dir> [--allow-stale]` turns the records of a grid into something to read.

The command line: writes the report (see src.report), then prints the counts, a short table, the runs
that did not succeed and the unfinished folders. Exit 0 when written, 1 with no finished record, 2
when <dir> is not a folder.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from src.records import RECORD
from src.report.columns import fmt_mb
from src.report.study import SKIPPED_OOM, SKIPPED_OOM_TEXT, load
from src.report.tables import stdout_table
from src.report.wandb_upload import log_wandb
from src.report.writer import CSV_NAME, MD_NAME, write_report


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
