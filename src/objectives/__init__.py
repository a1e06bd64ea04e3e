"""Objectives: what a run optimises, each a module of the recipe's steps that differ (conf/objective/*.yaml
names it as `recipe`). The recipe (src/train.py) is the same for every objective: load, apply the method,
train, save, evaluate, record. Each module here provides:

    prepare_data(cfg, spec, tokenizer, cache, num_prompts, reserve) -> src.data.Prepared
    make_trainer(cfg, spec, precision, model, tokenizer, prepared, metrics_cb, attempt, run_dir, start)
        -> (trainer, src.trainer.Hooks)
    final_metrics(trainer, prepared, cfg) -> dict        losses (and what else the objective measures) after training
    verdict(trainer, tokenizer, prepared, cfg, spec, start, run_dir, loggers) -> dict
        after the generations: the trained model against what it started from ({} when the objective has none)

    sft.py   supervised fine-tuning: transformers' Trainer on tokenised prompt/response examples (the default)
    dpo.py   Direct Preference Optimization: TRL's DPOTrainer on preference pairs
"""

from __future__ import annotations

import importlib
from types import ModuleType


def recipe(name: str) -> ModuleType:
    """The objective's steps module (objective.recipe, validated to be one of src.objectives')."""
    return importlib.import_module(name)
