"""The throughput knobs of one run (conf/trainer/default.yaml, "Throughput knobs"): the attention kernel, bf16
weights, torch.compile, a fused LM-head + cross-entropy loss, micro-batches by token budget, and the step
timings that report compile time apart from the steady rate. Each knob is measured by the benchmark
(benchmarks/sections/speedups.py) before it becomes a default. Apart from bf16 weights, which full
fine-tuning then updates in bf16, none changes what a run computes beyond float rounding (the token-budget
micro-batches keep the effective batch, so the loss curve is the same).
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import time
from typing import Any

from omegaconf import DictConfig
from transformers import TrainerCallback

from src.costs import gpu_share, train_lengths
from src.data.tokenise import IGNORE_INDEX
from src.errors import ConfigError


def preflight(cfg: DictConfig, precision: str) -> None:
    """What the knobs need from this machine (a package, a GPU), checked before data or a model loads; a Ray
    cell given a fraction of a GPU (hydra.launcher.gpus_per_run=0.5) is held to that share of its memory, so
    that a cell that outgrows it runs out of memory itself (and is retried smaller) rather than its neighbour."""
    import torch

    t = cfg.trainer
    gpu = torch.cuda.is_available()
    if t.attention == "flash_attention_2":
        _needs_package("trainer.attention=flash_attention_2", "flash_attn", "pip install flash-attn")
        if not gpu:
            raise ConfigError(
                "trainer.attention=flash_attention_2: needs a CUDA GPU; use trainer.attention=sdpa"
            )
    if t.fused_loss == "liger":
        _needs_package("trainer.fused_loss=liger", "liger_kernel", "pip install liger-kernel")
        if not gpu and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError(
                "trainer.fused_loss=liger: Liger's Triton kernels need a GPU (TRITON_INTERPRET=1 runs them, "
                "slowly, on CPU); use trainer.fused_loss=none"
            )
    if gpu and (share := gpu_share()) < 1:  # a Ray cell sharing the GPU: held to its share of the memory
        torch.cuda.set_per_process_memory_fraction(share)
    if t.weights_dtype == "bf16" and precision != "bf16":
        raise ConfigError(
            f"trainer.weights_dtype=bf16: needs bf16 compute, and trainer.precision={t.precision} resolves to "
            f"{precision} here; set trainer.precision=bf16 or trainer.weights_dtype=fp32"
        )


def _needs_package(key: str, module: str, install: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{key}: needs the {module} package, which is not installed ({install})")


def weights_dtype(cfg: DictConfig):
    """The dtype the (unquantised) weights load in: fp32 master weights, or bf16 with trainer.weights_dtype."""
    import torch

    return torch.bfloat16 if cfg.trainer.weights_dtype == "bf16" else torch.float32


# --------------------------------------------------------------------------- micro-batches by token budget


def micro_batch(effective: int, tokens_per_batch: int, mean_tokens: float) -> int:
    """The micro-batch for a token budget: the largest divisor of the effective batch (so that grad_accum stays
    a whole number and batch_size × grad_accum is unchanged) whose mean tokens stay within the budget; 1 if
    even one example is over it."""
    want = max(1, int(tokens_per_batch // max(mean_tokens, 1.0)))
    return max(d for d in range(1, effective + 1) if effective % d == 0 and d <= want)


def by_token_budget(cfg: DictConfig, prepared, attempt: int = 0) -> tuple[DictConfig, dict[str, Any] | None]:
    """With trainer.tokens_per_batch, the config with the micro-batch and accumulation that budget gives over
    the prepared train split (an out-of-memory retry, attempt k, halves the budget k times), and what was
    chosen, for the record."""
    t = cfg.trainer
    if not t.tokens_per_batch:
        return cfg, None
    lengths = train_lengths(prepared) or [1]
    mean = sum(lengths) / max(len(lengths), 1)
    effective = int(t.batch_size) * int(t.grad_accum)
    budget = int(t.tokens_per_batch) // 2**attempt
    size = micro_batch(effective, budget, mean)
    out = cfg.copy()
    out.trainer.batch_size, out.trainer.grad_accum = size, effective // size
    return out, {
        "tokens_per_batch": budget,
        "mean_example_tokens": round(mean, 1),
        "batch_size": size,
        "grad_accum": effective // size,
        "effective_batch": effective,
    }


# --------------------------------------------------------------------------- fused LM head + cross-entropy


def fuse_loss(model) -> None:
    """Training forwards of the causal LM compute the loss from the last hidden states with Liger's fused
    linear cross-entropy, in chunks, so the batch × positions × vocabulary logits (and their fp32 copy and
    gradient) are never held; evaluation keeps the model's own forward, so eval losses compare. Neither
    transformers nor Liger patches GPT-2 (Liger's model patches cover Llama-like families), so the forward is
    replaced here on the one module that owns the head: the label shift and the division by the Trainer's
    num_items_in_batch are the ones transformers' ForCausalLMLoss does."""
    import torch
    import torch.nn.functional as F
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    from transformers.modeling_outputs import CausalLMOutputWithPast

    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone, head, original = lm.base_model, lm.get_output_embeddings(), lm.forward
    loss_fn = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction="sum")

    def forward(input_ids=None, labels=None, num_items_in_batch=None, **kwargs):
        if labels is None or not lm.training or not torch.is_grad_enabled():
            return original(
                input_ids=input_ids, labels=labels, num_items_in_batch=num_items_in_batch, **kwargs
            )
        kwargs.pop("return_dict", None)
        kwargs["use_cache"] = False
        hidden = backbone(input_ids=input_ids, **kwargs)[0]
        targets = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:].reshape(-1).to(hidden.device)
        flat = hidden.reshape(-1, hidden.shape[-1])
        bias = None if head.bias is None else head.bias.to(flat.dtype)
        loss = loss_fn(head.weight.to(flat.dtype), flat, targets, bias)
        items = num_items_in_batch if num_items_in_batch is not None else (targets != IGNORE_INDEX).sum()
        return CausalLMOutputWithPast(loss=loss / items)

    lm.forward = forward


# --------------------------------------------------------------------------- step timings


class StepTimes(TrainerCallback):
    """Wall time of every optimizer step: the first (which holds torch.compile's compilation and the CUDA
    kernels' first launches), the median of the others, and the tokens trained after the first step, so
    that the record's steady rate does not carry compile time. No device synchronisation is added: over
    many steps the host's clock follows the device, which the Trainer's own loop bounds."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens_after_first: int | None = None
        self._t0 = 0.0

    def on_step_begin(self, args, state, control, **kw):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
        self.times.append(time.perf_counter() - self._t0)
        if len(self.times) == 1:
            self.tokens_after_first = int(state.num_input_tokens_seen)

    def summary(self, state, compiled: bool) -> dict[str, Any]:
        if not self.times:
            return {}
        rest = self.times[1:]
        median = statistics.median(rest) if rest else None
        tokens = int(state.num_input_tokens_seen) - int(self.tokens_after_first or 0)
        return {
            "first_step_s": self.times[0],
            "step_s_median": median,
            # the first step's extra time: compilation with trainer.compile, else warm-up (kernels, allocator)
            "compile_s": max(self.times[0] - median, 0.0) if compiled and median is not None else None,
            "tokens_per_s_steady": tokens / sum(rest) if rest and sum(rest) > 0 else None,
        }


# --------------------------------------------------------------------------- host reads in the Trainer's loop


def count_tokens_on_host(trainer) -> None:
    """The Trainer counts each micro-batch's non-padding tokens with a copy to the device and a host read
    (transformers 5.24 `_track_num_input_tokens`: `.item()` of a gathered device tensor), which waits for the
    GPU to finish the batch before the host may prepare the next. In one process the collated batch's mask is
    still on the host: counted there, the same number, no device involved."""
    original = trainer._track_num_input_tokens

    def track(inputs):
        mask = inputs.get("attention_mask")
        if (
            mask is None
            or mask.device.type != "cpu"
            or trainer.args.include_num_input_tokens_seen != "non_padding"
        ):
            return original(inputs)
        trainer.state.num_input_tokens_seen += int(mask.sum())

    trainer._track_num_input_tokens = track
