"""What a grid leaves is readable by the group as the umask says: under umask 002 every file tunegrid writes
(records, config.yaml, metrics.jsonl, samples.jsonl, report.md, results.csv, plots, weights and the Trainer's
checkpoints) is 0664 and every folder 0775, never mkstemp's or safetensors' 0600. W&B's own files are W&B's.
The writers one by one are tests/unit/test_atomic.py."""

from __future__ import annotations

import shlex
import stat
import subprocess
import sys

import pytest

from src.config import REPO_ROOT
from src.records import RECORD
from tests.helpers import cli_env, no_traceback, short


@pytest.mark.slow
def test_a_grid_under_umask_002_leaves_group_writable_files(tmp_path):
    sweep = tmp_path / "grid"
    args = short("trainer.save_every=6", "eval.num_samples=2", "eval.test_split=true")
    cmd = f"umask 002 && exec {shlex.quote(sys.executable)} -m src.run {shlex.join(args)} "
    cmd += shlex.join([f"hydra.sweep.dir={sweep}", "seed=0", "-m"])
    proc = subprocess.run(
        ["sh", "-c", cmd], cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    no_traceback(proc)
    [run] = [p.parent for p in sweep.rglob(RECORD)]
    made = {p.relative_to(sweep).as_posix(): p for p in sweep.rglob("*") if "wandb" not in p.parts}
    for name in (
        "report.md",
        "results.csv",
        "samples.jsonl",
        "metrics.jsonl",
        "checkpoint/model.safetensors",
    ):
        assert any(k.endswith(name) for k in made), name  # each kind of file is there to be checked
    assert any("/checkpoints/checkpoint-" in k for k in made) and run.name in "".join(made)
    wrong = {
        k: oct(stat.S_IMODE(p.stat().st_mode))
        for k, p in made.items()
        if stat.S_IMODE(p.stat().st_mode) != (0o775 if p.is_dir() else 0o664)
    }
    assert not wrong, wrong
