"""tunegrid's benchmark (`make bench`): what the framework costs, and which batching wins.

    python -m benchmarks [--quick] [--sections overhead,batching,batching_loss,methods,study,launchers,speedups]
                         [--reps N] [--threads N] [--out-dir DIR]      (python benchmarks/bench.py: the same)

It measures and writes; it never passes or fails on a number. Each comparison runs in this one process
invocation, the contenders alternating (A B, then B A, ...) over several repetitions after an uncounted
warm-up, every run a fresh `python ...` process timed from outside. It prints a table of medians and ratios
and writes benchmarks/results/<host>-<date>[-quick].json (atomically, after every section).

Sections (tiny model on CPU; with a GPU, again on gpt2-medium in bf16 with MFU and memory):
  overhead  `python -m src.run method=lora` vs benchmarks/plain_trainer.py (Trainer + PEFT written
            directly): same model folder, records, split, batch, steps, seed, optimizer, lr. Figure:
            framework train tokens/s / plain train tokens/s (target >= 0.97), and whole-process wall time.
  batching  non-padding tokens trained per second on Alpaca-like lengths (benchmarks/alpaca_like.py,
            max_seq_len 512): pad_to_max (common practice) vs the framework's dynamic padding vs
            group_by_length vs packing (benchmarks/shim.py), one epoch each, same examples per step;
            padding share and final eval loss per mode (target >= 2x pad_to_max, eval loss no worse).
  methods   train tokens/s of full fine-tuning (torch AdamW, and fused AdamW), LoRA, QLoRA, prompt tuning.
  study     a 4-run grid through `-m` vs the same 4 runs as separate commands: wall-time ratio (target
            <= 1.10) and time from a run's start to its first finished training step (target < 10 s).
  launchers the same grid of tiny cells through the basic launcher, Ray (2 logical GPUs) and SLURM (the local
            cluster, 2 and 1 CPUs per job): wall-time ratios (benchmarks/sections/launchers.py).
  speedups  (GPU by default) each throughput knob (attention kernel, bf16 weights, fused AdamW, torch.compile,
            Liger's fused loss, workers + pinned memory, token-budget micro-batches) against the defaults, on
            full fine-tuning, with the eval loss beside each; --gpu-plan: all GPU measurements in minutes.

Figures: "train tok/s" is the record's tokens_per_s (non-padding tokens / Trainer train_runtime); "wall" is
the whole process from outside (perf_counter around the child; CPU time and peak RSS from wait4).
Numbers from a shared machine are noisy: read medians and ratios, and the min-max spread beside them.

Modules: settings (plan, shared overrides), runner (timed runs, what they wrote), stats (medians, ratios,
MFU), configs (the framework's config and data, in process), profiles (the models), sections/ (one module
per comparison), report (environment, the printed tables), this one (options and the loop).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.profiles import gpu_name, profiles
from benchmarks.report import environment, print_report
from benchmarks.runner import Bench
from benchmarks.sections import SECTION_FUNCS
from benchmarks.settings import FULL, GPU, GPU_SECTIONS, QUICK, RESULTS, SCHEMA, SECTIONS, Plan

PROG = "python -m benchmarks"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one repetition of small runs (about 2 minutes)")
    ap.add_argument(
        "--sections",
        default=None,
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all; speedups only with a "
        f"GPU, batching_loss not with --quick)",
    )
    ap.add_argument("--reps", type=int, default=None, help="repetitions per contender (default 3 / quick 1)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP/MKL threads per run on CPU (default 1: on a shared box oversubscribed threads cost "
        "more than they give; 0 = the libraries' default)",
    )
    ap.add_argument("--out-dir", default=str(RESULTS), help="where <host or gpu>-<date>.json goes")
    ap.add_argument(
        "--suffix", default="", help="appended to the results file's name: <host>-<date>-SUFFIX.json"
    )
    ap.add_argument(
        "--gpu-plan",
        action="store_true",
        help="every GPU measurement in a few minutes: speedups and methods (before/after) on gpt2-medium, "
        "cells per GPU on gpt2; one repetition each (scripts/gpu_bench.sh)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the run folders and logs (printed at the end)")
    ap.add_argument(
        "--no-gpu", action="store_true", help="benchmark as if there were no GPU (tiny model only)"
    )
    ap.add_argument(
        "--profiles",
        default=None,
        help="tiny,medium: the models to run (default: tiny, plus medium = gpt2-medium bf16 with a GPU)",
    )
    ap.add_argument(
        "--medium-shape", default="24,1024,16", help="layers,hidden,heads of the GPU profile's model"
    )
    ap.add_argument("--gpu-batch-size", type=int, default=16)
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, for MFU")
    ap.add_argument(
        "--compile", action="store_true", help="also measure torch.compile on CPU (slow to compile)"
    )
    ap.add_argument(
        "--batching-modes",
        default=None,
        help="batching: comma-separated modes of benchmarks/shim.py (default: pad_to_max,dynamic,packing,"
        "group_by_length; with a GPU flatten too)",
    )
    ap.add_argument(
        "--loss-modes",
        default=None,
        help="batching_loss: modes compared with dynamic (default: dynamic,group_by_length; bucketed also exists)",
    )
    ap.add_argument(
        "--loss-examples",
        type=int,
        default=None,
        help="batching_loss: train one epoch of this many examples (default 256 / quick 64)",
    )
    return ap


def plan_for(args: argparse.Namespace) -> Plan:
    """The full or quick plan, with --reps and --loss-examples applied."""
    plan = QUICK if args.quick else GPU if args.gpu_plan else FULL
    if args.reps:
        reps = ("reps", "batching_reps", "methods_reps", "study_reps", "launchers_reps", "speedups_reps")
        plan = replace(plan, **dict.fromkeys(reps, args.reps))
    if args.loss_examples:
        plan = replace(plan, batching_train=args.loss_examples)
    return plan


def run_env(threads: int | None, no_gpu: bool) -> dict[str, str]:
    """The environment every timed run gets: offline, quiet, unbuffered, the thread count."""
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HYDRA_FULL_ERROR": "1",
    }
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if no_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def result_path(out_dir: Path, quick: bool, gpu: str | None = None, suffix: str = "") -> Path:
    """benchmarks/results/<host>-<date>[-quick].json, or <gpu>-<date>.json with a GPU (NVIDIA H200:
    h200-2026-12-02.json): one file per machine and day."""
    date = datetime.now().strftime("%Y-%m-%d")
    name = platform.node() or "host"
    if gpu:
        name = re.sub(r"[^a-z0-9]+", "-", gpu.lower().removeprefix("nvidia ")).strip("-") or "gpu"
    return out_dir / f"{name}-{date}{'-quick' if quick else ''}{'-' + suffix if suffix else ''}.json"


def command_line(argv: list[str] | None) -> list[str]:
    """The command as the user typed it: `python -m benchmarks ...` or `benchmarks/bench.py ...`."""
    if argv is not None:
        return [PROG, *argv]
    return [PROG if Path(sys.argv[0]).name == "__main__.py" else sys.argv[0], *sys.argv[1:]]


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    plan = plan_for(args)
    gpu = None if args.no_gpu else gpu_name()
    if gpu and not args.quick:  # MFU before and after the speedups, per method
        plan = replace(plan, methods_tuned=True)
    default_sections = (
        GPU_SECTIONS
        if args.gpu_plan
        else tuple(
            s for s in SECTIONS if (gpu or s != "speedups") and not (args.quick and s == "batching_loss")
        )
    )
    sections = [s.strip() for s in args.sections.split(",")] if args.sections else list(default_sections)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    threads = None if gpu else (1 if args.threads is None else args.threads) or None

    tmp = Path(tempfile.mkdtemp(prefix="tunegrid-bench-"))
    bench = Bench(args=args, plan=plan, tmp=tmp, env=run_env(threads, args.no_gpu))
    started = time.perf_counter()
    result: dict[str, Any] = {
        "schema_version": SCHEMA,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": command_line(argv),
        "quick": args.quick,
        "plan": asdict(plan),
        "environment": environment(threads),
        "profiles": {},
        "notes": "train tok/s = non-padding tokens / Trainer train_runtime (the record's tokens_per_s); wall = the "
        "whole process. Medians over repetitions, contenders alternating; (min-max) in the table.",
    }
    path = result_path(Path(args.out_dir), args.quick, gpu, args.suffix)

    def write() -> None:  # after every section too: a bench stopped by a time limit keeps what it measured
        from src.atomic import write_bytes  # a temporary sibling renamed into place

        write_bytes(path, json.dumps(result, indent=1, default=str))

    profs = profiles(args, gpu)
    cells_profile = any(p.only and "launchers" in p.only for p in profs)
    for prof in profs:
        out: dict[str, Any] = {}
        result["profiles"][prof.name] = out
        for name in sections:
            if prof.only is not None and name not in prof.only:
                continue
            if name == "launchers" and gpu and prof.only is None and cells_profile:
                continue  # cells per GPU are measured on gpt2's shape (the small profile)
            if name in ("study", "launchers") and prof.bf16 and prof.only is None:
                continue  # the per-run overhead is a property of the framework, measured on the tiny model
            if name == "speedups" and not (gpu or "speedups" in (args.sections or "")):
                continue
            print(f"\n== {prof.name}: {name}", flush=True)
            t0 = time.perf_counter()
            try:
                out[name] = SECTION_FUNCS[name](bench, prof)
            except Exception as e:  # one broken section must not lose the others
                traceback.print_exc()
                out[name] = {"error": f"{type(e).__name__}: {e}"}
            out[name]["section_s"] = time.perf_counter() - t0
            write()
    result["environment"]["loadavg_end"] = os.getloadavg()
    result["total_s"] = time.perf_counter() - started
    result["ended_at"] = datetime.now(UTC).isoformat(timespec="seconds")

    print_report(result, threads, gpu)
    write()
    print(f"\nwrote {path}")
    if args.keep:
        print(f"run folders and logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0
