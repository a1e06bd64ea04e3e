"""The optional W&B copy of a report: the table and plots as one `report` run in the study's group, so
they sit beside the runs' own curves. Never required: any failure leaves the report on disk as it is."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

from src.report.study import Study
from src.report.tables import table_rows

if TYPE_CHECKING:
    from src.report.writer import Report


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
