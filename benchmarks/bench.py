"""tunegrid's benchmark (`make bench`): what the framework costs, and which batching wins.

    python benchmarks/bench.py [--quick] [--sections overhead,batching,methods,study,speedups]
                               [--reps N] [--threads N] [--out-dir DIR]

It measures and writes; it never passes or fails on a number. Each comparison runs in this one process
invocation, the contenders alternating (A B, then B A, ...) over several repetitions after an uncounted
warm-up, every run a fresh `python ...` process timed from outside. It prints a table of medians and ratios
and writes benchmarks/results/<host>-<date>[-quick].json (atomically, via a .tmp file).

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
  speedups  (GPU by default) SDPA vs eager attention, fused AdamW, torch.compile, on full fine-tuning.

Figures: "train tok/s" is the record's tokens_per_s (non-padding tokens / Trainer train_runtime); "wall" is
the whole process from outside (perf_counter around the child; CPU time and peak RSS from wait4).
Numbers from a shared machine are noisy: read medians and ratios, and the min-max spread beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
SECTIONS = ("overhead", "batching", "batching_loss", "methods", "study", "speedups")
SCHEMA = 1

# Only training is timed: no evaluation before or during training, no test split, no generation, no W&B.
EVAL_OFF = (
    "eval.eval_before_training=false",
    "eval.test_split=false",
    "eval.num_samples=0",
    "eval.forgetting=false",
    "trainer.eval_every=1000000",
)
BASE = ("logger=none", *EVAL_OFF)
# Alpaca-like lengths: median ~110 tokens, p95 ~260, max_seq_len 512 (benchmarks/alpaca_like.py).
ALPACA_LIKE = (
    "data.generator._target_=benchmarks.alpaca_like.records",
    "+data.generator.median_content_tokens=60",
    "+data.generator.sigma=0.75",
    "data.max_seq_len=512",
)
TINY_512 = ("model.build.n_positions=512", "model.context_length=512")  # the tiny model has 256 positions
# Dense bf16 peak (TFLOP/s) of common GPUs, for model FLOPs utilisation; --peak-tflops overrides.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.0,
    "V100": 125.0,
}


@dataclass
class Plan:
    """How much work each section does (full vs --quick)."""

    reps: int = 3
    overhead_steps: int = 40
    batching_reps: int = 2
    batching_steps: int = 12  # throughput: the first steps of an epoch over 2600 examples
    batching_train: int = 256  # eval loss: one epoch of this many examples (batch 16: 16 steps)
    batching_eval: int = 96
    batching_modes: tuple[str, ...] = ("pad_to_max", "dynamic", "packing", "group_by_length")
    loss_modes: tuple[str, ...] = ("dynamic", "group_by_length")
    methods_reps: int = 2
    methods_steps: int = 30
    methods: tuple[str, ...] = ("full", "lora", "qlora", "prompt_tuning")
    study_reps: int = 2
    study_runs: int = 4
    study_steps: int = 10
    speedups_reps: int = 2
    speedups_steps: int = 30


FULL = Plan()
QUICK = Plan(
    reps=1,
    overhead_steps=10,
    batching_reps=1,
    batching_steps=4,
    batching_train=64,
    batching_eval=32,
    batching_modes=("pad_to_max", "dynamic", "packing", "group_by_length"),
    methods_reps=1,
    methods_steps=8,
    methods=("full", "lora"),
    study_reps=1,
    study_runs=2,
    study_steps=3,
    speedups_reps=1,
    speedups_steps=8,
)


@dataclass
class Profile:
    """A model to benchmark on: the tiny model on CPU, gpt2-medium (bf16) on a GPU."""

    name: str
    model: tuple[str, ...] = ()  # Hydra overrides selecting the model (and precision)
    batching_model: tuple[str, ...] = ()  # extra overrides for max_seq_len 512
    batch_size: int = 16
    bf16: bool = False


# --------------------------------------------------------------------------- running things


@dataclass
class Bench:
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
    )
    out = {k: m.get(k) for k in keys if k in m}
    if "tokens_per_s" in out:
        out["train_tokens_per_s"] = out.pop("tokens_per_s")
    out["status"] = rec.get("status")
    out["device"] = (rec.get("env") or {}).get("device")
    eval_in_train = m.get("eval_in_train_s")  # the framework's own count (src/run.py)
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


NUMERIC = (
    "real_tokens_per_s",
    "train_tokens_per_s",
    "train_only_tokens_per_s",
    "eval_in_train_s",
    "wall_s",
    "cpu_s",
    "max_rss_mb",
    "train_runtime_s",
    "eval_loss",
    "padding_share",
    "startup_s",
    "time_to_first_step_s",
    "peak_memory_mb",
    "predicted_memory_mb",
    "mfu",
)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of each figure over the successful runs."""
    ok = [r for r in runs if r.get("rc", 0) == 0 and r.get("status", "success") == "success"]
    out: dict[str, Any] = {"n": len(ok), "failed": len(runs) - len(ok)}
    for key in NUMERIC:
        vals = [float(r[key]) for r in ok if isinstance(r.get(key), int | float) and math.isfinite(r[key])]
        if vals:
            out[key] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
    return out


def med(summary: dict[str, Any], key: str) -> float | None:
    v = summary.get(key)
    return v["median"] if v else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def paired_ratio(runs_a: list[dict], runs_b: list[dict], key: str) -> float | None:
    """Median of the per-repetition ratios a/b (each pair ran back to back)."""
    rs = [
        a[key] / b[key]
        for a, b in zip(runs_a, runs_b, strict=False)
        if isinstance(a.get(key), int | float) and isinstance(b.get(key), int | float) and b[key]
    ]
    return statistics.median(rs) if rs else None


# --------------------------------------------------------------------------- config helpers (in-process)


def compose(overrides: list[str]):
    """The config `python -m src.run <overrides>` composes (resolvers registered)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import src.config  # noqa: F401  (tg.* resolvers)
    from src.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


def model_folder(cfg) -> str:
    from src import models
    from src.config import cache_dir

    return models.model_path(cfg, cache_dir(cfg))


def write_records(cfg, path: Path) -> Path:
    """The data set's generated records as JSON lines (what the framework generates for the same config)."""
    from hydra.utils import instantiate

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for rec in instantiate(cfg.data.generator):
            f.write(json.dumps(rec) + "\n")
    return path


def plain_argv(cfg, model: str, records: Path, out: Path, method: str, steps: int, bf16: bool) -> list[str]:
    """benchmarks/plain_trainer.py with the settings the framework resolved for the same run."""
    d, t, s = cfg.data, cfg.trainer, cfg.lr_schedule
    warmup = int(s.warmup_steps) if int(s.warmup_steps) > 0 else float(s.warmup_ratio)
    argv = [
        sys.executable,
        str(REPO / "benchmarks" / "plain_trainer.py"),
        "--model",
        model,
        "--records",
        str(records),
        "--out",
        str(out),
        "--method",
        method,
        "--train-size",
        str(d.splits.train),
        "--val-size",
        str(d.splits.validation),
        "--split-seed",
        str(d.split_seed),
        "--max-seq-len",
        str(d.max_seq_len),
        "--prompt",
        str(d.prompt),
        "--response",
        str(d.response),
        "--batch-size",
        str(t.batch_size),
        "--eval-batch-size",
        str(t.eval_batch_size),
        "--max-steps",
        str(steps),
        "--lr",
        repr(float(cfg.lr)),
        "--weight-decay",
        repr(float(cfg.weight_decay)),
        "--warmup",
        str(warmup),
        "--max-grad-norm",
        str(t.max_grad_norm),
        "--logging-steps",
        str(t.logging_steps),
        "--seed",
        str(t.seed),
    ]
    if d.get("prompt_if_empty") is not None:
        argv += ["--prompt-if-empty", str(d.prompt_if_empty.template)]
    if method == "lora":
        p = cfg.method.peft
        argv += [
            "--rank",
            str(p.r),
            "--alpha",
            str(p.lora_alpha),
            "--targets",
            ",".join(p.target_modules),
            "--fan-in-fan-out",
            str(int(bool(p.fan_in_fan_out))),
        ]
    if bf16:
        argv.append("--bf16")
    return argv


# --------------------------------------------------------------------------- sections


# The plain script pads each batch to its longest example: the framework does the same in the overhead section.
PIN_DYNAMIC = ("trainer.batching=dynamic",)


def section_overhead(b: Bench, prof: Profile) -> dict[str, Any]:
    steps = b.plan.overhead_steps
    common = [
        *BASE,
        *prof.model,
        "method=lora",
        f"trainer.batch_size={prof.batch_size}",
        *PIN_DYNAMIC,
    ]
    cfg = compose(common)
    model = model_folder(cfg)  # the cached tiny build (or the profile's folder)
    records = write_records(cfg, b.tmp / "data" / f"{cfg.data.name}.jsonl")

    def framework(rep: int, n: int = steps, tag: str = "framework") -> dict[str, Any]:
        return b.framework([*common, f"trainer.max_steps={n}"], f"overhead-{prof.name}-{tag}")

    def plain(rep: int, n: int = steps, tag: str = "plain") -> dict[str, Any]:
        out = b.tmp / "runs" / f"{b.counter + 1:03d}-overhead-{prof.name}-{tag}.json"
        argv = plain_argv(cfg, model, records, out, "lora", n, prof.bf16)
        r = b.run(argv, f"overhead-{prof.name}-{tag}")
        if out.is_file():
            m = json.loads(out.read_text())
            if m.get("train_begin_epoch"):
                r["startup_s"] = m["train_begin_epoch"] - r["started_epoch"]
            r.update(
                train_tokens_per_s=m["tokens_per_s"],
                train_only_tokens_per_s=m["tokens_per_s"],
                eval_in_train_s=0.0,
                train_runtime_s=m["train_runtime_s"],
                tokens_trained=m["tokens_trained"],
                steps=m["steps"],
                eval_loss=m.get("eval_loss"),
                peak_memory_mb=m.get("peak_memory_mb"),
            )
        else:
            r["status"] = "missing"
        r["command"] = shlex.join(argv[1:3]) + " ..."
        return r

    warm = b.warm(prof)
    runs = alternate({"framework": framework, "plain": plain}, b.plan.reps)
    summ = {k: summarise(v) for k, v in runs.items()}
    f_tok, p_tok = med(summ["framework"], "train_tokens_per_s"), med(summ["plain"], "train_tokens_per_s")
    same_tokens = sorted({r["tokens_trained"] for v in runs.values() for r in v if r.get("tokens_trained")})
    return {
        "what": f"LoRA (rank {cfg.rank}), {steps} steps, batch {prof.batch_size}, data={cfg.data.name}; "
        f"framework `python -m src.run` vs benchmarks/plain_trainer.py (Trainer + PEFT)",
        "command": {
            "framework": runs["framework"][0].get("command") if runs["framework"] else None,
            "plain": shlex.join(
                plain_argv(cfg, model, records, Path("OUT.json"), "lora", steps, prof.bf16)[1:]
            ),
        },
        "runs": runs,
        "summary": summ,
        "warmup": warm,
        "checks": {
            "tokens_trained_identical": len(same_tokens) == 1
            and all(r.get("tokens_trained") for v in runs.values() for r in v),
            "tokens_trained": same_tokens,
            "eval_loss": {k: med(v, "eval_loss") for k, v in summ.items()},
        },
        "ratios": {
            "train_tokens_per_s framework/plain": ratio(f_tok, p_tok),
            "train_tokens_per_s framework/plain (paired)": paired_ratio(
                runs["framework"], runs["plain"], "train_tokens_per_s"
            ),
            "train_only_tokens_per_s framework/plain": ratio(
                med(summ["framework"], "train_only_tokens_per_s"),
                med(summ["plain"], "train_only_tokens_per_s"),
            ),
            "train_only_tokens_per_s framework/plain (paired)": paired_ratio(
                runs["framework"], runs["plain"], "train_only_tokens_per_s"
            ),
            "wall_s framework/plain": ratio(med(summ["framework"], "wall_s"), med(summ["plain"], "wall_s")),
        },
        "targets": {
            "train_tokens_per_s framework/plain": ">= 0.97",
            "train_only_tokens_per_s framework/plain": ">= 0.97",
        },
    }


def batching_runs(b: Bench, prof: Profile, common: list[str], modes: tuple[str, ...], tag: str):
    """Alternate the batching modes (benchmarks/shim.py --batching MODE), seed = repetition."""

    def contender(mode: str):
        def go(rep: int) -> dict[str, Any]:
            return b.framework(
                [*common, f"seed={rep}"], f"{tag}-{prof.name}-{mode}", shim=["--batching", mode], counts=True
            )

        return go

    runs = alternate({m: contender(m) for m in modes}, b.plan.batching_reps)
    return runs, {k: summarise(v) for k, v in runs.items()}


def section_batching(b: Bench, prof: Profile) -> dict[str, Any]:
    """Throughput: the first batching_steps steps of an epoch over the whole Alpaca-like train split (2600),
    so that the length-grouping modes group as they do in a real epoch (mega-batches of 50 batches)."""
    p = b.plan
    modes = tuple(b.args.batching_modes.split(",")) if b.args.batching_modes else p.batching_modes
    if prof.bf16 and "flatten" not in modes and not b.args.batching_modes:
        modes = (*modes, "flatten")  # on a GPU: one row per batch, worth measuring against row packing
    common = [
        *BASE,
        *prof.model,
        *ALPACA_LIKE,
        *prof.batching_model,
        f"data.splits.validation={p.batching_eval}",
        "data.splits.test=0",
        f"trainer.max_steps={p.batching_steps}",
        f"trainer.batch_size={prof.batch_size}",
    ]
    lengths = length_stats(compose(common), prof.batch_size)  # also tokenises the data here, untimed
    warm = b.warm(prof)
    runs, summ = batching_runs(b, prof, common, modes, "batching")
    key = "real_tokens_per_s"
    base = med(summ.get("pad_to_max", {}), key)
    ratios: dict[str, float | None] = {}
    for m in modes:
        if m != "pad_to_max":
            ratios[f"{key} {m}/pad_to_max"] = ratio(med(summ[m], key), base)
            ratios[f"{key} {m}/pad_to_max (paired)"] = paired_ratio(runs[m], runs.get("pad_to_max", []), key)
    for m in modes:
        if m not in ("pad_to_max", "dynamic") and "dynamic" in summ:
            ratios[f"{key} {m}/dynamic"] = ratio(med(summ[m], key), med(summ["dynamic"], key))
    # pad_to_max, dynamic, packing and flatten train the same batches: their losses agree if masking is right.
    same = [m for m in ("dynamic", "packing", "flatten") if m in runs]
    gaps = [
        max(abs(runs[m][i].get("eval_loss", math.nan) - q.get("eval_loss", math.nan)) for m in same)
        for i, q in enumerate(runs.get("pad_to_max", []))
        if all(i < len(runs[m]) for m in same)
    ]
    return {
        "what": f"first {p.batching_steps} steps of an epoch over 2600 Alpaca-like examples (max_seq_len 512), "
        f"batch {prof.batch_size}, full fine-tuning; `python -m benchmarks.shim --batching MODE -- <overrides>`; "
        f"seed = repetition; real tok/s = non-padding tokens (counted on the model's input) / training time",
        "lengths": lengths,
        "command": {m: runs[m][0].get("command") for m in modes if runs[m]},
        "runs": runs,
        "summary": summ,
        "warmup": warm,
        "ratios": ratios,
        "checks": {f"eval_loss max |{'/'.join(same)} - pad_to_max| per seed (same batches)": gaps},
        "targets": {f"{key} packing/pad_to_max": ">= 2", f"{key} group_by_length/pad_to_max": ">= 2"},
    }


def section_batching_loss(b: Bench, prof: Profile) -> dict[str, Any]:
    """Eval loss after one whole epoch of the modes whose batches differ: dynamic (whose loss pad_to_max and
    packing share, see `batching`) vs group_by_length vs bucketed, on the same seeds."""
    p = b.plan
    common = [
        *BASE,
        *prof.model,
        *ALPACA_LIKE,
        *prof.batching_model,
        f"data.splits.train={p.batching_train}",
        f"data.splits.validation={p.batching_eval}",
        "data.splits.test=0",
        "trainer.max_steps=-1",
        "trainer.epochs=1",
        f"trainer.batch_size={prof.batch_size}",
    ]
    prebuild(compose(common))
    warm = b.warm(prof)
    modes = tuple(b.args.loss_modes.split(",")) if b.args.loss_modes else p.loss_modes
    if modes[0] != "dynamic":
        modes = ("dynamic", *(m for m in modes if m != "dynamic"))
    runs, summ = batching_runs(b, prof, common, modes, "batchloss")
    deltas = {
        m: [
            r.get("eval_loss", math.nan) - q.get("eval_loss", math.nan)
            for r, q in zip(runs[m], runs["dynamic"], strict=False)
        ]
        for m in modes[1:]
    }
    return {
        "what": f"one epoch of {p.batching_train} Alpaca-like examples, batch {prof.batch_size}, seed = "
        f"repetition: eval loss of the length-grouped modes vs dynamic (= pad_to_max = packing)",
        "runs": runs,
        "summary": summ,
        "warmup": warm,
        "ratios": {
            f"real_tokens_per_s {m}/dynamic": ratio(
                med(summ[m], "real_tokens_per_s"), med(summ["dynamic"], "real_tokens_per_s")
            )
            for m in modes[1:]
        },
        "checks": {f"eval_loss {m} - dynamic, per seed": v for m, v in deltas.items()},
        "targets": {"eval_loss - dynamic": "<= 0, or within seed noise"},
    }


def prebuild(cfg) -> list[int]:
    """Materialise the model folder and tokenise the data in this process (the framework's own code and
    cache), so that no timed run pays for it; return the train split's token lengths."""
    from src import data, models
    from src.config import cache_dir

    cache = cache_dir(cfg)
    tok = models.load_tokenizer(models.model_path(cfg, cache))
    return [len(x) for x in data.build(cfg.data, tok, cache)["train"]["input_ids"]]


def length_stats(cfg, batch_size: int) -> dict[str, Any]:
    """Token lengths of the train split, and the padding share each batching mode has over one epoch of it
    (simulated with transformers' own length-grouping order; no training)."""
    raw = prebuild(cfg)
    lens = sorted(raw)
    n, max_len = len(lens), int(cfg.data.max_seq_len)

    def pct(q: float) -> int:
        return lens[min(n - 1, int(q * n))]

    return {
        "n": n,
        "mean": sum(lens) / n,
        "median": pct(0.5),
        "p90": pct(0.9),
        "p95": pct(0.95),
        "p99": pct(0.99),
        "max": lens[-1],
        "max_seq_len": max_len,
        "share_at_max": sum(x >= max_len for x in lens) / n,
        "padding_share_one_epoch": simulated_padding(raw, batch_size, max_len),
    }


def simulated_padding(lengths: list[int], batch_size: int, max_len: int) -> dict[str, float]:
    """Padding share of one epoch under each batching mode, from the lengths alone."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    real = sum(lengths)

    def padded(order: list[int]) -> int:
        return sum(
            max(lengths[i] for i in order[k : k + batch_size]) * len(order[k : k + batch_size])
            for k in range(0, len(order), batch_size)
        )

    g = torch.Generator().manual_seed(0)
    random_order = torch.randperm(len(lengths), generator=g).tolist()
    grouped = get_length_grouped_indices(lengths, batch_size, generator=g)
    return {
        "pad_to_max": 1 - real / (len(lengths) * max_len),
        "dynamic": 1 - real / padded(random_order),
        "group_by_length": 1 - real / padded(grouped),
        "packing": 0.0,
    }


METHOD_OVERRIDES = {
    "full": ["method=full"],
    "full_fused": ["method=full", "+optim.optimizer.fused=true"],
    "lora": ["method=lora"],
    "qlora": ["method=qlora"],
    "prompt_tuning": ["method=prompt_tuning"],
}
# Training FLOPs per token per parameter: 6 with weight gradients, 4 without (forward 2 + activation grads 2).
FLOPS_PER_PARAM = {"full": 6, "full_fused": 6, "lora": 4, "qlora": 4, "prompt_tuning": 4}


def section_methods(b: Bench, prof: Profile) -> dict[str, Any]:
    p = b.plan
    steps = p.methods_steps
    common = [*BASE, *prof.model, f"trainer.max_steps={steps}", f"trainer.batch_size={prof.batch_size}"]
    if prof.bf16:  # GPU: long enough sequences to load the chip
        common += [*ALPACA_LIKE, *prof.batching_model]

    def contender(method: str):
        def go(rep: int) -> dict[str, Any]:
            r = b.framework([*common, *METHOD_OVERRIDES[method]], f"methods-{prof.name}-{method}")
            add_mfu(r, method, b.args.peak_tflops)
            return r

        return go

    prebuild(compose(common))
    warm = b.warm(prof)
    runs = alternate({m: contender(m) for m in p.methods}, p.methods_reps)
    summ = {k: summarise(v) for k, v in runs.items()}

    def r(a: str, c: str) -> float | None:
        if a in summ and c in summ:
            return ratio(med(summ[a], "train_tokens_per_s"), med(summ[c], "train_tokens_per_s"))
        return None

    return {
        "what": f"{steps} steps, batch {prof.batch_size}, "
        + ("Alpaca-like data (max_seq_len 512)" if prof.bf16 else f"data={compose(common).data.name}"),
        "command": {m: runs[m][0].get("command") for m in p.methods if runs[m]},
        "runs": runs,
        "summary": summ,
        "warmup": warm,
        "ratios": {
            "train_tokens_per_s lora/full": r("lora", "full"),
            "train_tokens_per_s qlora/lora": r("qlora", "lora"),
            "train_tokens_per_s prompt_tuning/full": r("prompt_tuning", "full"),
            "train_tokens_per_s full_fused/full": r("full_fused", "full"),
        },
        "memory_vs_prediction": {
            m: {
                "peak_memory_mb": med(summ[m], "peak_memory_mb"),
                "predicted_memory_mb": med(summ[m], "predicted_memory_mb"),
                "peak/predicted": ratio(med(summ[m], "peak_memory_mb"), med(summ[m], "predicted_memory_mb")),
            }
            for m in p.methods
        },
        "notes": "on CPU peak_memory_mb is the process's peak RSS, not comparable with the GPU prediction",
    }


def peak_flops(device: str | None, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if not device or device == "cpu":
        return None
    for name, tflops in PEAK_BF16_TFLOPS.items():  # most specific names first
        if name in device:
            return tflops * 1e12
    return None


def add_mfu(r: dict[str, Any], method: str, override: float | None) -> None:
    """Model FLOPs utilisation: FLOPS_PER_PARAM·N·tokens/s over the GPU's dense bf16 peak (attention's
    S² term left out, N = all parameters with a tied head counted once)."""
    peak = peak_flops(r.get("device"), override)
    n, tps = r.get("total_params"), r.get("train_tokens_per_s")
    if peak and n and tps:
        r["mfu"] = FLOPS_PER_PARAM.get(method, 6) * n * tps / peak


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


def section_speedups(b: Bench, prof: Profile) -> dict[str, Any]:
    p = b.plan
    common = [
        *BASE,
        *prof.model,
        *ALPACA_LIKE,
        *prof.batching_model,
        "method=full",
        f"trainer.max_steps={p.speedups_steps}",
        f"trainer.batch_size={prof.batch_size}",
    ]
    variants: dict[str, tuple[list[str], list[str]]] = {
        "baseline (sdpa, AdamW)": ([], ["--attn", "sdpa"]),
        "eager attention": ([], ["--attn", "eager"]),
        "fused AdamW": (["+optim.optimizer.fused=true"], ["--attn", "sdpa"]),
    }
    if b.args.compile or prof.bf16:
        variants["torch.compile"] = ([], ["--attn", "sdpa", "--ta", "torch_compile=true"])

    def contender(name: str):
        extra, shim = variants[name]

        def go(rep: int) -> dict[str, Any]:
            r = b.framework(
                [*common, *extra], f"speedups-{prof.name}-" + name.split()[0].replace(".", ""), shim=shim
            )
            add_mfu(r, "full", b.args.peak_tflops)
            return r

        return go

    prebuild(compose(common))
    warm = b.warm(prof)
    runs = alternate({n: contender(n) for n in variants}, p.speedups_reps)
    summ = {k: summarise(v) for k, v in runs.items()}
    base = med(summ["baseline (sdpa, AdamW)"], "train_tokens_per_s")
    return {
        "what": f"full fine-tuning, {p.speedups_steps} steps, batch {prof.batch_size}, Alpaca-like data",
        "runs": runs,
        "summary": summ,
        "warmup": warm,
        "ratios": {
            f"train_tokens_per_s {n}/baseline": ratio(med(summ[n], "train_tokens_per_s"), base)
            for n in variants
            if n != "baseline (sdpa, AdamW)"
        },
    }


SECTION_FUNCS = {
    "overhead": section_overhead,
    "batching": section_batching,
    "batching_loss": section_batching_loss,
    "methods": section_methods,
    "study": section_study,
    "speedups": section_speedups,
}


# --------------------------------------------------------------------------- profiles


def gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def medium_profile(b: Bench) -> Profile:
    """gpt2-medium in bf16: the hub's weights when they are in the local cache, otherwise a random-init model of
    the same shape (throughput and memory do not depend on the weights) with the tiny model's tokenizer."""
    layers, hidden, heads = (int(x) for x in b.args.medium_shape.split(","))
    overrides = ["model=gpt2-medium", "trainer.precision=bf16"]
    real = layers == 24 and hidden == 1024 and heads == 16 and hub_cached("openai-community/gpt2-medium")
    if not real:
        folder = shaped_gpt2(layers, hidden, heads)
        overrides += [
            f"model.name_or_path={folder}",
            f"model.num_layers={layers}",
            f"model.hidden_size={hidden}",
        ]
    return Profile(
        name="gpt2-medium" if real else f"gpt2-medium-random-{layers}x{hidden}x{heads}",
        model=tuple(overrides),
        batch_size=b.args.gpu_batch_size,
        bf16=True,
    )


def hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "model.safetensors"), str)
    except Exception:
        return False


def shaped_gpt2(layers: int, hidden: int, heads: int) -> str:
    """A GPT-2 of the given shape (vocabulary 50257, 1024 positions), random init, saved once in the cache."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    from src import models
    from src.config import cache_dir

    cfg = compose([])
    folder = cache_dir(cfg) / f"bench-gpt2-{layers}x{hidden}x{heads}"
    if (folder / "config.json").is_file():
        return str(folder)
    tok = models.load_tokenizer(models.model_path(cfg, cache_dir(cfg)))  # the tiny BPE: ids < 512 < 50257
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            n_layer=layers,
            n_embd=hidden,
            n_head=heads,
            vocab_size=50257,
            n_positions=1024,
            bos_token_id=tok.eos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.eos_token_id,
        )
    )
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return str(folder)


# --------------------------------------------------------------------------- report


def environment(threads: int | None) -> dict[str, Any]:
    from src import records

    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "",
        )
    return {
        **records.git_info(),
        "versions": records.versions(),
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "gpu": gpu_name(),
        "loadavg_start": os.getloadavg(),
    }


def fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def spread(s: dict[str, Any], key: str, digits: int = 0) -> str:
    v = s.get(key)
    if not v:
        return "-"
    return f"{fmt(v['median'], digits)} ({fmt(v['min'], digits)}-{fmt(v['max'], digits)})"


def print_section(name: str, res: dict[str, Any]) -> None:
    print(f"\n### {name}: {res.get('what', '')}")
    summ = res.get("summary", {})
    cols = [
        ("real tok/s", "real_tokens_per_s", 0),
        ("train tok/s", "train_tokens_per_s", 0),
        ("train-only tok/s", "train_only_tokens_per_s", 0),
        ("wall s", "wall_s", 1),
        ("eval loss", "eval_loss", 4),
        ("pad share", "padding_share", 3),
        ("startup s", "startup_s", 1),
        ("1st step s", "time_to_first_step_s", 1),
        ("peak MB", "peak_memory_mb", 0),
        ("pred MB", "predicted_memory_mb", 0),
        ("MFU", "mfu", 3),
    ]
    cols = [c for c in cols if any(c[1] in s for s in summ.values())]
    head = "| contender | n | " + " | ".join(c[0] for c in cols) + " |"
    print(head)
    print("|" + "---|" * (len(cols) + 2))
    for contender, s in summ.items():
        failed = f" ({s['failed']} failed)" if s.get("failed") else ""
        print(f"| {contender} | {s['n']}{failed} | " + " | ".join(spread(s, k, d) for _, k, d in cols) + " |")
    for k, v in (res.get("ratios") or {}).items():
        target = (res.get("targets") or {}).get(k)
        print(f"  {k}: {fmt(v, 3)}" + (f"   (target {target})" if target else ""))
    for k in ("checks", "time_to_first_step_s", "lengths", "memory_vs_prediction"):
        if res.get(k):
            print(
                f"  {k}: {json.dumps(res[k], default=lambda x: round(x, 4) if isinstance(x, float) else str(x))}"
            )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
    ap.add_argument("--out-dir", default=str(RESULTS), help="where <host>-<date>.json goes")
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
    args = ap.parse_args(argv)

    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = Plan(
            **{
                **asdict(plan),
                "reps": args.reps,
                "batching_reps": args.reps,
                "methods_reps": args.reps,
                "study_reps": args.reps,
                "speedups_reps": args.reps,
            }
        )
    if args.loss_examples:
        plan = Plan(**{**asdict(plan), "batching_train": args.loss_examples})
    gpu = None if args.no_gpu else gpu_name()
    default_sections = tuple(
        s for s in SECTIONS if (gpu or s != "speedups") and not (args.quick and s == "batching_loss")
    )
    sections = [s.strip() for s in args.sections.split(",")] if args.sections else list(default_sections)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        ap.error(f"--sections: unknown {unknown}; choose from {', '.join(SECTIONS)}")
    threads = None if gpu else (1 if args.threads is None else args.threads) or None

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
    if args.no_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""
    tmp = Path(tempfile.mkdtemp(prefix="tunegrid-bench-"))
    bench = Bench(args=args, plan=plan, tmp=tmp, env=env)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "schema_version": SCHEMA,
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv if argv is None else ["benchmarks/bench.py", *argv],
        "quick": args.quick,
        "plan": asdict(plan),
        "environment": environment(threads),
        "profiles": {},
        "notes": "train tok/s = non-padding tokens / Trainer train_runtime (the record's tokens_per_s); wall = the "
        "whole process. Medians over repetitions, contenders alternating; (min-max) in the table.",
    }
    wanted = args.profiles.split(",") if args.profiles else ["tiny", *(["medium"] if gpu else [])]
    profiles = []
    if "tiny" in wanted:
        profiles.append(Profile(name="tiny" if gpu else "tiny-cpu", batching_model=TINY_512))
    if "medium" in wanted:
        profiles.append(medium_profile(bench))
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.now().strftime("%Y-%m-%d")
    path = out_dir / f"{platform.node() or 'host'}-{date}{'-quick' if args.quick else ''}.json"

    def write() -> None:  # after every section too: a bench stopped by a time limit keeps what it measured
        tmp_path = path.with_name(path.name + ".tmp")
        tmp_path.write_text(json.dumps(result, indent=1, default=str))
        tmp_path.replace(path)

    for prof in profiles:
        out: dict[str, Any] = {}
        result["profiles"][prof.name] = out
        for name in sections:
            if name == "study" and prof.bf16:
                continue  # the per-run overhead is a property of the framework, measured on the tiny model
            if name == "speedups" and not (gpu or "speedups" in (args.sections or "")):
                continue
            print(f"\n== {prof.name}: {name}", flush=True)
            t0 = time.perf_counter()
            try:
                out[name] = SECTION_FUNCS[name](bench, prof)
            except Exception as e:  # one broken section must not lose the others
                import traceback

                traceback.print_exc()
                out[name] = {"error": f"{type(e).__name__}: {e}"}
            out[name]["section_s"] = time.perf_counter() - t0
            write()
    result["environment"]["loadavg_end"] = os.getloadavg()
    result["total_s"] = time.perf_counter() - started
    result["ended_at"] = datetime.now(UTC).isoformat(timespec="seconds")

    print(
        f"\n## tunegrid bench — {result['environment']['host']}, {result['started_at']}, "
        f"{'quick' if args.quick else 'full'}, threads={threads or 'default'}, gpu={gpu or 'none'}, "
        f"{result['total_s']:.0f} s"
    )
    for pname, secs in result["profiles"].items():
        for sname, res in secs.items():
            if "error" in res:
                print(f"\n### {pname} {sname}: ERROR {res['error']}")
            else:
                print_section(f"{pname} {sname}", res)

    write()
    print(f"\nwrote {path}")
    if args.keep:
        print(f"run folders and logs kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
