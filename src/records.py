"""One machine-readable record per run (`result.json`), written atomically: what it holds, how a run's
outcome becomes one, and the questions later runs ask of earlier records (finished? resumable?).

Schema (version 1): status, error, overrides, method, optimizer, lr_schedule, frozen_blocks,
config (resolved), config_hash, code_key, metrics, env {git_commit, git_dirty, versions, device, python,
host}, started_at, ended_at, run_dir, group; on failure traceback_file and step; after OOM retries
oom_retries and trainer_used. The report (src/report/) reads nothing else.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
import sys
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from src.atomic import write_json
from src.config import REPO_ROOT
from src.errors import ConfigError, status_of

SCHEMA_VERSION = 1
RECORD = "result.json"
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "hydra-core", "wandb")
STATUSES = ("success", "failed", "invalid", "oom", "diverged", "interrupted", "skipped_oom")
# Keys that do not change what a run computes: left out of the config hash that resume matches on.
NOT_HASHED = ("logger", "sweep", "study", "cache_dir", "debug")
CODE_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes")
CODE_PATHS = ("src", "conf", "sweeps")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- what the record says


def _git(*args: str) -> str:
    """A git command's output in the checkout, or "" (no git, not a checkout, or it failed)."""
    try:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def env_info(device: str | None = None) -> dict[str, Any]:
    return {
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "versions": versions(),
        "device": device,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def config_hash(cfg: Any) -> str:
    """Hash of the resolved config minus keys that do not affect results (logging, resume switches)."""
    data = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    data = {k: v for k, v in data.items() if k not in NOT_HASHED}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def code_key() -> str:
    """The code a result depends on: the last commit that touched src/, conf/ or sweeps/ (plus a hash of
    uncommitted changes there), and the torch/transformers/peft/bitsandbytes versions. Commits that
    touch only docs or tests leave earlier results current."""
    commit = _git("log", "-1", "--format=%H", "--", *CODE_PATHS) or "unknown"
    diff = _git("diff", "HEAD", "--", *CODE_PATHS)
    if diff:
        commit += "+dirty:" + hashlib.sha256(diff.encode()).hexdigest()[:8]
    ver = versions()
    return " ".join([commit] + [f"{p}={ver[p]}" for p in CODE_PACKAGES])


def hydra_overrides(run_dir: Path) -> list[str]:
    """The overrides Hydra saved for a run folder (.hydra/overrides.yaml), or [] for a folder it did not make."""
    path = Path(run_dir) / ".hydra" / "overrides.yaml"
    return [str(o) for o in OmegaConf.load(path)] if path.is_file() else []


# --------------------------------------------------------------------------- a run's outcome


def new_record(run_dir: Path, overrides: list[str]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "error": None,
        "overrides": list(overrides),
        "run_dir": str(run_dir),
        "started_at": now(),
    }


def describe(record: dict[str, Any], cfg: Any) -> None:
    """What a validated config says about the run: method, optimizer, the resolved config and its hashes."""
    record.update(
        method=cfg.method.name,
        method_settings=OmegaConf.to_container(cfg.method),
        frozen_blocks=cfg.frozen_blocks,
        optimizer=cfg.optim.name,
        lr_schedule=cfg.lr_schedule.name,
        lr=cfg.lr,
        seed=cfg.seed,
        config=OmegaConf.to_container(cfg),
        config_hash=config_hash(cfg),
        code_key=code_key(),
    )


def reserve(run_dir: Path) -> None:
    """Room for the failure record, taken when a run claims its folder, so that a disk that fills up later
    still leaves a record (write_failure uses it). TODO(disk-full): implement."""


def write_success(
    run_dir: Path, record: dict[str, Any], metrics: dict[str, Any], env: dict[str, Any]
) -> None:
    record.update(metrics=metrics, env=env, status="success", ended_at=now())
    write_json(Path(run_dir) / RECORD, record)
    print(f"tunegrid: success; record: {Path(run_dir) / RECORD}")


def error_summary(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def write_failure(
    run_dir: Path, record: dict[str, Any], exc: BaseException, status: str = "failed"
) -> dict[str, Any]:
    """Record a failed run: one-line error in the record, the full traceback in a file beside it."""
    tb = Path(run_dir) / "traceback.txt"
    tb.write_text("".join(traceback.format_exception(exc)))
    record.update(
        status=status,
        error=error_summary(exc) if status != "invalid" else str(exc),
        ended_at=now(),
        traceback_file=tb.name,
        step=getattr(exc, "step_reached", None),
    )
    write_json(Path(run_dir) / RECORD, record)
    return record


def record_failure(run_dir: Path, record: dict[str, Any], exc: BaseException) -> int:
    """The task wrapper's half that runs after a failure: record it (a bad value never overwrites an
    earlier run's record), say so in one line on stderr, and return the exit code of a single run:
    2 for a bad value, 128 + signal when interrupted, 0 for a cell skipped as predicted not to fit, else 1."""
    status = status_of(exc)
    run_dir = Path(run_dir)
    if isinstance(exc, ConfigError):
        print(f"tunegrid: error: {exc}", file=sys.stderr)
        if not (run_dir / RECORD).exists():
            write_failure(run_dir, record, exc, status=status)
        return 2
    if status == "skipped_oom":
        record["metrics"] = {
            "predicted_memory_mb": exc.predicted["total_mb"],
            "predicted_memory": exc.predicted,
        }
    write_failure(run_dir, record, exc, status=status)
    print(f"tunegrid: run {status}: {error_summary(exc)} (record: {run_dir / RECORD})", file=sys.stderr)
    if status == "interrupted":
        return 128 + getattr(exc, "signum", 2)
    return 0 if status == "skipped_oom" else 1


# --------------------------------------------------------------------------- earlier records


def read_records(root: Path) -> list[dict[str, Any]]:
    """Every finished record under root (depth-first, sorted by path)."""
    out = []
    for path in sorted(Path(root).rglob(RECORD)):
        try:
            rec = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        rec["_path"] = str(path)
        out.append(rec)
    return out


def find_done(root: Path, record: dict[str, Any], sweep: Any) -> dict[str, Any] | None:
    """A finished earlier run of the same config under root, which this run then skips: `success` with the
    same code (unless sweep.force), or `stale` (same config, other code) unless sweep.rerun_stale."""
    if sweep.force or not Path(root).is_dir():
        return None
    for rec in read_records(root):
        if rec.get("config_hash") != record["config_hash"] or rec.get("status") != "success":
            continue
        where = Path(rec["_path"]).parent
        if rec.get("code_key") == record["code_key"]:
            print(
                f"tunegrid: skipped, already succeeded with this config: {where} (sweep.force=true re-runs)"
            )
            return rec
        if not sweep.rerun_stale:
            print(
                f"tunegrid: skipped, stale: {where} ran this config with other code ({rec.get('code_key')}); "
                f"sweep.rerun_stale=true re-runs it"
            )
            return rec
    return None


def summary_line(rec: dict[str, Any]) -> str:
    m = rec.get("metrics") or {}
    keys = ",".join(rec.get("overrides") or []) or "defaults"
    if rec.get("status") == "success":
        return (
            f"  {rec['status']:<8} {keys:<40} eval_loss={m.get('eval_loss', float('nan')):.4f} "
            f"trainable={m.get('trainable_params')} tokens/s={m.get('tokens_per_s', 0):.0f}"
        )
    return f"  {rec.get('status', '?'):<8} {keys:<40} {rec.get('error', '')}"
