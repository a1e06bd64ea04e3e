"""No failure replaces a `success` record, end to end: a finished run's folder re-run with sweep.force=true
(hydra.run.dir=<the finished run>) that then fails, because its model folder has since been emptied or
because its weights cannot be saved, keeps result.json byte for byte and records the failure beside it (failure.json, traceback.txt),
which says so in one line. The in-process cases (every failure status) are tests/unit/test_failure_records.py."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest

from src.records import FAILURE, RECORD, RESERVE, TRACEBACK
from tests.helpers import compose_cfg, no_traceback, run_cli, short

STEPS = ("trainer.max_steps=4", "trainer.eval_every=4")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One successful run whose model is a folder of its own (a copy of the tiny model)."""
    from src import models
    from src.config import cache_dir

    root = tmp_path_factory.mktemp("kept")
    cfg = compose_cfg(*short(*STEPS))
    model = shutil.copytree(models.model_path(cfg.model, cache_dir(cfg)), root / "model")
    args = [*short(*STEPS), f"model.name_or_path={model}"]
    proc = run_cli(*args, f"hydra.run.dir={root / 'run'}", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return SimpleNamespace(root=root, model=model, args=args)


CASES = {  # case -> how the error the failure records begins
    "weights_unwritable": "SafetensorError: ",  # fails after training, saving the weights
    "model_folder_emptied": "ValueError: ",  # fails loading the tokenizer
}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_a_forced_rerun_that_fails_keeps_the_success(finished, tmp_path, case):
    error = CASES[case]
    run = shutil.copytree(finished.root / "run", tmp_path / "run")
    if case == "weights_unwritable":  # a folder where the weights file goes
        weights = run / "checkpoint" / "model.safetensors"
        weights.unlink()
        (weights / "in-the-way").mkdir(parents=True)
    before = (run / RECORD).read_bytes()
    aside = finished.root / "model.aside"
    if case == "model_folder_emptied":  # the same path (the same config), nothing in it
        finished.model.rename(aside)
        finished.model.mkdir()
    try:
        proc = run_cli(*finished.args, "sweep.force=true", f"hydra.run.dir={run}", timeout=300)
    finally:
        if aside.exists():
            finished.model.rmdir()
            aside.rename(finished.model)
    no_traceback(proc)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (run / RECORD).read_bytes() == before  # byte for byte
    failure = json.loads((run / FAILURE).read_text())
    assert failure["status"] == "failed" and failure["error"].startswith(error), failure["error"]
    assert failure["traceback_file"] == TRACEBACK and not (run / RESERVE).exists()
    assert (run / TRACEBACK).read_text().startswith("Traceback")
    assert [p.relative_to(run).as_posix() for p in run.rglob(RECORD)] == [RECORD]
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("tunegrid:")]
    assert lines == [
        f"tunegrid: run failed: {failure['error']} (earlier success kept in {run / RECORD}; "
        f"this failure recorded in {run / FAILURE})"
    ]
