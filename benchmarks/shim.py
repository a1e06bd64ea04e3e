"""Run `python -m src.run` with a prototype switched in: a batching mode, an attention implementation,
extra TrainingArguments. Used by benchmarks/bench.py to measure candidates before they become framework
options; it changes nothing on disk.

    python -m benchmarks.shim [--batching MODE] [--attn IMPL] [--ta KEY=JSON ...] -- [hydra overrides ...]

is exactly `python -m src.run [hydra overrides ...]` (run with runpy as __main__), with, in this process:

* --batching MODE: pad_to_max, dynamic, packing and group_by_length are the framework's own modes, passed
  on as `trainer.batching=MODE` with nothing patched; the other modes are prototypes over
  `trainer.batching=dynamic`: the collator the Trainer gets (src.trainer.collator, imported there from
  src.data.collate), the Trainer's sampler or its loss are patched to follow MODE.
* --attn IMPL: model.set_attn_implementation(IMPL) before the method is applied (src.methods.apply, which
  the recipe, src/train.py, calls as `methods.apply`; sdpa, eager, ...).
* --ta KEY=JSON: TrainingArguments.KEY = JSON value (e.g. --ta torch_compile=true).
* --count-syncs: with a GPU, counts the host-device synchronisations inside trainer.train() (evaluations
  excluded) with CUDA's sync debug mode (torch.cuda.set_sync_debug_mode("warn"): one warning per
  synchronising call); written as `syncs` beside the token counts. Without a GPU `syncs` is null.
* always: a forward pre-hook on the trained model counts, in training mode only, the tokens the model
  processed (input_ids.numel()) and the real ones among them (see TokenCounter); written as JSON to
  $TG_BENCH_COUNTS at exit: the padding share, and exact non-padding tokens for every mode.

Batching MODEs:
  pad_to_max       pad every example to data.max_seq_len (the common practice)
  dynamic          pad to the longest example of each batch
  packing          the same batches as dynamic, each batch's examples packed first-fit-decreasing into rows
                   of at most data.max_seq_len tokens (src.data.collate.PackedRows, the default);
                   position ids restart at 0 for every
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

from src.data.tokenise import IGNORE_INDEX

MODES = ("pad_to_max", "dynamic", "packing", "flatten", "group_by_length", "bucketed", "group_by_length_tw")
FRAMEWORK_MODES = ("pad_to_max", "dynamic", "packing", "group_by_length")  # trainer.batching: passed on


def make_collator(mode: str, tokenizer, max_seq_len: int):
    """The data collator of a batching mode: the framework's own (src.data.collate.collator) for its modes and
    for the sampler prototypes, which batch like dynamic; DataCollatorWithFlattening for flatten."""
    from transformers import DataCollatorWithFlattening

    from src.data.collate import collator

    if mode == "flatten":  # keeps input_ids, labels (-100 at each example's first token), position_ids only
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
    if mode not in MODES:
        raise ValueError(f"unknown batching mode {mode!r}; one of {', '.join(MODES)}")
    framework_mode = mode if mode in FRAMEWORK_MODES else "dynamic"
    return collator(tokenizer, int(max_seq_len), framework_mode)


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


class SyncCounter:
    """Host-device synchronisations while trainer.train() runs, evaluations excluded (CUDA only)."""

    def __init__(self) -> None:
        self.count: int | None = None
        self.active = False

    def install(self) -> None:
        import warnings

        import torch
        from transformers.trainer import Trainer

        if not torch.cuda.is_available():
            return
        self.count = 0
        torch.cuda.set_sync_debug_mode("warn")
        warnings.filterwarnings("always", message=".*synchroniz.*")
        show = warnings.showwarning

        def counted(message, category, *args, **kwargs):
            if "synchroniz" in str(message):
                self.count += self.active
                return None
            return show(message, category, *args, **kwargs)

        warnings.showwarning = counted
        self.during(Trainer, "train", True)
        self.during(Trainer, "evaluate", False)

    def during(self, cls, name: str, active: bool) -> None:
        original = getattr(cls, name)

        def wrapped(*args, **kwargs):
            before, self.active = self.active, active
            try:
                return original(*args, **kwargs)
            finally:
                self.active = before

        setattr(cls, name, wrapped)


def install(
    batching: str | None,
    attn: str | None,
    training_args: dict[str, Any],
    counts_path: str | None,
    count_syncs: bool = False,
) -> list[str]:
    """Patch this process; return the extra Hydra overrides to pass on.

    Patch points (the names the framework looks up when it runs): `src.methods.apply` (src/train.py calls
    `methods.apply`) and `src.trainer.collator` (src/trainer.py imports it from src.data.collate and calls it
    in make_trainer); Trainer and TrainingArguments methods on the transformers classes."""
    import src.methods
    import src.trainer

    counter = TokenCounter()
    syncs = SyncCounter()
    if count_syncs:
        syncs.install()
    apply = src.methods.apply

    def apply_and_count(model, *args, **kwargs):
        if attn:
            model.set_attn_implementation(attn)
        model = apply(model, *args, **kwargs)
        model.register_forward_pre_hook(counter, with_kwargs=True)  # first: it reads the packed rows' mask
        return model

    src.methods.apply = apply_and_count
    if counts_path:

        def write_counts() -> None:
            with open(counts_path, "w") as f:
                json.dump({"batching": batching, "attn": attn, **counter.as_dict(), "syncs": syncs.count}, f)

        atexit.register(write_counts)

    overrides: list[str] = []
    extra = dict(training_args)
    if batching in FRAMEWORK_MODES:
        overrides.append(f"trainer.batching={batching}")
    elif batching:  # a prototype the framework lacks, over the framework's plain dynamic padding
        overrides.append("trainer.batching=dynamic")
        extra = {**training_args_for(batching), **extra}
        # flatten is the one prototype with a collator of its own; the others batch like dynamic
        if batching == "flatten":
            collator = src.trainer.collator

            def flatten_collator(tokenizer, max_seq_len, batching_mode="dynamic", labelled=False):
                if labelled:  # one class id per example (classification): left alone
                    return collator(tokenizer, max_seq_len, batching_mode, labelled)
                return make_collator(batching, tokenizer, int(max_seq_len))

            src.trainer.collator = flatten_collator
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


def parse(argv: list[str]) -> tuple[str | None, str | None, dict[str, Any], list[str], bool]:
    batching, attn, ta, count_syncs = None, None, {}, False
    i = 0
    while i < len(argv) and argv[i] != "--":
        opt = argv[i]
        if opt == "--count-syncs":
            count_syncs = True
            i += 1
        elif opt in ("--batching", "--attn", "--ta") and i + 1 < len(argv):
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
                f"[--ta KEY=JSON ...] [--count-syncs] -- [hydra overrides ...]  (got {opt!r})"
            )
    return batching, attn, ta, argv[i + 1 :], count_syncs


def main() -> None:
    batching, attn, ta, overrides, count_syncs = parse(sys.argv[1:])
    extra = install(batching, attn, ta, os.environ.get("TG_BENCH_COUNTS"), count_syncs)
    sys.argv = [sys.argv[0], *overrides, *extra]
    import runpy

    runpy.run_module("src.run", run_name="__main__", alter_sys=True)  # exactly `python -m src.run ...`


if __name__ == "__main__":
    main()
