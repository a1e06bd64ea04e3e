"""One machine-readable record per run (`result.json`), written atomically, and the grid summary.

Schema (version 1): status, error, overrides, method, optimizer, lr_schedule, frozen_blocks,
config (resolved), config_hash, code_key, metrics, env {git_commit, git_dirty, versions, device, python},
started_at, ended_at, run_dir, group; on failure traceback_file and step; after OOM retries
oom_retries and trainer_used. The report (src/report.py) reads nothing else.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from src.config import REPO_ROOT

SCHEMA_VERSION = 1
RECORD = "result.json"
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "hydra-core", "wandb")
STATUSES = ("success", "failed", "invalid", "oom", "diverged", "interrupted", "skipped_oom")
# Keys that do not change what a run computes: left out of the config hash that resume matches on.
NOT_HASHED = ("logger", "sweep", "study", "cache_dir", "debug")
CODE_PACKAGES = ("torch", "transformers", "peft", "bitsandbytes")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temp file in the same folder, fsync, then rename: readers never see half a record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def git_info() -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else ""

    try:
        commit = git("rev-parse", "HEAD") or "unknown"
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):  # no git, or not a checkout
        commit, dirty = "unknown", False
    return {"git_commit": commit, "git_dirty": dirty}


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
        **git_info(),
        "versions": versions(),
        "device": device,
        "python": platform.python_version(),
        "host": platform.node(),
    }


def config_hash(cfg: Any) -> str:
    """Hash of the resolved config minus keys that do not affect results (logging, resume switches)."""
    import hashlib

    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    data = {k: v for k, v in data.items() if k not in NOT_HASHED}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


CODE_PATHS = ("src", "conf", "sweeps")


def code_key() -> str:
    """The code a result depends on: the last commit that touched src/, conf/ or sweeps/ (plus a hash of
    uncommitted changes there), and the torch/transformers/peft/bitsandbytes versions. Commits that
    touch only docs or tests leave earlier results current."""
    import hashlib

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("log", "-1", "--format=%H", "--", *CODE_PATHS) or "unknown"
    diff = git("diff", "HEAD", "--", *CODE_PATHS)
    if diff:
        commit += "+dirty:" + hashlib.sha256(diff.encode()).hexdigest()[:8]
    ver = versions()
    return " ".join([commit] + [f"{p}={ver[p]}" for p in CODE_PACKAGES])


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


def resumable_checkpoint(folder: Path, cfg: Any, force: bool = False) -> str | None:
    """The newest complete checkpoint (trainer_state.json is written last) of this same config and code,
    or None. Checkpoints of another config or code, or any under sweep.force, are moved aside (never
    deleted) so that the run starts over."""
    stamp = {"config_hash": config_hash(cfg), "code_key": code_key()}
    marker = folder / "tunegrid.json"

    def number(p: Path) -> int:
        tail = p.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    found = sorted(folder.glob("checkpoint-*"), key=number)
    if found:
        same = marker.is_file() and json.loads(marker.read_text()) == stamp
        if force or cfg.resume != "auto" or not same:
            aside = folder.with_name(f"{folder.name}.old-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}")
            folder.rename(aside)
            print(f"tunegrid: earlier checkpoints (another config or code, or sweep.force) moved to {aside}")
            found = []
    write_json_atomic(marker, stamp)
    for ckpt in reversed(found):
        if (ckpt / "trainer_state.json").is_file():
            return str(ckpt)
        print(f"tunegrid: skipping incomplete checkpoint {ckpt}")
    return None


def error_summary(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def write_failure(
    run_dir: Path, record: dict[str, Any], exc: BaseException, status: str = "failed"
) -> dict[str, Any]:
    """Record a failed run: one-line error in the record, the full traceback in a file beside it."""
    tb = run_dir / "traceback.txt"
    tb.write_text("".join(traceback.format_exception(exc)))
    record.update(
        status=status,
        error=error_summary(exc) if status != "invalid" else str(exc),
        ended_at=now(),
        traceback_file=tb.name,
        step=getattr(exc, "step_reached", None),
    )
    write_json_atomic(run_dir / RECORD, record)
    return record


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


def summary_line(rec: dict[str, Any]) -> str:
    m = rec.get("metrics") or {}
    keys = ",".join(rec.get("overrides") or []) or "defaults"
    if rec.get("status") == "success":
        return (
            f"  {rec['status']:<8} {keys:<40} eval_loss={m.get('eval_loss', float('nan')):.4f} "
            f"trainable={m.get('trainable_params')} tokens/s={m.get('tokens_per_s', 0):.0f}"
        )
    return f"  {rec.get('status', '?'):<8} {keys:<40} {rec.get('error', '')}"


class CheckOutputDir(Callback):
    """Before Hydra writes anything: an output folder that cannot be written is one clear line, not a traceback."""

    def _check(self, key: str, folder: str) -> None:
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path, prefix=".tunegrid-write-test"):
                pass
        except OSError as e:
            print(
                f"tunegrid: error: {key}={folder}: cannot write there ({e.strerror or e}); choose a writable folder",
                file=sys.stderr,
            )
            sys.exit(2)

    def on_run_start(self, config, **kwargs: Any) -> None:
        self._check("hydra.run.dir", config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        self._check("hydra.sweep.dir", config.hydra.sweep.dir)


class GridSummary(Callback):
    """At the end of a multirun: one line per run of this grid, the report, and a non-zero exit if any
    run did not succeed. Statuses come from the jobs' return values (a bad value in a re-run grid is
    not written over an earlier record, but still counts); launchers that run jobs elsewhere fall
    back to the records on disk."""

    def __init__(self) -> None:
        self.returned: list[dict[str, Any]] = []

    def on_job_end(self, config, job_return, **kwargs: Any) -> None:
        try:
            value = job_return.return_value
        except Exception:  # the task raised: tunegrid's wrapper normally prevents this
            value = {"status": "failed", "error": "the job raised before writing its record", "overrides": []}
        if isinstance(value, dict):
            self.returned.append(value)

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        records = self.returned or read_records(sweep_dir)
        print(f"\ntunegrid: {len(records)} run(s) in {sweep_dir}")
        for rec in records:
            print(summary_line(rec))
        try:  # the report never decides the grid's exit status
            from src.report import write_report

            write_report(sweep_dir)
            print(f"tunegrid: report: {sweep_dir / 'report.md'} (results.csv and plots beside it)")
        except Exception as e:
            print(
                f"tunegrid: report not written ({error_summary(e)}); try: python -m src.report {sweep_dir}",
                file=sys.stderr,
            )
        bad = [r for r in records if r.get("status") != "success"]
        if bad:
            print(f"tunegrid: {len(bad)} run(s) did not succeed", file=sys.stderr)
            sys.exit(1)
