"""Data: records from a generator, a local file or the hub -> splits -> prompts -> tokenised examples, and the
rendered test prompts that evaluation generates from. Rendered once, here, with one template choice and one
truncation rule.

A data set is described in YAML (conf/data/<name>.yaml): where its records come from, their fields, how to
cut, normalise and filter them, the prompt/response templates and the split sizes. This package only
follows the description; it has no per-data-set code.

    sources.py    records (hub split / data.path / generator), fields and templates checked
    checks.py     what a file and its records must be: records at all, JSON syntax, UTF-8, no field missing
    splits.py     filter -> shuffle with split_seed (by group_by) -> sizes fitted to the source -> carve -> cap
    render.py     derive, normalise, the prompt template, the truncation rule, the test prompts
    pairs.py      preference pairs for objective=dpo: {prompt, chosen, rejected} text splits (build_pairs)
    tokenise.py   prompt + response + EOS -> input_ids / labels, cached with explicit fingerprints
    collate.py    examples -> batches (packed rows, padding per batch, padding to max_seq_len)
    synthetic.py  the embedded default's generated records and the tiny tokenizer's corpus
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src.data.render import TestPrompts, test_prompts
from src.data.splits import load_splits_info
from src.data.tokenise import tokenize_splits


@dataclass
class Prepared:
    """What the recipe trains and evaluates on: tokenised train / validation / test, the test prompts, and what
    the run's record shows of the data (`info`: records per split before tokenising, records skipped for a
    missing field with data.on_bad_record=skip, whether the YAML's split sizes were shrunk to fit)."""

    splits: dict[str, Any]
    test: TestPrompts
    info: dict[str, Any] = field(default_factory=dict)


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
    splits, info = load_splits_info(data_cfg, cache)
    prompts = test_prompts(data_cfg, splits["test"], num_prompts, tokenizer, reserve)
    return Prepared(tokenize_splits(splits, data_cfg, tokenizer, cache, labelled), prompts, info)


from src.data.pairs import build_pairs as build_pairs  # noqa: E402 - pairs.py needs Prepared, defined above
