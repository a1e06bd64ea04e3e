"""SIGTERM and SIGINT for the whole process: every signal, first or second, at any phase, ends with a record
(status `interrupted`), exit 128 + signal and no traceback; once training has started, with a checkpoint.

What a signal does depends on the phase the process is in (`phase(...)`):
- `outside` a run (Hydra composing, between the cells of a grid, writing the report): one line, exit;
- `run`: Interrupted is raised where the program is, and the task wrapper (src/run.py) records it;
- `training`: the first signal stops at the end of the step with a checkpoint (callbacks.StopOnSignal); a
  second one stops at the next forward pass (`stop_now`, a forward pre-hook), and the recipe saves the
  checkpoint of the last finished step;
- `deferred`: noted and acted on afterwards (writing a record or a checkpoint is not cut in half).
Signals are process-wide, so this state is too.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from src.errors import Interrupted

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class _State:
    phase = "outside"
    signum: int | None = None  # the first signal of this run
    count = 0  # signals received in this run
    raised = False  # an Interrupted for this run is on its way up
    installed = False


STATE = _State()


def install(also: tuple[int, ...] = ()) -> None:
    """Take over SIGTERM and SIGINT, and `also` (a SLURM job: the scheduler's preemption / time-limit signal)
    (idempotent; only the main thread can, as Python requires)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (*SIGNALS, *also) if not STATE.installed else also:
        signal.signal(sig, _handle)
    STATE.installed = True


def interrupted(signum: int, why: str = "") -> Interrupted:
    exc = Interrupted(f"signal {signum}{why}")
    exc.signum = signum
    return exc


def _handle(signum: int, frame) -> None:
    STATE.count += 1
    if STATE.signum is None:
        STATE.signum = signum
    if STATE.phase == "outside":
        print(f"tunegrid: interrupted (signal {signum})", file=sys.stderr)
        raise SystemExit(128 + signum)
    if STATE.phase == "run" and not STATE.raised:
        STATE.raised = True
        raise interrupted(signum)
    # training: StopOnSignal and stop_now act on it; deferred: check() after the write


def begin_run() -> None:
    """A new run (a new cell of a grid): no signal received yet."""
    STATE.signum, STATE.count, STATE.raised = None, 0, False


@contextmanager
def phase(name: str) -> Iterator[None]:
    previous = STATE.phase
    STATE.phase = name
    try:
        yield
    finally:
        STATE.phase = previous


def received() -> int | None:
    return STATE.signum


def check() -> None:
    """Raise Interrupted for a signal noted in a phase that did not raise it (training, deferred)."""
    if STATE.signum is not None and not STATE.raised:
        STATE.raised = True
        raise interrupted(STATE.signum)


def stop_now(module, args, kwargs) -> None:
    """Forward pre-hook on the trained model: after a second signal in training, stop at this forward pass
    (before any backward or optimizer step of it, so the weights are those of the last finished step)."""
    if STATE.phase == "training" and STATE.count > 1 and not STATE.raised:
        STATE.raised = True
        raise interrupted(STATE.signum or signal.SIGTERM, " (second signal)")
