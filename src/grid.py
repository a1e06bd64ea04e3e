"""Hydra callbacks around a run or a grid: an output folder that cannot be written is one line before Hydra
writes anything; at the end of a multirun, one line per run, the report, and a non-zero exit if any run did
not succeed (conf/hydra/default.yaml registers both)."""

from __future__ import annotations

import errno
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from src.atomic import probe
from src.records import RESERVE_BYTES, error_summary, read_records, summary_line


class CheckOutputDir(Callback):
    """Before Hydra writes anything: an output folder that cannot be written is one clear line, not a traceback.
    Real bytes are written and synced (as many as a run reserves for its record), since a full disk still
    lets an empty file be created."""

    def _check(self, key: str, folder: str) -> None:
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe(path, RESERVE_BYTES)
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            print(
                f"tunegrid: error: {key}={folder}: cannot write there ({e.strerror or e}); "
                + ("free some space or choose another folder" if full else "choose a writable folder"),
                file=sys.stderr,
            )
            sys.exit(2)

    def on_run_start(self, config, **kwargs: Any) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)


class GridSummary(Callback):
    """At the end of a multirun: one line per run of this grid, the report, and a non-zero exit if any
    run did not succeed. Statuses come from the jobs' return values (a bad value in a re-run grid is
    not written over an earlier record, but still counts); launchers that run jobs elsewhere fall
    back to the records on disk."""

    def __init__(self) -> None:
        self.returned: list[dict[str, Any]] = []

    def on_job_end(self, config, job_return, **kwargs: Any) -> None:
        try:
            value = job_return.return_value
        except Exception:  # the task raised: tunegrid's wrapper normally prevents this
            value = {"status": "failed", "error": "the job raised before writing its record", "overrides": []}
        if isinstance(value, dict):
            self.returned.append(value)

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.launcher.wait", default=True) is False:
            return  # submitted, not run yet: the launcher said how to follow it (python -m src.status)
        sweep_dir = Path(config.hydra.sweep.dir)
        records = self.returned or read_records(sweep_dir)
        print(f"\ntunegrid: {len(records)} run(s) in {sweep_dir}")
        for rec in records:
            print(summary_line(rec))
        try:  # the report never decides the grid's exit status
            from src.report import write_report  # matplotlib and pandas: only when a grid ends

            write_report(sweep_dir)
            print(f"tunegrid: report: {sweep_dir / 'report.md'} (results.csv and plots beside it)")
        except Exception as e:
            print(
                f"tunegrid: report not written ({error_summary(e)}); try: python -m src.report {sweep_dir}",
                file=sys.stderr,
            )
        bad = [r for r in records if r.get("status") not in ("success", "claimed")]
        if bad:
            print(f"tunegrid: {len(bad)} run(s) did not succeed", file=sys.stderr)
            sys.exit(1)
