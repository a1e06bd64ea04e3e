"""End-to-end tier: the throughput knobs that need a package, a GPU or a compiler, as a user runs them. On this
CPU machine Liger's Triton kernels run through Triton's interpreter (TRITON_INTERPRET=1), slowly but with the
same arithmetic, so the fused loss is checked against the model's own; torch.compile builds its CPU kernels."""

from __future__ import annotations

import importlib.util
import math

import pytest

from tests.helpers import no_traceback, record, run_cli, short

STEPS = ("trainer.max_steps=3", "trainer.eval_every=3")


def _error_line(proc) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.startswith("tunegrid: error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_a_knob_this_machine_cannot_run_is_one_line_and_exit_2(tmp_path):
    liger = run_cli(*short(*STEPS, "trainer.fused_loss=liger"), f"hydra.run.dir={tmp_path / 'liger'}")
    assert liger.returncode == 2, liger.stderr[-2000:]
    no_traceback(liger)
    if importlib.util.find_spec("liger_kernel") is None:
        assert "needs the liger_kernel package" in _error_line(liger)
    else:
        assert "trainer.fused_loss=liger: Liger's Triton kernels need a GPU" in _error_line(liger)
    flash = run_cli(
        *short(*STEPS, "trainer.attention=flash_attention_2"), f"hydra.run.dir={tmp_path / 'flash'}"
    )
    assert flash.returncode == 2
    no_traceback(flash)
    line = _error_line(flash)
    assert line.startswith("tunegrid: error: trainer.attention=flash_attention_2: needs")
    assert ("flash_attn package" in line) or ("CUDA GPU" in line)
    assert (
        not (tmp_path / "liger" / "checkpoint").exists() and not (tmp_path / "flash" / "checkpoint").exists()
    )


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is None, reason="liger-kernel is not installed")
def test_fused_loss_trains_as_the_models_own_loss(tmp_path):
    """The same seed and batches with the LM head and cross-entropy fused (Liger, interpreted) and without: the
    same training loss and eval loss up to float rounding; the eval loss is the model's own forward either way."""
    plain = run_cli(*short(*STEPS), f"hydra.run.dir={tmp_path / 'plain'}")
    fused = run_cli(
        *short(*STEPS, "trainer.fused_loss=liger"),
        f"hydra.run.dir={tmp_path / 'fused'}",
        env={"TRITON_INTERPRET": "1"},
    )
    assert plain.returncode == 0 == fused.returncode, fused.stderr[-3000:]
    a, b = record(tmp_path / "plain")["metrics"], record(tmp_path / "fused")["metrics"]
    assert record(tmp_path / "fused")["config"]["trainer"]["fused_loss"] == "liger"
    assert a["tokens_trained"] == b["tokens_trained"]
    assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-4), (a["train_loss"], b["train_loss"])
    assert math.isclose(a["eval_loss"], b["eval_loss"], rel_tol=1e-4), (a["eval_loss"], b["eval_loss"])
    # the fused loss never holds the logits: the prediction says so
    assert b["predicted_memory"]["logits_mb"] < a["predicted_memory"]["logits_mb"]


@pytest.mark.slow
def test_compiled_model_trains_the_same_and_reports_compile_time(tmp_path):
    """Six steps: packed batches change shape, so the second step may compile again (dynamic shapes); the
    median of the later steps is the steady step."""
    steps = ("trainer.max_steps=6", "trainer.eval_every=6")
    plain = run_cli(*short(*steps), f"hydra.run.dir={tmp_path / 'plain'}")
    compiled = run_cli(
        *short(*steps, "trainer.compile=true"), f"hydra.run.dir={tmp_path / 'compiled'}", timeout=900
    )
    assert plain.returncode == 0 == compiled.returncode, compiled.stderr[-3000:]
    a, b = record(tmp_path / "plain")["metrics"], record(tmp_path / "compiled")["metrics"]
    assert a["compile_s"] is None and b["compile_s"] > 0
    assert b["first_step_s"] > b["step_s_median"] and b["tokens_per_s_steady"] > b["tokens_per_s"]
    assert math.isclose(a["eval_loss"], b["eval_loss"], rel_tol=1e-3), (a["eval_loss"], b["eval_loss"])
