"""The launchers' own settings (hydra.launcher.*), checked when Hydra builds the launcher, before any job
starts: a bad value is one line naming the key, the value and what is allowed, exit 2 (Hydra would otherwise
show a traceback from inside Ray or sbatch, or from its own instantiate)."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from src.errors import ConfigError


def _number(key: str, value: Any, allowed: str, ok) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not ok(value):
        raise ConfigError(f"hydra.launcher.{key}={value!r}: {allowed}")


def check_ray(gpus_per_run: Any, cpus_per_run: Any, unknown: dict[str, Any]) -> None:
    _unknown(unknown, "gpus_per_run, cpus_per_run, init, remote")
    # Ray's rule: a fraction of one GPU, or whole GPUs
    _number(
        "gpus_per_run",
        gpus_per_run,
        "must be a fraction of a GPU (0 < x ≤ 1, e.g. 0.5: two cells per GPU) or a whole number of GPUs, or 0",
        lambda v: v == 0 or 0 < v <= 1 or float(v).is_integer() and v > 0,
    )
    _number("cpus_per_run", cpus_per_run, "must be a number of CPUs > 0", lambda v: v > 0)
    if not all(importlib.util.find_spec(m) for m in ("ray", "hydra_plugins.hydra_ray_launcher")):
        raise ConfigError(
            "hydra/launcher=ray: needs hydra-ray-launcher and ray; install them: pip install -e '.[ray]'"
        )


def check_slurm(wait: Any, params: dict[str, Any], known: set[str]) -> None:
    _unknown({k: v for k, v in params.items() if k not in known}, ", ".join(sorted(known | {"wait"})))
    if not isinstance(wait, bool):
        raise ConfigError(
            f"hydra.launcher.wait={wait!r}: must be true (wait for the jobs) or false (submit, return)"
        )
    integer = lambda lo: lambda v: isinstance(v, int) and v >= lo  # noqa: E731
    _number("timeout_min", params.get("timeout_min"), "must be a whole number of minutes ≥ 1", integer(1))
    _number("array_parallelism", params.get("array_parallelism"), "must be a whole number ≥ 1", integer(1))
    _number("max_num_timeout", params.get("max_num_timeout"), "must be a whole number ≥ 0", integer(0))
    limit = params["timeout_min"] * 60
    _number(
        "signal_delay_s",
        params.get("signal_delay_s"),
        f"must be whole seconds ≥ 0, below the time limit (timeout_min={params['timeout_min']}: {limit} s)",
        lambda v: isinstance(v, int) and 0 <= v < limit,
    )
    for key in ("nodes", "tasks_per_node"):
        _number(key, params.get(key), "must be a whole number ≥ 1", integer(1))
    for key in ("gpus_per_node", "cpus_per_task", "mem_gb"):
        if params.get(key) is not None:
            _number(key, params[key], "must be a whole number ≥ 1, or null (SLURM's default)", integer(1))


def _unknown(unknown: dict[str, Any], allowed: str) -> None:
    if unknown:
        key, value = next(iter(unknown.items()))
        raise ConfigError(
            f"hydra.launcher.{key}={value!r}: not a setting of this launcher; allowed: {allowed}"
        )


def refuse(exc: ConfigError) -> None:
    print(f"tunegrid: error: {exc}", file=sys.stderr)
    sys.exit(2)
