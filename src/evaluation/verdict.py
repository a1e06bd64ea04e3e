"""The verdict of a preference-tuned (DPO) policy against its reference model (the SFT model it started from):
both answer the same test prompts with the same eval.generation settings, one scorer scores both, and the
policy's win rate (ties count half) comes with a percentile-bootstrap 95% interval over prompts, because on a
few dozen prompts the point alone says little.

The policy's generations are the ones evaluate_generations already made (samples.jsonl): the policy is not
generated twice. The reference model is only ever passed to generate_samples (with LoRA it is the policy's own
PeftModel with the adapter switched off, so it must not be copied or moved)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from src.config.evaluation import Reward, Verdict
from src.errors import ConfigError
from src.evaluation import reward
from src.evaluation.generation import SAMPLES, generate_samples, write_samples
from src.evaluation.task_metrics import METRICS, compute_metrics, plain

VERDICT = "verdict.jsonl"


def win_rate(
    policy: Sequence[float], reference: Sequence[float], n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """The policy's win rate over prompts (1 a win, 0.5 a tie, 0 a loss) with a percentile-bootstrap 95%
    interval (n_boot resamples of the prompts, numpy Generator(seed): the same seed, the same interval).

    Returns {"win_rate", "ci_low", "ci_high", "wins", "ties", "losses", "n"}. One prompt: the interval is
    the point. ValueError on unequal lengths, no prompts, n_boot < 1 or a non-finite score.
    """
    import numpy as np

    if len(policy) != len(reference):
        raise ValueError(f"win_rate: {len(policy)} policy scores but {len(reference)} reference scores")
    if not policy:
        raise ValueError("win_rate: no scores (n=0)")
    if n_boot < 1:
        raise ValueError(f"win_rate: n_boot={n_boot}; must be ≥ 1")
    p, r = np.asarray(policy, dtype=float), np.asarray(reference, dtype=float)
    if not (np.isfinite(p).all() and np.isfinite(r).all()):
        raise ValueError("win_rate: a score is not finite (nan or inf)")
    outcome = np.where(p > r, 1.0, np.where(p == r, 0.5, 0.0))
    n = len(outcome)
    idx = np.random.Generator(np.random.PCG64(seed)).integers(0, n, size=(n_boot, n))
    low, high = np.percentile(outcome[idx].mean(axis=1), [2.5, 97.5])
    return {
        "win_rate": float(outcome.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "wins": int((outcome == 1.0).sum()),
        "ties": int((outcome == 0.5).sum()),
        "losses": int((outcome == 0.0).sum()),
        "n": n,
    }


def resolve_scorer(scorer: str, eval_cfg: Any, metric_names: Sequence[str]) -> str:
    """eval.verdict.scorer made concrete: "reward", or a metric name from task_metrics.METRICS. auto: the
    reward model when eval.reward_model is set, else the data set's first text metric. ConfigError when
    neither is there (callers may call this before training, to fail early)."""
    has_rm = bool(eval_cfg.get("reward_model"))
    if scorer == "auto":
        if has_rm:
            return "reward"
        if not metric_names:
            raise ConfigError(
                "eval.verdict.scorer=auto: no eval.reward_model and the data set has no text metric; "
                "set eval.reward_model or eval.verdict.scorer to a metric name"
            )
        scorer = metric_names[0]
    if scorer == "reward":
        if not has_rm:
            raise ConfigError("eval.verdict.scorer=reward: needs eval.reward_model; it is null")
        return scorer
    if scorer not in METRICS:
        raise ConfigError(
            f"eval.verdict.scorer={scorer!r}: must be auto, reward or one of {', '.join(METRICS)}"
        )
    return scorer


def scorer_label(scorer: str) -> str:
    """What a resolved scorer reports per sample: "reward", or the metric's key (rouge: its last, rougeL)."""
    return scorer if scorer == "reward" else METRICS[scorer][1][-1]


def per_sample_scores(
    prompts: Sequence[str],
    generations: Sequence[str],
    references: Sequence[Any],
    scorer: str,
    eval_cfg: Any,
    metric_names: Sequence[str],
) -> list[float]:
    """One score per generation: the reward model's (eval.reward_model with the eval.reward settings, as
    evaluate_generations scores), or a task metric's value on that one sample (scorer_label's key).
    `scorer` may be auto (resolve_scorer)."""
    if not len(prompts) == len(generations) == len(references):
        raise ValueError(
            f"per_sample_scores: {len(prompts)} prompts, {len(generations)} generations, "
            f"{len(references)} references"
        )
    scorer = resolve_scorer(scorer, eval_cfg, metric_names)
    if scorer == "reward":
        rs = Reward.model_validate(plain(eval_cfg.get("reward")) or {})
        return reward.reward_scores(
            prompts, generations, str(eval_cfg.get("reward_model")), rs.batch_size, rs.max_length, rs.label
        )
    key, args = scorer_label(scorer), eval_cfg.get("metric_args")
    return [
        compute_metrics([scorer], [g], [r], "x", args)[f"x/{key}"]
        for g, r in zip(generations, references, strict=True)
    ]


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def _cell(v: Any) -> Any:
    return "\n---\n".join(v) if isinstance(v, list) else v


def _read_samples(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / SAMPLES
    if not path.is_file():
        raise ValueError(
            f"judge_against: no policy rows given and no {path} (evaluate_generations writes it)"
        )
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def judge_against(
    policy_rows: Sequence[dict] | None,
    reference_model,
    tokenizer,
    prompts: Sequence[str],
    references: Sequence[Any],
    eval_cfg: Any,
    metric_names: Sequence[str],
    run_dir: Path,
    against: str,
    virtual_tokens: int = 0,
    loggers: Sequence[Any] = (),
    prefix: str = "test",
) -> dict[str, float]:
    """The policy's generations against the reference model's on the first eval.verdict.num_prompts test
    prompts (null: all the policy's rows); writes verdict.jsonl and the W&B table <prefix>/verdict.

    `policy_rows`: the rows evaluate_generations made for the policy on these `prompts` (in order), or None
    to read them from run_dir/samples.jsonl, which it wrote. The reference model answers through
    generate_samples with the same eval.generation settings, so a sampling run reseeds torch with
    eval.generation.seed before it, as it did before the policy's. Both are scored by one scorer call on the
    distinct (prompt, generation, reference) triples, so an answer both models gave scores equal: a tie.

    Returns <prefix>/win_rate, /win_rate_low, /win_rate_high (bootstrap 95%), /verdict_n, /score_policy
    and /score_reference (mean scores); {} when there are no prompts (generation off).
    """
    ev = eval_cfg
    vs = Verdict.model_validate(plain(ev.get("verdict")) or {})
    rows = list(policy_rows) if policy_rows is not None else (_read_samples(run_dir) if prompts else [])
    n = vs.num_prompts if vs.num_prompts is not None else len(rows)
    n = min(n, len(prompts))
    if n == 0:
        return {}
    if len(rows) < n or len(references) < n:
        raise ValueError(
            f"judge_against: {n} prompts judged but {len(rows)} policy rows, {len(references)} references"
        )
    bad = next((i for i in range(n) if rows[i]["prompt"] != prompts[i]), None)
    if bad is not None:
        raise ValueError(f"judge_against: policy row {bad} is for another prompt than prompts[{bad}]")
    scorer = resolve_scorer(vs.scorer, ev, metric_names)
    prompts, references, rows = list(prompts[:n]), list(references[:n]), rows[:n]
    print(f"tunegrid: verdict: generating with {against} on {n} test prompts", flush=True)
    ref_rows = generate_samples(
        reference_model, tokenizer, prompts, references, ev.get("generation"), virtual_tokens
    )
    ours = [r["generation"] for r in rows]
    theirs = [r["generation"] for r in ref_rows]

    # Distinct (prompt, generation, reference) triples, scored in one call: equal answers score equal.
    triples = list(zip(prompts + prompts, ours + theirs, [plain(r) for r in references] * 2, strict=True))
    keys = [json.dumps(t, ensure_ascii=False) for t in triples]
    unique = dict(zip(keys, triples, strict=True))  # in first-seen order
    ps, gs, rs = (list(col) for col in zip(*unique.values(), strict=True))
    score_of = dict(zip(unique, per_sample_scores(ps, gs, rs, scorer, ev, metric_names), strict=True))
    s_pol, s_ref = [score_of[k] for k in keys[:n]], [score_of[k] for k in keys[n:]]
    result = win_rate(s_pol, s_ref, vs.bootstrap, vs.seed)

    out_rows = [
        {
            "index": i,
            "prompt": prompts[i],
            "reference": plain(references[i]),
            "generation_policy": ours[i],
            "generation_reference": theirs[i],
            "score_policy": s_pol[i],
            "score_reference": s_ref[i],
            "outcome": "win" if s_pol[i] > s_ref[i] else "tie" if s_pol[i] == s_ref[i] else "loss",
        }
        for i in range(n)
    ]
    write_samples(Path(run_dir) / VERDICT, out_rows)
    cols = list(out_rows[0])
    for lg in loggers:
        if hasattr(lg, "log_table"):
            lg.log_table(f"{prefix}/verdict", cols, [[_cell(r[c]) for c in cols] for r in out_rows])
    label = scorer_label(scorer)
    print(
        f"tunegrid: verdict against {against}: win rate {result['win_rate']:.2f} "
        f"[{result['ci_low']:.2f}, {result['ci_high']:.2f}] over {n} prompts (scorer {label})",
        flush=True,
    )
    return {
        f"{prefix}/win_rate": result["win_rate"],
        f"{prefix}/win_rate_low": result["ci_low"],
        f"{prefix}/win_rate_high": result["ci_high"],
        f"{prefix}/verdict_n": n,
        f"{prefix}/score_policy": _mean(s_pol),
        f"{prefix}/score_reference": _mean(s_ref),
    }
