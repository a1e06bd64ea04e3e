"""`hydra/launcher=ray`: a grid's cells as Ray tasks on one machine. hydra-ray-launcher's helpers start Ray and
run each job (its `_run_job` sets Hydra's state in the worker and calls the task function); tunegrid adds the
per-cell resources (`ray.remote(num_gpus=gpus_per_run, num_cpus=cpus_per_run, max_calls=1)`: Ray gives each
cell its own CUDA_VISIBLE_DEVICES and, with max_calls=1, a new process, so GPU memory is released between
cells) and a record for a cell whose worker died, where the plugin's launch() would raise and end the grid."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from omegaconf import OmegaConf

from src import records
from src.errors import first_line
from src.scaleout.cells import cells, job_ended_without_record, write_manifest

# The plugin's default (ray#11966): Ray's own default asks for 30% of RAM, too much on a small CI machine.
OBJECT_STORE_BYTES = 78_643_200


def launch(launcher: Any, job_overrides, initial_job_idx: int) -> list[JobReturn]:
    import ray
    from hydra_plugins.hydra_ray_launcher._launcher_util import launch_job_on_ray, start_ray

    setup_globals()
    config = launcher.config
    configure_log(config.hydra.hydra_logging, config.hydra.verbose)
    init = {k: v for k, v in _plain(launcher.init).items() if v is not None}
    init.setdefault("object_store_memory", OBJECT_STORE_BYTES)
    start_ray(OmegaConf.create(init))
    remote = {
        "num_gpus": launcher.gpus_per_run,
        "num_cpus": launcher.cpus_per_run,
        "max_calls": 1,
        "max_retries": 0,  # a cell whose worker died is recorded (as SLURM's are); re-running the grid retries
        **_plain(launcher.remote),
    }
    _check_fits(remote, ray.cluster_resources())
    todo = cells(launcher, job_overrides, initial_job_idx)
    since = records.now()
    sweep_dir = Path(str(config.hydra.sweep.dir))
    write_manifest(sweep_dir, "ray", todo)
    print(
        f"tunegrid: {len(todo)} cell(s) on Ray ({ray.cluster_resources().get('GPU', 0):g} GPU(s), "
        f"{remote['num_gpus']:g} per cell), in {sweep_dir}"
    )
    state = Singleton.get_state()
    refs = [
        launch_job_on_ray(
            launcher.hydra_context, OmegaConf.create(remote), c.config, launcher.task_function, state
        )
        for c in todo
    ]
    out = []
    for cell, ref in zip(todo, refs, strict=True):
        try:
            out.append(ray.get(ref))
        except ray.exceptions.RayError as e:  # the worker process died: record the cell, go on
            why = f"its Ray worker ended without writing a record ({first_line(e, 200)})"
            rec = job_ended_without_record(cell, "ray", since, why)
            out.append(JobReturn(overrides=cell.overrides, status=JobStatus.COMPLETED, _return_value=rec))
    return out


def _check_fits(remote: dict[str, Any], have: dict[str, float]) -> None:
    """A cell that asks for more than the Ray cluster has would wait forever (Ray only warns that the task is
    infeasible): one line, exit 2, before any cell is sent."""
    for key, resource, fix in (
        ("gpus_per_run", "GPU", "hydra.launcher.gpus_per_run=0 runs the cells on CPUs; "
         "hydra.launcher.init.num_gpus=N declares N logical GPUs"),
        ("cpus_per_run", "CPU", "ask for fewer"),
    ):  # fmt: skip
        want = remote["num_gpus" if resource == "GPU" else "num_cpus"]
        if want > have.get(resource, 0):
            print(
                f"tunegrid: error: hydra.launcher.{key}={want:g}: Ray sees {have.get(resource, 0):g} {resource}(s) "
                f"here, so no cell could start; {fix}",
                file=sys.stderr,
            )
            sys.exit(2)


def _plain(node: Any) -> dict[str, Any]:
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else dict(node or {})
