"""The one entrypoint: `python -m src.run [key=value ...] [-m]`.

Hydra composes the config; `main` validates it, skips a run that already succeeded, trains through the
recipe (src/train.py) and records the outcome. It is the task wrapper too: a run that fails is recorded
and returns, so that one crashing cell never kills a grid (GridSummary, src/grid.py, reports the grid).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from src import records
from src.config import save_resolved, validate
from src.train import train_with_retries


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    hc = HydraConfig.get()
    sweep_dir = Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    return run_job(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task), sweep_dir)


def run_job(
    cfg: DictConfig, run_dir: Path, overrides: list[str], sweep_dir: Path | None = None
) -> dict[str, Any]:
    """One run (one cell of a grid when sweep_dir is set): its record, written to run_dir/result.json."""
    record = records.new_record(run_dir, overrides)
    try:
        cfg = validate(cfg)
        records.describe(record, cfg)
        # Resume a grid: a run that already succeeded with this config (and this code) is not trained again.
        earlier = records.find_done(sweep_dir or run_dir, record, cfg.sweep)
        if earlier is not None:
            return earlier
        save_resolved(cfg, run_dir)  # `python -m src.train <run_dir>/config.yaml` trains the same run
        name = ",".join(overrides) or "default"
        record["group"] = "/".join(sweep_dir.parts[-2:]) if sweep_dir else name  # W&B groups a grid's runs
        metrics, env, _ = train_with_retries(cfg, run_dir, name, record["group"], record)
        records.write_success(run_dir, record, metrics, env)
    except Exception as e:  # the task wrapper: one crashing run must not kill a grid
        code = records.record_failure(run_dir, record, e)
        if code > 128 or (code and sweep_dir is None):  # interrupted stops a grid too: the user asked to stop
            sys.exit(code)
    return record


if __name__ == "__main__":
    main()
