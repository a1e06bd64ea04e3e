"""Supervised fine-tuning: the loss on each example's response tokens, with transformers' Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from src import data
from src import trainer as hf


def prepare_data(cfg, spec, tokenizer, cache: Path, num_prompts: int, reserve: int) -> data.Prepared:
    return data.build(cfg.data, tokenizer, cache, spec.task.labelled, num_prompts, reserve)


def make_trainer(cfg, spec, precision, model, tokenizer, prepared, metrics_cb, attempt, run_dir, start=None):
    return hf.make_trainer(
        cfg, spec, precision, model, tokenizer, prepared.splits, metrics_cb, attempt, run_dir
    )


def final_metrics(trainer, prepared, cfg) -> dict[str, Any]:
    out = hf.final_losses(trainer, prepared.splits, bool(cfg.eval.test_split))
    return {**out, **hf.perplexities(out)}


def verdict(trainer, tokenizer, prepared, cfg, spec, start, run_dir, loggers) -> dict[str, Any]:
    return {}  # SFT has no reference to compare with
