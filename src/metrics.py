"""Cost metrics measured around training: peak memory and what a checkpoint weighs on disk."""

from __future__ import annotations

import contextlib
import resource
from pathlib import Path

import torch

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


def peak_memory_mb() -> float:
    """CUDA peak allocated memory on GPU; the process's peak resident set size on CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def weight_bytes(folder: Path) -> int:
    """Bytes of the weight files saved in a checkpoint folder (safetensors; the adapter alone for PEFT)."""
    return sum(p.stat().st_size for p in Path(folder).glob("*.safetensors"))
