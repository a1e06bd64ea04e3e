"""launchers: one grid of tiny cells (seed=0..N-1) through each launcher, side by side in one invocation:
the basic launcher (one cell after another) vs Ray with 2 logical GPUs (two cells at a time, each in a new
process) vs SLURM job arrays (the local cluster of scripts/local_slurm.sh, 2 and 1 CPUs per job); wall time of
the whole grid and its ratio to the basic launcher. With a GPU: Ray with gpus_per_run=1, 0.5 and 0.25 (1, 2 and
4 cells per GPU): cells per hour, and whether any cell ran out of memory (the OOM retry's count)."""

from __future__ import annotations

import sys
from typing import Any

from benchmarks.profiles import Profile, gpu_name
from benchmarks.runner import Bench, alternate, record_metrics
from benchmarks.settings import BASE
from benchmarks.stats import med, ratio, summarise
from src.scaleout.slurm_jobs import cluster_problem


def contenders(gpu: bool, slurm: bool) -> dict[str, tuple[str, ...]]:
    if gpu:
        return {
            f"ray {n} cells/GPU": ("hydra/launcher=ray", f"hydra.launcher.gpus_per_run={1 / n}")
            for n in (1, 2, 4)
        }
    out = {
        "basic": (),
        "ray 2 logical GPUs": ("hydra/launcher=ray", "hydra.launcher.init.num_gpus=2"),
    }
    if slurm:
        for cpus in (2, 1):
            out[f"slurm {cpus} CPUs/job"] = ("hydra/launcher=slurm", f"hydra.launcher.cpus_per_task={cpus}")
    return out


def section_launchers(b: Bench, prof: Profile) -> dict[str, Any]:
    p = b.plan
    gpu = not b.args.no_gpu and gpu_name() is not None  # the tiny cells on real GPUs
    slurm = cluster_problem() is None
    common = [*BASE, *prof.model, "method=lora", f"trainer.max_steps={p.launchers_steps}"]
    seeds = "seed=" + ",".join(map(str, range(p.launchers_cells)))

    def grid(name: str, extra: tuple[str, ...]):
        def one(rep: int) -> dict[str, Any]:
            sweep = b.tmp / "runs" / f"{b.counter + 1:03d}-launchers"
            argv = [sys.executable, "-m", "src.run", "-m", *common, seeds, *extra, f"hydra.sweep.dir={sweep}"]
            r = b.run(argv, f"launchers-{name}")
            recs = [record_metrics(f) for f in sweep.glob("*/result.json")] if sweep.is_dir() else []
            r.update(cells=len(recs), ok=sum(m.get("status") == "success" for m in recs))
            r["oom_retries"] = sum(int(m.get("oom_retries") or 0) for m in recs)
            r["cells_per_hour"] = 3600 * r["ok"] / r["wall_s"] if r["wall_s"] else None
            return r

        return one

    b.warm(prof)
    runs = alternate(
        {name: grid(name, extra) for name, extra in contenders(gpu, slurm).items()}, p.launchers_reps
    )
    summ = {k: summarise(v) for k, v in runs.items()}
    base = "ray 1 cells/GPU" if gpu else "basic"
    return {
        "what": f"{p.launchers_cells} LoRA cells of {p.launchers_steps} steps, one grid per launcher"
        + ("" if slurm or gpu else " (no SLURM answered here: scripts/local_slurm.sh start)"),
        "runs": runs,
        "summary": summ,
        "cells_per_hour": {k: med(summ[k], "cells_per_hour") for k in summ},
        "ratios": {
            f"wall_s {k}/{base}": ratio(med(summ[k], "wall_s"), med(summ[base], "wall_s"))
            for k in summ
            if k != base
        },
    }
