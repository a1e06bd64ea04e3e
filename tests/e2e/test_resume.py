"""Resume, end to end through `python -m src.run` in real subprocesses (no mocks).

A grid re-run into the same sweep folder trains only what has not succeeded for the same resolved config
(matched by the config hash, not the folder name); `sweep.force=true` re-trains everything; a record from
other code is `stale` and kept unless `sweep.rerun_stale=true`. A run killed with SIGKILL resumes from its
last checkpoint and ends exactly where an uninterrupted run ends, also when the kill came after its last
checkpoint or cut a checkpoint short; `sweep.force=true` on a run folder with checkpoints starts over;
SIGTERM stops at the next step with a checkpoint and status `interrupted`. Checkpoints: `keep_checkpoints`,
safetensors, the adapter alone for LoRA.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from src.config import REPO_ROOT
from src.records import RECORD, hydra_overrides
from tests.helpers import cli_env, code_snapshot, no_traceback, record, run_cli, short, stop


def log_lines(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def popen_cli(*args: str, log: Path) -> subprocess.Popen:
    """`python -m src.run <args>` started in the background, stdout and stderr into `log`."""
    with log.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "src.run", *args],
            cwd=REPO_ROOT,
            env=cli_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for(path: Path, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Until `path` exists; fails if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended (exit {proc.returncode}) before {path} appeared:\n{log.read_text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(30)
            pytest.fail(f"{path} did not appear within {timeout} s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


# --------------------------------------------------------------------------- resuming a grid (slow)

SEEDS = ("0", "1", "2")


def snapshot(sweep: Path) -> dict[str, dict]:
    """seed -> what the cell's folder shows: its record (or None) and the number of disk-log lines. A cell
    without a record is known by the overrides Hydra saved in it."""
    out = {}
    for cell in sorted(p for p in sweep.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()):
        rec = record(cell) if (cell / RECORD).exists() else None
        seed = next(o.partition("=")[2] for o in hydra_overrides(cell) if o.startswith("seed="))
        out[seed] = {"dir": cell, "record": rec, "log_lines": log_lines(cell)}
    return out


def trained(proc: subprocess.CompletedProcess) -> set[str]:
    """Folders of the runs that trained in this process (each prints its record's path on success)."""
    return {str(Path(m).parent) for m in re.findall(r"^tunegrid: success; record: (\S+)$", proc.stdout, re.M)}


def skipped(proc: subprocess.CompletedProcess, kind: str) -> set[str]:
    """Folders named by `tunegrid: skipped, <kind>: <folder> ...` lines (kind: already succeeded ... / stale)."""
    return set(re.findall(rf"^tunegrid: skipped, {kind}: (\S+?) ", proc.stdout, re.M))


@pytest.fixture(scope="module")
def grid_resume(tmp_path_factory):
    """The whole story, one phase after another, into one sweep folder (3 cells: seed=0,1,2)."""
    tmp = tmp_path_factory.mktemp("resume")
    code = code_snapshot(tmp / "code")
    sweep = tmp / "grid"
    common = [
        *short("trainer.max_steps=3", "trainer.logging_steps=3", "trainer.eval_every=3"),
        f"hydra.sweep.dir={sweep}",
    ]

    def grid(seeds: str, *extra: str) -> subprocess.CompletedProcess:
        return run_cli(*common, f"seed={seeds}", *extra, "-m", cwd=code, timeout=600)

    phases = {}
    t0 = time.perf_counter()
    phases["first"] = (grid(",".join(SEEDS)), snapshot(sweep))
    # Seed 1's run "failed" and seed 2's record is gone (a run that never finished).
    first = phases["first"][1]
    rec1 = dict(first["1"]["record"], status="failed", error="RuntimeError: simulated")
    (first["1"]["dir"] / RECORD).write_text(json.dumps(rec1, indent=2))
    (first["2"]["dir"] / RECORD).unlink()
    phases["rerun"] = (grid(",".join(SEEDS)), snapshot(sweep))
    phases["force"] = (grid(",".join(SEEDS), "sweep.force=true"), snapshot(sweep))
    # Seed 0's record now says it ran with other code; the cells also come in another order (job numbers
    # no longer match the folders).
    cell0 = phases["force"][1]["0"]["dir"]
    rec0 = record(cell0)
    rec0["code_key"] = (
        "0000000000000000000000000000000000000000 torch=0.0 transformers=0.0 peft=0.0 bitsandbytes=0.0"
    )
    (cell0 / RECORD).write_text(json.dumps(rec0, indent=2))
    phases["stale"] = (grid(",".join(reversed(SEEDS))), snapshot(sweep))
    phases["rerun_stale"] = (grid(",".join(SEEDS), "sweep.rerun_stale=true"), snapshot(sweep))
    return SimpleNamespace(sweep=sweep, phases=phases, seconds=time.perf_counter() - t0)


def _phase(grid_resume, name):
    proc, snap = grid_resume.phases[name]
    assert proc.returncode == 0, f"{name}: " + proc.stdout[-3000:] + proc.stderr[-3000:]
    no_traceback(proc)
    assert all(c["record"] and c["record"]["status"] == "success" for c in snap.values()), (name, snap)
    assert re.search(rf"tunegrid: {len(SEEDS)} run\(s\) in ", proc.stdout), proc.stdout[-2000:]
    return proc, snap


@pytest.mark.slow
def test_first_grid_trains_every_cell(grid_resume):
    proc, snap = _phase(grid_resume, "first")
    assert sorted(snap) == sorted(SEEDS)
    assert trained(proc) == {str(c["dir"]) for c in snap.values()}
    assert not skipped(proc, "already succeeded with this config") and not skipped(proc, "stale")
    assert len({c["record"]["config_hash"] for c in snap.values()}) == len(SEEDS)
    print(f"grid resume story (5 grids of {len(SEEDS)} cells): {grid_resume.seconds:.1f} s")


@pytest.mark.slow
def test_rerun_skips_success_and_retrains_failed_and_missing(grid_resume):
    before = grid_resume.phases["first"][1]
    proc, snap = _phase(grid_resume, "rerun")
    cell = {s: str(snap[s]["dir"]) for s in SEEDS}
    assert skipped(proc, "already succeeded with this config") == {cell["0"]}, proc.stdout[-3000:]
    assert trained(proc) == {cell["1"], cell["2"]}, proc.stdout[-3000:]
    # The skipped run is untouched; the others trained again (new start time, more disk-log lines).
    assert snap["0"]["record"] == before["0"]["record"] and snap["0"]["log_lines"] == before["0"]["log_lines"]
    for s in ("1", "2"):
        assert snap[s]["log_lines"] > before[s]["log_lines"], (s, snap[s], before[s])
        assert snap[s]["record"]["config_hash"] == before[s]["record"]["config_hash"]
    assert snap["1"]["record"]["started_at"] >= before["1"]["record"]["ended_at"]


@pytest.mark.slow
def test_force_retrains_everything(grid_resume):
    before = grid_resume.phases["rerun"][1]
    proc, snap = _phase(grid_resume, "force")
    assert trained(proc) == {str(c["dir"]) for c in snap.values()}, proc.stdout[-3000:]
    assert "tunegrid: skipped" not in proc.stdout
    for s in SEEDS:
        assert snap[s]["log_lines"] > before[s]["log_lines"]
        assert snap[s]["record"]["started_at"] >= before[s]["record"]["ended_at"]


@pytest.mark.slow
def test_other_code_is_stale_and_kept(grid_resume):
    """Cells in another order still match their records (the hash of the config, not the folder); the one
    whose record names other code is reported stale and not re-run."""
    before = grid_resume.phases["force"][1]
    proc, snap = _phase(grid_resume, "stale")
    cell = {s: str(snap[s]["dir"]) for s in SEEDS}
    assert not trained(proc), proc.stdout[-3000:]
    assert skipped(proc, "stale") == {cell["0"]}, proc.stdout[-3000:]
    assert skipped(proc, "already succeeded with this config") == {cell["1"], cell["2"]}
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("tunegrid: skipped, stale"))
    assert "torch=0.0" in line and "sweep.rerun_stale=true" in line, line
    assert {s: c["log_lines"] for s, c in snap.items()} == {s: c["log_lines"] for s, c in before.items()}
    assert snap["0"]["record"]["code_key"].startswith("0000000")


@pytest.mark.slow
def test_rerun_stale_retrains_the_stale_cell(grid_resume):
    before = grid_resume.phases["stale"][1]
    proc, snap = _phase(grid_resume, "rerun_stale")
    cell = {s: str(snap[s]["dir"]) for s in SEEDS}
    assert trained(proc) == {cell["0"]}, proc.stdout[-3000:]
    assert skipped(proc, "already succeeded with this config") == {cell["1"], cell["2"]}
    assert snap["0"]["log_lines"] > before["0"]["log_lines"]
    assert (
        snap["0"]["record"]["code_key"]
        == snap["1"]["record"]["code_key"]
        != before["0"]["record"]["code_key"]
    )


# --------------------------------------------------------------------------- killed and resumed (slow)

RUN = short("trainer.max_steps=15", "trainer.save_every=5", "trainer.logging_steps=5", "trainer.eval_every=5")


def same_result(a: dict, b: dict) -> None:
    """Two runs of the same config ended in the same place (CPU training is deterministic here)."""
    assert b["steps"] == a["steps"] == 15, (a["steps"], b["steps"])
    for key in ("eval_loss", "train_loss"):
        assert math.isclose(b[key], a[key], rel_tol=1e-5), (key, a[key], b[key])
    assert b["tokens_trained"] == a["tokens_trained"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted run of RUN: the result every resumed run must end with. It keeps checkpoints 10, 15."""
    run_dir = tmp_path_factory.mktemp("baseline") / "run"
    proc = run_cli(*RUN, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "resuming from" not in proc.stdout
    return SimpleNamespace(run_dir=run_dir, metrics=record(run_dir)["metrics"])


@pytest.mark.slow
def test_sigkill_then_rerun_resumes_and_matches_an_uninterrupted_run(tmp_path, baseline):
    run_dir = tmp_path / "run"
    slow = [*RUN, "debug.sleep_per_step=0.2", f"hydra.run.dir={run_dir}"]  # debug is not hashed
    log = tmp_path / "killed.log"
    proc = popen_cli(*slow, log=log)
    ckpt = run_dir / "checkpoints" / "checkpoint-10"
    wait_for(ckpt / "trainer_state.json", proc, log)  # written last: the checkpoint is complete
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    assert not (run_dir / RECORD).exists() and not (run_dir / "checkpoints" / "checkpoint-15").exists()

    resumed = run_cli(*slow)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    no_traceback(resumed)
    assert f"tunegrid: resuming from {ckpt}" in resumed.stdout.splitlines(), resumed.stdout[-2000:]
    assert record(run_dir)["status"] == "success"
    same_result(baseline.metrics, record(run_dir)["metrics"])


@pytest.mark.slow
def test_checkpoint_cut_short_by_a_kill_is_not_resumed_from(tmp_path, baseline):
    """A kill while the Trainer writes checkpoint-N leaves a folder without trainer_state.json (written last).
    Resume must fall back to the last complete checkpoint instead of failing on every re-run."""
    run_dir = tmp_path / "run"
    log = tmp_path / "killed.log"
    proc = popen_cli(*RUN, "debug.sleep_per_step=0.3", f"hydra.run.dir={run_dir}", log=log)
    wait_for(run_dir / "checkpoints" / "checkpoint-10" / "trainer_state.json", proc, log)
    proc.kill()  # leaves checkpoints 5 and 10
    proc.wait(timeout=60)
    partial = run_dir / "checkpoints" / "checkpoint-11"  # what a kill between the weights and the rest leaves
    partial.mkdir()
    shutil.copy(run_dir / "checkpoints" / "checkpoint-10" / "model.safetensors", partial)

    again = run_cli(*RUN, f"hydra.run.dir={run_dir}")
    rec = record(run_dir)
    assert again.returncode == 0 and rec["status"] == "success", (rec.get("error"), again.stdout[-1500:])
    assert f"tunegrid: resuming from {run_dir / 'checkpoints' / 'checkpoint-10'}" in again.stdout.splitlines()
    same_result(baseline.metrics, rec["metrics"])


@pytest.fixture(scope="module")
def after_baseline(baseline):
    """Two re-runs into the finished baseline's folder (checkpoints 10 and 15 in it):
    - its record lost (a kill after the last checkpoint, during the final evaluation): re-run, it resumes;
    - then `sweep.force=true`: it must train again from the start, not continue from checkpoint-15."""
    run_dir = baseline.run_dir
    (run_dir / RECORD).unlink()
    lost = run_cli(*RUN, f"hydra.run.dir={run_dir}")
    lost_rec = record(run_dir) if (run_dir / RECORD).exists() else None
    forced = run_cli(*RUN, "sweep.force=true", f"hydra.run.dir={run_dir}")
    return SimpleNamespace(lost=lost, lost_rec=lost_rec, forced=forced, forced_rec=record(run_dir))


@pytest.mark.slow
def test_run_killed_after_its_last_checkpoint_ends_at_max_steps(baseline, after_baseline):
    proc, rec = after_baseline.lost, after_baseline.lost_rec
    assert proc.returncode == 0 and rec and rec["status"] == "success", proc.stderr[-2000:]
    assert f"tunegrid: resuming from {baseline.run_dir / 'checkpoints' / 'checkpoint-15'}" in proc.stdout
    assert not re.search(r"step\s+\d+ train/loss=", proc.stdout), proc.stdout[-2000:]  # nothing left to train
    same_result(baseline.metrics, rec["metrics"])


@pytest.mark.slow
def test_force_trains_again_from_the_start(baseline, after_baseline):
    proc, rec = after_baseline.forced, after_baseline.forced_rec
    assert proc.returncode == 0 and rec["status"] == "success", proc.stderr[-2000:]
    assert "resuming from" not in proc.stdout, proc.stdout[-2000:]
    same_result(baseline.metrics, rec["metrics"])
    # Every logging step of a fresh 15-step run (5, 10, 15) was trained and logged again.
    trained_steps = [ln for ln in proc.stdout.splitlines() if re.match(r"step\s+\d+ train/loss=", ln)]
    assert [int(ln.split()[1]) for ln in trained_steps] == [5, 10, 15], trained_steps


LORA = short(
    "method=lora",
    "trainer.max_steps=15",
    "trainer.save_every=5",
    "trainer.keep_checkpoints=2",
    "trainer.logging_steps=5",
    "trainer.eval_every=15",
)


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory):
    """A LoRA run stopped with SIGTERM mid-training, then the same command again (it resumes and finishes)."""
    tmp = tmp_path_factory.mktemp("sigterm")
    run_dir, log = tmp / "run", tmp / "interrupted.log"
    args = [*LORA, "debug.sleep_per_step=0.2", f"hydra.run.dir={run_dir}"]
    proc = popen_cli(*args, log=log)
    wait_for(run_dir / "checkpoints" / "checkpoint-5" / "trainer_state.json", proc, log)
    time.sleep(0.3)  # into a later step
    sent = time.monotonic()
    rc = stop(proc, signal.SIGTERM, 120)
    stopped_after = time.monotonic() - sent
    interrupted = record(run_dir) if (run_dir / RECORD).exists() else None
    checkpoints_then = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    again = run_cli(*args)
    return SimpleNamespace(
        run_dir=run_dir,
        rc=rc,
        log=log.read_text(),
        stopped_after=stopped_after,
        interrupted=interrupted,
        checkpoints_then=checkpoints_then,
        again=again,
    )


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_stops_promptly(sigterm_run):
    r = sigterm_run
    assert r.rc == 128 + signal.SIGTERM, (r.rc, r.log[-3000:])
    assert r.stopped_after < 15, f"{r.stopped_after:.1f} s from SIGTERM to exit"
    rec = r.interrupted
    assert rec is not None and rec["status"] == "interrupted", (rec, r.log[-3000:])
    step = rec["step"]
    assert isinstance(step, int) and 5 <= step < 15, rec
    assert rec["error"].startswith(
        f"Interrupted: signal {int(signal.SIGTERM)} at step {step}; checkpoint saved"
    ), rec
    assert f"checkpoint-{step}" in r.checkpoints_then, r.checkpoints_then
    assert "Traceback" not in r.log
    assert f"tunegrid: run interrupted: {rec['error']}" in r.log


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_checkpoint(sigterm_run):
    r, again = sigterm_run, sigterm_run.again
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    no_traceback(again)
    step = r.interrupted["step"]
    assert (
        f"tunegrid: resuming from {r.run_dir / 'checkpoints' / f'checkpoint-{step}'}"
        in again.stdout.splitlines()
    )
    rec = record(r.run_dir)
    assert rec["status"] == "success" and rec["metrics"]["steps"] == 15


def weight_files(folder: Path) -> list[Path]:
    """Files that hold model or adapter weights (by name), whatever their format."""
    return [
        p for p in folder.iterdir() if p.is_file() and re.match(r"(pytorch_)?(model|adapter_model)\b", p.name)
    ]


def is_safetensors(path: Path) -> bool:
    from safetensors import safe_open

    raw = path.read_bytes()[:9]
    if raw[:2] == b"PK" or raw[:1] == b"\x80":  # a torch.save zip or a bare pickle
        return False
    with safe_open(str(path), framework="pt") as f:
        return len(list(f.keys())) > 0


@pytest.mark.slow
def test_lora_checkpoints_keep_the_last_two_adapter_only_safetensors(sigterm_run):
    run_dir = sigterm_run.run_dir
    assert sigterm_run.again.returncode == 0, sigterm_run.again.stderr[-2000:]
    kept = sorted((run_dir / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in kept] == ["checkpoint-10", "checkpoint-15"], [p.name for p in kept]
    for folder in [*kept, run_dir / "checkpoint"]:
        names = sorted(p.name for p in weight_files(folder))
        assert names == ["adapter_model.safetensors"], (folder.name, sorted(p.name for p in folder.iterdir()))
        assert not (folder / "model.safetensors").exists()
        for p in weight_files(folder):
            assert is_safetensors(p), p
    assert (kept[-1] / "trainer_state.json").exists()
