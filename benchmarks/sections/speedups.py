"""speedups (GPU by default; `--sections speedups` on CPU): each throughput knob of one run (src/speed.py,
conf/trainer/default.yaml) against today's defaults, and all the knobs that keep the loss together ("tuned"),
on full fine-tuning of packed Alpaca-like data at the profile's effective batch, same seed and steps.

Figures per contender: train tok/s (the record's, over the whole training time) and steady tok/s (without
the first step, which holds torch.compile's compilation; compile_s is reported apart), MFU, peak memory,
host synchronisations per step (CUDA's sync debug mode, GPU only), and the eval loss against the
baseline's: a knob is a candidate default only where it is faster and its loss stays within
LOSS_TOLERANCE. A contender that needs what this machine lacks (a GPU, flash-attn, liger-kernel) is listed
under `skipped` with the reason, not run.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from benchmarks.configs import compose, prebuild
from benchmarks.profiles import Profile, gpu_name
from benchmarks.runner import Bench, alternate
from benchmarks.settings import ALPACA_LIKE, BASE
from benchmarks.stats import add_mfu, med, ratio, summarise

BASELINE = "baseline"
TUNED = "tuned"
LOSS_TOLERANCE = 0.02  # nats of eval loss: the same seed and data, so only rounding and kernels differ
# name: (overrides, what it needs). Order: the table's.
KNOBS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "eager attention": (("trainer.attention=eager",), ()),
    "flash-attention 2": (("trainer.attention=flash_attention_2",), ("gpu", "flash_attn")),
    "bf16 weights": (("trainer.precision=bf16", "trainer.weights_dtype=bf16"), ()),
    "fused AdamW": (("optim=adamw_fused",), ()),
    "torch.compile": (("trainer.compile=true",), ("compile",)),
    "Liger fused loss": (("trainer.fused_loss=liger",), ("gpu", "liger_kernel")),
    "workers 2 + pinned": (("trainer.num_workers=2", "trainer.pin_memory=true"), ()),
    "logging every step": (("trainer.logging_steps=1",), ()),
    "tokens_per_batch": ((), ()),  # the overrides depend on the profile: token_budget()
}
# The knobs "tuned" combines: those that change no computation beyond rounding (not eager attention, not bf16
# weights, which updates bf16 weights in full fine-tuning; logging every step is a cost, not a knob).
TUNED_KNOBS = ("flash-attention 2", "fused AdamW", "torch.compile", "Liger fused loss", "workers 2 + pinned")


def token_budget(prof: Profile) -> tuple[str, ...]:
    """The whole effective batch in one micro-batch: the budget is effective batch × a generous mean length."""
    return (f"trainer.tokens_per_batch={prof.speed_batch * prof.speed_accum * 256}",)


def missing(needs: tuple[str, ...], b: Bench) -> str | None:
    """Why a contender cannot run here (None: it can)."""
    gpu = gpu_name() is not None and not b.args.no_gpu
    for need in needs:
        if need == "gpu" and not gpu:
            return "needs a CUDA GPU"
        if need == "compile" and not (gpu or b.args.compile):
            return "torch.compile on CPU only with --compile (slow to compile, and no GPU to learn about)"
        if need not in ("gpu", "compile") and importlib.util.find_spec(need) is None:
            return f"the {need} package is not installed"
    return None


def contenders(b: Bench, prof: Profile) -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """(name: overrides) of the contenders that run here, and (name: reason) of those that cannot."""
    run: dict[str, tuple[str, ...]] = {BASELINE: ()}
    skipped: dict[str, str] = {}
    for name, (overrides, needs) in KNOBS.items():
        why = missing(needs, b)
        if why:
            skipped[name] = why
        else:
            run[name] = token_budget(prof) if name == "tokens_per_batch" else overrides
    run[TUNED] = tuple(o for k in TUNED_KNOBS if k in run for o in run[k]) + token_budget(prof)
    return run, skipped


def tuned_overrides(b: Bench, prof: Profile) -> tuple[str, ...]:
    """The "tuned" contender's overrides on this machine (the methods section's "after")."""
    return contenders(b, prof)[0][TUNED]


def section_speedups(b: Bench, prof: Profile) -> dict[str, Any]:
    p = b.plan
    common = [
        *BASE,
        *prof.model,
        *ALPACA_LIKE,
        *prof.batching_model,
        "method=full",
        f"trainer.max_steps={p.speedups_steps}",
        f"trainer.batch_size={prof.speed_batch}",
        f"trainer.grad_accum={prof.speed_accum}",
    ]
    run, skipped = contenders(b, prof)

    def contender(name: str):
        def go(rep: int) -> dict[str, Any]:
            r = b.framework(
                [*common, *run[name]], f"speedups-{prof.name}-{name}", shim=["--count-syncs"], counts=True
            )
            add_mfu(r, "full", b.args.peak_tflops, prof.dims, prof.speed_batch * prof.speed_accum)
            return r

        return go

    prebuild(compose(common))
    warm = b.warm(prof)
    runs = alternate({n: contender(n) for n in run}, p.speedups_reps)
    summ = {k: summarise(v) for k, v in runs.items()}
    base_tps, base_loss = med(summ[BASELINE], "train_tokens_per_s"), med(summ[BASELINE], "eval_loss")

    def verdict(name: str) -> dict[str, Any]:
        s = summ[name]
        loss = med(s, "eval_loss")
        delta = None if loss is None or base_loss is None else loss - base_loss
        return {
            "train_tokens_per_s/baseline": ratio(med(s, "train_tokens_per_s"), base_tps),
            "steady_tokens_per_s/baseline": ratio(
                med(s, "tokens_per_s_steady"), med(summ[BASELINE], "tokens_per_s_steady")
            ),
            "peak_memory/baseline": ratio(med(s, "peak_memory_mb"), med(summ[BASELINE], "peak_memory_mb")),
            "eval_loss_delta": delta,
            "loss_unchanged": None if delta is None else abs(delta) <= LOSS_TOLERANCE,
        }

    return {
        "what": f"full fine-tuning, {p.speedups_steps} steps, micro-batch {prof.speed_batch} x accumulation "
        f"{prof.speed_accum}, packed Alpaca-like data (max_seq_len 512)",
        "contenders": {n: list(o) for n, o in run.items()},
        "skipped": skipped,
        "runs": runs,
        "summary": summ,
        "warmup": warm,
        "gains": {n: verdict(n) for n in run if n != BASELINE},
        "loss_tolerance": LOSS_TOLERANCE,
    }
