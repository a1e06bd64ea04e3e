"""Trainer callbacks that make runs comparable and robust: a token budget, divergence detection at the
step it happens, SIGTERM/SIGINT handling, and fault injection (`debug.*`, conf/debug/) so that every
failure path is tested for real."""

from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from src import distributed, interrupts
from src.atomic import share
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
    """The first SIGTERM/SIGINT in training (src/interrupts.py): finish the current step, save a checkpoint,
    stop; the recipe then records status=interrupted. Over several processes the ranks agree at every step
    end (the signal reaches them at different moments; one that stopped alone would leave the others
    waiting): all stop at the first step end at which any rank has it, as if each had received it."""

    def on_step_end(self, args, state, control, **kw):
        signum = int(distributed.reduce(interrupts.received() or 0))
        if signum and interrupts.received() is None:
            signal.raise_signal(signum)  # noted by src.interrupts, as if sent here
        if signum:
            control.should_save = True
            control.should_training_stop = True


class ShareCheckpoints(TrainerCallback):
    """The Trainer's checkpoints readable as the umask allows (safetensors and torch write some files 0600)."""

    def on_save(self, args, state, control, **kw):
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if folder.is_dir():
            share(folder)


class RunTotals(TrainerCallback):
    """What a run measured over all its steps, not just this session's: the training loss of every step
    (the Trainer's running sum is a local of its loop, and its logs are window means rounded to 4 digits)
    and the padding counts. Carried in each checkpoint's trainer_state.json (state.stateful_callbacks),
    so a run resumed at any step ends with the same train_loss and padding_share as one never stopped."""

    KEY = "tunegrid_run_totals"

    def __init__(self, window: int, padding):
        self.window = max(int(window), 1)  # train_loss: the mean over the last `window` steps
        self.padding = padding  # costs.PaddingCounter
        self.step_loss = 0.0
        self.recent: list[float] = []

    def add(self, micro_loss) -> None:
        """One micro-batch's loss as the Trainer counts it (training_step's return value)."""
        self.step_loss += float(micro_loss)

    def state(self) -> dict:
        return {
            "recent": self.recent,
            "processed": self.padding.processed,
            "real": int(self.padding.real),
        }

    def restore(self, state) -> None:
        """From a checkpoint's TrainerState (resume), if it carries totals."""
        saved = (state.stateful_callbacks or {}).get(self.KEY)
        if saved:
            self.recent = list(saved["recent"])
            self.padding.processed, self.padding.real = saved["processed"], saved["real"]

    def on_train_begin(self, args, state, control, **kw):
        self.restore(state)
        self.step_loss = 0.0

    def on_step_end(self, args, state, control, **kw):
        step_loss = distributed.reduce(self.step_loss, "mean")  # each rank's loss is its share of the batch's
        self.recent = [*self.recent, step_loss][-self.window :]
        self.step_loss = 0.0
        self.export(state)

    def export(self, state) -> None:
        """Into the state the next checkpoint saves (the Trainer saves stateful_callbacks as they are)."""
        state.stateful_callbacks[self.KEY] = self.state()

    def train_loss(self) -> float | None:
        return sum(self.recent) / len(self.recent) if self.recent else None
