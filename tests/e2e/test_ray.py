"""hydra/launcher=ray on this CPU machine, with two logical GPUs declared to Ray: a 4-cell grid runs two cells
at a time, each in a new process with its own CUDA_VISIBLE_DEVICES; a failing cell does not stop the others."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from itertools import combinations

import pytest

from src.claim import OWNER
from src.config import REPO_ROOT
from src.records import RECORD
from src.scaleout.cells import MANIFEST
from tests.helpers import cli_env, run_cli, short

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="hydra-ray-launcher is not installed")

FAILING = 3  # debug.fail_at_step of the one failing cell; the others' steps never reach theirs


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("ray") / "grid"
    proc = run_cli(
        "-m",
        "hydra/launcher=ray",
        "hydra.launcher.init.num_gpus=2",  # logical GPUs: Ray assigns them without any hardware
        "hydra.launcher.gpus_per_run=1",
        f"debug.fail_at_step=100,101,102,{FAILING}",
        *short("trainer.max_steps=6", "trainer.eval_every=6"),
        f"hydra.sweep.dir={sweep}",
        timeout=900,
    )
    recs = [json.loads(p.read_text()) for p in sorted(sweep.glob(f"*/{RECORD}"))]
    return proc, sweep, recs


def _interval(rec: dict) -> tuple[datetime, datetime]:
    return datetime.fromisoformat(rec["started_at"]), datetime.fromisoformat(rec["ended_at"])


def test_every_cell_recorded_and_the_failure_does_not_stop_the_others(grid):
    proc, sweep, recs = grid
    assert proc.returncode == 1, (
        proc.stdout[-3000:] + proc.stderr[-3000:]
    )  # one cell failed: the grid says so
    by_status = sorted((r["config"]["debug"]["fail_at_step"], r["status"]) for r in recs)
    assert by_status == [(FAILING, "failed"), (100, "success"), (101, "success"), (102, "success")]
    assert "tunegrid: 4 run(s)" in proc.stdout and (sweep / "report.md").is_file()
    assert len(json.loads((sweep / MANIFEST).read_text())["cells"]) == 4


def test_each_cell_has_its_own_process_and_gpu(grid):
    _, _, recs = grid
    launches = [r["launch"] for r in recs]
    assert {la["launcher"] for la in launches} == {"ray"}
    assert len({la["pid"] for la in launches}) == 4  # max_calls=1: a new process per cell
    assert {la["cuda_visible_devices"] for la in launches} == {"0", "1"}
    assert all(la["host"] for la in launches)


def test_two_cells_at_a_time_on_different_gpus(grid):
    _, _, recs = grid
    overlapping = [
        (a, b)
        for a, b in combinations(recs, 2)
        if _interval(a)[0] < _interval(b)[1] and _interval(b)[0] < _interval(a)[1]
    ]
    assert overlapping, "no two cells ran at the same time"
    for a, b in overlapping:  # cells that ran at the same time had different GPUs
        assert a["launch"]["cuda_visible_devices"] != b["launch"]["cuda_visible_devices"]
    for rec in recs:  # never three at once: two GPUs, one per cell
        start = _interval(rec)[0]
        assert sum(_interval(r)[0] <= start < _interval(r)[1] for r in recs) <= 2


def test_a_cell_whose_worker_is_killed_is_recorded_and_the_others_finish(tmp_path):
    sweep = tmp_path / "grid"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "src.run", "-m", "hydra/launcher=ray", "hydra.launcher.init.num_gpus=2",
            "seed=0,1", *short("trainer.max_steps=24", "debug.sleep_per_step=0.3"), f"hydra.sweep.dir={sweep}",
        ],
        cwd=REPO_ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    owner = None
    while owner is None and time.monotonic() < deadline:  # seed=1's cell, once it trains
        found = [p for p in sweep.glob(f"*/{OWNER}") if p.parent.name.startswith("seed=1")]
        if found and (found[0].parent / "metrics.jsonl").is_file():
            owner = json.loads(found[0].read_text())
        time.sleep(0.5)
    assert owner is not None, "seed=1 never started training"
    os.kill(int(owner["pid"]), signal.SIGKILL)  # as the kernel's OOM killer would: no handler runs
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, out[-3000:] + err[-3000:]
    recs = {r["seed"]: r for r in (json.loads(p.read_text()) for p in sweep.glob(f"*/{RECORD}"))}
    assert recs[0]["status"] == "success"
    assert (
        recs[1]["status"] == "failed" and "its Ray worker ended without writing a record" in recs[1]["error"]
    )


def test_asking_for_gpus_ray_does_not_have_is_one_line_not_a_wait(tmp_path):
    # No GPU here and none declared: Ray would queue the cells forever (it only warns that they are infeasible)
    proc = run_cli(
        "-m", "hydra/launcher=ray", "seed=0,1", *short(), f"hydra.sweep.dir={tmp_path}", timeout=300
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    line = [x for x in proc.stderr.splitlines() if x.startswith("tunegrid: error:")]
    assert line == [
        "tunegrid: error: hydra.launcher.gpus_per_run=1: Ray sees 0 GPU(s) here, so no cell could start; "
        "hydra.launcher.gpus_per_run=0 runs the cells on CPUs; hydra.launcher.init.num_gpus=N declares N logical GPUs"
    ]
    assert not list(tmp_path.glob(f"*/{RECORD}"))


def test_a_cell_given_a_fraction_of_a_gpu_knows_its_share():
    """hydra.launcher.gpus_per_run=0.5 gives each Ray task half a GPU: the cell reads its share from Ray
    (src.costs.gpu_share), which then caps its memory on a GPU and is the capacity skip_predicted_oom checks."""
    code = (
        "import ray\n"
        "from src import costs\n"
        "ray.init(num_gpus=2, num_cpus=2, object_store_memory=78_643_200, include_dashboard=False)\n"
        "f = ray.remote(num_gpus=0.5, num_cpus=0)(costs.gpu_share)\n"
        "g = ray.remote(num_gpus=1, num_cpus=0)(costs.gpu_share)\n"
        "print('shares', ray.get(f.remote()), ray.get(g.remote()), costs.gpu_share())\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "shares 0.5 1.0 1.0" in proc.stdout, proc.stdout[-2000:]
