"""Config resolvers and the validation step that runs before any model or data is loaded.

Hydra composes the YAML; this module checks the composed values against a small typed schema so
that a bad value fails in one line naming the key, the value and what is allowed, in milliseconds,
instead of minutes later inside PEFT or the Trainer. Nothing here imports torch.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BATCHINGS = ("auto", "packing", "dynamic", "group_by_length", "pad_to_max")


class ConfigError(ValueError):
    """A user-facing configuration error: its message is one line naming key, value and what is allowed."""


def _mul(*xs: Any) -> float:
    out = 1.0
    for x in xs:
        out *= float(x)
    return out


def _blocks_from(n: Any, total: Any) -> list[int] | None:
    """Block indices n..total-1 that adapters go on, or None (all blocks) when nothing is frozen."""
    n, total = int(n), int(total)
    return None if n <= 0 else list(range(n, total))


def register_resolvers() -> None:
    """Resolvers the YAML uses (`${tg.mul:...}` etc.); idempotent so tests can import freely."""
    resolvers: dict[str, Callable[..., Any]] = {
        "tg.mul": _mul,
        "tg.blocks_from": _blocks_from,
        "tg.if_set": lambda n, value: value if int(n) > 0 else None,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()


# --------------------------------------------------------------------------- typed schema


@dataclass(frozen=True)
class Rule:
    """One key's type and bounds; `check` returns the value converted or raises ConfigError."""

    key: str
    kind: type  # int, float or str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo is exclusive (e.g. lr > 0)
    hi_open: bool = False
    optional: bool = False  # None allowed
    choices: tuple[str, ...] | None = None
    note: str = ""  # why the bound is what it is, e.g. "the model has 4 blocks"

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(self.choices)
        name = {int: "an integer", float: "a number", str: "a string"}[self.kind]
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.lo_open else '≥'} {_fmt(self.lo)}")
        if self.hi is not None:
            parts.append(f"{'<' if self.hi_open else '≤'} {_fmt(self.hi)}")
        text = f"{name} {' and '.join(parts)}".strip() + (" or null" if self.optional else "")
        return f"{text} ({self.note})" if self.note else text

    def check(self, value: Any) -> Any:
        if value is None:
            if self.optional:
                return None
            raise self.error(value)
        if self.choices is not None:
            if str(value) not in self.choices:
                raise self.error(value)
            return str(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(value)
        if self.kind is int and (isinstance(value, float) and not value.is_integer()):
            raise self.error(value)
        if not math.isfinite(value):
            raise self.error(value)
        value = self.kind(value)
        if self.lo is not None and (value < self.lo or (self.lo_open and value == self.lo)):
            raise self.error(value)
        if self.hi is not None and (value > self.hi or (self.hi_open and value == self.hi)):
            raise self.error(value)
        return value

    def error(self, value: Any) -> ConfigError:
        return ConfigError(f"{self.key}={value!r}: must be {self.allowed()}")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _get(cfg: DictConfig, key: str) -> Any:
    """Read one key, turning interpolation failures into a one-line ConfigError."""
    try:
        return OmegaConf.select(cfg, key, throw_on_missing=True)
    except Exception as e:  # omegaconf raises several types; all mean the same to the user
        raise ConfigError(
            f"{key}: cannot be resolved ({type(e).__name__}: {str(e).splitlines()[0]})"
        ) from None


def rules_for(cfg: DictConfig) -> list[Rule]:
    """The schema. Bounds that depend on the chosen model come from the model's YAML."""
    model = cfg.model
    targets = tuple(model.lora_targets.keys()) if model.get("lora_targets") else ()
    return [
        Rule("rank", int, lo=1, hi=model.hidden_size, note=f"the model's hidden size is {model.hidden_size}"),
        Rule("alpha", float, lo=0, lo_open=True),
        Rule("lora_dropout", float, lo=0, hi=1, hi_open=True),
        Rule("lora_targets", str, choices=targets),
        Rule(
            "frozen_blocks",
            int,
            lo=0,
            hi=model.num_layers,
            note=f"model={model.name} has {model.num_layers} blocks",
        ),
        Rule("seed", int, lo=0),
        Rule("lr", float, lo=0, lo_open=True),
        Rule("weight_decay", float, lo=0),
        Rule("trainer.batch_size", int, lo=1),
        Rule("trainer.eval_batch_size", int, lo=1),
        Rule("trainer.grad_accum", int, lo=1),
        Rule("trainer.epochs", float, lo=0, lo_open=True),
        Rule("trainer.max_steps", int, lo=-1),
        Rule("trainer.max_grad_norm", float, lo=0),
        Rule("trainer.precision", str, choices=PRECISIONS),
        Rule("trainer.batching", str, choices=BATCHINGS),
        Rule("trainer.eval_every", int, lo=1),
        Rule("trainer.logging_steps", int, lo=1),
        Rule("trainer.early_stopping_patience", int, lo=1, optional=True),
        Rule("trainer.token_budget", int, lo=1, optional=True),
        Rule("trainer.save_every", int, lo=1, optional=True),
        Rule("trainer.keep_checkpoints", int, lo=1),
        Rule("resume", str, choices=("auto", "never")),
        Rule("lr_schedule.warmup_ratio", float, lo=0, hi=1, hi_open=True),
        Rule("lr_schedule.warmup_steps", int, lo=0),
        Rule(
            "data.max_seq_len",
            int,
            lo=8,
            hi=model.context_length,
            note=f"model={model.name} has a context of {model.context_length} tokens",
        ),
        Rule("data.max_train_samples", int, lo=1, optional=True),
        Rule("data.splits.train", int, lo=0, optional=True),
        Rule("data.splits.validation", int, lo=0, optional=True),
        Rule("data.splits.test", int, lo=0, optional=True),
        Rule("data.max_eval_samples", int, lo=1, optional=True),
    ]


def validate(cfg: DictConfig) -> DictConfig:
    """Check every user-facing value, then resolve the whole config; raise ConfigError on the first problem.

    Returns the resolved config (a fresh DictConfig with no interpolations left).
    """
    for rule in rules_for(cfg):
        rule.check(_get(cfg, rule.key))
    if _get(cfg, "trainer.oom_retry") not in ("auto", True, False):
        raise ConfigError(f"trainer.oom_retry={cfg.trainer.oom_retry!r}: must be one of auto, true, false")
    if int(_get(cfg, "trainer.max_steps")) == 0:
        raise ConfigError("trainer.max_steps=0: must be -1 (use trainer.epochs) or an integer ≥ 1")

    # Cross-key constraints, each named after the key the user would change.
    method = cfg.method
    peft_cfg = method.get("peft") or {}
    virtual = peft_cfg.get("num_virtual_tokens")
    if virtual is not None:
        Rule("method.peft.num_virtual_tokens", int, lo=1).check(virtual)
        if int(cfg.data.max_seq_len) + int(virtual) > int(cfg.model.context_length):
            raise ConfigError(
                f"method.peft.num_virtual_tokens={virtual}: data.max_seq_len ({cfg.data.max_seq_len}) + virtual "
                f"tokens must fit the model's {cfg.model.context_length} positions; lower one of them"
            )
    if "target_modules" in peft_cfg and int(cfg.frozen_blocks) >= int(cfg.model.num_layers):
        # PEFT reads an empty layers_to_transform as "all layers"
        raise ConfigError(
            f"frozen_blocks={cfg.frozen_blocks}: with method={method.name} at least one of the "
            f"{cfg.model.num_layers} blocks must stay unfrozen to carry adapters"
        )
    batching_mode(cfg)
    opt = cfg.optim.optimizer
    if opt.get("nesterov") and not float(opt.get("momentum") or 0) > 0:
        raise ConfigError(f"optim.optimizer.momentum={opt.get('momentum')}: Nesterov SGD needs momentum > 0")
    needs_bnb = method.get("quantization") is not None or str(opt.get("_target_", "")).startswith(
        "bitsandbytes"
    )
    if needs_bnb and not _importable("bitsandbytes"):
        what = (
            f"method={method.name}" if method.get("quantization") is not None else f"optim={cfg.optim.name}"
        )
        raise ConfigError(
            f"{what}: needs bitsandbytes, which is not installed (pip install 'bitsandbytes>=0.45')"
        )

    from src.evaluation import validate_eval  # here: src.evaluation imports this module

    validate_eval(cfg)
    try:
        resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    except Exception as e:
        raise ConfigError(f"config cannot be resolved: {str(e).splitlines()[0]}") from None
    return resolved


def batching_mode(cfg: DictConfig) -> str:
    """trainer.batching for this run. auto: packing, or dynamic where packing cannot apply: classification
    (one label per example) and prompt learning (PEFT prepends its virtual tokens to every row and drops
    position ids, so packed examples would see each other)."""
    mode = str(cfg.trainer.batching)
    prompt_learning = (cfg.method.get("peft") or {}).get("num_virtual_tokens") is not None
    classification = bool(cfg.data.get("label_field"))
    if mode == "auto":
        return "dynamic" if prompt_learning or classification else "packing"
    if mode == "packing" and (prompt_learning or classification):
        why = (
            f"method={cfg.method.name} prepends virtual tokens to every row and ignores position ids"
            if prompt_learning
            else f"data={cfg.data.name} has one label per example"
        )
        raise ConfigError(f"trainer.batching=packing: {why}; use trainer.batching=dynamic (or auto)")
    return mode


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": value}, for W&B run config and CSV columns."""
    out: dict[str, Any] = {}
    if isinstance(d, DictConfig):
        d = OmegaConf.to_container(d, resolve=True)
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    out[prefix[:-1]] = d
    return out


def cache_dir(cfg: DictConfig) -> Path:
    """Where the tiny model, its tokenizer and tokenised data live: cfg.cache_dir, $TUNEGRID_CACHE or <repo>/.cache."""
    import os

    path = cfg.get("cache_dir") or os.environ.get("TUNEGRID_CACHE") or REPO_ROOT / ".cache"
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path
