"""The one entrypoint: `python -m src.run [key=value ...] [-m]`; `--help` prints tunegrid's help (Hydra's
help mechanism: conf/hydra/help/tunegrid.yaml, with the config groups Hydra finds in conf/ when it runs).

Hydra composes the config and picks the run's folder (named from the config: src/config/identity.py);
`run_job` hands both to the task wrapper (src/train.py `run_recorded`), which validates, claims the folder,
skips a run that already succeeded, trains and records. A run that fails is recorded and returns, so that
one crashing cell never kills a grid (GridSummary, src/grid.py, reports the grid).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src import interrupts, records
from src.config import validate
from src.train import run_recorded


def shown(value: Any) -> str:
    """`${tg.shown:${key}}` in --help: a value spelled as an override would spell it (null, true, 0.001)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


OmegaConf.register_new_resolver("tg.shown", shown, replace=True)  # read by --help alone


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    hc = HydraConfig.get()
    sweep_dir = Path(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None
    launcher = hc.launcher._target_.rsplit(".", 1)[-1].removesuffix("Launcher").lower()  # basic, ray, slurm
    return run_job(cfg, Path(hc.runtime.output_dir), list(hc.overrides.task), sweep_dir, launcher)


def run_job(
    cfg: DictConfig,
    run_dir: Path,
    overrides: list[str],
    sweep_dir: Path | None = None,
    launcher: str = "basic",
) -> dict[str, Any]:
    """One run (one cell of a grid when sweep_dir is set): its record, written to run_dir/result.json."""
    interrupts.install()  # idempotent; a launcher's worker process (Ray, SLURM) never ran __main__ below
    record = records.new_record(run_dir, overrides, launcher)
    record, code = run_recorded(run_dir, record, lambda: validate(cfg), sweep_dir)
    if code > 128 or (code and sweep_dir is None):  # interrupted stops a grid too: the user asked to stop
        sys.exit(code)
    return record


if __name__ == "__main__":
    interrupts.install()  # from the first moment: a signal while Hydra composes is one line, not a traceback
    main()
