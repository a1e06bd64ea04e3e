"""The figures of a comparison: medians and spreads over repetitions, ratios, and model FLOPs utilisation."""

from __future__ import annotations

import math
import statistics
from typing import Any

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
    "tokens_per_s_steady",
    "first_step_s",
    "compile_s",
    "syncs_per_step",
    "mfu_steady",
    "cells_per_hour",
    "oom_retries",
)
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
# Training FLOPs per token per parameter: 6 with weight gradients, 4 without (forward 2 + activation grads 2).
FLOPS_PER_PARAM = {"full": 6, "full_fused": 6, "lora": 4, "qlora": 4, "prompt_tuning": 4}


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


def peak_flops(device: str | None, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if not device or device == "cpu":
        return None
    for name, tflops in PEAK_BF16_TFLOPS.items():  # most specific names first
        if name in device:
            return tflops * 1e12
    return None


def add_mfu(
    r: dict[str, Any],
    method: str,
    override: float | None,
    dims: tuple[int, int] | None = None,
    examples_per_step: int | None = None,
) -> None:
    """Model FLOPs utilisation: (FLOPS_PER_PARAM·N + attention) · tokens/s over the GPU's dense bf16 peak,
    N = all parameters with a tied head counted once. Attention per token: 12·L·H·T (PaLM's appendix B,
    forward and backward, T the mean example length: packed examples attend within themselves), × 4/6
    without weight gradients; left out without dims. Both the record's rate and the steady one (without the
    first step) give an MFU."""
    peak = peak_flops(r.get("device"), override)
    n = r.get("total_params")
    if not (peak and n):
        return
    per_token = FLOPS_PER_PARAM.get(method, 6) * n
    steps, tokens = r.get("steps"), r.get("tokens_trained")
    if dims and examples_per_step and steps and tokens:
        mean_len = tokens / (steps * examples_per_step)
        per_token += 12 * dims[0] * dims[1] * mean_len * FLOPS_PER_PARAM.get(method, 6) / 6
    for rate, key in (("train_tokens_per_s", "mfu"), ("tokens_per_s_steady", "mfu_steady")):
        if r.get(rate):
            r[key] = per_token * r[rate] / peak
