"""speedups (GPU by default): SDPA vs eager attention, fused AdamW and torch.compile, on full fine-tuning."""

from __future__ import annotations

from typing import Any

from benchmarks.configs import compose, prebuild
from benchmarks.profiles import Profile
from benchmarks.runner import Bench, alternate
from benchmarks.settings import ALPACA_LIKE, BASE
from benchmarks.stats import add_mfu, med, ratio, summarise

BASELINE = "baseline (sdpa, AdamW)"


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
    variants: dict[str, tuple[list[str], list[str]]] = {  # name: (extra overrides, shim options)
        BASELINE: ([], ["--attn", "sdpa"]),
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
    base = med(summ[BASELINE], "train_tokens_per_s")
    return {
        "what": f"full fine-tuning, {p.speedups_steps} steps, batch {prof.batch_size}, Alpaca-like data",
        "runs": runs,
        "summary": summ,
        "warmup": warm,
        "ratios": {
            f"train_tokens_per_s {n}/baseline": ratio(med(summ[n], "train_tokens_per_s"), base)
            for n in variants
            if n != BASELINE
        },
    }
