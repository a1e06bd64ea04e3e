"""One run over several processes (trainer.devices=N > 1): torchrun on this node, started by the process
that Hydra ran, and what a rank needs to know about itself.

Hydra resolves the config and the run folder once, in the parent: the ranks train the resolved config the
folder holds (`python -m src.train <run_dir>/config.yaml --worker`), never composing it again (each would
resolve its own `${now:}` folder). The parent keeps the claim and writes the record; each rank leaves it its
outcome in <run_dir>/.distributed/rank-<i>.json (rank 0's metrics, or a rank's error). Rank 0 alone logs
(metrics.jsonl, stdout, W&B) and writes samples and weights (under FSDP every rank helps gather them).
Tokens and tokens/s count every rank's (the Trainer sums them over the ranks); the padding share and the
peak memory are rank 0's.

Signals: the parent passes the first SIGTERM/SIGINT to torchrun, which passes it to every rank; the ranks
agree at each step end (callbacks.StopOnSignal) and stop at the same step, with a checkpoint. A further
signal kills the ranks at once (one rank stopping mid-step would leave the others waiting in a collective):
the run then resumes from its last complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from src import interrupts
from src.atomic import write_bytes, write_json
from src.config import REPO_ROOT, RESOLVED
from src.errors import ConfigError, Interrupted, RankFailed, SkippedOOM, status_of

OUTCOMES = ".distributed"  # <run_dir>/.distributed/rank-<i>.json (.pid): what each rank left the parent
LOG = "torchrun.log"  # torchrun's stderr (the ranks' too), in full; the terminal gets it less torchrun's own
SHUTDOWN_S = 120  # after a signal, torchrun's wait for the ranks (a checkpoint to save) before it kills them
# What torchrun passes on to the ranks: its default, and SLURM's warning signals (which would end it otherwise;
# a rank takes SIGUSR1/2 as SIGTERM).
TORCHRUN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)  # fmt: skip
_TORCHRUN_LOG = re.compile(r"^[DIWEF]\d{4} [\d:.]+ +\d+ \S*torch/")  # torchrun's logging lines


# --------------------------------------------------------------------------- the rank side


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0, or a run in one process: the process that logs and writes the run's files."""
    return rank() == 0


def spans(cfg: Any) -> bool:
    """Whether the run trains over several processes (trainer.devices > 1)."""
    return int(cfg.trainer.devices) > 1


def setup_rank(run_dir: Path) -> None:
    """A rank starts: its own GPU (before anything says "cuda"), its pid for the parent (whose second signal
    kills the ranks), and no stdout on ranks other than 0 (rank 0's is the run's)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    write_bytes(Path(run_dir) / OUTCOMES / f"rank-{rank()}.pid", str(os.getpid()))
    if not is_main():
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the process


def reduce(value: float, op: str = "max") -> float:
    """`value` over every rank (max or mean), for what the ranks must agree on: a one-number all-reduce, or
    the value itself in a run of one process."""
    import torch
    import torch.distributed as dist

    if world_size() == 1 or not dist.is_initialized():
        return value
    on_gpu = torch.cuda.is_available() and dist.get_backend() != "gloo"
    t = torch.tensor([float(value)], dtype=torch.float64, device="cuda" if on_gpu else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return t.item() if op == "max" else t.item() / dist.get_world_size()


def report(run_dir: Path, metrics: dict | None = None, env: dict | None = None, error=None) -> None:
    """This rank's outcome for the parent, written atomically: rank 0's metrics and env, or the error."""
    from src.records import error_summary

    out: dict[str, Any] = {"rank": rank(), "at": time.time(), "status": "success"}
    if error is None:
        out.update(metrics=metrics, env=env)
    else:
        out.update(
            status=status_of(error),
            error=error_summary(error),
            message=str(error),
            signum=getattr(error, "signum", None),
            step=getattr(error, "step_reached", None),
            predicted=getattr(error, "predicted", None),
            traceback="".join(traceback.format_exception(error)),
        )
    write_json(Path(run_dir) / OUTCOMES / f"rank-{rank()}.json", out)


# --------------------------------------------------------------------------- the parent side


def check(cfg: Any) -> None:
    """What this machine must have for trainer.devices and trainer.strategy, before any model loads."""
    import torch

    n = int(cfg.trainer.devices)
    if "LOCAL_RANK" in os.environ:
        raise ConfigError(
            f"trainer.devices={n}: tunegrid starts torchrun itself; run python -m src.run in one process"
        )
    if torch.cuda.is_available():
        if n > (have := torch.cuda.device_count()):
            raise ConfigError(f"trainer.devices={n}: must be ≤ {have}, the GPUs this process sees")
    elif cfg.trainer.strategy == "fsdp":
        raise ConfigError(
            "trainer.strategy=fsdp: needs GPUs (accelerate shards over GPUs only; on CPU it would silently "
            "train with DDP); use trainer.strategy=ddp"
        )


def launch(run_dir: Path, name: str, group: str, cfg: Any, attempt: int = 0):
    """Train `cfg` (written to <run_dir>/config.yaml) over trainer.devices processes; return rank 0's
    (metrics, env, None), as train() returns them. A failed rank raises what its error means (RankFailed with
    its status, ConfigError, SkippedOOM), a signal Interrupted, with rank 0's step and message."""
    from src.checkpoints import CHECKPOINTS, resumable_checkpoint

    check(cfg)
    run_dir = Path(run_dir)
    # Chosen (and older checkpoints moved aside) once, here, not by every rank at the same time.
    resume = resumable_checkpoint(run_dir / CHECKPOINTS, cfg, force=bool(cfg.sweep.force))
    shutil.rmtree(run_dir / OUTCOMES, ignore_errors=True)  # an earlier attempt's outcomes
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",  # --standalone: a free port
        f"--nproc-per-node={int(cfg.trainer.devices)}", f"--shutdown-timeout={SHUTDOWN_S}",
        f"--signals-to-handle={','.join(s.name for s in TORCHRUN_SIGNALS)}",
        "-m", "src.train", str(run_dir / RESOLVED), "--worker",
        "--name", name, "--group", group, "--attempt", str(attempt), *(["--resume", resume] if resume else []),
    ]  # fmt: skip
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    # torchrun's own default (one OpenMP thread per rank), set here so that it does not print a banner
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with interrupts.phase("training"), _Forward(run_dir) as forward:  # signals are noted and passed on
        proc = subprocess.Popen(
            cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True
        )
        forward.attach(proc)
        relay = threading.Thread(target=_relay, args=(proc.stderr, run_dir / LOG), daemon=True)
        relay.start()
        code = proc.wait()
        relay.join(timeout=30)
    try:
        return _result(run_dir, code, killed=len(forward.signals) > 1)
    finally:
        shutil.rmtree(run_dir / OUTCOMES, ignore_errors=True)  # read: the record says it now


def _relay(stream, log: Path) -> None:
    """torchrun's stderr (the ranks' goes through it too) to ours, all of it to torchrun.log: torchrun's
    logging lines and the traceback it ends with after a failure or a signal stay in the log (the record's
    one line says what happened)."""
    hiding = False
    with log.open("a") as f:
        for line in stream:
            f.write(line)
            hiding = hiding or line.startswith("Traceback (most recent call last)")  # ranks print none
            if not hiding and not _TORCHRUN_LOG.match(line):
                sys.stderr.write(line)
                sys.stderr.flush()


class _Forward:
    """While torchrun runs: the first signal that stops a run goes to torchrun (a session of its own, so a
    terminal's Ctrl-C reaches it only this way), which passes it to every rank; a further one kills the
    ranks. src.interrupts' handler still notes each signal (the parent is in phase "training"). A signal it
    takes besides SIGTERM/SIGINT (SLURM's warning signal) reaches torchrun as SIGTERM."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.proc, self.signals = run_dir, None, []
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _Forward:
        if threading.current_thread() is threading.main_thread():
            ours = signal.getsignal(signal.SIGTERM)  # src.interrupts', once installed: the signals it takes
            taken = {s for s in signal.valid_signals() if callable(ours) and signal.getsignal(s) is ours}
            self.previous = {s: signal.signal(s, self._handle) for s in taken | set(interrupts.SIGNALS)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def attach(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        if self.signals:  # one that came before torchrun started
            self._send(self.signals[0], first=True)

    def _handle(self, signum: int, frame) -> None:
        previous = self.previous.get(signum)
        if callable(previous):
            previous(signum, frame)
        self.signals.append(signum)
        if self.proc is not None:
            self._send(signum, first=len(self.signals) == 1)

    def _send(self, signum: int, first: bool) -> None:
        if self.proc.poll() is not None:
            return
        if first:
            self.proc.send_signal(signum if signum in interrupts.SIGNALS else signal.SIGTERM)
            return
        for pid_file in (self.run_dir / OUTCOMES).glob("rank-*.pid"):
            with contextlib.suppress(OSError, ValueError):  # gone already
                os.kill(int(pid_file.read_text()), signal.SIGKILL)


def _result(run_dir: Path, code: int, killed: bool = False):
    """Rank 0's (metrics, env, None) after a success; else the exception that says what happened."""
    said = {}
    for path in (run_dir / OUTCOMES).glob("rank-*.json"):
        try:
            said[int(path.stem.split("-")[1])] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    main = said.get(0, {})
    if code == 0 and main.get("status") == "success":
        return main["metrics"], main["env"], None
    # The first rank that failed; a rank torchrun stopped because another failed ends later, or interrupted.
    failed = sorted((o for o in said.values() if o["status"] != "success"), key=lambda o: o["at"])
    first = next((o for o in failed if o["status"] != "interrupted"), failed[0] if failed else None)
    if interrupts.received() is not None or (first and first["status"] == "interrupted"):
        stopped = main if main.get("status") == "interrupted" else (first or {})
        try:
            interrupts.check()  # the parent's own signal
            raise interrupts.interrupted(int(stopped.get("signum") or signal.SIGTERM))  # a rank's alone
        except Interrupted as e:
            if stopped.get("message"):  # "signal 15 at step 3; checkpoint saved in ...", with our signal
                e.args = (re.sub(r"^signal \d+", f"signal {e.signum}", stopped["message"]),)
            elif killed:
                e.args = (f"{e} (a second signal: the ranks were killed; re-run the same command to resume)",)
            e.step_reached = stopped.get("step")
            raise
    if first is None:
        raise RankFailed(f"torchrun exited with code {code} and no rank said why; see {run_dir / LOG}")
    if first["status"] == "invalid":
        raise ConfigError(first["message"])
    if first["status"] == "skipped_oom":
        skip = SkippedOOM(first["message"])
        skip.predicted = first["predicted"]
        raise skip
    e = RankFailed(f"rank {first['rank']}: {first['error']}", first["status"])
    e.step_reached = first.get("step")
    e.add_note(f"rank {first['rank']}'s traceback:\n{first['traceback']}")
    raise e
