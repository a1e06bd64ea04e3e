"""Synthetic instruction records whose token lengths follow Alpaca's shape.

Alpaca (tatsu-lab/alpaca, rendered with its template, GPT-2 tokens) is right-skewed: most examples are
around 100 tokens, a long tail reaches several hundred. Padding every example to max_seq_len=512 (the
common practice) therefore spends most of each batch on padding. `records` keeps the Alpaca template
(~50 tokens with the tiny model's BPE) and draws each example's content length (input + output tokens)
from a log-normal with median 60 and sigma 0.75, so totals come out at a median of ~110 tokens, a mean
of ~130, p95 ~260 and a tail past 400 (the rare example over 512 is cut by max_seq_len). The content is
the default synthetic tasks (sort / reverse digits, copy words in another case) on lists of that length,
which the tiny model's BPE covers, so the loss still falls.

Used by the benchmark only, through a config override:
    data.generator._target_=benchmarks.alpaca_like.records
"""

from __future__ import annotations

import math
import random

# WORDS: the synthetic task's vocabulary, so that the tiny BPE knows them
from src.data.synthetic import WORDS, case_record, digits_record

MEDIAN_CONTENT_TOKENS = 60  # input + output tokens; the template adds ~50
SIGMA = 0.75
TOKENS_PER_ITEM = {"digit": 1.0, "word": 2.6}  # the tiny model's BPE: " 7" is one token, a word ~2.6


def records(
    n: int, seed: int, median_content_tokens: int = MEDIAN_CONTENT_TOKENS, sigma: float = SIGMA
) -> list[dict[str, str]]:
    """n Alpaca-format records (instruction, input, output) with log-normal lengths."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        content = rng.lognormvariate(math.log(median_content_tokens), sigma)
        kind = rng.randrange(4)
        per_item = TOKENS_PER_ITEM["digit" if kind < 2 else "word"]
        items = max(1, round(content / (2 * per_item)))  # the list appears in the input and in the output
        if kind < 2:
            out.append(digits_record([str(rng.randrange(10)) for _ in range(items)], kind == 0))
        else:
            out.append(case_record([rng.choice(WORDS) for _ in range(items)], kind == 3))
    return out
