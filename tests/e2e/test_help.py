"""`python -m src.run --help`: tunegrid's own help (conf/hydra/help/tunegrid.yaml through Hydra's help
mechanism), in a real subprocess. The groups and their choices come from conf/ when --help runs, the
top-level keys show the values the given overrides produce, and nothing trains."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from src.config import CONF_DIR, REPO_ROOT
from src.run import shown
from tests.helpers import cli_env, compose_cfg, no_traceback, run_cli


def groups_on_disk(root=CONF_DIR) -> dict[str, list[str]]:
    """conf/<group>/*.yaml (conf/sweep links to sweeps/), Hydra's own groups left out."""
    out = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != "hydra"):
        choices = sorted(f.stem for f in folder.glob("*.yaml"))
        if choices:
            out[folder.name] = choices
    return out


def top_level_keys() -> list[str]:
    """The scalar keys conf/config.yaml sets at the top level, and the sweep.* settings."""
    raw = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "config.yaml"), resolve=False)
    keys = [k for k, v in raw.items() if k != "defaults" and not isinstance(v, dict)]
    return keys + [f"sweep.{k}" for k in raw["sweep"]]


@pytest.fixture(scope="module")
def default_help():
    proc = run_cli("--help", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    no_traceback(proc)
    return proc.stdout


def test_help_is_tunegrids_own(default_help):
    text = default_help
    assert "powered by Hydra" not in text and "Powered by Hydra" not in text
    assert text.startswith("tunegrid:")
    for needed in ("-m", "+sweep=<study>", "--cfg job --resolve", "outputs/", "multirun/", "README.md"):
        assert needed in text, needed
    assert "--hydra-help" in text  # Hydra's own flags stay one flag away


def test_help_lists_every_group_and_choice_on_disk(default_help):
    lines = default_help.splitlines()
    on_disk = groups_on_disk()
    assert {"model", "method", "data", "optim", "lr_schedule", "sweep"} <= set(on_disk)
    for group, choices in on_disk.items():
        assert f"{group}: {', '.join(choices)}" in lines, group
    studies = sorted(p.stem for p in (REPO_ROOT / "sweeps").glob("*.yaml"))
    assert f"sweep: {', '.join(studies)}" in lines


def test_help_shows_every_top_level_key_with_its_default(default_help):
    cfg = compose_cfg()
    for key in top_level_keys():
        value = shown(OmegaConf.select(cfg, key))
        assert re.search(rf"^\s+{re.escape(key)}={re.escape(value)}\s", default_help, re.M), key
    assert "outputs/default-" in default_help  # this config's own folder


def test_help_shows_the_values_overrides_give_and_trains_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        "method=lora", "rank=4", "sweep.force=true", f"hydra.run.dir={run_dir}", "--help", timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"^\s+rank=4\s", proc.stdout, re.M)
    assert re.search(r"^\s+sweep\.force=true\s", proc.stdout, re.M)
    lr = shown(
        compose_cfg("method=lora").lr
    )  # interpolated: optim.base_lr × method.lr_scale × model.lr_scale
    assert re.search(rf"^\s+lr={re.escape(lr)}\s", proc.stdout, re.M)
    assert f"with these overrides: {run_dir}/" in proc.stdout
    assert not run_dir.exists()


def test_help_reads_the_groups_when_it_runs(tmp_path):
    """A choice added to a config folder is listed without touching the help (here through --config-dir, so
    that conf/ itself is left alone)."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "my-model.yaml").write_text("name: my-model\n")
    proc = run_cli("--config-dir", str(tmp_path), "--help", timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("model: "))
    assert "my-model" in line.split(": ", 1)[1].split(", ")


def test_python_m_src_is_python_m_src_run(default_help):
    proc = subprocess.run(
        [sys.executable, "-m", "src", "--help"],
        cwd=REPO_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == default_help


def test_shown_spells_values_as_overrides():
    assert [shown(v) for v in (None, True, False, 8, 0.001, "attn")] == [
        "null",
        "true",
        "false",
        "8",
        "0.001",
        "attn",
    ]
