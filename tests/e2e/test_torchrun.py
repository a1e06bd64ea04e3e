"""One run over several processes: `python -m src.run trainer.devices=2` starts torchrun (gloo on CPU) on
the recipe's Hydra-free entry, in real subprocesses.

Two processes with batch B train what one process trains with batch 2B (the same examples, the gradients
averaged): the losses agree to float rounding. One record (processes: 2), one disk log and one W&B run,
both rank 0's. SIGTERM to the process Hydra ran reaches every rank through torchrun: they stop at the
same step with a checkpoint, the record says interrupted, and the same command resumes and ends where an
uninterrupted run ends. Four tiny runs in all, shared by the tests through module-scoped fixtures.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from src.config import REPO_ROOT
from src.records import RECORD, SESSION_METRICS
from tests.helpers import cli_env, no_traceback, record, run_cli, short, stop
from tests.wandb_reader import find_run_file, read_run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# 4 steps of the tiny model, an evaluation before training (it once kept the Trainer from wrapping the
# model in DDP) and after, the test split, W&B offline. Global batch 8 either way.
COMMON = short(
    "trainer.max_steps=4",
    "trainer.eval_every=4",
    "trainer.logging_steps=1",
    "eval.eval_before_training=true",
    "eval.test_split=true",
    "logger=wandb",
)
SINGLE = [*COMMON, "trainer.batch_size=8"]
DDP = [*COMMON, "trainer.batch_size=4", "trainer.devices=2"]
# Measured: |difference| ≤ 1e-6 (train, eval and test loss: float32 rounding of the reductions' order).
TOLERANCE = 1e-5


def timed(*args: str) -> SimpleNamespace:
    t0 = time.perf_counter()
    proc = run_cli(*args)
    return SimpleNamespace(proc=proc, seconds=time.perf_counter() - t0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    single, ddp = tmp / "single", tmp / "ddp"
    out = SimpleNamespace(single_dir=single, ddp_dir=ddp)
    out.single = timed(*SINGLE, f"hydra.run.dir={single}")
    out.ddp = timed(*DDP, f"hydra.run.dir={ddp}")
    print(f"one process: {out.single.seconds:.1f} s; two processes: {out.ddp.seconds:.1f} s")
    return out


def test_two_processes_train_what_one_trains_with_their_global_batch(runs):
    for r in (runs.single, runs.ddp):
        assert r.proc.returncode == 0, r.proc.stderr[-3000:]
    no_traceback(runs.ddp.proc)  # torchrun's own log lines and closing report stay in torchrun.log
    one, two = record(runs.single_dir), record(runs.ddp_dir)
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["status"] == "success" and two["trainer_used"]["batch_size"] == 4
    for key in ("initial_eval_loss", "train_loss", "eval_loss", "test_loss"):
        a, b = one["metrics"][key], two["metrics"][key]
        assert abs(a - b) <= TOLERANCE, (key, a, b, abs(a - b))
        print(f"{key}: one process {a!r}, two {b!r}, difference {abs(a - b):.2e}")
    # Every rank's tokens count (the Trainer sums them over the ranks).
    assert two["metrics"]["tokens_trained"] == one["metrics"]["tokens_trained"]
    assert two["metrics"]["steps"] == 4


def test_rank_0_alone_records_and_logs(runs):
    run_dir = runs.ddp_dir
    assert [p.relative_to(run_dir).as_posix() for p in run_dir.rglob(RECORD)] == [RECORD]
    assert not (run_dir / ".distributed").exists()  # the ranks' outcomes, read and removed
    # The disk log once: the same lines as the one-process run's, each step once.
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == len((runs.single_dir / "metrics.jsonl").read_text().splitlines())
    steps = [ln for ln in lines if '"train/loss"' in ln]
    assert len(steps) == 4, lines
    assert sorted((run_dir / "wandb").glob("offline-run-*")) == [find_run_file(run_dir).parent]
    summary = read_run(find_run_file(run_dir)).summary
    assert summary["eval_loss"] == record(run_dir)["metrics"]["eval_loss"]
    assert any((run_dir / "checkpoint").glob("*.safetensors"))
    assert (run_dir / "torchrun.log").is_file()


# --------------------------------------------------------------------------- SIGTERM


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """The two-process run stopped with SIGTERM after its first step, then the same command again."""
    tmp = tmp_path_factory.mktemp("torchrun-sigterm")
    run_dir, log = tmp / "run", tmp / "interrupted.log"
    args = [*DDP, "debug.sleep_per_step=1", f"hydra.run.dir={run_dir}"]  # sleep: timing, not identity
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "src.run", *args],
            cwd=REPO_ROOT,
            env=cli_env(),
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 300
    metrics = run_dir / "metrics.jsonl"
    while not (metrics.exists() and '"train/loss"' in metrics.read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no training step logged (exit {proc.poll()}):\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    sent = time.monotonic()
    rc = stop(proc, signal.SIGTERM, 180)
    out = SimpleNamespace(run_dir=run_dir, rc=rc, stopped_after=time.monotonic() - sent, log=log.read_text())
    out.record = record(run_dir) if (run_dir / RECORD).exists() else None
    out.checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    out.again = run_cli(*args)
    return out


def test_sigterm_stops_every_rank_at_one_step_with_a_checkpoint(interrupted):
    r = interrupted
    assert r.rc == 128 + signal.SIGTERM, (r.rc, r.log[-3000:])
    assert r.stopped_after < 60, f"{r.stopped_after:.1f} s from SIGTERM to exit"
    rec = r.record
    assert rec is not None and rec["status"] == "interrupted" and rec["processes"] == 2, r.log[-3000:]
    step = rec["step"]
    assert 1 <= step < 4, rec
    assert rec["error"].startswith(
        f"Interrupted: signal {int(signal.SIGTERM)} at step {step}; checkpoint saved"
    )
    assert f"checkpoint-{step}" in r.checkpoints, r.checkpoints
    assert f"tunegrid: run interrupted: {rec['error']}" in r.log
    assert "Traceback" not in r.log, r.log[-3000:]


def test_the_same_command_resumes_and_ends_as_an_uninterrupted_run(interrupted, runs):
    again = interrupted.again
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"tunegrid: resuming from {interrupted.run_dir / 'checkpoints'}" in again.stdout
    got, want = record(interrupted.run_dir)["metrics"], record(runs.ddp_dir)["metrics"]
    keys = (set(got) | set(want)) - set(SESSION_METRICS)
    assert {k: (got.get(k), want.get(k)) for k in sorted(keys) if got.get(k) != want.get(k)} == {}


# --------------------------------------------------------------------------- what the machine must have


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal")
def test_fsdp_on_cpu_is_refused_in_one_line(tmp_path):
    """accelerate runs FSDP on GPUs only: on CPU it would silently train with DDP."""
    run_dir = tmp_path / "run"
    proc = run_cli(*short("trainer.devices=2", "trainer.strategy=fsdp"), f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tunegrid: error: trainer.strategy=fsdp: needs GPUs"), (
        lines
    )
    assert record(run_dir)["status"] == "invalid"
    no_traceback(proc)
