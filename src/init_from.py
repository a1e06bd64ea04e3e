"""`init_from=<run folder>`: start from an earlier run's trained weights, so that SFT then DPO is two commands.

What the earlier run saved in <run>/checkpoint (src/trainer.py save_weights) decides how:
- a LoRA adapter, and this run's method trains adapters (lora, qlora): the adapter continues; its weights
  are the starting point, and with objective=dpo TRL keeps a frozen copy of it as the reference;
- a LoRA adapter, and this method trains the weights (full, head_only, frozen blocks): the base with the
  adapter merged in is the model the method is applied to;
- full weights: they are the base the method is applied to (and, with DPO, the reference).
`check` runs before anything loads and names what does not fit in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from src import records
from src.errors import ConfigError
from src.specs import Spec

ADAPTER_CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Start:
    run_dir: Path
    checkpoint: Path
    adapter: bool  # the earlier run saved a LoRA adapter (else full weights)
    record: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        """What the record of the run that starts here says about its start: {"init_from": {...}}."""
        about = {
            "run_dir": str(self.run_dir),
            "config_hash": self.record.get("config_hash"),
            "method": self.record.get("method"),
            "objective": ((self.record.get("config") or {}).get("objective") or {}).get("name"),  # None: SFT
            "weights": "adapter" if self.adapter else "model",
        }
        return {"init_from": about}


def check(cfg, spec: Spec) -> Start | None:
    """The earlier run, checked against this config (ConfigError naming init_from), or None without one."""
    given = cfg.get("init_from")
    if not given:
        return None
    run_dir = Path(str(given)).expanduser()
    key = f"init_from={given}"
    if not run_dir.is_dir():
        raise ConfigError(f"{key}: no such run folder")
    record = records.read_record(run_dir)
    if record is None:
        raise ConfigError(f"{key}: holds no {records.RECORD}; give the folder of a finished run")
    if record.get("status") != "success":
        raise ConfigError(
            f"{key}: its run did not succeed (status {record.get('status')}); nothing to start from"
        )
    checkpoint = run_dir / "checkpoint"
    if not any(checkpoint.glob("*.safetensors")):
        raise ConfigError(f"{key}: {checkpoint} holds no weights")
    earlier_model = ((record.get("config") or {}).get("model") or {}).get("name")
    if earlier_model != cfg.model.name:
        raise ConfigError(
            f"{key}: trained model={earlier_model}, this run has model={cfg.model.name}; start from a run of the "
            "same model"
        )
    start = Start(run_dir, checkpoint, (checkpoint / ADAPTER_CONFIG).is_file(), record)
    if start.adapter:
        _check_adapter(key, json.loads((checkpoint / ADAPTER_CONFIG).read_text()), cfg, spec)
    return start


def _check_adapter(key: str, adapter: dict[str, Any], cfg, spec: Spec) -> None:
    """A continued adapter keeps its own shape: this run's LoRA settings must be the same."""
    if (
        adapter.get("r") is None
    ):  # a soft prompt: nothing to merge into the weights, nothing LoRA can continue
        raise ConfigError(
            f"{key}: holds a {adapter.get('peft_type')} adapter; only a LoRA adapter can be started from"
        )
    if not spec.method.adapters:
        return  # merged into the base
    peft = cfg.method.peft
    wanted = {
        "rank": (adapter.get("r"), int(peft.r)),
        "alpha": (adapter.get("lora_alpha"), float(peft.lora_alpha)),
    }
    wanted["lora_targets"] = (sorted(adapter.get("target_modules") or []), sorted(peft.target_modules))
    for name, (theirs, mine) in wanted.items():
        if theirs != mine and not (isinstance(mine, float) and theirs is not None and float(theirs) == mine):
            raise ConfigError(
                f"{name}={OmegaConf.select(cfg, name)}: {key} holds an adapter with {name} {theirs}, which this run "
                f"continues as it is; set {name} to match, or use method=full to train its merged weights"
            )


def load(cfg, spec: Spec, path: str, dtype, start: Start | None):
    """The model the method is applied to, and the adapter folder the method continues (None: a new one)."""
    from src import models, speed

    weights = str(start.checkpoint) if start is not None and not start.adapter else path
    model = models.load_model(
        weights,
        cfg.model,
        spec,
        cfg.method.quantization,
        dtype,
        attention=str(cfg.trainer.attention),
        weights=speed.weights_dtype(cfg),
    )
    if start is None or not start.adapter:
        return model, None
    if spec.method.adapters:
        return model, start.checkpoint
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(start.checkpoint)).merge_and_unload(), None
