"""What the launchers share: each cell's config and folder, the grid's job list (`jobs.json` in the sweep
folder, which `python -m src.status` reads), and a record for a cell whose process died without writing one.

A cell's config is composed only where the launcher needs it (Ray sends it to the worker; SLURM composes it in
the job, on its node): composing costs about 0.4 s a cell here, which Hydra's sweeper already spends once
per cell checking the grid. The job list therefore names cells by their overrides, which a cell's folder
holds too (`.hydra/overrides.yaml`, and its record's `overrides`)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, open_dict

from src import records
from src.atomic import write_json
from src.config import validate, without_hydra

MANIFEST = "jobs.json"


@dataclass
class Cell:
    launcher: Any = field(repr=False)  # the plugin launcher that holds the grid's config and Hydra's context
    overrides: list[str]
    num: int
    _config: DictConfig | None = field(default=None, repr=False)

    @property
    def config(self) -> DictConfig:
        """The job's config, hydra node included, as the job will see it."""
        if self._config is None:
            self._config = self.launcher.hydra_context.config_loader.load_sweep_config(
                self.launcher.config, list(self.overrides)
            )
            with open_dict(self._config):
                self._config.hydra.job.num = self.num
                self._config.hydra.job.id = f"job_id_for_{self.num}"  # the scheduler's id, set in the job
        return self._config

    @property
    def dir(self) -> Path:
        """The folder its record will be in (named from the config: src/config/identity.py)."""
        return Path(str(self.config.hydra.sweep.dir)) / str(self.config.hydra.sweep.subdir)


def cells(launcher: Any, job_overrides, initial_job_idx: int) -> list[Cell]:
    return [Cell(launcher, list(o), initial_job_idx + i) for i, o in enumerate(job_overrides)]


def write_manifest(
    sweep_dir: Path, launcher: str, todo: list[Cell], job_ids: list[str] | None = None
) -> Path:
    """jobs.json: every cell this sweep folder was asked to run (a re-run adds its cells), so that a status
    taken while jobs wait in a queue can count the cells that have not started yet."""
    path = Path(sweep_dir) / MANIFEST
    known = {tuple(c["overrides"]): c for c in (records.read_json(path) or {}).get("cells", [])}
    for i, cell in enumerate(todo):
        known[tuple(cell.overrides)] = {
            "overrides": cell.overrides,
            "launcher": launcher,
            "job_id": job_ids[i] if job_ids else None,
            "submitted_at": records.now(),
        }
    write_json(path, {"cells": list(known.values())})
    return path


def folder_overrides(folder: Path) -> list[str] | None:
    """The overrides of the cell a folder holds: Hydra writes them when the job starts."""
    try:
        got = yaml.load((Path(folder) / ".hydra" / "overrides.yaml").read_text(), Loader=_LOADER)
    except (OSError, yaml.YAMLError):
        rec = records.read_record(folder)
        return rec.get("overrides") if rec else None
    return [str(o) for o in got] if isinstance(got, list) else None


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def job_ended_without_record(cell: Cell, launcher: str, since: str, why: str) -> dict[str, Any]:
    """The record of a cell whose job ended without writing one (killed hard, out of host memory, a node
    that failed): written by the launcher, so that the grid reports the cell and goes on. A record the job
    wrote itself since `since` (an interrupted run's) is kept, and so is any earlier success."""
    mine = records.read_record(cell.dir)
    if mine and mine.get("status") != "running" and str(mine.get("ended_at") or "") >= since:
        return mine
    cell.dir.mkdir(parents=True, exist_ok=True)
    record = records.new_record(cell.dir, cell.overrides, launcher)
    record["launch"].update(host=None, pid=None)  # not the job's: this is the launcher's process
    with contextlib.suppress(Exception):  # what the config says (method, optimizer, ...), for the report
        records.describe(record, validate(without_hydra(cell.config)))
    records.write_failure(cell.dir, record, RuntimeError(why), "failed")
    print(f"tunegrid: {cell.dir.name}: {why}")
    return record
