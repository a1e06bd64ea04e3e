"""What the benchmark runs with: where results go, the sections, the Hydra overrides every timed run shares,
and how much work each section does (Plan: full vs --quick)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
SECTIONS = ("overhead", "batching", "batching_loss", "methods", "study", "launchers", "speedups")
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
    methods_tuned: bool = False  # each method again with the speedups section's tuned knobs
    study_reps: int = 2
    study_runs: int = 4
    study_steps: int = 10
    launchers_reps: int = 2
    launchers_cells: int = 8
    launchers_steps: int = 10
    speedups_reps: int = 2
    speedups_steps: int = 30


FULL = Plan()
# --gpu-plan: every GPU measurement in one invocation of a few minutes (scripts/gpu_bench.sh, make bench-gpu):
# one repetition each, short runs; the results file is written after every section.
GPU = Plan(
    reps=1,
    overhead_steps=20,
    batching_reps=1,
    methods_reps=1,
    methods_steps=12,
    methods_tuned=True,
    launchers_reps=1,
    launchers_cells=8,
    launchers_steps=10,
    speedups_reps=1,
    speedups_steps=12,
)
GPU_SECTIONS = ("speedups", "methods", "launchers")
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
    launchers_reps=1,
    launchers_cells=4,
    launchers_steps=3,
    speedups_reps=1,
    speedups_steps=8,
)
