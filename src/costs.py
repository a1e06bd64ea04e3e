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
# Bytes saved for backward per position and hidden unit in one GPT-2 block (transformers' GPT2Block, SDPA
# attention), by what the method trains, in fp32 and under bf16 autocast: measured with saved-tensor hooks
# (torch.autograd.graph.saved_tensors_hooks) on the framework's own model and methods, as
# tests/unit/test_memory_prediction.py does again. A frozen weight needs no saved input for its own gradient,
# so adapters save less than full fine-tuning, a soft prompt (gradients to the input only) less again; QLoRA's
# 4-bit layers save their bf16 input beside the adapter's.
BLOCK_BYTES = {  # (trains, quantised): (fp32, 16-bit)
    ("all", False): (120.0, 67.0),
    ("adapters", False): (101.0, 60.0),
    ("adapters", True): (101.0, 85.0),
    ("soft_prompt", False): (87.0, 50.0),
    ("listed", False): (120.0, 67.0),  # head-only trains no block: only its blocks above count (none)
}
# Per logit: what the loss saves (~6 bytes, the fp32 log-softmax included) and its gradients in fp32 and 16-bit.
LOGIT_BYTES = 14.0
Z_BATCH = 3.0  # the largest batch of a run: mean + 3 standard deviations of a batch's tokens


def train_lengths(prepared) -> list[int] | None:
    """Token lengths of the prepared train split's examples; None where tunegrid did not tokenise them
    (a preference objective's pairs, which TRL tokenises)."""
    import pyarrow.compute as pc

    train = (getattr(prepared, "splits", None) or {}).get("train")
    if train is None or "input_ids" not in train.column_names:
        return None
    # Arrow computes the list lengths without turning every token id into a Python int (a large split holds
    # hundreds of millions); the arrow format keeps the split's own selection and order.
    return pc.list_value_length(train.with_format("arrow")["input_ids"]).to_pylist()


def batch_positions(cfg, spec: Spec, lengths: list[int] | None) -> tuple[float, float]:
    """(positions, row length) of the largest micro-batch a run is likely to see. pad_to_max: B rows of
    max_seq_len; dynamic padding / length grouping: B rows of the longest example; packing: the tokens of a
    large batch (mean + 3 sd of a sum of B lengths, at most B full rows) in rows of up to max_seq_len. Without
    the train split's lengths (a preference objective: TRL tokenises), B rows of max_seq_len."""
    b, s = int(cfg.trainer.batch_size), int(cfg.data.max_seq_len)
    virtual = spec.method.virtual_tokens  # a soft prompt's tokens, prepended to every row
    if not lengths or spec.batching == "pad_to_max":
        return b * (s + virtual), s + virtual
    longest = min(max(lengths), s)
    if spec.batching != "packing":
        return b * (longest + virtual), longest + virtual
    n = len(lengths)
    mean = sum(lengths) / n
    sd = (sum((x - mean) ** 2 for x in lengths) / max(n - 1, 1)) ** 0.5
    return min(b * mean + Z_BATCH * sd * b**0.5, b * longest), s


def predict_memory_mb(
    model, cfg, spec: Spec, precision: str, lengths: list[int] | None = None
) -> dict[str, float]:
    """Predicted training peak from sizes alone (documented in the README, "Memory prediction"):

    weights (as stored: fp32 or bf16, 4-bit packed included) + gradients of the trainable parameters (in their
    dtype) + optimizer state (optim.state_bytes_per_param per trainable parameter: AdamW 8, SGD+momentum 4,
    8-bit Adam 2, SGD and Adafactor ~0) + activations of the blocks above the lowest trainable one, per block
    P·H·BLOCK_BYTES (measured for this block and method; eager attention adds its probabilities, P·A·R·5
    bytes at 16-bit as in Korthikanti et al. 2022, 2 in fp32; only P·H·bytes with gradient checkpointing) +
    logits, P·V·LOGIT_BYTES (a few hidden-state copies with trainer.fused_loss, which never stores them).
    P = positions of the largest micro-batch (batch_positions: packing's rows hold fewer than
    B·max_seq_len), R = row length, H hidden size, A heads, V vocabulary.

    A preference objective (DPO) runs each pair's chosen and rejected answers in one batch: 2B rows. TRL
    projects through the LM head in tiles of at most 32,768 tokens (trl.trainer.utils add_fused_lm_head), so its
    logits term is min(2B·S, 32768)·V·LOGIT_BYTES. The reference adds a second copy of the weights (`copy`: full
    fine-tuning), nothing for an adapter switched off, and no gradients or activations either way (no_grad).
    """
    from src.methods import count_params, memory_split

    mb = 2**20
    weights = memory_split(model)["weights_bytes"]
    trainable = count_params(model)["trainable_params"]
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    config = getattr(model, "config", None)
    config = getattr(getattr(model, "base_model", None), "config", config)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 1) or 1)
    vocab = spec.output_size(int(getattr(config, "vocab_size", 0) or 0))  # num_labels for a classifier
    pairs = spec.objective.pairs
    positions, row = batch_positions(cfg, spec, None if pairs else lengths)
    positions *= 2 if pairs else 1  # chosen and rejected rows
    h = int(cfg.model.hidden_size)
    half = precision in ("bf16", "fp16")
    act_bytes = 2 if half else 4
    blocks = int(cfg.model.num_layers) - _first_trained_block(model, cfg)
    per_position = BLOCK_BYTES[(spec.method.trains, spec.method.quantised)][1 if half else 0] * h
    # Eager attention stores its probabilities: measured 5·A·R bytes per position at 16-bit, 2 in fp32.
    if cfg.trainer.attention == "eager":
        per_position += (5 if half else 2) * heads * row
    if cfg.trainer.gradient_checkpointing:
        per_position = h * act_bytes
    logit_rows = min(positions, TRL_LOGIT_TILE) if pairs else positions
    fused = cfg.trainer.get("fused_loss", "none") != "none"
    parts = {
        "weights_mb": weights / mb,
        "gradients_mb": grad_bytes / mb,
        "optimizer_mb": float(cfg.optim.get("state_bytes_per_param", 8)) * trainable / mb,
        "activations_mb": blocks * positions * per_position / mb,
        "logits_mb": logit_rows * (3 * h * 4 if fused else vocab * LOGIT_BYTES) / mb,
        "reference_mb": weights / mb if spec.reference == "copy" else 0.0,
    }
    parts["total_mb"] = sum(parts.values())
    return parts


def gpu_share() -> float:
    """The fraction of the GPU this process was given: a Ray cell's gpus_per_run (0.5: two cells share one
    GPU, each held to half its memory), else 1."""
    import sys

    ray = sys.modules.get("ray")  # imported in a Ray worker only
    if ray is None or not ray.is_initialized():
        return 1.0
    try:
        share = float(ray.get_runtime_context().get_assigned_resources().get("GPU", 0))
    except Exception:
        return 1.0
    return share if 0 < share < 1 else 1.0


def device_memory_mb(sweep) -> float:
    """The memory this run may use: sweep.device_memory_gb, else the GPU's (its share, under Ray), else RAM."""
    if sweep.get("device_memory_gb"):
        return float(sweep.device_memory_gb) * 1024
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / 2**20 * gpu_share()
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
