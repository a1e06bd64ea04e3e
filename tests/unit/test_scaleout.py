"""The launchers' settings (one line, exit 2, before any job starts), their configs composed with Hydra's
compose API and built, and `python -m src.status` over folders the tests write."""

from __future__ import annotations

import json
import os

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from src import records, status
from src.atomic import write_json
from src.claim import OWNER
from src.config import CONF_DIR
from src.errors import ConfigError
from src.scaleout import settings
from src.scaleout.cells import MANIFEST

pytestmark = pytest.mark.unit


def launcher_cfg(name: str, *overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", [f"hydra/launcher={name}", *overrides], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


def test_ray_config_is_tunegrids_and_builds():
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    from hydra_plugins.tunegrid.launchers import RayLauncher

    cfg = launcher_cfg("ray", "hydra.launcher.gpus_per_run=0.25")
    assert cfg.pop("_target_") == "hydra_plugins.tunegrid.launchers.RayLauncher"
    launcher = RayLauncher(**cfg)
    assert (launcher.gpus_per_run, launcher.cpus_per_run) == (0.25, 1)


def test_slurm_config_builds_the_plugin_with_every_setting():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    from hydra_plugins.tunegrid.launchers import SlurmLauncher

    cfg = launcher_cfg("slurm", "hydra.launcher.partition=gpu", "hydra.launcher.wait=false")
    cfg.pop("_target_")
    cfg["submitit_folder"] = cfg["name"] = "x"  # interpolations of Hydra's runtime keys
    launcher = SlurmLauncher(**cfg)
    assert launcher.wait is False and launcher.plugin.params["partition"] == "gpu"
    assert launcher.plugin.params["max_num_timeout"] > 0  # a timed-out job is requeued


@pytest.mark.parametrize(
    "gpus, cpus, unknown, key",
    [
        (1.5, 1, {}, "gpus_per_run"),
        (-1, 1, {}, "gpus_per_run"),
        ("half", 1, {}, "gpus_per_run"),
        (True, 1, {}, "gpus_per_run"),
        (1, 0, {}, "cpus_per_run"),
        (1, 1, {"gpus": 2}, "gpus"),
    ],
)
def test_bad_ray_settings_name_the_key(gpus, cpus, unknown, key):
    with pytest.raises(ConfigError, match=rf"^hydra\.launcher\.{key}=") as e:
        settings.check_ray(gpus, cpus, unknown)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("gpus", [0, 0.25, 0.5, 1, 2, 8])
def test_good_ray_settings_pass(gpus):
    settings.check_ray(gpus, 2, {})


SLURM_OK = {
    "timeout_min": 60, "array_parallelism": 4, "max_num_timeout": 3, "signal_delay_s": 120,
    "nodes": 1, "tasks_per_node": 1, "gpus_per_node": None, "cpus_per_task": 2, "mem_gb": None,
}  # fmt: skip


@pytest.mark.parametrize(
    "wait, change, key",
    [
        ("yes", {}, "wait"),
        (True, {"timeout_min": 0}, "timeout_min"),
        (True, {"timeout_min": 1.5}, "timeout_min"),
        (True, {"signal_delay_s": 3600}, "signal_delay_s"),
        (True, {"max_num_timeout": -1}, "max_num_timeout"),
        (True, {"array_parallelism": 0}, "array_parallelism"),
        (True, {"cpus_per_task": 0}, "cpus_per_task"),
        (True, {"partion": "gpu"}, "partion"),
    ],
)
def test_bad_slurm_settings_name_the_key(wait, change, key):
    params = {**SLURM_OK, **change}
    with pytest.raises(ConfigError, match=rf"^hydra\.launcher\.{key}="):
        settings.check_slurm(wait, params, set(SLURM_OK))


def test_sacct_ranges_of_a_queued_array_are_expanded():
    out = "12_[3-5,7%2]|PENDING\n12_0|RUNNING\n12_1|CANCELLED by 0\n13|COMPLETED\n"
    assert status.parse_sacct(out) == {
        "12_3": "PENDING", "12_4": "PENDING", "12_5": "PENDING", "12_7": "PENDING",
        "12_0": "RUNNING", "12_1": "CANCELLED", "13": "COMPLETED",
    }  # fmt: skip


def _cell(sweep, name, rec=None, owner=None):
    """A cell folder as a job leaves it: Hydra's overrides.yaml, and maybe a record and an owner file."""
    folder = sweep / name
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- {name}\n")
    if rec is not None:
        write_json(folder / records.RECORD, {"overrides": [name], **rec})
    if owner is not None:
        write_json(folder / OWNER, owner)


def test_status_counts_every_cell_from_records_claims_and_the_job_list(tmp_path):
    host = __import__("platform").node()
    _cell(tmp_path, "done", {"status": "success", "metrics": {"eval_loss": 1.25}})
    _cell(tmp_path, "failed", {"status": "diverged", "error": "loss became NaN"})
    _cell(tmp_path, "running", owner={"pid": os.getpid(), "host": host, "since": "now"})
    # a run killed hard: its owner file names a process that no longer exists
    _cell(tmp_path, "killed", owner={"pid": 2**22 + 7, "host": host, "since": "then"})
    _cell(tmp_path, "stopped", {"status": "interrupted", "error": "signal 15"})
    write_json(
        tmp_path / MANIFEST,
        {"cells": [{"overrides": [d], "job_id": None} for d in ("done", "queued", "running")]},
    )
    got = {c["overrides"][0]: (c["state"], c["detail"]) for c in status.status(tmp_path)}
    assert {k: v[0] for k, v in got.items()} == {
        "done": "done", "failed": "failed", "running": "running", "killed": "died",
        "stopped": "interrupted", "queued": "pending",
    }  # fmt: skip
    assert got["done"][1] == "eval_loss=1.2500" and "ended without a record" in got["killed"][1]


def test_status_cli_prints_the_counts(tmp_path, capsys):
    _cell(tmp_path, "a", {"status": "success"})
    _cell(tmp_path, "b", {"status": "failed", "error": "boom"})
    assert status.main([str(tmp_path)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first == f"tunegrid: {tmp_path}: 2 cell(s): 1 done, 1 failed"
    assert status.main([str(tmp_path / "nope")]) == 2
    assert status.main([str(tmp_path), "--json"]) == 0
    assert [json.loads(x)["state"] for x in capsys.readouterr().out.splitlines()] == ["done", "failed"]
