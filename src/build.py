"""Objects described with `_target_` in the YAML, built in one place (Hydra's instantiate, a pure function of
a config node: no Hydra runtime involved): the optimizer, the PEFT config, the 4-bit quantisation config,
the tiny model's architecture, a data generator, the W&B logger, the task's model class."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from hydra.utils import get_class, get_object, instantiate
from omegaconf import OmegaConf

from src.errors import ConfigError


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


def check_arguments(cfg: Any) -> None:
    """Keys passed through to a library (`+optim.optimizer.foo=1`, a PEFT or scheduler argument) are checked
    against what the library's class or function accepts, before data or a model loads: a typo is one line
    naming the key, not a TypeError after the model loaded. Types and ranges stay the library's to check."""
    import transformers.optimization as schedules

    nodes = {"optim.optimizer": cfg.optim.optimizer, "method.peft": cfg.method.get("peft")}
    nodes["method.quantization"] = cfg.method.get("quantization")
    for key, node in nodes.items():
        if node is not None:
            kwargs = {k: v for k, v in OmegaConf.to_container(node).items() if not k.startswith("_")}
            _bind(
                key,
                get_object(node._target_),
                kwargs,
                node._target_,
                skip=1 if key == "optim.optimizer" else 0,
            )
    schedule = schedules.TYPE_TO_SCHEDULER_FUNCTION[schedules.SchedulerType(cfg.lr_schedule.name)]
    _bind("lr_schedule.kwargs", schedule, dict(cfg.lr_schedule.kwargs), cfg.lr_schedule.name, skip=3)


def _bind(key: str, target: Callable, kwargs: dict[str, Any], name: str, skip: int) -> None:
    """`skip`: leading parameters the caller fills (an optimizer's params; a schedule's optimizer and steps)."""
    params = list(inspect.signature(target).parameters.values())
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    accepted = [p.name for p in params[skip:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for arg, value in kwargs.items():
        if arg not in accepted:
            raise ConfigError(
                f"{key}.{arg}={value!r}: not an argument of {name}; it takes {', '.join(accepted)}"
            )
