"""batching and batching_loss: the batching modes (benchmarks/shim.py --batching MODE) on Alpaca-like lengths:
non-padding tokens trained per second, padding share, and the eval loss after one epoch."""

from __future__ import annotations

import math
from typing import Any

from benchmarks.configs import compose, prebuild
from benchmarks.profiles import Profile
from benchmarks.runner import Bench, alternate
from benchmarks.settings import ALPACA_LIKE, BASE
from benchmarks.stats import med, paired_ratio, ratio, summarise


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
