"""Examples -> batches: padding per batch, padding to max_seq_len, or packed rows (the default where exact),
and the forward pre-hook packed rows need."""

from __future__ import annotations

import math
from typing import Any

from src.data.tokenise import IGNORE_INDEX


def collator(tokenizer, max_seq_len: int, batching: str = "dynamic", labelled: bool = False):
    """How examples become batches (`spec.batching`: trainer.batching resolved); labels are padded, or examples
    separated, with IGNORE_INDEX. A labelled task (one class id per example) pads its inputs only.

    packing          PackedRows: the batch's examples share rows of at most data.max_seq_len tokens, each
                     attending only to itself; the loss of padded training with little padding
    dynamic          pad to the longest example of the batch (group_by_length: the same, over batches of
                     similar lengths that the Trainer's sampler draws)
    pad_to_max       pad every example to data.max_seq_len (the common practice; for comparisons)
    """
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    if labelled:
        if batching == "pad_to_max":
            return DataCollatorWithPadding(tokenizer, "max_length", int(max_seq_len), return_tensors="pt")
        return DataCollatorWithPadding(tokenizer, return_tensors="pt")
    if batching == "packing":
        return PackedRows(tokenizer.pad_token_id, int(max_seq_len))
    if batching == "pad_to_max":
        return DataCollatorForSeq2Seq(
            tokenizer,
            padding="max_length",
            max_length=int(max_seq_len),
            label_pad_token_id=IGNORE_INDEX,
            return_tensors="pt",
        )
    return DataCollatorForSeq2Seq(
        tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt"
    )


class PackedRows:
    """Collator: a batch's examples packed first-fit-decreasing into rows of at most `max_len` tokens.

    Returns input_ids, labels, position_ids and attention_mask, [rows, longest row]. Position ids restart at
    0 for every example and for a row's trailing padding (its own segment); each example's first label is
    IGNORE_INDEX (the previous example's last token must not predict it). The attention mask marks the real
    tokens so that the Trainer counts them (include_num_input_tokens_seen="non_padding") but must not reach
    the model: `drop_packed_attention_mask` removes it, and transformers then builds a block-diagonal causal
    mask from the position ids (masking_utils.find_packed_sequence_indices; sdpa, eager, flash attention),
    so every example attends only to itself and the loss equals that of padded batches.

    Not transformers' DataCollatorWithFlattening: it lays the whole batch into one row, and without a
    varlen (flash-attention) kernel attention then spans the ~2,000-token row: measured 1.7x padding to
    max_seq_len on CPU, against 3.1x for these rows (benchmarks/README.md).
    """

    def __init__(self, pad_token_id: int, max_len: int):
        self.pad = int(pad_token_id)
        self.max_len = int(max_len)

    def rows(self, lengths: list[int]) -> list[list[int]]:
        """Example indices per row: first-fit decreasing into rows of a capacity chosen to process the fewest
        positions (rows x widest row). Candidates: max_len and the multiples of the longest example below it;
        the longest itself never gives more positions than padding to it, so packing never pads more than
        dynamic padding (measured on the short, even synthetic data: full rows of max_len padded more)."""
        longest = max(1, *lengths)
        capacities = {self.max_len, *range(longest, self.max_len + 1, longest)}
        best: list[list[int]] = []
        best_cost = (math.inf, math.inf)
        for capacity in sorted(capacities):
            bins = self._first_fit(lengths, capacity)
            width = max(sum(lengths[i] for i in b) for b in bins)
            cost = (len(bins) * width, width)  # fewest positions; then the narrower rows (attention ~ width²)
            if cost < best_cost:
                best, best_cost = bins, cost
        return best

    @staticmethod
    def _first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
        bins: list[list[int]] = []
        room: list[int] = []
        for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
            for b, free in enumerate(room):
                if lengths[i] <= free:
                    bins[b].append(i)
                    room[b] -= lengths[i]
                    break
            else:
                bins.append([i])
                room.append(capacity - lengths[i])
        return bins

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids_of = [list(f["input_ids"]) for f in features]
        labels_of = [list(f["labels"]) if "labels" in f else list(f["input_ids"]) for f in features]
        rows = []
        for members in self.rows([len(x) for x in ids_of]):
            ids, labels, pos = [], [], []
            for i in members:
                ids += ids_of[i]
                labels += [IGNORE_INDEX] + labels_of[i][1:]
                pos += list(range(len(ids_of[i])))
            rows.append((ids, labels, pos))
        width = max(len(r[0]) for r in rows)
        out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "attention_mask": []}
        for ids, labels, pos in rows:
            pad = width - len(ids)
            out["input_ids"].append(ids + [self.pad] * pad)
            out["labels"].append(labels + [IGNORE_INDEX] * pad)
            out["position_ids"].append(pos + list(range(pad)))
            out["attention_mask"].append([1] * len(ids) + [0] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def drop_packed_attention_mask(module, args, kwargs):
    """Forward pre-hook for PackedRows batches (training and evaluation only; remove it before generation,
    which passes a mask and positions of its own): without the 2-D mask transformers derives the per-example
    causal mask from the restarting position ids. It does so only without a KV cache, and GPT-2 (in eval
    mode), GPT-Neo and Llama create one when config.use_cache is on: examples would then see each other
    (measured: the loss moves), so the hook also turns the cache off."""
    if kwargs.get("position_ids") is not None and kwargs.get("attention_mask") is not None:
        kwargs = {k: v for k, v in kwargs.items() if k != "attention_mask"}
        kwargs["use_cache"] = False
    return args, kwargs
