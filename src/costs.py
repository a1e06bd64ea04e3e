"""Cost metrics measured around training: peak memory, padding, and what a checkpoint weighs on disk."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import torch

from src.errors import SkippedOOM
from src.specs import Spec

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_memory() -> None:
    """Start a fresh peak: CUDA's allocator stats, or on Linux the process's peak RSS (VmHWM), so
    that each run of a multirun (one process) gets its own peak rather than the lifetime one."""
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):
        _CLEAR_REFS.write_text("5")  # "5" resets VmHWM to the current RSS (Linux >= 4.0)


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM, VmRSS) in MiB; None where /proc is not there."""
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def peak_memory_mb() -> float:
    """CUDA peak allocated memory on GPU; the process's peak resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB


def current_memory_mb() -> float | None:
    """The memory in use now, measured the way peak_memory_mb measures its peak: CUDA memory allocated on GPU;
    the process's resident set size on CPU (None where /proc is not there). Taken when training begins, it is
    the baseline that peak minus baseline turns into the memory training added (gradients, optimizer state,
    activations), without the runtime and the weights that were already there."""
    if torch.cuda.is_available():
        return torch.cuda.memory_allocated() / 2**20
    return _status_mb("VmRSS")


class PaddingCounter:
    """Forward pre-hook: the tokens the model processed in training and how many were real (the attention
    mask's ones). Registered before the packed-rows hook, which drops that mask. The real-token sum stays on
    the device, so counting adds no synchronisation to a step."""

    def __init__(self) -> None:
        self.processed = 0
        self.real: torch.Tensor | int = 0

    def __call__(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not module.training or ids is None:
            return
        mask = kwargs.get("attention_mask")
        self.processed += ids.numel()
        self.real = self.real + (mask.sum() if mask is not None and mask.dim() == 2 else ids.numel())

    def share(self) -> float | None:
        """Padding tokens / processed tokens (None before any training step)."""
        return 1.0 - float(self.real) / self.processed if self.processed else None


def weight_bytes(folder: Path) -> int:
    """Bytes of the weight files saved in a checkpoint folder (safetensors; the adapter alone for PEFT)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))


def _first_trained_block(model, cfg) -> int:
    """Depth of the lowest trainable parameter: 0 for embeddings or a soft prompt, i for block i,
    num_layers when only the head trains. Activations are stored for backward only above it."""
    import re

    n_layers = int(cfg.model.num_layers)
    pattern = re.compile(rf"{re.escape(cfg.model.block_prefix)}\.(\d+)\.")
    first = n_layers
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        m = pattern.search(name)
        if m:
            first = min(first, int(m.group(1)))
        elif not name.split(".")[-2:][0].startswith(("lm_head", "score", "ln_f", "norm")):
            return 0  # embeddings, a soft prompt: the gradient runs through every block
    return first


TRL_LOGIT_TILE = 32768  # tokens per LM-head tile in TRL 1.16's fused log-probs (_CHUNKED_LOGPROB_CHUNK_SIZE)


def predict_memory_mb(model, cfg, spec: Spec, precision: str) -> dict[str, float]:
    """Predicted training peak from sizes alone (documented in the README, "Memory prediction"):

    weights (as stored, 4-bit packed included) + fp32 gradients of trainable parameters + optimizer
    state (optim.state_bytes_per_param per trainable parameter: AdamW 8, SGD+momentum 4, 8-bit Adam 2,
    SGD and Adafactor ~0) + activations of the blocks above the lowest trainable one, per block
    B·S·H·(34 + 5·A·S/H) bytes at 16-bit (Korthikanti et al. 2022; ×2 in fp32; only B·S·H·bytes with
    gradient checkpointing) + logits and their gradient B·S·V·4·2. B = micro-batch, S = data.max_seq_len
    (an upper bound under dynamic padding), H hidden size, A heads, V vocabulary.

    A preference objective (DPO) runs each pair's chosen and rejected answers in one batch: 2B rows. TRL
    projects through the LM head in tiles of at most 32,768 tokens (trl.trainer.utils add_fused_lm_head), so its
    logits term is min(2B·S, 32768)·V·4·2. The reference adds a second copy of the weights (`copy`: full
    fine-tuning), nothing for an adapter switched off, and no gradients or activations either way (no_grad).
    """
    from src.methods import count_params, memory_split

    mb = 2**20
    weights = memory_split(model)["weights_bytes"]
    trainable = count_params(model)["trainable_params"]
    config = getattr(model, "config", None)
    config = getattr(getattr(model, "base_model", None), "config", config)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 1) or 1)
    vocab = spec.output_size(int(getattr(config, "vocab_size", 0) or 0))  # num_labels for a classifier
    pairs = spec.objective.pairs
    b, s, h = int(cfg.trainer.batch_size), int(cfg.data.max_seq_len), int(cfg.model.hidden_size)
    b *= 2 if pairs else 1  # chosen and rejected rows
    act_bytes = 2 if precision in ("bf16", "fp16") else 4
    blocks = int(cfg.model.num_layers) - _first_trained_block(model, cfg)
    if cfg.trainer.gradient_checkpointing:
        per_block = b * s * h * act_bytes
    else:
        per_block = b * s * h * (34 + 5 * heads * s / h) * act_bytes / 2
    parts = {
        "weights_mb": weights / mb,
        "gradients_mb": 4 * trainable / mb,
        "optimizer_mb": float(cfg.optim.get("state_bytes_per_param", 8)) * trainable / mb,
        "activations_mb": blocks * per_block / mb,
        "logits_mb": min(b * s, TRL_LOGIT_TILE if pairs else b * s) * vocab * 4 * 2 / mb,
        "reference_mb": weights / mb if spec.reference == "copy" else 0.0,
    }
    parts["total_mb"] = sum(parts.values())
    return parts


def device_memory_mb(sweep) -> float:
    if sweep.get("device_memory_gb"):
        return float(sweep.device_memory_gb) * 1024
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 2**20
    import os

    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def check_fits(predicted: dict[str, float], sweep) -> None:
    """With sweep.skip_predicted_oom, a run predicted not to fit is recorded as skipped_oom, not launched."""
    if not sweep.get("skip_predicted_oom"):
        return
    capacity = device_memory_mb(sweep)
    if predicted["total_mb"] > capacity:
        skip = SkippedOOM(
            f"predicted peak {predicted['total_mb']:.0f} MiB > device memory {capacity:.0f} MiB"
        )
        skip.predicted = predicted
        raise skip
