"""Data: records from a generator, a local file or the hub -> splits -> prompts -> tokenised examples, and the
rendered test prompts that evaluation generates from. Rendered once, here, with one template choice and one
truncation rule.

A data set is described in YAML (conf/data/<name>.yaml): where its records come from, their fields, how to
cut, normalise and filter them, the prompt/response templates and the split sizes. This package only
follows the description; it has no per-data-set code.

    sources.py    records (hub split / data.path / generator), fields and templates checked
    splits.py     filter (max_response_chars, derive's separator) -> shuffle with split_seed -> carve -> cap
    render.py     derive, normalise, the prompt template, the truncation rule, the test prompts
    tokenise.py   prompt + response + EOS -> input_ids / labels, cached with explicit fingerprints
    collate.py    examples -> batches (packed rows, padding per batch, padding to max_seq_len)
    synthetic.py  the embedded default's generated records and the tiny tokenizer's corpus
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src.data.render import TestPrompts, test_prompts
from src.data.splits import load_splits
from src.data.tokenise import tokenize_splits


@dataclass
class Prepared:
    """What the recipe trains and evaluates on: tokenised train / validation / test, and the test prompts."""

    splits: dict[str, Any]
    test: TestPrompts


def build(
    data_cfg: DictConfig,
    tokenizer,
    cache: Path,
    labelled: bool = False,
    num_prompts: int = 0,
    reserve: int = 0,
) -> Prepared:
    """The whole data path: records -> splits -> tokenised splits (cached under <cache>/tokenised), and the
    first `num_prompts` distinct test prompts with their references, each leaving `reserve` tokens
    (max_new_tokens) for the generation; `labelled` (the task spec's): one class id per example."""
    splits = load_splits(data_cfg, cache)
    prompts = test_prompts(data_cfg, splits["test"], num_prompts, tokenizer, reserve)
    return Prepared(tokenize_splits(splits, data_cfg, tokenizer, cache, labelled), prompts)
