"""The metric columns of the report: what each is called, how its values are written, which direction is
better, and what kind of number it is (an exact size, a timing, or another measurement: the bold rule and
the marks depend on it); shared by the tables, the plots and report.md."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


def show(v: Any) -> str:
    """A setting's value in a table cell or label: None as —, floats short."""
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def fmt_count(v: float) -> str:
    """12288 -> 12.3K, 124439808 -> 124.4M."""
    v = float(v)
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(v) >= div:
            return f"{v / div:.1f}{unit}"
    return f"{v:.0f}"


def fmt_bytes(v: float) -> str:
    v = float(v)
    for div, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(v) >= div:
            return f"{v / div:.1f} {unit}"
    return f"{v:.0f} B"


def fmt_mb(v: float) -> str:
    return f"{v / 1024:.2f} GiB" if v >= 1024 else f"{v:.0f} MiB"


def fmt_seconds(v: float) -> str:
    v = float(v)
    if v >= 3600:
        return f"{v / 3600:.2f} h"
    if v >= 120:
        return f"{v / 60:.1f} min"
    return f"{v:.1f} s"


def fmt_sig(v: float) -> str:
    return f"{v:.3g}"


def fmt_4(v: float) -> str:
    return f"{v:.4f}"


def fmt_2(v: float) -> str:
    return f"{v:.2f}"


def fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


@dataclass(frozen=True)
class Metric:
    key: str  # name in record["metrics"] (or a derived value, see study.Run.values)
    header: str  # column header in report.md
    fmt: Callable[[float], str]
    lower_is_better: bool
    label: str = ""  # axis label in plots
    ranked: bool = True  # False: never in bold (a prediction, or a ratio with no better direction)
    exact: bool = False  # a size that follows from the config (parameters, bytes): no seed noise
    timing: bool = False  # depends on what else the machine ran: marked when taken under contention

    @property
    def axis(self) -> str:
        return self.label or self.header


TABLE_METRICS: tuple[Metric, ...] = (
    Metric("trainable_params", "trainable params", fmt_count, True, exact=True),
    Metric("trainable_pct", "trainable %", fmt_sig, True, exact=True),
    Metric("tokens_per_s", "tokens/s", fmt_rate, False, timing=True),
    Metric("padding_share", "padding share", fmt_2, True, "padding tokens / tokens processed"),
    Metric("time_per_epoch_s", "time/epoch", fmt_seconds, True, "time/epoch (s)", timing=True),
    Metric("peak_memory_mb", "peak memory", fmt_mb, True, "peak memory (MiB)"),
    Metric(
        "predicted_memory_mb", "predicted memory", fmt_mb, True, "predicted peak memory (MiB)", ranked=False
    ),
    Metric(
        "peak_memory_ratio",
        "measured/predicted",
        fmt_2,
        True,
        "measured / predicted peak memory",
        ranked=False,
    ),
    Metric("memory_added_mb", "memory added", fmt_mb, True, "memory added in training (MiB)"),
    Metric("checkpoint_bytes", "checkpoint", fmt_bytes, True, "checkpoint (bytes)", exact=True),
    Metric("eval_loss", "eval loss", fmt_4, True),
    Metric("perplexity", "perplexity", fmt_2, True),
    Metric("eval_pref_loss", "eval DPO loss", fmt_4, True, "eval DPO loss (log 2 at the start)"),
)
BY_KEY = {m.key: m for m in TABLE_METRICS}
TRAIN_TIME = Metric("train_runtime_s", "train time", fmt_seconds, True, "train time (s)", timing=True)
# Split-prefixed numbers that are bookkeeping, not task quality.
_NOT_TASK = {
    "loss",
    "perplexity",
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "epoch",
    "tokens_seen",
    "in_train_s",  # eval_in_train_s: evaluation time inside training, taken out of tokens/s
}
_LOWER_WORDS = ("loss", "perplexity", "ppl", "error", "forgetting", "wer", "ter_")


def task_metric(key: str) -> Metric:
    """A task metric column (test_rouge1, test/bleu, …): higher is better unless the name says loss/error."""
    bare = key.split("/", 1)[-1] if "/" in key else key
    lower = any(w in bare.lower() for w in _LOWER_WORDS)
    return Metric(key, key, fmt_4, lower)


def _is_task_key(key: str) -> bool:
    """test_rouge1, test/bleu, eval/forgetting …; not bookkeeping, nor a *_before baseline (same for all runs)."""
    m = re.match(r"^(test|eval)[_/](.+)$", key)
    return bool(m) and m.group(2) not in _NOT_TASK and key not in BY_KEY and not key.endswith("_before")
