"""Run `python -m src.run` with a prototype switched in: a batching mode, an attention implementation,
extra TrainingArguments. Used by benchmarks/bench.py to measure candidates before they become framework
options; it changes nothing on disk.

    python -m benchmarks.shim [--batching MODE] [--attn IMPL] [--ta KEY=JSON ...] -- [hydra overrides ...]

is exactly `python -m src.run [hydra overrides ...]` (run with runpy as __main__), with, in this process:

* --batching MODE: the collator (src.data.collator) and the Trainer's sampler follow MODE. Once the
  framework has its own switch (a `batching` key in conf/trainer/default.yaml or conf/data/alpaca.yaml),
  MODE is passed to it as `trainer.batching=MODE` / `data.batching=MODE` instead and nothing is patched
  (for pad_to_max, dynamic, packing, group_by_length; the other modes stay prototypes here, patched over the
  framework's `dynamic`).
* --attn IMPL: model.set_attn_implementation(IMPL) before the method is applied (sdpa, eager, ...).
* --ta KEY=JSON: TrainingArguments.KEY = JSON value (e.g. --ta torch_compile=true).
* always: a forward pre-hook on the trained model counts, in training mode only, the tokens the model
  processed (input_ids.numel()) and the real ones among them (see TokenCounter); written as JSON to
  $TG_BENCH_COUNTS at exit: the padding share, and exact non-padding tokens for every mode.

Batching MODEs:
  pad_to_max       pad every example to data.max_seq_len (the common practice)
  dynamic          pad to the longest example of each batch (the framework's collator today)
  packing          the same batches as dynamic, each batch's examples packed first-fit-decreasing into rows
                   of at most data.max_seq_len tokens (PackedRows); position ids restart at 0 for every
                   example and no attention mask is passed, so transformers builds a block-diagonal causal
                   mask (sdpa, eager; flash attention gets the boundaries): examples never see each other
                   and the loss is that of dynamic padding, with far less padding
  flatten          the same batches, all examples in one row (transformers.DataCollatorWithFlattening); no
                   padding at all, but attention spans the whole row unless the kernel is varlen (flash)
  group_by_length  dynamic padding; batches cut from length-sorted mega-batches of 50 batches, longest first
                   (transformers' LengthGroupedSampler, TrainingArguments.train_sampling_strategy): other
                   batches than the rest, so the loss curve differs
  bucketed         group_by_length's batches, in a shuffled order (ShuffledLengthGroupedSampler)
  group_by_length_tw  group_by_length with the loss of each step divided by the epoch's mean number of label
                   tokens per step instead of the step's own (install_token_weighted_loss): every token then
                   weighs the same, as it does on average with random batches
pad_to_max, dynamic, packing and flatten train the same batches in the same order: their losses agree to
float precision, which the benchmark checks.
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from typing import Any

MODES = ("pad_to_max", "dynamic", "packing", "flatten", "group_by_length", "bucketed", "group_by_length_tw")
IGNORE_INDEX = -100
FRAMEWORK_MODES = ("pad_to_max", "dynamic", "packing", "group_by_length")  # passed on once it has the switch


def make_collator(mode: str, tokenizer, max_seq_len: int):
    """The data collator of a batching mode (labels padded, or examples separated, with -100)."""
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithFlattening

    if mode == "pad_to_max":
        return DataCollatorForSeq2Seq(
            tokenizer,
            padding="max_length",
            max_length=int(max_seq_len),
            label_pad_token_id=IGNORE_INDEX,
            return_tensors="pt",
        )
    if mode in ("dynamic", "group_by_length", "bucketed", "group_by_length_tw"):
        return DataCollatorForSeq2Seq(
            tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt"
        )
    if mode == "packing":
        return PackedRows(tokenizer.pad_token_id, int(max_seq_len))
    if mode == "flatten":  # keeps input_ids, labels (-100 at each example's first token), position_ids only
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    raise ValueError(f"unknown batching mode {mode!r}; one of {', '.join(MODES)}")


class PackedRows:
    """Pack a batch's examples into rows of at most `max_len` tokens (first-fit decreasing).

    Returns input_ids, labels, position_ids and attention_mask, [rows, longest row]. Position ids restart at
    0 for every example, and for the padding at the end of a row (its own segment); the first label of every
    example is IGNORE_INDEX (the previous example's last token must not predict it). The attention mask
    marks the real tokens so that the Trainer counts them (include_num_input_tokens_seen="non_padding"),
    but it must not reach the model: `drop_packed_attention_mask`, a forward pre-hook, removes it, and
    transformers then derives a block-diagonal causal mask from the position ids
    (masking_utils.find_packed_sequence_indices), so examples attend only to themselves.
    """

    def __init__(self, pad_token_id: int, max_len: int):
        self.pad = int(pad_token_id)
        self.max_len = int(max_len)

    def rows(self, lengths: list[int]) -> list[list[int]]:
        """Example indices per row: first-fit decreasing into bins of max_len."""
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
                room.append(self.max_len - lengths[i])
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
    """Forward pre-hook for packed batches: without the 2-D mask, transformers builds the per-example
    (block-diagonal) causal mask from the restarting position ids. Register it on the trained model for
    training and evaluation only, and remove it before generation (which passes its own mask and positions)."""
    if kwargs.get("position_ids") is not None and kwargs.get("attention_mask") is not None:
        kwargs = {k: v for k, v in kwargs.items() if k != "attention_mask"}
    return args, kwargs


def training_args_for(mode: str | None) -> dict[str, Any]:
    """TrainingArguments keys a batching mode sets."""
    if mode in ("group_by_length", "group_by_length_tw"):
        return {"train_sampling_strategy": "group_by_length"}
    return {}


class ShuffledLengthGroupedSampler:
    """transformers' length grouping (batches of similar length from sorted mega-batches), batches then
    shuffled, so that no run of long-to-short batches remains; a new order every epoch."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        g = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        order = get_length_grouped_indices(self.lengths, self.batch_size, generator=g)
        batches = [order[k : k + self.batch_size] for k in range(0, len(order), self.batch_size)]
        for b in torch.randperm(len(batches), generator=g).tolist():
            yield from batches[b]


def install_bucketed_sampler() -> None:
    from transformers.trainer import Trainer

    def sampler(self, train_dataset=None):
        ds = train_dataset if train_dataset is not None else self.train_dataset
        lengths = [len(x) for x in ds["input_ids"]]
        size = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return ShuffledLengthGroupedSampler(lengths, size, int(self.args.data_seed or self.args.seed))

    Trainer._get_train_sampler = sampler


def install_token_weighted_loss() -> None:
    """Divide each training step's summed token loss by a constant (the epoch's mean label tokens per step)
    rather than by the step's own label-token count (transformers' num_items_in_batch)."""
    import torch
    from transformers.trainer import Trainer

    compute_loss = Trainer.compute_loss

    def constant_items(self) -> float:
        if getattr(self, "_tg_items", None) is None:
            labels = self.train_dataset["labels"]
            total = sum(sum(1 for x in lab[1:] if x != IGNORE_INDEX) for lab in labels)
            steps = len(labels) / (self.args.train_batch_size * self.args.gradient_accumulation_steps)
            self._tg_items = total / steps
        return self._tg_items

    def weighted(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and num_items_in_batch is not None:
            device = num_items_in_batch.device if torch.is_tensor(num_items_in_batch) else None
            num_items_in_batch = torch.tensor(constant_items(self), device=device)
        return compute_loss(
            self, model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )

    Trainer.compute_loss = weighted


class TokenCounter:
    """Forward pre-hook: tokens processed and real (non-padding) tokens, in training mode only.

    Real tokens: the attention mask's ones when there is a mask; otherwise (a batch flattened into one row,
    or packed rows without a mask) every token of a position-id segment that has a label (a row's trailing
    padding is a segment with none).
    """

    def __init__(self) -> None:
        self.total = 0
        self.real = 0
        self.batches = 0

    def __call__(self, module, args, kwargs) -> None:
        if not module.training:
            return
        ids = kwargs.get("input_ids")
        if ids is None and args:
            ids = args[0]
        if ids is None:
            return
        self.total += int(ids.numel())
        self.batches += 1
        mask, pos, labels = kwargs.get("attention_mask"), kwargs.get("position_ids"), kwargs.get("labels")
        if mask is not None:
            self.real += int(mask.sum())
        elif pos is not None and labels is not None:
            self.real += real_tokens_of_packed(pos, labels)
        else:
            self.real += int(ids.numel())

    def as_dict(self) -> dict[str, Any]:
        return {
            "tokens_processed": self.total,
            "tokens_real": self.real,
            "train_batches": self.batches,
            "padding_share": (self.total - self.real) / self.total if self.total else None,
        }


def real_tokens_of_packed(position_ids, labels) -> int:
    """Tokens of the segments (runs of position ids from 0) that carry at least one label."""
    import torch

    starts = position_ids == 0
    seg = torch.cumsum(starts.long(), dim=-1) + torch.arange(position_ids.shape[0]).unsqueeze(1) * (
        position_ids.shape[1] + 1
    )
    seg = seg.flatten()
    has_label = torch.zeros(int(seg.max()) + 1, dtype=torch.bool)
    has_label[seg[(labels.flatten() != IGNORE_INDEX)]] = True
    return int(has_label[seg].sum())


def framework_batching_key() -> str | None:
    """The framework's own batching switch once it has one (`trainer.batching` or `data.batching`), else None."""
    from pathlib import Path

    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parent.parent / "conf"
    for key, path in (
        ("trainer.batching", conf / "trainer" / "default.yaml"),
        ("data.batching", conf / "data" / "alpaca.yaml"),
    ):
        if path.is_file() and "batching" in OmegaConf.load(path):
            return key
    return None


def install(
    batching: str | None, attn: str | None, training_args: dict[str, Any], counts_path: str | None
) -> list[str]:
    """Patch this process; return the extra Hydra overrides to pass on."""
    import src.data
    import src.methods

    counter = TokenCounter()
    apply = src.methods.apply

    def apply_and_count(model, *args, **kwargs):
        if attn:
            model.set_attn_implementation(attn)
        model = apply(model, *args, **kwargs)
        model.register_forward_pre_hook(counter, with_kwargs=True)  # first: it reads the packed rows' mask
        if batching == "packing" and not (framework_batching_key() and batching in FRAMEWORK_MODES):
            model.register_forward_pre_hook(drop_packed_attention_mask, with_kwargs=True)
        return model

    src.methods.apply = apply_and_count
    if counts_path:

        def write_counts() -> None:
            with open(counts_path, "w") as f:
                json.dump({"batching": batching, "attn": attn, **counter.as_dict()}, f)

        atexit.register(write_counts)

    overrides: list[str] = []
    extra = dict(training_args)
    key = framework_batching_key() if batching else None
    if batching and key and batching in FRAMEWORK_MODES:
        overrides.append(f"{key}={batching}")
    elif batching:
        if key:  # a prototype the framework lacks: the framework stays on plain dynamic padding underneath
            overrides.append(f"{key}=dynamic")
        extra = {**training_args_for(batching), **extra}
        max_len: dict[str, int] = {}
        collator, build = src.data.collator, src.data.build

        def build_and_remember(data_cfg, *args, **kwargs):
            max_len["value"] = int(data_cfg.max_seq_len)
            return build(data_cfg, *args, **kwargs)

        def collator_for_mode(tokenizer, data_cfg=None, *args, **kwargs):
            if data_cfg is not None and data_cfg.get("label_field"):  # classification data: left alone
                return collator(tokenizer, data_cfg, *args, **kwargs)
            return make_collator(batching, tokenizer, max_len.get("value") or int(data_cfg.max_seq_len))

        src.data.build = build_and_remember
        src.data.collator = collator_for_mode
        if batching == "bucketed":
            install_bucketed_sampler()
        if batching == "group_by_length_tw":
            install_token_weighted_loss()
    if extra:
        # transformers' lazy module ignores a replaced TrainingArguments attribute: patch the class itself.
        from transformers.training_args import TrainingArguments

        post_init = TrainingArguments.__post_init__

        def post_init_with_extra(self, *args, **kwargs):
            for key, value in extra.items():
                setattr(self, key, value)
            return post_init(self, *args, **kwargs)

        TrainingArguments.__post_init__ = post_init_with_extra
    return overrides


def parse(argv: list[str]) -> tuple[str | None, str | None, dict[str, Any], list[str]]:
    batching, attn, ta = None, None, {}
    i = 0
    while i < len(argv) and argv[i] != "--":
        opt = argv[i]
        if opt in ("--batching", "--attn", "--ta") and i + 1 < len(argv):
            val = argv[i + 1]
            if opt == "--batching":
                if val not in MODES:
                    sys.exit(f"--batching {val}: one of {', '.join(MODES)}")
                batching = val
            elif opt == "--attn":
                attn = val
            else:
                key, _, raw = val.partition("=")
                try:
                    ta[key] = json.loads(raw)
                except json.JSONDecodeError:
                    ta[key] = raw
            i += 2
        else:
            sys.exit(
                f"usage: python -m benchmarks.shim [--batching {{{'|'.join(MODES)}}}] [--attn IMPL] "
                f"[--ta KEY=JSON ...] -- [hydra overrides ...]  (got {opt!r})"
            )
    return batching, attn, ta, argv[i + 1 :]


def main() -> None:
    batching, attn, ta, overrides = parse(sys.argv[1:])
    extra = install(batching, attn, ta, os.environ.get("TG_BENCH_COUNTS"))
    sys.argv = [sys.argv[0], *overrides, *extra]
    import runpy

    runpy.run_module("src.run", run_name="__main__", alter_sys=True)  # exactly `python -m src.run ...`


if __name__ == "__main__":
    main()
