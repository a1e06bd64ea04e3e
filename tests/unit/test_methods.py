"""Unit tier for the methods, optimizers and schedules: exact trainable-parameter formulas, frozen
weights bit-identical after training, QLoRA really 4-bit, the optimizer and schedule the Trainer
used, early stopping, and the bad-input checks that run before training."""

from __future__ import annotations

import math

import pytest
import torch

from src import methods
from src.config import ConfigError, validate
from tests.helpers import apply_method, compose_cfg, load_base, train_inprocess


def base_model(*overrides: str):
    """The tiny model exactly as a run loads it, before any method is applied."""
    cfg = validate(compose_cfg(*overrides))
    return load_base(cfg), cfg


def lora_expected(cfg, model) -> int:
    """rank × (d_in + d_out) for every targeted matrix in every block that gets adapters."""
    targets = list(cfg.method.peft.target_modules)
    blocks = range(cfg.frozen_blocks, cfg.model.num_layers)
    total = 0
    for name, (d_in, d_out) in methods.linear_modules(model).items():
        in_block = any(f"{cfg.model.block_prefix}.{i}." in name for i in blocks)
        if in_block and methods._matches(name, targets):
            total += cfg.rank * (d_in + d_out)
    return total


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Train each method once (a dozen steps) and keep what the tests inspect."""
    runs = {}
    for key, overrides in {
        "full": (),
        "lora": ("method=lora",),
        "lora_frozen": ("method=lora", "frozen_blocks=2"),
        "full_frozen": ("frozen_blocks=2",),
        "head_only": ("method=head_only",),
        "prompt_tuning": ("method=prompt_tuning",),
        "qlora": ("method=qlora",),
    }.items():
        metrics, _, trainer = train_inprocess(tmp_path_factory.mktemp(key), *overrides)
        runs[key] = (metrics, trainer, overrides)
    return runs


# --------------------------------------------------------------------------- parameter formulas


@pytest.mark.parametrize("preset", ["attn", "attn_mlp", "all_linear"])
@pytest.mark.parametrize("rank", [1, 8])
def test_lora_trainable_params_follow_rank_formula(preset, rank):
    model, cfg = base_model("method=lora", f"rank={rank}", f"lora_targets={preset}")
    expected = lora_expected(cfg, model)
    peft_model = apply_method(model, cfg)
    assert methods.count_params(peft_model)["trainable_params"] == expected
    d, layers = cfg.model.hidden_size, cfg.model.num_layers
    per_block = {"attn": (d + 3 * d) + (d + d), "attn_mlp": (d + 3 * d) + (d + d) + (d + 4 * d) + (4 * d + d)}
    per_block["all_linear"] = per_block["attn_mlp"]  # GPT-2's head is tied, so no extra linear layer
    assert expected == rank * per_block[preset] * layers


def test_lora_on_unfrozen_blocks_only(trained):
    metrics, trainer, _ = trained["lora_frozen"]
    model, cfg = base_model("method=lora", "frozen_blocks=2")
    assert (
        metrics["trainable_params"] == lora_expected(cfg, model) == cfg.rank * 6 * cfg.model.hidden_size * 2
    )
    adapted = {n for n, _ in trainer.model.named_parameters() if "lora_A" in n}
    assert adapted and all(".h.2." in n or ".h.3." in n for n in adapted)


def test_full_and_frozen_blocks_counts(trained):
    model, cfg = base_model()
    total = sum(p.numel() for p in model.parameters())
    assert trained["full"][0]["trainable_params"] == total == trained["full"][0]["total_params"]
    frozen = sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.startswith(("transformer.wte", "transformer.wpe", "transformer.h.0.", "transformer.h.1."))
    )
    assert trained["full_frozen"][0]["trainable_params"] == total - frozen


def test_head_only_unties_and_counts_vocab_times_hidden(trained):
    metrics, trainer, _ = trained["head_only"]
    model, cfg = base_model()
    vocab, hidden = model.config.vocab_size, cfg.model.hidden_size
    assert metrics["trainable_params"] == vocab * hidden
    assert metrics["total_params"] == sum(p.numel() for p in model.parameters()) + vocab * hidden
    m = trainer.model
    assert m.lm_head.weight.data_ptr() != m.transformer.wte.weight.data_ptr()


def test_prompt_tuning_trains_tokens_times_hidden(trained):
    metrics, _, _ = trained["prompt_tuning"]
    cfg = compose_cfg("method=prompt_tuning")
    assert metrics["trainable_params"] == cfg.method.peft.num_virtual_tokens * cfg.model.hidden_size


# --------------------------------------------------------------------------- what trains, what does not


def _base_state():
    model, _ = base_model()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _bare(name: str) -> str:
    """PEFT parameter name -> the base model's name."""
    for prefix in ("base_model.model.", "base_model."):
        name = name.removeprefix(prefix)
    return name.replace(".base_layer", "")


@pytest.mark.parametrize("key", ["full", "lora", "lora_frozen", "full_frozen", "head_only", "prompt_tuning"])
def test_frozen_weights_bit_identical_trained_weights_changed(trained, key):
    _, trainer, _ = trained[key]
    before = _base_state()
    frozen_moved, trained_still = [], []
    for name, p in trainer.model.named_parameters():
        bare = _bare(name)
        if bare not in before:
            continue  # adapters, soft prompts, an untied head: not in the base model
        same = torch.equal(p.detach().cpu(), before[bare])
        if not p.requires_grad and not same:
            frozen_moved.append(bare)
        if p.requires_grad and same:
            trained_still.append(bare)
    assert not frozen_moved, f"frozen weights changed: {frozen_moved}"
    assert not trained_still, f"trainable weights did not change: {trained_still}"
    assert any(p.requires_grad for p in trainer.model.parameters())
    if key == "full_frozen":
        names = {_bare(n) for n, p in trainer.model.named_parameters() if p.requires_grad}
        assert any(n.startswith("transformer.h.3.") for n in names)
        assert not any(
            n.startswith(("transformer.h.0.", "transformer.h.1.", "transformer.wte")) for n in names
        )
    if key == "head_only":  # the untied head trained away from the embedding it was copied from
        assert not torch.equal(trainer.model.lm_head.weight.detach(), before["transformer.wte.weight"])


def test_peft_adapters_changed(trained):
    _, trainer, _ = trained["lora"]
    # lora_B starts at zero; after training it must not be.
    b = [p for n, p in trainer.model.named_parameters() if "lora_B" in n]
    assert b and any(p.abs().sum() > 0 for p in b)


@pytest.mark.parametrize("key", ["full", "lora", "head_only", "prompt_tuning", "qlora", "full_frozen"])
def test_loss_falls(trained, key):
    metrics, _, _ = trained[key]
    assert metrics["eval_loss"] < metrics["initial_eval_loss"]
    assert math.isclose(metrics["perplexity"], math.exp(metrics["eval_loss"]), rel_tol=1e-9)


def test_qlora_holds_base_in_4bit(trained):
    import bitsandbytes as bnb

    metrics, trainer, _ = trained["qlora"]
    four_bit = [n for n, m in trainer.model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and any("c_attn" in n for n in four_bit)
    w = next(m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)).weight
    assert w.quant_state.quant_type == "nf4" and w.dtype == torch.uint8
    model, cfg = base_model("method=qlora")
    assert metrics["trainable_params"] == lora_expected(cfg, model)


# --------------------------------------------------------------------------- optimizers and schedules


@pytest.mark.parametrize(
    "optim,cls,flags",
    [
        ("adamw", "AdamW", {}),
        ("adamw_fused", "AdamW", {"fused": True}),
        ("adam", "Adam", {}),
        ("sgd", "SGD", {"momentum": 0.0, "nesterov": False}),
        ("sgd_momentum", "SGD", {"momentum": 0.9, "nesterov": False}),
        ("sgd_nesterov", "SGD", {"momentum": 0.9, "nesterov": True}),
        ("adamw_8bit", "AdamW8bit", {}),
        ("paged_adamw_8bit", "PagedAdamW8bit", {}),
        ("adafactor", "Adafactor", {}),
    ],
)
def test_trainer_uses_configured_optimizer(tmp_path, optim, cls, flags):
    metrics, _, trainer = train_inprocess(
        tmp_path,
        f"optim={optim}",
        "trainer.max_steps=3",
        "trainer.eval_every=3",
        "eval.eval_before_training=false",
        "eval.test_split=false",
    )
    opt = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert type(opt).__name__ == cls
    cfg = validate(compose_cfg(f"optim={optim}"))
    for group in opt.param_groups:
        for k, v in flags.items():
            assert group[k] == v
    assert opt.defaults["lr"] == pytest.approx(cfg.lr)
    # The optimizer's YAML declares its state per parameter for the memory prediction: what the optimizer
    # holds after training is that, within an eighth of a byte per parameter (step counters, 8-bit
    # quantisation blocks, Adafactor's factored statistics).
    declared = float(cfg.optim.state_bytes_per_param) * metrics["trainable_params"]
    assert abs(metrics["optimizer_state_bytes"] - declared) <= metrics["trainable_params"] / 8


def _expected_lr(schedule: str, base: float, step: int, warmup: int, total: int) -> float:
    """Independent formulas for the schedules (transformers' definitions)."""
    if step < warmup:
        return base * step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return {
        "constant_with_warmup": base,
        "linear": base * max(0.0, 1 - progress),
        "cosine": base * max(0.0, 0.5 * (1 + math.cos(math.pi * progress))),
    }[schedule]


@pytest.mark.parametrize("schedule", ["linear", "cosine", "constant_with_warmup"])
def test_learning_rate_follows_schedule_and_warmup(tmp_path, schedule):
    total, ratio = 20, 0.2
    _, _, trainer = train_inprocess(
        tmp_path,
        f"lr_schedule={schedule}",
        f"lr_schedule.warmup_ratio={ratio}",
        f"trainer.max_steps={total}",
        "trainer.logging_steps=1",
        "trainer.eval_every=100",
        "lr=0.001",
        "eval.eval_before_training=false",
        "eval.test_split=false",
    )
    logged = {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}
    warmup = math.ceil(total * ratio)
    assert len(logged) >= total - 1
    for step in (1, 2, warmup, warmup + 1, warmup + 3, total):
        # the lr logged at global step s is the one optimizer step s used: the schedule's value at s - 1
        expected = _expected_lr(schedule, 0.001, step - 1, warmup, total)
        assert logged[step] == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_early_stopping_after_patience_evaluations(tmp_path):
    # An lr so small the weights cannot move: eval loss never improves after the first evaluation.
    metrics, _, trainer = train_inprocess(
        tmp_path,
        "optim=sgd",
        "lr=1e-30",
        "trainer.early_stopping_patience=2",
        "trainer.eval_every=2",
        "trainer.max_steps=50",
        "eval.eval_before_training=false",
        "eval.test_split=false",
    )
    evals = [h for h in trainer.state.log_history if "eval_loss" in h]
    # first eval sets the best, then `patience` evaluations without improvement stop training
    assert metrics["steps"] == 2 * (1 + 2)
    assert len(evals) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("method", ["full", "lora", "qlora", "prompt_tuning", "head_only"])
@pytest.mark.parametrize("optim", ["adamw", "sgd_momentum"])
def test_every_method_with_two_optimizers_runs(tmp_path, method, optim):
    metrics, _, _ = train_inprocess(
        tmp_path,
        f"method={method}",
        f"optim={optim}",
        "trainer.max_steps=4",
        "trainer.eval_every=4",
        "eval.test_split=false",
    )
    assert metrics["steps"] == 4 and math.isfinite(metrics["train_loss"])


def test_record_has_method_memory_split(trained):
    metrics, _, _ = trained["lora"]
    assert metrics["weights_bytes"] > 0
    assert metrics["gradients_bytes"] == 4 * metrics["trainable_params"]  # fp32 gradients of trainable params
    assert metrics["optimizer_state_bytes"] >= 2 * metrics["gradients_bytes"]  # AdamW: two moments (+ step)


# --------------------------------------------------------------------------- bad input, before training


@pytest.mark.parametrize(
    "overrides,fragment",
    [
        (("frozen_blocks=5",), "frozen_blocks=5"),
        (("method=lora", "rank=129"), "rank=129"),
        (("method=prompt_tuning", "data.max_seq_len=250"), "num_virtual_tokens=12"),
        (("optim=sgd_nesterov", "optim.optimizer.momentum=0"), "optim.optimizer.momentum=0"),
        (("lora_targets=nope",), "lora_targets='nope'"),
    ],
)
def test_bad_values_fail_validation_with_one_line(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*overrides))
    msg = str(err.value)
    assert fragment in msg and "\n" not in msg
    if overrides[0].startswith("frozen_blocks"):
        assert "4 blocks" in msg


def test_rank_above_smallest_targeted_dimension_fails_before_training():
    cfg = validate(compose_cfg("method=lora", "rank=100", "lora_targets=attn"))
    model = torch.nn.Module()
    model.proj = torch.nn.Linear(64, 300)  # a model whose only targeted matrix is 64 wide
    cfg.method.peft.target_modules = ["proj"]
    with pytest.raises(ConfigError, match=r"rank=100: must be ≤ 64"):
        methods.check_lora_targets(model, cfg.method.peft, 100)


def test_lora_targets_matching_nothing_lists_linear_modules():
    model, cfg = base_model("method=lora", "model.lora_targets.attn=[q_proj,v_proj]")
    with pytest.raises(ConfigError) as err:
        apply_method(model, cfg)
    assert "match no module" in str(err.value) and "attn.c_attn" in str(err.value)
