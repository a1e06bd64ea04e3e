"""Trainer callbacks that make runs comparable and robust: a token budget, divergence detection at the
step it happens, SIGTERM/SIGINT handling, and fault injection (`debug.*`, conf/debug/) so that every
failure path is tested for real."""

from __future__ import annotations

import math
import signal
from typing import Any

import torch
from transformers import TrainerCallback

from src.errors import Diverged


class TokenBudget(TrainerCallback):
    """Stop after N trained (non-padding) tokens, so methods and batch sizes compare at equal data."""

    def __init__(self, budget: int):
        self.budget = int(budget)

    def on_step_end(self, args, state, control, **kw):
        if state.num_input_tokens_seen >= self.budget:
            control.should_training_stop = True


class LossWatch:
    """A forward hook on the trained model: raises Diverged at the first micro-step whose loss is not
    finite (the Trainer would only show it at the next logging step, after the weights are ruined).
    With debug.nan_at_step it turns that step's loss into NaN, to test the path for real."""

    def __init__(self, model: torch.nn.Module, nan_at_step: int | None = None):
        self.trainer: Any = None  # set once the Trainer exists (train() replaces trainer.state)
        self.nan_at_step = nan_at_step
        self.handle = model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        loss = getattr(output, "loss", None)
        if not module.training or loss is None or self.trainer is None:
            return output
        step = self.trainer.state.global_step + 1
        if self.nan_at_step is not None and step == self.nan_at_step:
            output.loss = loss * float("nan")
            loss = output.loss
        value = loss.detach().float().item()
        if not math.isfinite(value):
            raise Diverged(f"training loss became {value} at step {step}")
        return output


class FaultInjection(TrainerCallback):
    """`debug.fail_at_step=N` raises, `debug.oom_at_step=N` raises an out-of-memory error (CUDA's on
    GPU, MemoryError on CPU) at the start of step N; `oom_attempts` limits the OOM to the first
    attempts, so the retry path can succeed."""

    def __init__(
        self,
        fail_at_step: int | None = None,
        oom_at_step: int | None = None,
        attempt: int = 0,
        oom_attempts: int = 1,
        sleep_per_step: float = 0.0,
    ):
        self.fail_at_step, self.oom_at_step = fail_at_step, oom_at_step
        self.oom_now = attempt < oom_attempts
        self.sleep = sleep_per_step

    def on_step_begin(self, args, state, control, **kw):
        step = state.global_step + 1
        if self.fail_at_step is not None and step == self.fail_at_step:
            raise RuntimeError(f"injected failure at step {step} (debug.fail_at_step)")
        if self.oom_now and self.oom_at_step is not None and step == self.oom_at_step:
            if torch.cuda.is_available():
                raise torch.cuda.OutOfMemoryError(
                    f"injected CUDA out of memory at step {step} (debug.oom_at_step)"
                )
            raise MemoryError(f"injected out of memory at step {step} (debug.oom_at_step)")
        if self.sleep:
            import time

            time.sleep(self.sleep)


class StopOnSignal(TrainerCallback):
    """On SIGTERM/SIGINT: finish the current step, save a checkpoint, stop; the caller records
    status=interrupted. A second signal exits at once."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def on_step_end(self, args, state, control, **kw):
        if self.signal is not None:
            control.should_save = True
            control.should_training_stop = True
