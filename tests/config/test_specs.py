"""Config tier for the specs and the schema: what each method and task can do is resolved once from its YAML
(src/specs.py), task and data are checked against each other, a knob a method ignores is an error, and the
schema (src/config/schema.py) knows every key: an unknown one is refused, values that used to get past
validation fail in one line naming the key. No model or data is loaded here."""

from __future__ import annotations

import re

import pytest
from omegaconf import OmegaConf

from src import specs
from src.config import CONF_DIR, ConfigError, validate
from tests.helpers import compose_cfg


def spec_of(*overrides: str) -> specs.Spec:
    return specs.of(validate(compose_cfg(*overrides)))


def fails(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(*overrides))
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# --------------------------------------------------------------------------- one spec per method and task


@pytest.mark.parametrize(
    ("method", "trains", "quantised", "prompt_learning", "packs"),
    [
        ("full", "all", False, False, True),
        ("lora", "adapters", False, False, True),
        ("qlora", "adapters", True, False, True),
        ("prompt_tuning", "soft_prompt", False, True, False),
        ("head_only", "listed", False, False, True),
    ],
)
def test_each_method_declares_what_it_trains(method, trains, quantised, prompt_learning, packs):
    spec = spec_of(f"method={method}")
    m = spec.method
    assert (m.name, m.trains, m.quantised, m.prompt_learning, m.packs) == (
        method,
        trains,
        quantised,
        prompt_learning,
        packs,
    )
    assert m.uses_peft == (trains in ("adapters", "soft_prompt"))
    raw = OmegaConf.load(CONF_DIR / "method" / "prompt_tuning.yaml")
    assert m.virtual_tokens == (raw.peft.num_virtual_tokens if prompt_learning else 0)
    assert spec.batching == ("packing" if packs else "dynamic")


def test_head_only_trains_the_task_head_it_lists():
    lm, cls = spec_of("method=head_only"), spec_of("method=head_only", "task=classification", "data=sst2")
    assert lm.method.trainable == ("lm_head",) and lm.method.untie_head
    assert cls.method.trainable == ("score",)


def test_tasks_say_what_they_generate_and_need():
    text = spec_of()
    assert (text.task.generates_text, text.task.labelled, text.num_labels) == (True, False, None)
    assert text.text_metrics == tuple(compose_cfg().data.metrics)
    labelled = spec_of("task=classification", "data=synthetic_classification")
    assert (labelled.task.generates_text, labelled.task.labelled, labelled.num_labels) == (False, True, 2)
    assert labelled.text_metrics == ()  # its accuracy comes from the logits, not generations
    assert labelled.output_size(vocab_size=50257) == 2 and text.output_size(vocab_size=50257) == 50257


def test_eval_metrics_override_the_data_sets():
    assert spec_of("eval.metrics=[bleu]").text_metrics == ("bleu",)
    assert spec_of("eval.metrics=[]").text_metrics == ()


# --------------------------------------------------------------------------- checks across groups


def test_classification_needs_labelled_data():
    msg = fails("task=classification", "data=alpaca")
    assert msg.startswith("data=alpaca: task=classification needs a labelled data set"), msg
    assert "data=sst2" in msg  # what to use instead


def test_text_task_refuses_labelled_data():
    msg = fails("data=sst2")
    assert msg.startswith("data=sst2: has one label per example (data.label_field=label)"), msg
    assert "task=classification" in msg


@pytest.mark.parametrize(
    ("method", "trains"), [("prompt_tuning", "its soft prompt"), ("head_only", "only lm_head")]
)
def test_frozen_blocks_with_a_method_that_trains_no_block_is_an_error(method, trains):
    msg = fails(f"method={method}", "frozen_blocks=2")
    assert msg == (
        f"frozen_blocks=2: method={method} trains {trains} and keeps every block frozen already, so "
        "frozen_blocks does not apply; leave it at 0"
    )


def test_frozen_blocks_applies_to_full_and_places_lora():
    assert validate(compose_cfg("frozen_blocks=2")).frozen_blocks == 2
    lora = validate(compose_cfg("method=lora", "frozen_blocks=2"))
    assert lora.method.peft.layers_to_transform == [2, 3]


def test_a_method_must_match_what_it_declares():
    msg = fails("method=lora", "method.trains=all")
    assert msg == "method.trains=all: method=lora needs no method.peft and no method.trainable"
    msg = fails("method=full", "method.trains=adapters")
    assert msg == "method.trains=adapters: method=full needs method.peft with target_modules"
    msg = fails(
        "method=full", "method.quantization={_target_:transformers.BitsAndBytesConfig,load_in_4bit:true}"
    )
    assert msg.startswith("method.quantization: method=full trains all, but a 4-bit base cannot train")


def test_prompt_init_from_text_needs_a_text():
    msg = fails("method=prompt_tuning", "method.peft.prompt_tuning_init=TEXT")
    assert msg == "method.peft.prompt_tuning_init_text=None: TEXT init needs a text"
    spec = spec_of(
        "method=prompt_tuning",
        "method.peft.prompt_tuning_init=TEXT",
        "method.peft.prompt_tuning_init_text=Answer:",
    )
    assert spec.method.init_from_text


# --------------------------------------------------------------------------- the schema knows every key


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("+rnak=8", "rnak: unknown key; did you mean rank?"),
        ("+trainer.batchsize=8", "trainer.batchsize: unknown key; did you mean trainer.batch_size?"),
        ("+debug.fail_at_stp=3", "debug.fail_at_stp: unknown key; did you mean debug.fail_at_step?"),
        (
            "+eval.generation.beams=2",
            "eval.generation.beams: unknown key; did you mean eval.generation.num_beams?",
        ),
    ],
)
def test_unknown_keys_are_refused_with_the_nearest_one(override, expected):
    assert fails(override) == expected


def test_an_unknown_key_without_a_near_one_lists_the_keys():
    msg = fails("+trainer.zzz=1")
    assert msg.startswith("trainer.zzz: unknown key; trainer takes batch_size, eval_batch_size, grad_accum")


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.gradient_checkpointing=maybe", "trainer.gradient_checkpointing"),
        ("trainer.num_workers=-1", "trainer.num_workers"),
        ("seed=4294967296", "seed"),
        ("logger.wandb.mode=bogus", "logger.wandb.mode"),
        ("optim.optimizer.eps=-1", "optim.optimizer.eps"),
        ("optim.optimizer.betas=[2,0.9]", "optim.optimizer.betas"),
        ("eval.generation.top_p=5", "eval.generation.top_p"),
        ("eval.generation.top_k=-3", "eval.generation.top_k"),
        ("eval.generation.repetition_penalty=0", "eval.generation.repetition_penalty"),
        ("eval.num_samples=-1", "eval.num_samples"),
        ("debug.fail_at_step=0", "debug.fail_at_step"),
        ("data.splits.train=-5", "data.splits.train"),
        ("data.truncate={field:article,side:middle}", "data.truncate.side"),
    ],
)
def test_values_no_rule_used_to_check_fail_in_one_line(override, key):
    msg = fails(override)
    assert re.match(rf"{re.escape(key)}=\S.*: must be \S", msg), msg


def test_an_interpolation_that_fails_names_the_key_the_user_set():
    assert fails("frozen_blocks=abc").startswith("frozen_blocks='abc': must be an integer ≥ 0 and ≤ 4")


def test_debug_is_a_declared_group_and_off_by_default():
    cfg = validate(compose_cfg())
    assert OmegaConf.to_container(cfg.debug) == OmegaConf.to_container(
        OmegaConf.load(CONF_DIR / "debug" / "default.yaml")
    )
    assert cfg.debug.fail_at_step is None and cfg.debug.nan_at_step is None and cfg.debug.oom_at_step is None
    assert validate(compose_cfg("debug.fail_at_step=3")).debug.fail_at_step == 3
