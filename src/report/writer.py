"""Writing a report: results.csv, report.md and the plots beside the records, each file atomically, so
that a report run while the grid still trains never leaves (or reads) half a file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from src.atomic import write_bytes
from src.report.document import markdown
from src.report.plots import PLOT_PREFIX, Plot, make_plots
from src.report.study import Study, load
from src.report.tables import csv_text

CSV_NAME = "results.csv"
MD_NAME = "report.md"


@dataclass
class Report:
    study: Study
    dir: Path
    files: list[Path]
    plots: list[Plot]


def write_report(
    root: Path, plots: bool = True, allow_stale: bool = False, code: str | None = None
) -> Report:
    """Read the records under root; write results.csv, report.md and the plots beside them. Stale runs (see
    study.load) are shown and flagged, and compared with the others only with allow_stale."""
    root = Path(root)
    study = load(root, allow_stale=allow_stale, code=code)
    drawn = make_plots(study) if plots else []
    files = []
    for info, png in drawn:
        write_bytes(root / info.file, png)
        files.append(root / info.file)
    for old in root.glob(f"{PLOT_PREFIX}*.png"):  # plots of an earlier report that no longer fit
        if old not in files:
            old.unlink(missing_ok=True)
    infos = [p for p, _ in drawn]
    write_bytes(root / CSV_NAME, csv_text(study))
    write_bytes(root / MD_NAME, markdown(study, infos))
    return Report(study, root, [root / MD_NAME, root / CSV_NAME, *files], infos)
