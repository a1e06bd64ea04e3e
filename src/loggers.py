"""A small logger protocol with interchangeable backends: disk (metrics.jsonl), stdout, W&B.

The Trainer's own `report_to` integrations name metrics `train/loss` but `eval/eval_loss`-style
keys vary by version and they cannot write the per-step disk log the report draws curves from;
one callback that feeds every backend the same split-prefixed names keeps them consistent.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Protocol

from transformers import TrainerCallback

from src import build


class Logger(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def finish(self, summary: dict[str, Any]) -> None: ...


class Loggers:
    """A run's backends: disk (metrics.jsonl) and stdout always, W&B unless logger=none; finished once. None
    at all on the ranks other than 0 of a run over several processes (`enabled=False`): rank 0 logs the run."""

    def __init__(
        self,
        logger_cfg: Any,
        run_dir: Path,
        name: str,
        group: str,
        tags: list[str],
        config: dict,
        enabled: bool = True,
    ):
        self.backends: list[Logger] = (
            [JsonlLogger(run_dir / "metrics.jsonl"), StdoutLogger()] if enabled else []
        )
        wandb_cfg = logger_cfg.get("wandb")
        if wandb_cfg is not None and enabled:
            tags = [*tags, *wandb_cfg.tags]
            self.backends.append(
                build.wandb_logger(
                    wandb_cfg, run_dir=run_dir, name=name, group=group, tags=tags, config=config
                )
            )
        self._finished = False

    def finish(self, summary: dict[str, Any]) -> None:
        """W&B marks the run failed unless summary says success; a second call does nothing."""
        if not self._finished:
            self._finished = True
            for lg in self.backends:
                lg.finish(summary)


class JsonlLogger:
    """One JSON line per logging event: the run's curves, kept beside its record."""

    def __init__(self, path: Path):
        self.path = path
        self._f = path.open("a", buffering=1)

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._f.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")

    def finish(self, summary: dict[str, Any]) -> None:
        self._f.close()


class StdoutLogger:
    def log(self, metrics: dict[str, float], step: int) -> None:
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, int | float))
        print(f"step {step:>5} {shown}", flush=True)

    def finish(self, summary: dict[str, Any]) -> None:
        pass


def wandb_mode(mode: str) -> str:
    """`auto`: online only when the user has set W&B up (WANDB_MODE=online or an API key), else offline."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return env
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class WandbLogger:
    """W&B run: resolved config flattened into run config, split-prefixed metrics, final metrics in summary.

    An online run that cannot reach the server falls back to offline (and says so) rather than losing the run.
    """

    def __init__(
        self,
        project: str,
        run_dir: Path,
        name: str,
        group: str,
        config: dict[str, Any],
        entity: str | None = None,
        mode: str = "auto",
        tags: list[str] | None = None,
        init_timeout_s: float = 15,
    ):
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self._wandb = wandb
        self._step = 0  # the last step logged (see log)
        kwargs = dict(
            project=project,
            entity=entity,
            name=name,
            group=group,
            config=config,
            tags=list(tags or []),
            dir=str(run_dir),
            reinit="finish_previous",
        )
        self.mode = wandb_mode(mode)
        try:
            # a short init timeout: an unreachable server costs seconds, not wandb's default 90 s
            self.run = wandb.init(
                mode=self.mode, settings=wandb.Settings(init_timeout=init_timeout_s), **kwargs
            )
        except Exception as e:
            if self.mode != "online":
                raise
            print(
                f"tunegrid: W&B online init failed ({type(e).__name__}); logging offline instead "
                f"(upload later: wandb sync {run_dir}/wandb/offline-run-*)",
                file=sys.stderr,
            )
            os.environ["WANDB_MODE"] = "offline"  # the rest of a grid goes offline straight away
            self.mode = "offline"
            self.run = wandb.init(mode="offline", **kwargs)

    # W&B keeps one history row open per step and drops anything logged at a step lower than its current one
    # (wandb-core: "ignoring partial history record"). Every call therefore names a step, never below the last:
    # a call without one (what run.log does by default) would commit the last step's row and move W&B one step
    # on, so that the metrics measured after training (test/rouge*, eval/forgetting: logged at the last step)
    # would be dropped from the history and kept in the summary only.
    def log(self, metrics: dict[str, float], step: int) -> None:
        self._step = max(self._step, int(step))
        self.run.log(metrics, step=self._step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        """A table (the test generations) in the row of the last step logged."""
        self.run.log({key: self._wandb.Table(columns=columns, data=rows)}, step=self._step)

    def finish(self, summary: dict[str, Any]) -> None:
        for k, v in summary.items():
            if isinstance(v, int | float | str | bool):
                self.run.summary[k] = v
        self.run.finish(exit_code=0 if summary.get("status", "success") == "success" else 1)


# Trainer log keys -> split-prefixed names. Keys not listed keep their Trainer prefix convention:
# `eval_x` -> `eval/x`, `test_x` -> `test/x`, anything else -> `train/x`.
_RENAME = {
    "loss": "train/loss",
    "learning_rate": "train/lr",
    "grad_norm": "train/grad_norm",
    "epoch": "train/epoch",
    "num_input_tokens_seen": "train/tokens_seen",
    "train_loss": "train/mean_loss",
    "train_runtime": "train/runtime_s",
    "train_samples_per_second": "train/samples_per_s",
    "train_steps_per_second": "train/steps_per_s",
    "total_flos": "train/total_flos",
}


def rename(logs: dict[str, Any], perplexity: bool = True) -> dict[str, float]:
    """Trainer log keys -> split-prefixed metric names; `perplexity`: the loss is a token NLL (not DPO's)."""
    out: dict[str, float] = {}
    if (
        "test_loss" in logs
    ):  # TRL 1.16 prefixes its own metrics eval_ whatever the split: here they are test's
        logs = {
            ("test_" + k.removeprefix("eval_")) if k.startswith("eval_") else k: v for k, v in logs.items()
        }
    for k, v in logs.items():
        if not isinstance(v, int | float) or k.endswith(
            ("model_preparation_time", "train_tokens_per_second")
        ):
            continue
        if k in _RENAME:
            name = _RENAME[k]
        elif k.startswith(("eval_", "test_")):
            split, _, rest = k.partition("_")
            name = f"{split}/{rest}"
        else:
            name = f"train/{k}"
        out[name] = v
        if perplexity and name.endswith("/loss") and not name.startswith("train/") and math.isfinite(v):
            out[name.replace("/loss", "/perplexity")] = math.exp(min(v, 50.0))
    return out


class MetricsCallback(TrainerCallback):
    """Forward every Trainer log to all backends, adding train/tokens_per_s over each logging window."""

    def __init__(self, loggers: list[Logger], perplexity: bool = True):
        self.loggers = loggers
        self.perplexity = perplexity
        self._last = (0, None)  # (tokens seen, time)
        self.start_tokens = 0
        self.start_step = 0
        self.start_epoch = 0.0
        self.history: list[dict[str, float]] = []

    def on_train_begin(self, args, state, control, **kw):
        self.start_tokens = state.num_input_tokens_seen  # > 0 when resumed from a checkpoint
        self.start_step = state.global_step
        self.start_epoch = float(state.epoch or 0.0)
        self._last = (state.num_input_tokens_seen, time.perf_counter())

    def on_log(self, args, state, control, logs=None, **kw):
        metrics = rename(logs or {}, self.perplexity)
        if "train/loss" in metrics and self._last[1] is not None:
            tokens, t = state.num_input_tokens_seen, time.perf_counter()
            if t > self._last[1]:
                metrics["train/tokens_per_s"] = (tokens - self._last[0]) / (t - self._last[1])
            self._last = (tokens, t)
        self.emit(metrics, state.global_step)

    def emit(self, metrics: dict[str, float], step: int) -> None:
        if not metrics:
            return
        self.history.append({"step": step, **metrics})
        for lg in self.loggers:
            lg.log(metrics, step)


def quiet_libraries() -> None:
    """Library deprecation notes and progress bars are not the user's concern."""
    import logging
    import warnings

    import datasets
    import transformers

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()  # TRL tokenises the preference pairs with datasets' map
