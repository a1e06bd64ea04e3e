"""methods: train tokens/s of full fine-tuning (torch AdamW, and fused AdamW), LoRA, QLoRA and prompt tuning;
with a GPU, MFU and peak memory against the framework's prediction; with plan.methods_tuned each method again
with the speedups section's "tuned" knobs (MFU before and after)."""

from __future__ import annotations

from typing import Any

from benchmarks.configs import compose, prebuild
from benchmarks.profiles import Profile
from benchmarks.runner import Bench, alternate
from benchmarks.sections.speedups import tuned_overrides
from benchmarks.settings import ALPACA_LIKE, BASE
from benchmarks.stats import add_mfu, med, ratio, summarise

METHOD_OVERRIDES = {
    "full": ["method=full"],
    "full_fused": ["method=full", "optim=adamw_fused"],
    "lora": ["method=lora"],
    "qlora": ["method=qlora"],
    "prompt_tuning": ["method=prompt_tuning"],
}


# Methods whose base weights do not train: stored in bf16 (trainer.weights_dtype=bf16) the matmuls see the same
# bf16 weights autocast would cast at every step, without the casts and the fp32 copies (layer norms and biases
# see bf16-rounded values); the trained parameters stay fp32 (PEFT's autocast_adapter_dtype). QLoRA's base is
# 4-bit already.
FROZEN_BASE = ("lora", "prompt_tuning")


def section_methods(b: Bench, prof: Profile) -> dict[str, Any]:
    p = b.plan
    steps = p.methods_steps
    common = [*BASE, *prof.model, f"trainer.max_steps={steps}", f"trainer.batch_size={prof.batch_size}"]
    if prof.bf16:  # GPU: long enough sequences to load the chip
        common += [*ALPACA_LIKE, *prof.batching_model]

    tuned = tuned_overrides(b, prof) if p.methods_tuned else None
    names = [*p.methods, *([f"{m} tuned" for m in p.methods] if tuned is not None else [])]

    def contender(name: str):
        method = name.removesuffix(" tuned")
        extra = tuned if name.endswith(" tuned") else ()
        if extra and prof.bf16 and method in FROZEN_BASE:  # on a GPU: the frozen base stored in bf16
            extra = (*extra, "trainer.weights_dtype=bf16")

        def go(rep: int) -> dict[str, Any]:
            r = b.framework([*common, *METHOD_OVERRIDES[method], *extra], f"methods-{prof.name}-{name}")
            add_mfu(r, method, b.args.peak_tflops, prof.dims, prof.batch_size)
            return r

        return go

    cfg = compose(common)
    prebuild(cfg)
    warm = b.warm(prof)
    runs = alternate({m: contender(m) for m in names}, p.methods_reps)
    summ = {k: summarise(v) for k, v in runs.items()}

    def r(a: str, c: str) -> float | None:
        if a in summ and c in summ:
            return ratio(med(summ[a], "train_tokens_per_s"), med(summ[c], "train_tokens_per_s"))
        return None

    return {
        "what": f"{steps} steps, batch {prof.batch_size}, "
        + ("Alpaca-like data (max_seq_len 512)" if prof.bf16 else f"data={cfg.data.name}"),
        "command": {m: runs[m][0].get("command") for m in p.methods if runs[m]},
        "runs": runs,
        "summary": summ,
        "warmup": warm,
        "ratios": {
            "train_tokens_per_s lora/full": r("lora", "full"),
            "train_tokens_per_s qlora/lora": r("qlora", "lora"),
            "train_tokens_per_s prompt_tuning/full": r("prompt_tuning", "full"),
            "train_tokens_per_s full_fused/full": r("full_fused", "full"),
            **{
                f"train_tokens_per_s {m} tuned/{m}": r(f"{m} tuned", m)
                for m in p.methods
                if tuned is not None
            },
        },
        "tuned_overrides": list(tuned) if tuned is not None else None,
        "mfu_before_after": {
            m: {"before": med(summ[m], "mfu"), "after": med(summ.get(f"{m} tuned", {}), "mfu")}
            for m in p.methods
        }
        if tuned is not None
        else None,
        "memory_vs_prediction": {
            m: {
                "peak_memory_mb": med(summ[m], "peak_memory_mb"),
                "predicted_memory_mb": med(summ[m], "predicted_memory_mb"),
                "peak/predicted": ratio(med(summ[m], "peak_memory_mb"), med(summ[m], "predicted_memory_mb")),
            }
            for m in names
        },
        "notes": "on CPU peak_memory_mb is the process's peak RSS, not comparable with the GPU prediction",
    }
