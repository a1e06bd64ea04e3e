"""One machine-readable record per run (`result.json`), written atomically: what it holds, how a run's
outcome becomes one, and the questions later runs ask of earlier records (finished? resumable?).

Schema (version 1): status, error, overrides, method, optimizer, lr_schedule, frozen_blocks,
config (resolved), config_hash, code_key, metrics, env {git_commit, git_dirty, versions, device, python,
host}, launch {launcher, host, pid, cuda_visible_devices, slurm_job_id, slurm_restarts}, processes, started_at, ended_at, run_dir, group; non_finite (metrics written null); on failure
traceback_file and step (traceback, the tail, when traceback.txt could not be written; written_to_reserve
when the disk was full); after OOM retries oom_retries and trainer_used. A failure in a folder whose
result.json says success goes to failure.json beside it (same schema): no failure replaces a success.
The report (src/report/) reads nothing else.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import traceback
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from src.atomic import fill_reserved, reserve_file, write_bytes, write_json
from src.config import REPO_ROOT
from src.config.identity import config_hash
from src.errors import ConfigError, status_of

SCHEMA_VERSION = 1
RECORD = "result.json"
PACKAGES = ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "hydra-core", "wandb")
STATUSES = ("success", "failed", "invalid", "oom", "diverged", "interrupted", "skipped_oom")
# Metrics that measure the last session of a run, not the run: a run resumed from a checkpoint reports what
# its own session took. Every other metric of a resumed run equals the uninterrupted run's.
SESSION_METRICS = (
    "tokens_per_s",
    "train_runtime_s",
    "eval_in_train_s",
    "time_per_epoch_s",
    "time_per_epoch_extrapolated",  # the session trained less than an epoch: time_per_epoch_s scaled up
    "peak_memory_mb",
    "memory_before_training_mb",  # in use when training began: peak minus it is what training added
    "contention",  # the machine's load, CPU wait and other GPU processes while the session trained
    "first_step_s",  # step timings (src/speed.py, StepTimes): this session's steps
    "step_s_median",
    "compile_s",
    "tokens_per_s_steady",
)
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


def new_record(run_dir: Path, overrides: list[str], launcher: str = "basic") -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "status": "running",
        "error": None,
        "overrides": list(overrides),
        "run_dir": str(run_dir),
        "started_at": now(),
        "launch": launch_info(launcher),
    }


def launch_info(launcher: str) -> dict[str, Any]:
    """How and where the run was started: the launcher (basic, ray, slurm, src.train), the host, the GPUs it
    was given (Ray and SLURM set CUDA_VISIBLE_DEVICES per job) and the scheduler's job, if any."""
    env = os.environ
    array = env.get("SLURM_ARRAY_JOB_ID")
    return {
        "launcher": launcher,
        "host": platform.node(),
        "pid": os.getpid(),
        "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
        "slurm_job_id": f"{array}_{env.get('SLURM_ARRAY_TASK_ID')}" if array else env.get("SLURM_JOB_ID"),
        "slurm_restarts": int(env["SLURM_RESTART_COUNT"]) if "SLURM_RESTART_COUNT" in env else None,
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


FAILURE = "failure.json"  # a failure beside an earlier success, which no failure replaces
TRACEBACK = "traceback.txt"
RESERVE = ".tunegrid.reserve"
RESERVE_BYTES = 32 * 1024  # a failure record with its resolved config and the tail of its traceback
TRACEBACK_TAIL = 8 * 1024  # what a record keeps of the traceback when traceback.txt cannot be written


def reserve(run_dir: Path) -> None:
    """Room for the failure record, taken when a run claims its folder (RESERVE_BYTES real bytes, fsynced), so
    that a disk that fills up later still leaves a record: write_failure overwrites them in place and renames
    them to the record. Raises OSError when even that room is not there. release_reserve gives it back."""
    reserve_file(Path(run_dir) / RESERVE, RESERVE_BYTES)


def release_reserve(run_dir: Path) -> None:
    """Give the reserved room back once the run's record is written (write_success and record_failure)."""
    with contextlib.suppress(OSError):  # a folder gone read-only: a hidden file left behind harms nothing
        (Path(run_dir) / RESERVE).unlink(missing_ok=True)


def strict(metrics: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """Metrics as strict JSON: a NaN or infinite value becomes null, and the record's `non_finite` names it
    (a bare NaN makes result.json unreadable to strict parsers, jq and browsers among them)."""
    out, bad = {}, []
    for key, value in metrics.items():
        if isinstance(value, dict):
            value = strict(value, record)
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append(f"{key}={value}")
            value = None
        out[key] = value
    if bad:
        record.setdefault("non_finite", []).extend(bad)
    return out


def write_success(
    run_dir: Path, record: dict[str, Any], metrics: dict[str, Any], env: dict[str, Any]
) -> None:
    record.update(metrics=strict(metrics, record), env=env, status="success", ended_at=now())
    write_json(Path(run_dir) / RECORD, record)
    release_reserve(run_dir)  # after the write: a success that meets a full disk fails into the reserve
    print(f"tunegrid: success; record: {Path(run_dir) / RECORD}")


# torch's weights-only loader, refusing a file, advises loading it with `weights_only=False` (unpickling it):
# never a fix to give a user. What it means here replaces its message.
TORCH_REFUSED = (
    "a torch file of the checkpoint resumed from holds objects torch's safe loader refuses (corrupt, or not "
    "written by tunegrid); move that checkpoint out of checkpoints/ and run again"
)


def error_summary(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else ""
    if first.startswith("Weights only load failed") or "weights_only" in first:
        first = TORCH_REFUSED
    return f"{type(exc).__name__}: {first}".rstrip(": ")


def write_failure(
    run_dir: Path, record: dict[str, Any], exc: BaseException, status: str = "failed"
) -> dict[str, Any]:
    """Record a failed run: one-line error in the record, the full traceback in a file beside it. An earlier
    success in the folder is kept, the failure goes beside it (failure.json); on a full disk the record goes
    into the room `reserve` took. Raises OSError only when no record could be written at all."""
    _write_failure(Path(run_dir), record, exc, status)
    return record


def _step(exc: BaseException | None) -> int | None:
    """The step the run reached, set on what training raised, which a later error may have replaced (a
    metrics log that a full disk keeps from being closed)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if getattr(exc, "step_reached", None) is not None:
            return exc.step_reached
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _compact(record: dict[str, Any]) -> bytes:
    """The record as it fits the reserved room: compact JSON, if need be without the resolved config (the
    run's config.yaml has it), then without the traceback's tail."""
    rec = dict(record)
    for drop in ((), ("config", "method_settings"), ("traceback",)):
        for key in drop:
            rec.pop(key, None)
        data = json.dumps(rec, separators=(",", ":"), default=str).encode()
        if len(data) <= RESERVE_BYTES:
            break
    return data


def _write_failure(
    run_dir: Path, record: dict[str, Any], exc: BaseException, status: str
) -> tuple[Path, OSError | None]:
    """Where the failure was recorded, and the error that sent it into the reserved room (None: written as
    usual). The room is given back either way."""
    earlier = read_record(run_dir)
    target = run_dir / (FAILURE if earlier and earlier.get("status") == "success" else RECORD)
    text = "".join(traceback.format_exception(exc))
    record.update(
        status=status,
        error=error_summary(exc) if status != "invalid" else str(exc),
        ended_at=now(),
        traceback_file=TRACEBACK,
        step=_step(exc),
    )
    try:
        try:
            write_bytes(run_dir / TRACEBACK, text)
        except OSError:  # its tail in the record instead
            record.update(traceback_file=None, traceback=text[-TRACEBACK_TAIL:])
        write_json(target, record)
        return target, None
    except OSError as e:  # a full disk, most likely: the reserved room, or no record at all
        record["written_to_reserve"] = error_summary(e)
        try:
            fill_reserved(run_dir / RESERVE, target, _compact(record))
        except OSError:
            record.pop("written_to_reserve")
            raise e from None
        return target, e
    finally:
        release_reserve(run_dir)


def _recorded(run_dir: Path, record: dict[str, Any], exc: BaseException, status: str) -> tuple[bool, str]:
    """Record the failure; (whether a record was written, where, for the one line on stderr)."""
    try:
        where, full = _write_failure(run_dir, record, exc, status)
    except OSError as e:
        return False, f"no record written in {run_dir}: {e.strerror or error_summary(e)}"
    said = f"record: {where}"
    if where.name == FAILURE:
        said = f"earlier success kept in {run_dir / RECORD}; this failure recorded in {where}"
    if full is not None:
        said += f"; {full.strerror or error_summary(full)}: written into the room reserved for it"
    return True, said


def record_failure(run_dir: Path, record: dict[str, Any], exc: BaseException) -> int:
    """The task wrapper's half that runs after a failure: record it (a bad value never overwrites an earlier
    run's record, no failure replaces a success), say so in one line on stderr (a record a full disk kept
    out included: never a traceback), and return the exit code of a single run: 2 for a bad value,
    128 + signal when interrupted, 0 for a cell skipped as predicted not to fit, else 1."""
    status = status_of(exc)
    run_dir = Path(run_dir)
    try:
        if isinstance(exc, ConfigError):
            line = f"tunegrid: error: {exc}"
            if not (run_dir / RECORD).exists():
                written, said = _recorded(run_dir, record, exc, status)
                line += "" if written else f" ({said})"
            print(line, file=sys.stderr)
            return 2
        if status == "skipped_oom":
            record["metrics"] = {
                "predicted_memory_mb": exc.predicted["total_mb"],
                "predicted_memory": exc.predicted,
            }
        _, said = _recorded(run_dir, record, exc, status)
        print(f"tunegrid: run {status}: {error_summary(exc)} ({said})", file=sys.stderr)
    finally:
        release_reserve(run_dir)
    if status == "interrupted":
        return 128 + getattr(exc, "signum", 2)
    return 0 if status == "skipped_oom" else 1


# --------------------------------------------------------------------------- earlier records


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from a file, or None when there is none or it cannot be read."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


def read_record(run_dir: Path) -> dict[str, Any] | None:
    """The record in a run folder, or None when there is none or it cannot be read."""
    return read_json(Path(run_dir) / RECORD)


def read_records(root: Path) -> list[dict[str, Any]]:
    """Every finished record under root (depth-first, sorted by path)."""
    out = []
    for path in sorted(Path(root).rglob(RECORD)):
        try:
            rec = json.loads(path.read_text())
            if not isinstance(rec, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as e:  # a truncated or foreign file: said, and its cell runs again
            print(f"tunegrid: {path}: not a readable record ({error_summary(e)}); left out", file=sys.stderr)
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
            f"  {rec['status']:<8} {keys:<40} eval_loss={m.get('eval_loss') or float('nan'):.4f} "
            f"trainable={m.get('trainable_params')} tokens/s={m.get('tokens_per_s') or 0:.0f}"
        )
    return f"  {rec.get('status', '?'):<8} {keys:<40} {rec.get('error', '')}"
