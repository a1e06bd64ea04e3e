"""The generation evaluation of a trained model, end to end: generate on the test prompts the data module
rendered, score the generations (task metrics, reward model, judge), write samples.jsonl and a W&B table.
And the preflight that fails before training when an enabled scorer cannot be reached."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from src.config.evaluation import Reward
from src.evaluation import judge, reward
from src.evaluation.generation import SAMPLES, generate_samples, samples_table, write_samples
from src.evaluation.task_metrics import compute_metrics, plain


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return sum(vals) / len(vals) if vals else None


def evaluate_generations(
    model,
    tokenizer,
    prompts: Sequence[str],
    references: Sequence[Any],
    eval_cfg: Any,
    metric_names: Sequence[str],
    run_dir: Path,
    loggers: Sequence[Any] = (),
    prefix: str = "test",
    virtual_tokens: int = 0,
) -> dict[str, float]:
    """Generate on the prompts (data.TestPrompts: the first eval.num_samples distinct test prompts), score
    them, write samples.jsonl and a W&B table.

    Returns split-prefixed metrics for the record: test/rouge1 … (`metric_names`), test/reward (mean, when
    eval.reward_model is set), test/judge (mean 0-100 over parsed replies) and test/judge_parsed (fraction
    of replies with a score), when eval.judge is set.
    """
    if not prompts:
        return {}
    ev = eval_cfg
    print(f"tunegrid: generating on {len(prompts)} test prompts (eval.num_samples)", flush=True)
    rows = generate_samples(model, tokenizer, prompts, references, ev.get("generation"), virtual_tokens)
    generations = [r["generation"] for r in rows]
    out: dict[str, float | None] = compute_metrics(
        metric_names, generations, [r["reference"] for r in rows], prefix, ev.get("metric_args")
    )
    if ev.get("reward_model"):
        rs = Reward.model_validate(plain(ev.get("reward")) or {})
        scores = reward.reward_scores(
            prompts, generations, str(ev.reward_model), rs.batch_size, rs.max_length, rs.label
        )
        for row, sc in zip(rows, scores, strict=True):
            row["reward"] = sc
        out[f"{prefix}/reward"] = _mean(scores)
    if ev.get("judge"):
        judged, replies = judge.judge_scores(rows, str(ev.judge), ev.get("judge_settings"))
        for row, sc, reply in zip(rows, judged, replies, strict=True):
            row["judge"], row["judge_reply"] = sc, reply
        out[f"{prefix}/judge"] = _mean(judged)
        out[f"{prefix}/judge_parsed"] = sum(s is not None for s in judged) / len(judged)
    write_samples(Path(run_dir) / SAMPLES, rows)
    cols, data = samples_table(rows)
    for lg in loggers:
        if hasattr(lg, "log_table"):
            lg.log_table(f"{prefix}/samples", cols, data)
    return {k: v for k, v in out.items() if v is not None}


def preflight(eval_cfg: Any) -> None:
    """Before training: fail fast (ConfigError) when an enabled reward model or judge is unreachable."""
    if eval_cfg.get("reward_model"):
        reward.check_reachable(str(eval_cfg.reward_model))
    if eval_cfg.get("judge"):
        judge.check_reachable(str(eval_cfg.judge), eval_cfg.get("judge_settings"))
