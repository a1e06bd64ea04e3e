"""`hydra/launcher=slurm`: a grid's cells as one SLURM job array, through submitit. hydra-submitit-launcher's
launcher runs each job on its node (its `__call__`: Hydra's state, the task function); tunegrid adds:
- submit and return (`wait: false`): the plugin's launch() submits and then blocks until every job ends;
  tunegrid's records are the source of truth, so `python -m src.status <sweep dir>` follows the jobs instead;
- a record for a job that ended without writing one (killed hard, a node that failed), where the plugin's
  launch() would raise on that job and end the grid before the report;
- checkpoint-and-requeue: submitit's preemption / time-limit signal (USR2, `signal_delay_s` before the limit)
  stops training at the end of the step with a checkpoint (src/interrupts.py), records `interrupted`, and
  only then lets submitit requeue the job, which resumes from that checkpoint (`resume: auto`).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from src import interrupts, records
from src.errors import ConfigError, first_line
from src.scaleout.cells import cells, job_ended_without_record, write_manifest

INIT_KEYS = ("submitit_folder", "max_num_timeout")  # AutoExecutor(...) arguments, not sbatch parameters


def cluster_problem() -> str | None:
    """Why no SLURM cluster answers here (None when `sinfo` does): for the tests and the benchmark."""
    if shutil.which("sinfo") is None:
        return "no SLURM here (scripts/local_slurm.sh start runs a local one)"
    try:
        ok = subprocess.run(["sinfo", "-h"], capture_output=True, timeout=20).returncode == 0
    except subprocess.TimeoutExpired:
        ok = False
    return None if ok else "no SLURM cluster answers here (scripts/local_slurm.sh start runs a local one)"


def _needs_plugin() -> ConfigError:
    return ConfigError(
        "hydra/launcher=slurm: needs hydra-submitit-launcher; install it: pip install -e '.[slurm]'"
    )


def plugin_keys() -> set[str]:
    """The settings hydra-submitit-launcher's SLURM launcher takes."""
    try:
        from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    except ImportError:
        raise _needs_plugin() from None
    return set(OmegaConf.structured(SlurmQueueConf).keys()) - {"_target_"}


def plugin(params: dict[str, Any]) -> Any:
    """hydra-submitit-launcher's SlurmLauncher, given the launcher config's parameters."""
    try:
        from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher
    except ImportError:
        raise _needs_plugin() from None
    return SlurmLauncher(**params)


def _executor(params: dict[str, Any]) -> Any:
    """submitit's executor with the launcher config's parameters: what the plugin's launch() does before
    submitting (it has no method of its own for it, so it is repeated here)."""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    executor = submitit.AutoExecutor(
        cluster="slurm", folder=params["submitit_folder"], slurm_max_num_timeout=params["max_num_timeout"]
    )
    shared = set(OmegaConf.structured(BaseQueueConf).keys())  # the others take submitit's slurm_ prefix
    executor.update_parameters(
        **{(k if k in shared else f"slurm_{k}"): v for k, v in params.items() if k not in INIT_KEYS}
    )
    return executor


def launch(launcher: Any, job_overrides, initial_job_idx: int) -> list[JobReturn]:
    import submitit

    todo = cells(launcher.plugin, job_overrides, initial_job_idx)
    sweep_dir = Path(str(launcher.plugin.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    since = records.now()
    state = Singleton.get_state()
    args = [(c.overrides, "hydra.sweep.dir", c.num, f"job_id_for_{c.num}", state) for c in todo]
    try:
        jobs = _executor(launcher.plugin.params).map_array(launcher, *zip(*args, strict=True))
    except Exception as e:  # sbatch refused (no such partition, no SLURM here): one line, nothing submitted
        print(
            f"tunegrid: error: hydra/launcher=slurm: submitting failed: {first_line(e, 300)}", file=sys.stderr
        )
        sys.exit(2)
    write_manifest(sweep_dir, "slurm", todo, [j.job_id for j in jobs])
    array = jobs[0].job_id.split("_")[0]
    print(f"tunegrid: submitted {len(jobs)} cell(s) as SLURM job array {array}; records in {sweep_dir}")
    if not launcher.wait:
        print(f"tunegrid: follow it with: python -m src.status {sweep_dir}")
        return [
            JobReturn(
                overrides=c.overrides, status=JobStatus.COMPLETED, _return_value=_submitted(c, j.job_id)
            )
            for c, j in zip(todo, jobs, strict=True)
        ]
    out = []
    for cell, job in zip(todo, jobs, strict=True):
        try:
            out.append(job.results()[0])
        except submitit.core.utils.UncompletedJobError as e:  # no result: killed, exited, or not requeued
            why = f"SLURM job {job.job_id} ended without writing a record ({job.state}: {first_line(e, 200)})"
            rec = job_ended_without_record(cell, "slurm", since, why)
            out.append(JobReturn(overrides=cell.overrides, status=JobStatus.COMPLETED, _return_value=rec))
    return out


def _submitted(cell: Any, job_id: str) -> dict[str, Any]:
    return {"status": "submitted", "overrides": cell.overrides, "job_id": job_id}


def run_job(launcher: Any, *args: Any) -> Any:
    """One cell on its compute node. submitit has bound its signal to checkpoint-and-requeue; tunegrid takes
    the signal over, so that training first stops at the end of a step with a checkpoint, and then calls
    submitit's handler, which requeues the job (or, past max_num_timeout time-outs, does not) and exits."""
    import submitit

    usr = submitit.JobEnvironment()._usr_sig()
    requeue = signal.getsignal(usr)
    interrupts.install(also=(usr,))
    try:
        return launcher.plugin(*args)
    except SystemExit:  # src.run ends an interrupted run with exit 128 + signal
        if interrupts.received() == usr and callable(requeue):
            print(
                f"tunegrid: signal {usr} from SLURM (preemption or time limit): requeueing the job, which "
                "resumes from the run's checkpoint",
                file=sys.stderr,
            )
            signal.signal(
                signal.SIGTERM, signal.SIG_IGN
            )  # SLURM's SIGTERM to the requeued job: exiting already
            requeue(usr, None)
        raise
