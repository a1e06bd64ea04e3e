"""study: a grid of LoRA runs through one `python -m src.run -m ... seed=0,1,..` vs the same runs as separate
commands: the wall-time ratio, and the time from a run's start to its first finished training step."""

from __future__ import annotations

import shlex
import statistics
import sys
from typing import Any

from benchmarks.profiles import Profile
from benchmarks.runner import Bench, alternate, first_step_time, record_metrics
from benchmarks.settings import BASE
from benchmarks.stats import med, paired_ratio, ratio, summarise


def section_study(b: Bench, prof: Profile) -> dict[str, Any]:
    p = b.plan
    seeds = list(range(p.study_runs))
    common = [
        *BASE,
        *prof.model,
        "method=lora",
        f"trainer.max_steps={p.study_steps}",
        "trainer.logging_steps=1",
        f"trainer.batch_size={prof.batch_size}",
    ]

    def grid(rep: int) -> dict[str, Any]:
        sweep = b.tmp / "runs" / f"{b.counter + 1:03d}-study-grid"
        argv = [
            sys.executable,
            "-m",
            "src.run",
            "-m",
            *common,
            "seed=" + ",".join(map(str, seeds)),
            f"hydra.sweep.dir={sweep}",
        ]
        r = b.run(argv, "study-grid")
        runs = (
            sorted(
                (d for d in sweep.iterdir() if d.is_dir() and (d / "result.json").is_file()),
                key=lambda d: int(d.name),
            )
            if sweep.is_dir()
            else []
        )
        firsts, prev_end = [], r["started_epoch"]
        for d in runs:  # run k starts when run k-1 wrote its record
            firsts.append(first_step_time(d, prev_end))
            prev_end = (d / "result.json").stat().st_mtime
        r.update(
            runs=len(runs),
            ok=sum(record_metrics(d / "result.json").get("status") == "success" for d in runs),
            time_to_first_step_per_run_s=firsts,
            command=shlex.join(argv[1:]),
        )
        ok = [f for f in firsts if f is not None]
        r["time_to_first_step_s"] = max(ok) if ok else None
        return r

    def singles(rep: int) -> dict[str, Any]:
        each = [b.framework([*common, f"seed={s}"], f"study-single{s}") for s in seeds]
        firsts = [e.get("time_to_first_step_s") for e in each]
        ok = [f for f in firsts if f is not None]
        return {
            "rc": max(e["rc"] for e in each),
            "wall_s": sum(e["wall_s"] for e in each),
            "cpu_s": sum(e["cpu_s"] for e in each),
            "runs": len(each),
            "ok": sum(e.get("status") == "success" for e in each),
            "time_to_first_step_per_run_s": firsts,
            "time_to_first_step_s": max(ok) if ok else None,
            "command": each[0].get("command"),
        }

    warm = b.warm(prof)
    runs = alternate({"grid": grid, "singles": singles}, p.study_reps)
    summ = {k: summarise(v) for k, v in runs.items()}
    per_run = {
        k: [t for r in v for t in r.get("time_to_first_step_per_run_s", []) if t is not None]
        for k, v in runs.items()
    }
    return {
        "what": f"{p.study_runs} LoRA runs (seed=0..{p.study_runs - 1}), {p.study_steps} steps each: one "
        f"`python -m src.run -m ... seed=0,1,..` vs {p.study_runs} separate commands",
        "runs": runs,
        "summary": summ,
        "warmup": warm,
        "time_to_first_step_s": {
            k: {"median": statistics.median(v), "max": max(v)} if v else None for k, v in per_run.items()
        },
        "ratios": {
            "wall_s grid/singles": ratio(med(summ["grid"], "wall_s"), med(summ["singles"], "wall_s")),
            "wall_s grid/singles (paired)": paired_ratio(runs["grid"], runs["singles"], "wall_s"),
        },
        "targets": {"wall_s grid/singles": "<= 1.10", "time_to_first_step_s": "< 10 s per run (tiny model)"},
    }
