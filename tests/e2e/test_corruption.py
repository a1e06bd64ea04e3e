"""Corrupt files never leave a run stuck, end to end through `python -m src.run` in real subprocesses: a
finished run's folder is copied, its record removed (as a kill during the final evaluation leaves it), a
checkpoint file or a cache entry damaged, and the same command run again. Every run starts from one frozen
copy of the code (tests.helpers.code_snapshot), so that an edit to src/ meanwhile does not make the
checkpoints look like other code's."""

from __future__ import annotations

import fractions
import math
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from src.records import RECORD
from tests.helpers import code_snapshot, no_traceback, record, run_cli, short

RUN = short("trainer.max_steps=15", "trainer.save_every=5", "trainer.logging_steps=5", "trainer.eval_every=5")
ADVICE = ("weights_only", "trust the source", "can still be loaded")  # torch's advice to unpickle


def tunegrid_lines(text: str) -> list[str]:
    assert not any(a in text for a in ADVICE), text[-3000:]
    return [ln for ln in text.splitlines() if ln.startswith("tunegrid:")]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A finished 15-step run (it keeps checkpoints 10 and 15) from a frozen copy of the code."""
    tmp = tmp_path_factory.mktemp("corruption")
    code = code_snapshot(tmp / "code")
    run_dir = tmp / "base"
    proc = run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=code)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-10",
        "checkpoint-15",
    ]
    return SimpleNamespace(tmp=tmp, code=code, run_dir=run_dir, metrics=record(run_dir)["metrics"])


def rerun(base, name: str, damage) -> SimpleNamespace:
    """The base run's folder, copied, without its record, damaged by `damage(checkpoints)`, then run again."""
    run_dir = base.tmp / name
    shutil.copytree(base.run_dir, run_dir)
    (run_dir / RECORD).unlink()
    damage(run_dir / "checkpoints")
    proc = run_cli(*RUN, f"hydra.run.dir={run_dir}", cwd=base.code)
    rec = record(run_dir) if (run_dir / RECORD).exists() else {}
    out, err = tunegrid_lines(proc.stdout), tunegrid_lines(proc.stderr)
    return SimpleNamespace(run_dir=run_dir, proc=proc, rec=rec, out=out, err=err)


def same_result(a: dict, b: dict) -> None:
    assert b["steps"] == a["steps"] == 15, (a["steps"], b["steps"])
    for key in ("eval_loss", "train_loss"):
        assert math.isclose(b[key], a[key], rel_tol=1e-5), (key, a[key], b[key])


def corrupt_folder(run_dir: Path, name: str) -> Path:
    (moved,) = [p for p in (run_dir / "checkpoints.corrupt").iterdir() if p.name.startswith(f"{name}-")]
    return moved


@pytest.mark.slow
def test_garbage_weights_in_the_newest_checkpoint_resume_from_the_one_before(base):
    garbage = os.urandom(4096)
    r = rerun(base, "weights", lambda c: (c / "checkpoint-15" / "model.safetensors").write_bytes(garbage))
    assert r.proc.returncode == 0 and r.rec["status"] == "success", r.proc.stderr[-2000:]
    no_traceback(r.proc)
    moved = corrupt_folder(r.run_dir, "checkpoint-15")
    assert r.err == [
        "tunegrid: checkpoint checkpoint-15 is unreadable (model.safetensors: not a safetensors file: header too "
        f"large); moved to {moved}; resuming from checkpoint-10"
    ], r.err
    assert f"tunegrid: resuming from {r.run_dir / 'checkpoints' / 'checkpoint-10'}" in r.out, r.out
    assert (moved / "model.safetensors").read_bytes() == garbage  # the user's file, kept
    same_result(base.metrics, r.rec["metrics"])
    # The resumed run wrote its own checkpoint-15 again; the Trainer's rotation never saw the corrupt one.
    assert sorted(p.name for p in (r.run_dir / "checkpoints").glob("checkpoint-*")) == [
        "checkpoint-10",
        "checkpoint-15",
    ]


@pytest.mark.slow
def test_no_intact_checkpoint_left_starts_over(base):
    """A garbage optimizer state in checkpoint-15 and a truncated trainer_state.json in checkpoint-10."""

    def damage(c: Path) -> None:
        (c / "checkpoint-15" / "optimizer.pt").write_bytes(os.urandom(4096))
        state = c / "checkpoint-10" / "trainer_state.json"
        state.write_bytes(state.read_bytes()[:100])

    r = rerun(base, "none_left", damage)
    assert r.proc.returncode == 0 and r.rec["status"] == "success", r.proc.stderr[-2000:]
    no_traceback(r.proc)
    m15, m10 = corrupt_folder(r.run_dir, "checkpoint-15"), corrupt_folder(r.run_dir, "checkpoint-10")
    assert r.err == [
        "tunegrid: checkpoint checkpoint-15 is unreadable (optimizer.pt: not a torch file: File is not a zip "
        f"file); moved to {m15}; no intact checkpoint left, starting over",
        "tunegrid: checkpoint checkpoint-10 is unreadable (trainer_state.json: not valid JSON (line 4 column 28: "
        f"Unterminated string starting at)); moved to {m10}; no intact checkpoint left, starting over",
    ], r.err
    assert not any("resuming from" in ln for ln in r.out), r.out
    same_result(base.metrics, r.rec["metrics"])


@pytest.mark.slow
def test_a_checkpoint_that_passes_the_checks_but_not_torch_fails_without_unpickling_advice(base):
    """A well-formed torch file holding an object torch's safe loader refuses: the checks (which never unpickle)
    pass it, the Trainer fails loading it. A failed run is acceptable; torch's advice in its one line is not."""

    def damage(c: Path) -> None:
        torch.save(
            {"state": {}, "param_groups": [], "x": fractions.Fraction(1, 3)},
            c / "checkpoint-15" / "optimizer.pt",
        )

    r = rerun(base, "refused", damage)
    assert r.proc.returncode == 1 and r.rec["status"] == "failed", r.proc.stdout[-2000:]
    no_traceback(r.proc)
    assert [ln for ln in r.err if ln.startswith("tunegrid: run failed: ")], r.err


@pytest.mark.slow
def test_corrupt_cache_entries_are_rebuilt(tmp_path):
    """The tiny model, `datasets`' prepared copy of the generated records and the tokenised splits, in a cache
    of this test's own (the session cache is shared by every test running meanwhile)."""
    code = code_snapshot(tmp_path / "code")
    cache = tmp_path / "cache"
    args = short(
        "trainer.max_steps=2", "trainer.eval_every=2", "trainer.logging_steps=2", "model.pretrain.steps=3"
    )

    def run(name: str):
        proc = run_cli(
            *args, f"hydra.run.dir={tmp_path / name}", cwd=code, env={"TUNEGRID_CACHE": str(cache)}
        )
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        no_traceback(proc)
        return proc, record(tmp_path / name)["metrics"]

    _, first = run("first")
    (model,) = cache.glob("tiny-*")
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    (prepared,) = (cache / "datasets").rglob("*.arrow")
    tokenised = sorted((cache / "tokenised").glob("*.arrow"))
    assert len(tokenised) == 3, tokenised
    for path in [prepared, *tokenised]:
        path.write_bytes(path.read_bytes()[:5000])

    proc, again = run("again")
    lines = tunegrid_lines(proc.stdout + proc.stderr)
    (generated,) = (cache / "data").glob("*.jsonl")
    expected = [
        f"tunegrid: cached model {model} is unreadable (model.safetensors: not a safetensors file: header too "
        "large); removed, rebuilding it",
        f"tunegrid: cached copy of {generated} in {cache / 'datasets'} was unreadable (",
        *(f"tunegrid: cached tokenised data {p} is unreadable (" for p in tokenised),
    ]
    rebuilt = [ln for ln in lines if "unreadable" in ln]
    assert len(rebuilt) == len(expected) and all(any(ln.startswith(e) for ln in rebuilt) for e in expected), (
        lines
    )
    assert again["eval_loss"] == first["eval_loss"]  # the same model and data, rebuilt
