"""Running things: every timed run is a fresh `python ...` process, timed from outside; its figures come from
what it wrote (the framework's result.json and metrics.jsonl, the shim's token counts). `alternate` runs the
contenders of a comparison in turn."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.profiles import Profile
from benchmarks.settings import BASE, REPO, Plan


@dataclass
class Bench:
    """One benchmark invocation: its options, plan, scratch folder (run folders and logs) and environment."""

    args: argparse.Namespace
    plan: Plan
    tmp: Path
    env: dict[str, str]
    counter: int = 0
    warmed: dict[str, Any] = field(default_factory=dict)

    def warm(self, prof: Profile) -> dict[str, Any] | None:
        """Once per profile, an uncounted 2-step run: bytecode, page cache, the model and default data cached."""
        if prof.name in self.warmed:
            return None
        print(f"  warm-up ({prof.name}): one 2-step run, not counted", flush=True)
        self.warmed[prof.name] = self.framework(
            [*BASE, *prof.model, "method=lora", "trainer.max_steps=2"], f"warmup-{prof.name}"
        )
        return self.warmed[prof.name]

    def run(self, argv: list[str], tag: str, extra_env: dict[str, str] | None = None) -> dict[str, Any]:
        """Run one command from the repo root; return rc, wall_s, cpu_s, max_rss_mb, started_epoch, log."""
        self.counter += 1
        tag = safe(tag)
        log_path = self.tmp / "logs" / f"{self.counter:03d}-{tag}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**self.env, **(extra_env or {})}
        started = time.time()
        t0 = time.perf_counter()
        with log_path.open("w") as log:
            proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out = {
            "rc": proc.returncode,
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "max_rss_mb": usage.ru_maxrss / 1024,
            "started_epoch": started,
            "log": str(log_path),
        }
        if proc.returncode != 0:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            out["error"] = " | ".join(tail)[-400:]
            print(f"    ! {tag} exited {proc.returncode}: {out['error']}", flush=True)
        return out

    def framework(
        self, overrides: list[str], tag: str, shim: list[str] | None = None, counts: bool = False
    ) -> dict[str, Any]:
        """One `python -m src.run` (or `python -m benchmarks.shim ... --`) run; metrics from its result.json."""
        tag = safe(tag)
        run_dir = self.tmp / "runs" / f"{self.counter + 1:03d}-{tag}"
        counts_path = run_dir.with_suffix(".counts.json")
        if shim is not None:
            argv = [
                sys.executable,
                "-m",
                "benchmarks.shim",
                *shim,
                "--",
                *overrides,
                f"hydra.run.dir={run_dir}",
            ]
        else:
            argv = [sys.executable, "-m", "src.run", *overrides, f"hydra.run.dir={run_dir}"]
        out = self.run(argv, tag, {"TG_BENCH_COUNTS": str(counts_path)} if counts else None)
        out.update(record_metrics(run_dir / "result.json"))
        if "trainer.logging_steps=1" in overrides:  # the first log line is then the end of step 1
            out["time_to_first_step_s"] = first_step_time(run_dir, out["started_epoch"])
        begin = train_begin_epoch(run_dir / "metrics.jsonl")
        out["startup_s"] = begin - out["started_epoch"] if begin else None
        if counts and counts_path.is_file():
            out.update(
                {
                    k: v
                    for k, v in json.loads(counts_path.read_text()).items()
                    if k not in ("batching", "attn")
                }
            )
            if out.get("syncs") is not None and out.get("steps"):
                out["syncs_per_step"] = out["syncs"] / out["steps"]
            runtime, real = out.get("train_runtime_s"), out.get("tokens_real")
            if runtime and real:
                out["real_tokens_per_s"] = real / (runtime - (out.get("eval_in_train_s") or 0.0))
        out["command"] = shlex.join(argv[1:])
        return out


def safe(tag: str) -> str:
    """A file-name- and Hydra-override-safe tag."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in tag)


def record_metrics(path: Path) -> dict[str, Any]:
    """The figures a run's result.json holds (status, train tok/s, runtime, eval loss, memory ...)."""
    if not path.is_file():
        return {"status": "missing"}
    rec = json.loads(path.read_text())
    m = rec.get("metrics") or {}
    keys = (
        "tokens_per_s",
        "train_runtime_s",
        "tokens_trained",
        "steps",
        "eval_loss",
        "train_loss",
        "peak_memory_mb",
        "predicted_memory_mb",
        "trainable_params",
        "total_params",
        "precision",
        "batching",
        "tokens_per_s_steady",
        "first_step_s",
        "compile_s",
        "micro_batches",
    )
    out = {k: m.get(k) for k in keys if k in m}
    if "tokens_per_s" in out:
        out["train_tokens_per_s"] = out.pop("tokens_per_s")
    out["status"] = rec.get("status")
    out["oom_retries"] = rec.get("oom_retries")
    out["device"] = (rec.get("env") or {}).get("device")
    eval_in_train = m.get("eval_in_train_s")  # the framework's own count (src/trainer.py, session_metrics)
    out["eval_in_train_s"] = eval_in_train
    runtime, tokens = out.get("train_runtime_s"), out.get("tokens_trained")
    if runtime and tokens and eval_in_train is not None and runtime > eval_in_train:
        out["train_only_tokens_per_s"] = tokens / (runtime - eval_in_train)
    return out


def jsonl_rows(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a run's metrics.jsonl (none if it is missing; a torn last line is skipped)."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def train_begin_epoch(path: Path) -> float | None:
    """When trainer.train() started its clock: the first periodic train log's time minus its runtime."""
    for row in jsonl_rows(path):
        if "train/loss" in row and "train/runtime_s" in row and "time" in row:
            return float(row["time"]) - float(row["train/runtime_s"])
    return None


def first_step_time(run_dir: Path, start_epoch: float | None) -> float | None:
    """Seconds from start_epoch to the first training log line (logging_steps=1: the end of step 1)."""
    if start_epoch is None:
        return None
    for row in jsonl_rows(run_dir / "metrics.jsonl"):
        if any(k.startswith("train/") for k in row) and "time" in row:
            return float(row["time"]) - start_epoch
    return None


def alternate(contenders: dict[str, Callable[[int], dict[str, Any]]], reps: int) -> dict[str, list[dict]]:
    """Run every contender reps times, A B C then C B A ...: drift on a shared machine hits all alike."""
    names = list(contenders)
    out: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            print(f"  rep {rep + 1}/{reps}: {name}", flush=True)
            out[name].append(contenders[name](rep))
    return out
