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


@pytest.mark.slow
def test_gpu_plan_runs_on_cpu_and_says_what_it_skipped(tmp_path):
    """The GPU plan's one-run sections on the tiny model without a GPU: every knob that can run here is
    measured against the baseline with its eval loss, the GPU-only ones are skipped with a reason, and the
    methods run again with the tuned knobs (before / after)."""
    out = _run(
        "-m", "benchmarks", "--gpu-plan", "--no-gpu", "--profiles", "tiny", "--sections", "speedups,methods",
        "--out-dir", str(tmp_path), timeout=1500,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    (path,) = tmp_path.iterdir()
    assert re.fullmatch(r".+-\d{4}-\d{2}-\d{2}\.json", path.name)
    prof = json.loads(path.read_text())["profiles"]["tiny-cpu"]
    speed, methods = prof["speedups"], prof["methods"]
    assert "error" not in speed and "error" not in methods
    assert speed["skipped"]["Liger fused loss"] == "needs a CUDA GPU"
    assert set(speed["gains"]) == set(speed["contenders"]) - {"baseline"}
    for knob in ("fused AdamW", "tokens_per_batch", "workers 2 + pinned", "tuned"):
        assert speed["summary"][knob]["n"] == 1, knob
        assert speed["gains"][knob]["loss_unchanged"] is True, (knob, speed["gains"][knob])
    assert "trainer.tokens_per_batch=4096" in speed["contenders"]["tuned"]
    assert methods["summary"]["full tuned"]["n"] == 1 and methods["summary"]["qlora tuned"]["n"] == 1
    assert set(methods["mfu_before_after"]) == {"full", "lora", "qlora", "prompt_tuning"}
    assert "| knob | tok/s ÷ baseline" in out.stdout
