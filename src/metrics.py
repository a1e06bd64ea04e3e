"""Cost metrics measured around training: peak memory and what a checkpoint weighs on disk."""

from __future__ import annotations

import resource
from pathlib import Path

import torch


def reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb() -> float:
    """CUDA peak allocated memory on GPU; the process's peak resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def weight_bytes(folder: Path) -> int:
    """Bytes of the weight files saved in a checkpoint folder (safetensors; the adapter alone for PEFT)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
