"""Direct Preference Optimization (Rafailov et al. 2023) with TRL's DPOTrainer, on preference pairs.

The policy is the model the method made (LoRA, QLoRA, full, head-only); the reference is what it started
from, formed without a second model where the method allows (spec.reference):
- adapter: the PEFT model itself, its adapter switched off (a new adapter), or switched to TRL's frozen "ref"
  copy of an init_from adapter (the SFT adapter this run continues);
- copy: full fine-tuning holds a frozen copy of the starting weights (what runs out of memory first);
- precomputed: dpo.precompute_ref_log_probs=true, the reference's log-probs are computed once before training.
TRL's DPOConfig gets every TrainingArguments value from tunegrid's trainer / optim / lr_schedule config (its own
defaults differ: lr 1e-6, gradient checkpointing and bf16 on) and its DPO knobs from the `dpo:` section.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import Any

from src import data
from src import trainer as hf

# TRL's names for what it measures on the pairs -> the record's (eval/reward_accuracy: chosen scored above rejected)
REWARDS = {
    "rewards/accuracies": "reward_accuracy",
    "rewards/margins": "reward_margin",
    "rewards/chosen": "reward_chosen",
    "rewards/rejected": "reward_rejected",
}


def prepare_data(cfg, spec, tokenizer, cache: Path, num_prompts: int, reserve: int) -> data.Prepared:
    return data.build_pairs(cfg.data, tokenizer, cache, num_prompts, reserve)


def trainer_flavour(cfg, spec, model) -> hf.Flavour:
    """DPOTrainer and DPOConfig, with the reference spec.reference says."""
    from trl import DPOConfig, DPOTrainer

    d = cfg.dpo
    ref_model = None
    if spec.reference == "copy":
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)
    args = {
        "beta": float(d.beta),
        "loss_type": [str(x) for x in d.loss_type],
        "loss_weights": None if d.loss_weights is None else [float(x) for x in d.loss_weights],
        "label_smoothing": float(d.label_smoothing),
        "max_length": int(d.max_length),
        "truncation_mode": "keep_start",  # long prompts were shortened by tunegrid's data code already
        "precompute_ref_log_probs": bool(d.precompute_ref_log_probs),
        "disable_dropout": bool(d.disable_dropout),
        "use_liger_kernel": bool(d.use_liger_kernel),
        "pad_to_multiple_of": None,
    }
    return hf.Flavour(DPOTrainer, DPOConfig, args, {"ref_model": ref_model}, collate=False)


def make_trainer(cfg, spec, precision, model, tokenizer, prepared, metrics_cb, attempt, run_dir, start=None):
    trainer, hooks = hf.make_trainer(
        cfg,
        spec,
        precision,
        model,
        tokenizer,
        prepared.splits,
        metrics_cb,
        attempt,
        run_dir,
        trainer_flavour(cfg, spec, model),
    )
    peft_config = getattr(trainer.model, "peft_config", {})
    if "ref" in peft_config and not (start is not None and start.adapter):
        # TRL copies any adapter it is given as the frozen "ref" one. A new adapter is the identity (LoRA's B is 0),
        # so switching it off is the same reference without the copy's memory and forward.
        trainer.model.delete_adapter("ref")
        trainer.model.set_adapter("default")
    return trainer, hooks


def _rewards(metrics: dict[str, float], split: str) -> dict[str, float]:
    # TRL 1.16 prefixes its pair metrics eval_ whichever split it evaluates
    return {f"{split}/{ours}": metrics[f"eval_{k}"] for k, ours in REWARDS.items() if f"eval_{k}" in metrics}


def final_metrics(trainer, prepared, cfg) -> dict[str, Any]:
    """DPO loss and the reward statistics on the validation split (and the test split), after training. No
    perplexity: the DPO loss is not a token likelihood."""
    last = hf.last_evaluation(trainer)
    out: dict[str, Any] = {"eval_loss": last["eval_loss"], **_rewards(last, "eval")}
    test = prepared.splits["test"]
    fixed_reference = trainer.ref_model is None and not hasattr(trainer.model, "peft_config")
    if cfg.eval.test_split and len(test) > 0:
        if trainer.precompute_ref_logps and fixed_reference:
            # Full fine-tuning with precomputed reference log-probs keeps no reference after training, and TRL
            # cannot compute the test split's (it refuses): no test loss rather than one against the policy.
            print(
                "tunegrid: no test/loss: dpo.precompute_ref_log_probs=true keeps no reference after training"
            )
            return out
        result = trainer.evaluate(test, metric_key_prefix="test")
        out["test_loss"] = result["test_loss"]
        out.update(_rewards(result, "test"))
    return out


@contextlib.contextmanager
def reference_model(trainer, cfg, spec, start):
    """The reference as a model to generate with: the same PEFT model with the reference adapter (or none)
    active, TRL's reference copy, or (precomputed, full) the starting weights loaded again."""
    model = trainer.model
    if hasattr(model, "peft_config"):
        from trl.trainer.utils import use_adapter

        with use_adapter(model, "ref" if "ref" in model.peft_config else None):
            yield model
    elif trainer.ref_model is not None:
        yield trainer.ref_model
    else:
        from src import init_from, models
        from src.config import cache_dir

        dtype = models.DTYPES[models.resolve_precision(cfg.trainer.precision)]
        path = models.model_path(cfg.model, cache_dir(cfg))
        ref, _ = init_from.load(cfg, spec, path, dtype, start)
        ref.to(next(model.parameters()).device)
        try:
            yield ref.eval()
        finally:
            del ref


def verdict(trainer, tokenizer, prepared, cfg, spec, start, run_dir, loggers) -> dict[str, Any]:
    """The trained policy against its reference (the init_from run's model, else the base model) on the test
    prompts: the same decoding, one scorer, the win rate with a bootstrap interval (src/evaluation/verdict.py)."""
    from src.evaluation import verdict as judged

    test = prepared.test
    if not test.prompts:
        return {}
    against = str(start.run_dir) if start is not None else f"the base model ({cfg.model.name})"
    with reference_model(trainer, cfg, spec, start) as ref:
        return judged.judge_against(
            None,  # the policy's generations: samples.jsonl, written by the generation evaluation just before
            ref,
            tokenizer,
            test.prompts,
            test.references,
            cfg.eval,
            spec.text_metrics,
            Path(run_dir),
            against=against,
            loggers=loggers,
        )
