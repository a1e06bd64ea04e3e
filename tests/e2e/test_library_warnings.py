"""A full fine-tuning run prints no bitsandbytes warning about the optional `kernels` package.

bitsandbytes logs it while being imported (peft imports it whenever transformers' Trainer is imported), on
CPUs with AVX512-BF16 alone. So that the test means the same on every machine, its subprocesses report
AVX512-BF16 to bitsandbytes (bitsandbytes.functional.has_avx512bf16 returns True; nothing else changes):
the control imports bitsandbytes alone and must show the warning; `python -m src.run` must not."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

from src import KERNELS_HUB_WARNING
from src.config import REPO_ROOT
from tests.helpers import QUICK, cli_env

RUNNER = textwrap.dedent(
    """
    import importlib.abc, importlib.machinery, runpy, sys

    class ReportAvx512Bf16(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "bitsandbytes.functional":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            load = spec.loader.exec_module

            def exec_module(module):
                load(module)
                module.has_avx512bf16 = lambda: True

            spec.loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, ReportAvx512Bf16())
    if sys.argv[1] == "import":
        import bitsandbytes  # noqa: F401
    else:
        sys.argv = ["src.run", *sys.argv[2:]]
        runpy.run_module("src.run", run_name="__main__", alter_sys=True)
    """
)


def run(tmp_path, *args: str):
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    return subprocess.run(
        [sys.executable, str(runner), *args],
        cwd=REPO_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.skipif(
    importlib.util.find_spec("kernels") is not None, reason="`kernels` is installed: no warning"
)
def test_full_fine_tuning_prints_no_kernels_warning(tmp_path):
    control = run(tmp_path, "import")
    assert control.returncode == 0, control.stderr
    assert KERNELS_HUB_WARNING in control.stderr, "the simulation no longer reproduces the warning"

    run_dir = tmp_path / "run"
    overrides = [o for o in QUICK if not o.startswith("trainer.max_steps")]
    proc = run(tmp_path, "run", *overrides, "trainer.max_steps=2", "method=full", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (run_dir / "result.json").is_file()
    logs = [proc.stdout, proc.stderr, *(p.read_text() for p in run_dir.glob("*.log"))]
    for text in logs:
        assert "kernels" not in text.lower(), text[-2000:]
