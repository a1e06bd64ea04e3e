"""The benchmark end to end: its entry points and one `--quick` section (slow); that the shim's prototypes
patch what the framework calls is tests/unit/test_bench.py's. Nothing here asserts a speed: the benchmark measures and writes, it does not pass or fail
on a number."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from src.config import REPO_ROOT
from tests.helpers import cli_env


def _run(*args: str, timeout: int, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=cli_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bench_script_is_the_package_entry():
    """`python benchmarks/bench.py` (kept for old commands) is `python -m benchmarks` (what make bench runs)."""
    script, package = (
        _run("benchmarks/bench.py", "--help", timeout=120),
        _run("-m", "benchmarks", "--help", timeout=120),
    )
    assert script.returncode == package.returncode == 0, script.stderr[-2000:] + package.stderr[-2000:]
    assert script.stdout == package.stdout and "--sections" in script.stdout
    bad = _run("benchmarks/bench.py", "--sections", "nope", timeout=120)
    assert bad.returncode == 2 and "--sections: unknown ['nope']" in bad.stderr


@pytest.mark.slow
def test_quick_benchmark_writes_its_json(tmp_path):
    """`python -m benchmarks --quick` over one section runs, prints its table and writes a valid result file."""
    out = _run(
        "-m", "benchmarks", "--quick", "--sections", "overhead", "--out-dir", str(tmp_path), timeout=900
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and re.fullmatch(
        r".+-\d{4}-\d{2}-\d{2}-quick\.json", files[0].name
    )  # no temp files
    result = json.loads(files[0].read_text())
    assert result["schema_version"] == 1 and result["quick"] is True
    section = result["profiles"]["tiny-cpu"]["overhead"]
    assert "error" not in section
    assert section["summary"]["framework"]["n"] == 1 and section["summary"]["plain"]["n"] == 1
    assert section["checks"]["tokens_trained_identical"]
    assert section["ratios"]["train_tokens_per_s framework/plain"] > 0
    assert "framework/plain" in out.stdout
