"""hydra/launcher=slurm against a real SLURM cluster with accounting (scripts/local_slurm.sh starts a
single-node one; .ci/run does, and sets TUNEGRID_REQUIRE_SLURM=1 so that these tests fail there rather than
skip). A grid as a job array; a cell that fails and one killed hard are reported and the launcher returns;
a job sent the preemption signal checkpoints, is requeued, resumes and ends with an uninterrupted run's
metrics; submit-and-return, followed by `python -m src.status`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.claim import OWNER
from src.config import REPO_ROOT
from src.records import RECORD
from src.scaleout.cells import MANIFEST, folder_overrides
from src.scaleout.slurm_jobs import cluster_problem
from tests.helpers import cli_env, run_cli, same_metrics, short

REASON = cluster_problem()
if REASON and os.environ.get("TUNEGRID_REQUIRE_SLURM"):
    raise RuntimeError(f"TUNEGRID_REQUIRE_SLURM is set, but {REASON}")
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.skipif(REASON is not None, reason=REASON or ""),
]
pytest.importorskip(
    "hydra_plugins.hydra_submitit_launcher", reason="hydra-submitit-launcher is not installed"
)

SLURM = ("hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=20")
SLOW = short("trainer.max_steps=24", "trainer.eval_every=12", "debug.sleep_per_step=0.4")


def launch(sweep: Path, *overrides: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "src.run", "-m", *SLURM, *overrides, f"hydra.sweep.dir={sweep}"],
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def status(sweep: Path) -> list[dict]:
    out = subprocess.run(
        [sys.executable, "-m", "src.status", str(sweep), "--json"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return [json.loads(line) for line in out.splitlines()]


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = condition()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def job_of(sweep: Path, key: str, value: str) -> tuple[str, list[str]]:
    """The SLURM job id and the overrides of the cell whose overrides hold key=value."""
    cells = json.loads((sweep / MANIFEST).read_text())["cells"]
    (cell,) = [c for c in cells if f"{key}={value}" in c["overrides"]]
    return cell["job_id"], cell["overrides"]


def folder_of(sweep: Path, overrides: list[str]) -> Path | None:
    """The cell's folder, once its job has started (Hydra writes .hydra/overrides.yaml there)."""
    return next((p for p in sweep.iterdir() if p.is_dir() and folder_overrides(p) == overrides), None)


def steps_logged(folder: Path) -> int:
    try:
        return max((json.loads(line).get("step", 0) for line in (folder / "metrics.jsonl").open()), default=0)
    except (OSError, ValueError):
        return 0


def test_a_grid_runs_as_a_job_array(tmp_path):
    sweep = tmp_path / "grid"
    proc = run_cli("-m", *SLURM, "seed=0,1", *short(), f"hydra.sweep.dir={sweep}", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "as SLURM job array" in proc.stdout
    recs = [json.loads(p.read_text()) for p in sorted(sweep.glob(f"*/{RECORD}"))]
    assert [r["status"] for r in recs] == ["success", "success"]
    array = {r["launch"]["slurm_job_id"].split("_")[0] for r in recs}
    assert len(array) == 1 and {r["launch"]["launcher"] for r in recs} == {"slurm"}
    assert sorted(r["launch"]["slurm_job_id"].split("_")[1] for r in recs) == ["0", "1"]
    assert all(r["seed"] in (0, 1) for r in recs) and (sweep / "report.md").is_file()


def test_a_failed_and_a_killed_cell_are_reported_and_the_launcher_returns(tmp_path):
    sweep = tmp_path / "grid"
    proc = launch(sweep, "debug.fail_at_step=100,101,3", *SLOW)
    killed, overrides = wait_for(
        lambda: (sweep / MANIFEST).is_file() and job_of(sweep, "debug.fail_at_step", "101"), 120, "jobs.json"
    )
    folder = wait_for(lambda: folder_of(sweep, overrides), 240, "the cell's folder")
    wait_for(lambda: steps_logged(folder) >= 1, 240, "the cell to be training")
    # Killed hard, as the kernel's OOM killer does: no handler runs (scancel sends SIGTERM first, which the run
    # handles as an interruption, with a checkpoint and a record)
    os.kill(int(json.loads((folder / OWNER).read_text())["pid"]), signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out[-3000:] + err[-3000:]  # returned, and said that cells did not succeed
    recs = {
        r["config"]["debug"]["fail_at_step"]: r
        for r in map(json.loads, map(Path.read_text, sweep.glob(f"*/{RECORD}")))
    }
    assert recs[100]["status"] == "success"
    assert recs[3]["status"] == "failed" and "injected failure at step 3" in recs[3]["error"]
    assert recs[101]["status"] == "failed" and "ended without writing a record" in recs[101]["error"]
    assert killed in recs[101]["error"] and "tunegrid: 3 run(s)" in out
    states = sorted(c["state"] for c in status(sweep))
    assert states == ["done", "failed", "failed"]


def test_preempted_job_requeues_and_resumes_to_the_uninterrupted_metrics(tmp_path):
    sweep = tmp_path / "grid"
    submitted = launch(sweep, "hydra.launcher.wait=false", "seed=5", *SLOW)
    out, err = submitted.communicate(timeout=120)  # submit and return: no waiting for the job
    assert submitted.returncode == 0 and "python -m src.status" in out, out + err
    job, overrides = job_of(sweep, "seed", "5")
    assert [c["state"] for c in status(sweep)] in (["pending"], ["running"])
    folder = wait_for(lambda: folder_of(sweep, overrides), 240, "the cell's folder")
    wait_for(lambda: steps_logged(folder) >= 8, 300, "step 8")
    subprocess.run(
        ["scancel", "--signal=USR2", job], check=True, timeout=30
    )  # what SLURM sends before a limit
    done = wait_for(
        lambda: [c for c in status(sweep) if c["state"] in ("done", "failed", "died")], 400, "the end"
    )
    assert done[0]["state"] == "done", done
    rec = json.loads((folder / RECORD).read_text())
    assert rec["launch"]["slurm_restarts"] == 1 and rec["launch"]["slurm_job_id"] == job
    log = "".join(p.read_text() for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "resuming from" in log and "Requeued job" in log
    alone = tmp_path / "alone"
    ref = run_cli("seed=5", *SLOW, "debug.sleep_per_step=0", f"hydra.run.dir={alone}", timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]
    same_metrics(rec["metrics"], json.loads((alone / RECORD).read_text())["metrics"])
