"""overhead: `python -m src.run method=lora` vs benchmarks/plain_trainer.py (Trainer + PEFT written directly)
on the same model folder, records, split, batch, steps, seed, optimizer and lr."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from benchmarks.configs import compose, model_folder, plain_argv, write_records
from benchmarks.profiles import Profile
from benchmarks.runner import Bench, alternate
from benchmarks.settings import BASE
from benchmarks.stats import med, paired_ratio, ratio, summarise

# The plain script pads each batch to its longest example: the framework does the same in the overhead section.
PIN_DYNAMIC = ("trainer.batching=dynamic",)


def plain_metrics(r: dict[str, Any], out: Path) -> dict[str, Any]:
    """The plain script's figures (its result JSON) under the names record_metrics gives the framework's."""
    if not out.is_file():
        r["status"] = "missing"
        return r
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
    return r


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
        r = plain_metrics(b.run(argv, f"overhead-{prof.name}-{tag}"), out)
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
