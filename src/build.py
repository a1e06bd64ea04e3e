"""Objects described with `_target_` in the YAML, built in one place (Hydra's instantiate, a pure function of
a config node: no Hydra runtime involved): the optimizer, the PEFT config, the 4-bit quantisation config,
the tiny model's architecture, a data generator, the W&B logger, the task's model class."""

from __future__ import annotations

from typing import Any

from hydra.utils import get_class, instantiate


def optimizer(optimizer_cfg: Any) -> tuple[type, dict[str, Any]]:
    """optim.optimizer -> (optimizer class, its kwargs) for the Trainer's optimizer_cls_and_kwargs."""
    partial = instantiate(optimizer_cfg, _convert_="all")  # functools.partial(OptimizerClass, lr=..., ...)
    return partial.func, dict(partial.keywords)


def peft_config(peft_cfg: Any, **extra: Any):
    """method.peft -> a peft.LoraConfig / PromptTuningConfig …"""
    return instantiate(peft_cfg, _convert_="all", **extra)


def quantization_config(quant_cfg: Any, compute_dtype: Any):
    """method.quantization -> transformers.BitsAndBytesConfig; `auto` compute dtype: the run's precision."""
    given = quant_cfg.get("bnb_4bit_compute_dtype")
    compute = compute_dtype if given in (None, "auto") else given
    return instantiate(quant_cfg, _convert_="all", bnb_4bit_compute_dtype=compute)


def model_config(build_cfg: Any, **overrides: Any):
    """model.build -> a transformers config (the tiny model's architecture)."""
    return instantiate(build_cfg, **overrides)


def generated_records(generator_cfg: Any) -> list[dict[str, Any]]:
    """data.generator -> its records (the synthetic default)."""
    return instantiate(generator_cfg)


def wandb_logger(wandb_cfg: Any, **kwargs: Any):
    """logger.wandb -> src.loggers.WandbLogger; `config` is passed after instantiate, whose own arg it clashes with."""
    return instantiate(wandb_cfg, _partial_=True)(**kwargs)


def model_class(task: Any) -> type:
    """The task spec's transformers Auto class (AutoModelForCausalLM, AutoModelForSequenceClassification)."""
    return get_class(task.auto_model)
