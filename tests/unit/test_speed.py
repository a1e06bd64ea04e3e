"""Unit tier: the throughput knobs (src/speed.py) on the tiny model, in this process. Each knob must leave what
a run computes unchanged (or say how it changes it), and report what it measured. What needs a package or a
GPU the machine lacks, and torch.compile, are tests/e2e/test_speed_runs.py's."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from src import speed
from src.callbacks import LossWatch, RunTotals
from src.costs import PaddingCounter
from src.errors import Diverged
from tests.helpers import short, train_inprocess


@pytest.mark.parametrize(
    ("effective", "budget", "mean", "want"),
    [
        (64, 16384, 130.0, 64),  # the whole effective batch fits the budget
        (16, 2000, 130.0, 8),  # 15 examples fit: the largest divisor of 16 not above 15
        (12, 100, 130.0, 1),  # not even one example: one at a time
        (6, 520, 130.0, 3),  # 4 fit, 4 does not divide 6: 3
    ],
)
def test_micro_batch_divides_the_effective_batch_within_the_budget(effective, budget, mean, want):
    got = speed.micro_batch(effective, budget, mean)
    assert got == want and effective % got == 0


def test_token_budget_keeps_the_effective_batch_and_the_loss(tmp_path):
    """4 × 4 accumulated and one micro-batch of 16 chosen by the token budget train the same examples per
    step, so the same losses up to float rounding; the record says what the budget chose."""
    common = short(
        "trainer.max_steps=4", "trainer.eval_every=4", "trainer.grad_accum=4", "trainer.batch_size=4"
    )
    small, _, _ = train_inprocess(tmp_path / "small", *common)
    big, _, trainer = train_inprocess(tmp_path / "big", *common, "trainer.tokens_per_batch=100000")
    assert small["micro_batches"] is None
    chosen = big["micro_batches"]
    assert (chosen["batch_size"], chosen["grad_accum"], chosen["effective_batch"]) == (16, 1, 16)
    assert trainer.args.per_device_train_batch_size == 16 and trainer.args.gradient_accumulation_steps == 1
    assert big["tokens_trained"] == small["tokens_trained"]
    assert math.isclose(big["eval_loss"], small["eval_loss"], rel_tol=1e-4), (
        big["eval_loss"],
        small["eval_loss"],
    )
    assert math.isclose(big["train_loss"], small["train_loss"], rel_tol=1e-4)


def test_eager_attention_gives_the_loss_of_sdpa(tmp_path):
    sdpa, _, t1 = train_inprocess(tmp_path / "sdpa", *short("trainer.max_steps=3"))
    eager, _, t2 = train_inprocess(
        tmp_path / "eager", *short("trainer.max_steps=3", "trainer.attention=eager")
    )
    assert t1.model.config._attn_implementation == "sdpa" and t2.model.config._attn_implementation == "eager"
    assert math.isclose(eager["eval_loss"], sdpa["eval_loss"], rel_tol=1e-4)
    # eager attention stores its probabilities: the prediction counts them
    assert eager["predicted_memory"]["activations_mb"] > sdpa["predicted_memory"]["activations_mb"]


def test_bf16_weights_halve_the_weights_and_train(tmp_path):
    fp32, _, _ = train_inprocess(tmp_path / "fp32", *short("trainer.max_steps=3", "trainer.precision=bf16"))
    bf16, _, trainer = train_inprocess(
        tmp_path / "bf16",
        *short("trainer.max_steps=3", "trainer.precision=bf16", "trainer.weights_dtype=bf16"),
    )
    assert {p.dtype for p in trainer.model.parameters()} == {torch.bfloat16}
    assert bf16["weights_bytes"] * 2 == fp32["weights_bytes"]
    assert bf16["predicted_memory"]["gradients_mb"] * 2 == fp32["predicted_memory"]["gradients_mb"]
    assert math.isfinite(bf16["eval_loss"]) and abs(bf16["eval_loss"] - fp32["eval_loss"]) < 0.05


def test_step_times_keep_compile_time_apart():
    st = speed.StepTimes()
    for tokens in (100, 200, 300):
        st.on_step_begin(None, None, None)
        st.on_step_end(None, SimpleNamespace(num_input_tokens_seen=tokens), None)
    assert len(st.times) == 3 and st.tokens_after_first == 100
    st.times = [5.0, 1.0, 1.0]  # as if: a slow first step (compilation), then two steady ones
    s = st.summary(SimpleNamespace(num_input_tokens_seen=300), True)
    assert s["first_step_s"] == 5.0 and s["step_s_median"] == 1.0 and s["compile_s"] == 4.0
    assert s["tokens_per_s_steady"] == (300 - 100) / 2.0
    assert st.summary(SimpleNamespace(num_input_tokens_seen=300), False)["compile_s"] is None


def test_step_timings_reach_the_record(tmp_path):
    m, _, _ = train_inprocess(tmp_path / "run", *short("trainer.max_steps=4"))
    assert m["first_step_s"] > 0 and m["step_s_median"] > 0 and m["compile_s"] is None
    assert m["tokens_per_s_steady"] > 0


class _Model(torch.nn.Module):
    """Returns the loss it is given, as a causal LM's output would carry it."""

    def forward(self, loss):
        return SimpleNamespace(loss=loss)


def test_loss_watch_reads_the_device_once_per_optimizer_step():
    """The losses of a step's micro-batches are kept, not read; before the optimizer step a non-finite one
    stops the run with the step it happened at."""
    model = _Model().train()
    watch = LossWatch(model)
    watch.trainer = SimpleNamespace(state=SimpleNamespace(global_step=2))
    model(torch.tensor(1.5))
    model(torch.tensor(2.5))
    assert len(watch.losses) == 2
    watch.on_pre_optimizer_step(None, SimpleNamespace(global_step=2), None)  # finite: goes on
    assert watch.losses == []
    model(torch.tensor(1.0))
    model(torch.tensor(float("inf")))
    with pytest.raises(Diverged, match="training loss became inf at step 3"):
        watch.on_pre_optimizer_step(None, SimpleNamespace(global_step=2), None)


def test_run_totals_sum_on_the_device_and_read_at_saves():
    totals = RunTotals(window=2, padding=PaddingCounter())
    state = SimpleNamespace(stateful_callbacks={})
    for loss in (1.0, 2.0, 4.0):
        totals.add(torch.tensor(loss / 2))
        totals.add(torch.tensor(loss / 2))
        totals.on_step_end(None, state, SimpleNamespace(should_save=False))
    assert all(torch.is_tensor(x) for x in totals.recent) and state.stateful_callbacks == {}
    assert totals.train_loss() == 3.0  # the mean of the last two steps
    totals.on_step_end(
        None, state, SimpleNamespace(should_save=True)
    )  # a step of no micro-batch, then a save
    assert state.stateful_callbacks[RunTotals.KEY]["recent"] == [4.0, 0.0]


def test_bf16_weights_keep_lora_adapters_in_fp32(tmp_path):
    """A frozen base stored in bf16, the trained adapters in fp32 (PEFT's autocast_adapter_dtype)."""
    _, _, trainer = train_inprocess(
        tmp_path,
        *short("method=lora", "trainer.max_steps=2", "trainer.precision=bf16", "trainer.weights_dtype=bf16"),
    )
    params = list(trainer.model.named_parameters())
    assert {p.dtype for _, p in params if p.requires_grad} == {torch.float32}
    assert {p.dtype for _, p in params if not p.requires_grad} == {torch.bfloat16}
