"""methods: train tokens/s of full fine-tuning (torch AdamW, and fused AdamW), LoRA, QLoRA and prompt tuning;
with a GPU, MFU and peak memory against the framework's prediction."""

from __future__ import annotations

from typing import Any

from benchmarks.configs import compose, prebuild
from benchmarks.profiles import Profile
from benchmarks.runner import Bench, alternate
from benchmarks.settings import ALPACA_LIKE, BASE
from benchmarks.stats import add_mfu, med, ratio, summarise

METHOD_OVERRIDES = {
    "full": ["method=full"],
    "full_fused": ["method=full", "+optim.optimizer.fused=true"],
    "lora": ["method=lora"],
    "qlora": ["method=qlora"],
    "prompt_tuning": ["method=prompt_tuning"],
}


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

    cfg = compose(common)
    prebuild(cfg)
    warm = b.warm(prof)
    runs = alternate({m: contender(m) for m in p.methods}, p.methods_reps)
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
