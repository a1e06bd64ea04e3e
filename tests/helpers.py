"""Helpers the tiers share: Hydra's compose API for the config tier, in-process training on the tiny model
for the unit tier, a subprocess runner and record readers for the end-to-end tier. Imported by the tests
(`from tests.helpers import ...`), never by conftest.py. Every test writes its own data; nothing depends
on ../shared or the network."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from src.config import CONF_DIR, REPO_ROOT  # importing src.config registers the tg.* resolvers
from src.records import RECORD, SESSION_METRICS

# A shared cache for the whole session: the tiny model and tokenised data are built once.
SESSION_CACHE = Path(os.environ.get("TUNEGRID_TEST_CACHE", REPO_ROOT / ".cache" / "tests"))


def compose_cfg(*overrides: str) -> DictConfig:
    """The config `python -m src.run <overrides>` would get (without Hydra's runtime keys)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def cli_env(env: dict | None = None) -> dict[str, str]:
    """The environment tests run `python -m src.run` in: offline, the session cache, unbuffered output."""
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "TUNEGRID_CACHE": str(SESSION_CACHE),
        "PYTHONUNBUFFERED": "1",
        # One torch thread per subprocess unless the caller set OMP_NUM_THREADS: on a busy 2-core machine two
        # OpenMP threads per run spend most of their time waiting for each other (a 3-cell grid: 40 s, not 14 s).
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        **(env or {}),
    }


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600, env: dict | None = None):
    """`python -m src.run <args>` in a subprocess, the way a user runs it. Returns CompletedProcess."""
    return subprocess.run(
        [sys.executable, "-m", "src.run", *args],
        cwd=cwd or REPO_ROOT,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Short-training overrides for tests: a few steps of the tiny model, no W&B unless a test asks.
QUICK = (
    "trainer.max_steps=12",
    "trainer.eval_every=6",
    "trainer.logging_steps=3",
    "trainer.batch_size=8",
    "data.splits.validation=32",
    "data.splits.test=16",
    "logger=none",
    "eval.num_samples=0",
    "eval.forgetting=false",
)


def train_inprocess(run_dir: Path, *overrides: str):
    """Validate and train in this process (the unit tier): returns (metrics, env, trainer)."""
    from src.config import validate
    from src.train import train

    cfg = validate(compose_cfg(*QUICK, *overrides))
    run_dir.mkdir(parents=True, exist_ok=True)
    return train(cfg, run_dir, name=",".join(overrides) or "default", group="tests")


# QUICK without generation, forgetting and the extra evaluations: resume and failure paths do not need them.
_NO_EVAL = (
    "eval.num_samples=0",
    "eval.forgetting=false",
    "eval.eval_before_training=false",
    "eval.test_split=false",
)
BASE = (*(o for o in QUICK if o.split("=", 1)[0] not in {e.split("=", 1)[0] for e in _NO_EVAL}), *_NO_EVAL)


def short(*extra: str) -> list[str]:
    """BASE with keys replaced or added by `extra` ("key=value"; Hydra refuses a key given twice)."""
    keys = {e.split("=", 1)[0].lstrip("+") for e in extra}
    return [*(o for o in BASE if o.split("=", 1)[0] not in keys), *extra]


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / RECORD).read_text())


def stop(proc: subprocess.Popen, sig: int, timeout: float) -> int:
    """Send `sig` and wait for the process to end; kill it after `timeout` s. Its exit code."""
    proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(30)


def same_metrics(got: dict, want: dict) -> None:
    """Every metric equal, but those that measure the session (records.SESSION_METRICS, documented)."""
    keys = (set(got) | set(want)) - set(SESSION_METRICS)
    diff = {k: (got.get(k), want.get(k)) for k in sorted(keys) if got.get(k) != want.get(k)}
    assert not diff, diff


def no_traceback(proc: subprocess.CompletedProcess) -> None:
    out = proc.stdout + proc.stderr
    assert "Traceback" not in out and 'File "' not in out, out[-3000:]


def tree_digest(root: Path) -> dict[str, tuple[str, int]]:
    """path -> (sha256, mtime_ns) of every file under root."""
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def earlier_run(root: Path) -> Path:
    """A finished run's folder (record, disk log, checkpoints) as an earlier `python -m src.run` leaves it."""
    run = root / "earlier"
    (run / "checkpoint").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    (run / RECORD).write_text(
        json.dumps(
            {
                "schema_version": 1,
                "status": "success",
                "overrides": ["rank=4"],
                "metrics": {"eval_loss": 1.5},
            },
            indent=2,
        )
    )
    (run / "metrics.jsonl").write_text('{"step": 0, "eval/loss": 6.2}\n')
    (run / "checkpoint" / "model.safetensors").write_bytes(b"\0" * 64)
    (run / "checkpoints" / "checkpoint-5" / "model.safetensors").write_bytes(b"\1" * 64)
    return run


def load_base(cfg: DictConfig, dtype=None):
    """The model a validated config names, loaded exactly as a run loads it, before any method is applied."""
    import torch

    from src import models, specs
    from src.config import cache_dir

    path = models.model_path(cfg.model, cache_dir(cfg))
    return models.load_model(path, cfg.model, specs.of(cfg), cfg.method.quantization, dtype or torch.float32)


def apply_method(model, cfg: DictConfig, tokenizer_path: str | None = None):
    """methods.apply with everything taken from a validated config, as the recipe calls it."""
    from src import methods, specs

    return methods.apply(
        model,
        specs.of(cfg).method,
        cfg.method,
        cfg.model,
        int(cfg.frozen_blocks),
        bool(cfg.trainer.gradient_checkpointing),
        tokenizer_path,
    )


def code_snapshot(dest: Path) -> Path:
    """src/, conf/ and sweeps/ as they are now, committed in a repository of their own.

    The code key of a record is the last commit of src/conf/sweeps plus a hash of their uncommitted changes,
    so an edit to the working tree while a test's runs go on (another terminal, an editor saving) would make
    later records look like other code. Running from a frozen copy keeps every phase on the same code."""
    for name in ("src", "conf", "sweeps"):
        shutil.copytree(REPO_ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    if shutil.which("git") is None:  # no git: every record's code key is "unknown", stable too
        return dest
    git = [
        "git",
        "-C",
        str(dest),
        "-c",
        "user.name=tunegrid-tests",
        "-c",
        "user.email=tests@localhost",
        "-c",
        "commit.gpgsign=false",
    ]
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "snapshot"]):
        subprocess.run([*git, *cmd], check=True, capture_output=True, timeout=60)
    return dest


class TableRecorder:
    """A logger backend that keeps the tables logged to it (log_table), for tests of what goes to W&B."""

    def __init__(self):
        self.tables = []

    def log_table(self, key, columns, rows):
        self.tables.append((key, columns, rows))
