"""Trainer callbacks that make runs comparable and robust: a token budget, divergence detection at the
step it happens, SIGTERM/SIGINT handling, fault injection (`debug.*`, conf/debug/) so that every failure
path is tested for real, and what a session's timings depended on (the machine's load, other processes on
the GPU, the memory in use when training began)."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from src import costs, distributed, interrupts
from src.atomic import share
from src.errors import Diverged

_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
_TASKS = Path("/proc/self/task")


class TokenBudget(TrainerCallback):
    """Stop after N trained (non-padding) tokens, so methods and batch sizes compare at equal data."""

    def __init__(self, budget: int):
        self.budget = int(budget)

    def on_step_end(self, args, state, control, **kw):
        if state.num_input_tokens_seen >= self.budget:
            control.should_training_stop = True


class LossWatch(TrainerCallback):
    """A forward hook on the trained model notes each micro-step's loss; before the optimizer step that would
    apply it, Diverged is raised if one was not finite (the Trainer would only show it at the next logging
    step, after the weights are ruined). One host read per optimizer step, not one per micro-batch: each read
    waits for the GPU, which then idles while the host prepares the next batch.
    With debug.nan_at_step it turns that step's loss into NaN, to test the path for real."""

    def __init__(self, model: torch.nn.Module, nan_at_step: int | None = None):
        self.trainer: Any = None  # set once the Trainer exists (train() replaces trainer.state)
        self.nan_at_step = nan_at_step
        self.losses: list[torch.Tensor] = []  # this optimizer step's micro-batch losses, on the device
        self.handle = model.register_forward_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs, output):
        loss = getattr(output, "loss", None)
        if not module.training or loss is None or self.trainer is None:
            return output
        step = self.trainer.state.global_step + 1
        if self.nan_at_step is not None and step == self.nan_at_step:
            output.loss = loss * float("nan")
            loss = output.loss
        self.losses.append(loss.detach())
        return output

    def on_pre_optimizer_step(self, args, state, control, **kw):
        losses, self.losses = self.losses, []
        if not losses or bool(torch.isfinite(torch.stack([x.float() for x in losses])).all()):
            return
        value = next(float(x) for x in losses if not math.isfinite(float(x)))
        raise Diverged(f"training loss became {value} at step {state.global_step + 1}")


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
        self.step_loss: Any = 0.0
        self.recent: list[Any] = []  # per-step losses, device tensors until read (no host read per step)

    def add(self, micro_loss) -> None:
        """One micro-batch's loss as the Trainer counts it (training_step's return value), summed on its device."""
        self.step_loss = self.step_loss + micro_loss.detach()

    def state(self) -> dict:
        self.recent = [float(x) for x in self.recent]
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
        step_loss = self.step_loss
        if distributed.world_size() > 1:  # each rank's loss is its share of the batch's
            step_loss = distributed.reduce(float(step_loss), "mean")
        self.recent = [*self.recent, step_loss][-self.window :]
        self.step_loss = 0.0
        if control.should_save:  # the checkpoint saved after this step carries the totals (one host read)
            self.export(state)

    def export(self, state) -> None:
        """Into the state the next checkpoint saves (the Trainer saves stateful_callbacks as they are)."""
        state.stateful_callbacks[self.KEY] = self.state()

    def train_loss(self) -> float | None:
        return sum(float(x) for x in self.recent) / len(self.recent) if self.recent else None


# --------------------------------------------------------------------------- what a session's timing depended on


def cpus_available() -> int:
    """The CPUs this process may run on: its affinity mask, capped by a cgroup v2 CPU quota (a container's)."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = _CPU_MAX.read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return n


def load1() -> float | None:
    """The machine's 1-minute load average (runnable and uninterruptible tasks, this run's threads included)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def thread_schedstat() -> dict[str, tuple[int, int]] | None:
    """Per thread of this process: (ns spent on a CPU, ns spent runnable but waiting for one), from
    /proc/self/task/*/schedstat; None where the kernel keeps no such counts."""
    out: dict[str, tuple[int, int]] = {}
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    for tid in tids:
        try:
            ran, waited = (_TASKS / tid / "schedstat").read_text().split()[:2]
            out[tid] = (int(ran), int(waited))
        except (OSError, ValueError):
            continue
    return out or None


def wait_share(before: dict[str, tuple[int, int]] | None, after: dict[str, tuple[int, int]] | None):
    """Of the time this process's threads were ready to run between two thread_schedstat snapshots, the share
    they spent waiting for a CPU (others' work, or more threads than CPUs); None without both snapshots or
    when nothing ran. Threads started in between count from zero; threads that ended are left out."""
    if before is None or after is None:
        return None
    ran = waited = 0
    for tid, (r1, w1) in after.items():
        r0, w0 = before.get(tid, (0, 0))
        ran, waited = ran + max(r1 - r0, 0), waited + max(w1 - w0, 0)
    return waited / (ran + waited) if ran + waited > 0 else None


def _gpu_uuid() -> str | None:
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        uuid = str(torch.cuda.get_device_properties(torch.cuda.current_device()).uuid)
    except (AttributeError, RuntimeError):
        return None
    return uuid.lower().removeprefix("gpu-")


def _gpu_pids_nvml(uuid: str) -> set[int] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        return {int(p.pid) for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)}
    except Exception:  # not installed, no driver, another NVML error: nvidia-smi may still answer
        return None


def _gpu_pids_smi(uuid: str) -> set[int] | None:
    import subprocess

    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=gpu_uuid,pid", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return parse_compute_apps(out.stdout, uuid)


def parse_compute_apps(text: str, uuid: str) -> set[int]:
    """The pids nvidia-smi --query-compute-apps=gpu_uuid,pid lists on the GPU `uuid` (without its GPU- prefix)."""
    pids = set()
    for line in text.splitlines():
        gpu, _, pid = (part.strip() for part in line.partition(","))
        if gpu.lower().removeprefix("gpu-") == uuid and pid.isdigit():
            pids.add(int(pid))
    return pids


def other_gpu_processes(pids: set[int] | None, me: int | None = None) -> int | None:
    """How many of the compute processes on this run's GPU are not this process. NVML sees the host's pids: in a
    container this process is listed under another pid, so when its own pid is missing one listed process is
    taken to be it. None when the list is empty: this process holds a context on the GPU, so a list without
    it means the device was not matched (a MIG slice) or the processes are hidden (a pid namespace)."""
    if not pids:
        return None
    me = os.getpid() if me is None else me
    return len(pids - {me}) - (0 if me in pids else 1)


def gpu_other_processes() -> int | None:
    """Compute processes other than this one on the GPU this process trains on (NVML through pynvml, else
    nvidia-smi); None on CPU or when neither answers."""
    uuid = _gpu_uuid()
    if uuid is None:
        return None
    pids = _gpu_pids_nvml(uuid)
    return other_gpu_processes(pids if pids is not None else _gpu_pids_smi(uuid))


class Conditions(TrainerCallback):
    """What this training session's time and memory depended on, for the record: the memory in use when
    training began (the baseline of `memory added`), and how busy the machine was: the 1-minute load average
    at the start, every SAMPLE_EVERY_S at step ends and at the end, against the CPUs the run had; the share of
    its threads' runnable time spent waiting for a CPU; on GPU the other compute processes on the device at the
    start and the end. The report marks timings taken under contention (src/report/marks.py)."""

    SAMPLE_EVERY_S = 5.0  # the kernel updates the load average every 5 s

    def __init__(self, gpu_processes=gpu_other_processes) -> None:
        self.gpu_processes = gpu_processes
        self.memory_before_mb: float | None = None
        self.loads: list[float] = []
        self.gpu: list[int] = []
        self.started = False
        self._sched: dict[str, tuple[int, int]] | None = None
        self._share: float | None = None
        self._last = 0.0

    def _sample_load(self) -> None:
        import time

        self._last = time.monotonic()
        if (v := load1()) is not None:
            self.loads.append(round(v, 3))

    def _sample_gpu(self) -> None:
        if (n := self.gpu_processes()) is not None:
            self.gpu.append(n)

    def on_train_begin(self, args, state, control, **kw):
        self.memory_before_mb = costs.current_memory_mb()
        self.loads, self.gpu, self.started, self._share = [], [], True, None
        self._sample_gpu()
        self._sample_load()
        self._sched = thread_schedstat()

    def on_step_end(self, args, state, control, **kw):
        import time

        if time.monotonic() - self._last >= self.SAMPLE_EVERY_S:
            self._sample_load()

    def on_train_end(self, args, state, control, **kw):
        self._share = wait_share(self._sched, thread_schedstat())
        self._sample_load()
        self._sample_gpu()

    def summary(self) -> dict[str, Any] | None:
        """The record's `contention` (None when this session never began training: it resumed at max_steps)."""
        if not self.started:
            return None
        return {
            "cpus": cpus_available(),
            "threads": torch.get_num_threads(),
            "load1_start": self.loads[0] if self.loads else None,
            "load1_end": self.loads[-1] if self.loads else None,
            "load1_max": max(self.loads) if self.loads else None,
            "load_samples": len(self.loads),
            "cpu_wait_share": None if self._share is None else round(self._share, 4),
            "gpu_other_processes": max(self.gpu) if self.gpu else None,
        }
