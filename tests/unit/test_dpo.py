"""objective=dpo on the tiny model, in this process: it trains, its reference is the model it started from
without a second model where the method allows, init_from starts from an earlier run's adapter or weights,
the memory prediction shows the reference, and what cannot work fails before anything loads."""

from __future__ import annotations

import gc
import math

import pytest
import torch

from src import init_from, methods, models, records, specs
from src.config import validate
from src.errors import ConfigError
from src.loggers import MetricsCallback
from src.train import run_recorded
from tests.helpers import QUICK, compose_cfg, train_inprocess

PAIRS = (
    "objective=dpo",
    "data.splits.train=64",
    "data.splits.validation=16",
    "data.splits.test=8",
    "trainer.batch_size=8",
)


def _finished_run(run_dir, *overrides: str):
    """A finished run folder (record and checkpoint), as `python -m src.run` leaves it."""
    cfg = validate(compose_cfg(*QUICK, *overrides))
    record = records.new_record(run_dir, list(overrides))
    rec, code = run_recorded(run_dir, record, lambda: cfg)
    assert code == 0 and rec["status"] == "success", rec.get("error")
    return rec


@pytest.fixture(scope="module")
def sft_lora(tmp_path_factory):
    run = tmp_path_factory.mktemp("sft") / "lora"
    _finished_run(run, "method=lora", "trainer.max_steps=20")
    return run


def models_cache():
    from src.config import cache_dir

    return cache_dir(compose_cfg())


def _gpt2_models() -> int:
    from transformers import GPT2LMHeadModel

    return sum(isinstance(o, GPT2LMHeadModel) for o in gc.get_objects())


def test_dpo_lora_trains_below_log2_with_the_adapter_switched_off_as_reference(tmp_path):
    """A new adapter's reference is the same model with the adapter off: no reference model, no "ref" copy,
    one GPT-2 in memory. Its loss on the training pairs starts at log 2 and falls below it."""
    gc.collect()
    before = _gpt2_models()
    metrics, _, trainer = train_inprocess(
        tmp_path, *PAIRS, "data.splits.train=32", "method=lora", "trainer.max_steps=32", "lr=0.01",
        "eval.test_split=false",
    )  # fmt: skip
    trainer.remove_callback(MetricsCallback)  # its loggers closed with the run
    assert trainer.ref_model is None
    assert list(trainer.model.peft_config) == ["default"]
    gc.collect()
    assert _gpt2_models() - before == 1
    assert metrics["initial_eval_loss"] == pytest.approx(math.log(2), abs=1e-6)
    on_train = trainer.evaluate(trainer.train_dataset)["eval_loss"]
    assert on_train < math.log(2) - 0.05, on_train
    assert 0 <= metrics["eval/reward_accuracy"] <= 1 and "perplexity" not in metrics
    assert metrics["predicted_memory"]["reference_mb"] == 0.0


def test_disabled_adapter_gives_the_base_models_log_probs(tmp_path):
    """What TRL computes as the reference (the adapter switched off) equals the base model's output."""
    from trl.trainer.utils import use_adapter

    _, _, trainer = train_inprocess(tmp_path, *PAIRS, "method=lora", "trainer.max_steps=6", "lr=0.01")
    cfg = validate(compose_cfg(*QUICK, *PAIRS, "method=lora"))
    spec = specs.of(cfg)
    base = models.load_model(
        models.model_path(cfg.model, models_cache()), cfg.model, spec, None, torch.float32
    )
    ids = torch.tensor([[5, 17, 42, 9, 3, 11]])
    model = trainer.model.eval()
    with torch.no_grad(), use_adapter(model, None):
        off = model(input_ids=ids).logits
    with torch.no_grad():
        on = model(input_ids=ids).logits
        want = base.eval()(input_ids=ids).logits
    assert torch.equal(off, want)
    assert not torch.allclose(on, want)  # the trained adapter changed the policy


def test_init_from_continues_the_sft_adapter_and_keeps_a_frozen_copy_as_reference(tmp_path, sft_lora):
    """DPO from an SFT LoRA run: its adapter's weights are the starting point (equal, tensor by tensor), and the
    reference is TRL's frozen copy of them, not the base model."""
    from safetensors.torch import load_file

    saved = load_file(str(sft_lora / "checkpoint" / "adapter_model.safetensors"))
    _, _, trainer = train_inprocess(
        tmp_path,
        *PAIRS,
        "method=lora",
        f"init_from={sft_lora}",
        "trainer.max_steps=4",
        "eval.test_split=false",
    )
    state = dict(trainer.model.named_parameters())
    assert sorted(trainer.model.peft_config) == ["default", "ref"]
    ref = {k: v for k, v in state.items() if ".ref." in k}
    assert len(ref) == len(saved) > 0
    for key, value in saved.items():  # base_model.model.…lora_A.weight -> ….lora_A.ref.weight
        name = key.replace(".lora_A.weight", ".lora_A.ref.weight").replace(
            ".lora_B.weight", ".lora_B.ref.weight"
        )
        assert torch.equal(state[name].detach().cpu(), value), name
        assert not state[name].requires_grad
    # The starting point: before any step, the trainable adapter is the saved one.
    cfg = validate(compose_cfg(*QUICK, *PAIRS, "method=lora", f"init_from={sft_lora}"))
    spec = specs.of(cfg)
    start = init_from.check(cfg, spec)
    model, adapter_from = init_from.load(
        cfg, spec, models.model_path(cfg.model, models_cache()), torch.float32, start
    )
    model = methods.apply(model, spec.method, cfg.method, cfg.model, adapter_from=adapter_from)
    fresh = dict(model.named_parameters())
    for key, value in saved.items():
        name = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(
            ".lora_B.weight", ".lora_B.default.weight"
        )
        assert torch.equal(fresh[name].detach(), value) and fresh[name].requires_grad, name


def test_init_from_an_adapter_with_full_training_merges_it(tmp_path, sft_lora):
    """method=full from an SFT adapter trains the base with the adapter merged in: the same function as the
    SFT model (base + adapter), as plain weights."""
    from peft import PeftModel

    cfg = validate(compose_cfg(*QUICK, *PAIRS, "method=full", f"init_from={sft_lora}"))
    spec = specs.of(cfg)
    path = models.model_path(cfg.model, models_cache())
    merged, adapter_from = init_from.load(cfg, spec, path, torch.float32, init_from.check(cfg, spec))
    assert adapter_from is None and not hasattr(merged, "peft_config")
    base = models.load_model(path, cfg.model, spec, None, torch.float32)
    sft = PeftModel.from_pretrained(base, str(sft_lora / "checkpoint")).eval()
    ids = torch.tensor([[5, 17, 42, 9, 3, 11]])
    with torch.no_grad():
        assert torch.allclose(merged.eval()(input_ids=ids).logits, sft(input_ids=ids).logits, atol=1e-5)


def test_full_dpo_holds_a_reference_copy_and_the_prediction_counts_it(tmp_path):
    _, _, trainer = train_inprocess(
        tmp_path, *PAIRS, "method=full", "trainer.max_steps=2", "eval.test_split=false"
    )
    assert trainer.ref_model is not None and trainer.ref_model is not trainer.model
    assert all(not p.requires_grad for p in trainer.ref_model.parameters())
    cfg = validate(compose_cfg(*QUICK, *PAIRS, "method=full"))
    spec = specs.of(cfg)
    assert spec.reference == "copy"
    sft = specs.of(validate(compose_cfg(*QUICK, "method=full")))
    assert sft.reference == "none"


def test_precomputed_reference_holds_no_copy(tmp_path):
    metrics, _, trainer = train_inprocess(
        tmp_path, *PAIRS, "method=full", "trainer.max_steps=2", "dpo.precompute_ref_log_probs=true"
    )
    assert trainer.ref_model is None
    assert metrics["predicted_memory"]["reference_mb"] == 0.0
    assert "test_loss" not in metrics  # no reference is left to score the test split against


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (("objective=dpo", "data=synthetic"), "data=synthetic: objective=dpo trains on preference pairs"),
        (("objective=dpo", "method=prompt_tuning"), "method=prompt_tuning: objective=dpo"),
        (("objective=dpo", "trainer.batching=packing"), "trainer.batching=packing"),
        (
            ("objective=dpo", "task=classification", "data=synthetic_classification"),
            "data=synthetic_classification",
        ),
        (("objective=dpo", "dpo.loss_type=[nope]"), "dpo.loss_type"),
        (("objective=dpo", "beta=0"), "beta=0"),
    ],
)
def test_what_dpo_cannot_do_fails_in_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(*overrides))
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_init_from_problems_are_named_before_anything_loads(tmp_path, sft_lora):
    def problem(*overrides):
        cfg = validate(compose_cfg(*QUICK, *PAIRS, *overrides))
        with pytest.raises(ConfigError) as e:
            init_from.check(cfg, specs.of(cfg))
        return str(e.value)

    assert "no such run folder" in problem(f"init_from={tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    assert "holds no result.json" in problem(f"init_from={tmp_path / 'empty'}")
    assert problem("method=lora", "rank=4", f"init_from={sft_lora}").startswith("rank=4: init_from=")
