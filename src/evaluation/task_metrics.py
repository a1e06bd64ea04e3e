"""Task metrics: generations scored against references with the local `evaluate` modules in metric_modules/
(loaded by path, so they work offline), and a classifier's accuracy from its logits."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from src.errors import ConfigError

METRIC_DIR = Path(__file__).resolve().parent / "metric_modules"

# Metric name (data YAML `metrics:` / `eval.metrics`) -> (local module, result keys it contributes).
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rouge": ("rouge", ("rouge1", "rouge2", "rougeL")),
    "rouge1": ("rouge", ("rouge1",)),
    "rouge2": ("rouge", ("rouge2",)),
    "rougeL": ("rouge", ("rougeL",)),
    "rougeLsum": ("rouge", ("rougeLsum",)),
    "bleu": ("bleu", ("bleu",)),
    "accuracy": ("accuracy", ("accuracy",)),
}


def plain(x: Any) -> Any:
    """An OmegaConf node as plain data (anything else unchanged)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig | ListConfig) else x


@functools.cache
def load_metric(module: str):
    """A local metric module (`metric_modules/<module>/<module>.py`) through `evaluate.load`, by path."""
    import evaluate

    path = METRIC_DIR / module
    if not (path / f"{module}.py").is_file():
        raise ConfigError(f"metric module {module!r}: no {path / (module + '.py')}")
    return evaluate.load(str(path), keep_in_memory=True)


def compute_metrics(
    names: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[Any],
    prefix: str = "test",
    metric_args: Any = None,
) -> dict[str, float]:
    """Score predictions against references: {"<prefix>/<key>": value}, e.g. test/rouge1, test/bleu.

    `names` come from `METRICS`; `metric_args` maps a module name to extra compute() kwargs
    (e.g. {"rouge": {"use_stemmer": True}}). A reference may be a string or a list of strings.
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}; allowed: {', '.join(METRICS)}")
    if not names or not predictions:
        return {}
    args = plain(metric_args) or {}
    refs = [plain(r) for r in references]
    if any(isinstance(r, list) for r in refs):  # evaluate needs one feature type per call
        refs = [r if isinstance(r, list) else [r] for r in refs]
    wanted: dict[str, list[str]] = {}
    for name in names:
        module, keys = METRICS[name]
        wanted.setdefault(module, [])
        wanted[module] += [k for k in keys if k not in wanted[module]]
    out: dict[str, float] = {}
    for module, keys in wanted.items():
        kwargs = dict(args.get(module) or {})
        if module == "rouge":
            kwargs["rouge_types"] = keys
        result = load_metric(module).compute(predictions=list(predictions), references=refs, **kwargs)
        for k in keys:
            out[f"{prefix}/{k}"] = float(result[k])
    return out


def logits_accuracy(pred) -> dict[str, float]:
    """The Trainer's compute_metrics for a labelled task: argmax of the logits against the labels, through
    the same offline `evaluate` accuracy module."""
    classes = pred.predictions.argmax(-1).tolist()
    labels = pred.label_ids.tolist()
    got = compute_metrics(["accuracy"], [str(c) for c in classes], [str(y) for y in labels], prefix="x")
    return {"accuracy": got["x/accuracy"]}
