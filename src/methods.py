"""Turn a loaded model into the model a method trains, as its spec says (src/specs.py).

A method is data (conf/method/*.yaml): what it trains, an optional PEFT config, an optional list of
trainable parameter prefixes, whether to untie the head, an optional quantisation. This module applies
them in one fixed order, asking the method's spec; it never branches on the method's name.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from src import build
from src.errors import ConfigError
from src.specs import MethodSpec


def linear_modules(model) -> dict[str, tuple[int, int]]:
    """Every linear-like module (nn.Linear, GPT-2's Conv1D, bitsandbytes 4-bit) -> (d_in, d_out)."""
    out = {}
    for name, mod in model.named_modules():
        kind = type(mod).__name__
        if kind == "Conv1D":  # weight stored (in, out)
            out[name] = (mod.weight.shape[0], mod.weight.shape[1])
        elif isinstance(mod, torch.nn.Linear):  # includes bnb Linear4bit / Linear8bitLt
            out[name] = (mod.in_features, mod.out_features)
    return out


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def check_lora_targets(model, peft_cfg: DictConfig, rank: int) -> None:
    """Fail before training if the preset matches nothing or the rank exceeds a targeted matrix."""
    linears = linear_modules(model)
    targets = list(peft_cfg.target_modules)
    hit = {n: d for n, d in linears.items() if _matches(n, targets)}
    if not hit:
        names = sorted({".".join(n.split(".")[-2:]) for n in linears})
        raise ConfigError(
            f"lora_targets: {targets} match no module of this model; its linear modules are {', '.join(names)}"
        )
    smallest = min(min(d) for d in hit.values())
    if rank > smallest:
        raise ConfigError(
            f"rank={rank}: must be ≤ {smallest}, the smallest dimension of the targeted matrices"
        )


def untie_head(model) -> None:
    """Give the output head its own weight, initialised from the tied embedding."""
    head = model.get_output_embeddings()
    head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.config.tie_word_embeddings = False
    if hasattr(model, "_tied_weights_keys"):
        model._tied_weights_keys = None if isinstance(model._tied_weights_keys, list) else {}


def freeze_bottom(model, n: int, model_cfg: DictConfig) -> None:
    """Freeze the embeddings and blocks 0..n-1 (a tied head freezes with the embedding it shares)."""
    if n <= 0:
        return
    prefixes = list(model_cfg.embedding_prefixes) + [f"{model_cfg.block_prefix}.{i}." for i in range(n)]
    for name, p in model.named_parameters():
        bare = name.removeprefix("base_model.model.")
        if any(bare == pre or bare.startswith(pre if pre.endswith(".") else pre + ".") for pre in prefixes):
            p.requires_grad_(False)


def apply(
    model,
    method: MethodSpec,
    method_cfg: DictConfig,
    model_cfg: DictConfig,
    frozen_blocks: int = 0,
    gradient_checkpointing: bool = False,
    tokenizer_path: str | None = None,
    adapter_from=None,
):
    """Apply a method (its spec and its YAML node) and the top-level frozen_blocks to a loaded model; returns
    the model to train. With adapters, frozen_blocks already chose the blocks they go on (the PEFT config's
    layers_to_transform); for full fine-tuning it freezes the embeddings and the bottom blocks. `adapter_from`: an
    earlier run's adapter folder (src/init_from.py) that the method continues instead of a new adapter."""
    if method.untie_head:
        untie_head(model)
    if method.quantised:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    if method.uses_peft:
        from peft import get_peft_model

        extra: dict[str, Any] = {}
        if method.adapters:
            check_lora_targets(model, method_cfg.peft, int(method_cfg.peft.r))
        if method.init_from_text:
            extra["tokenizer_name_or_path"] = tokenizer_path
        if adapter_from is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_from), is_trainable=True)
        else:
            model = get_peft_model(model, build.peft_config(method_cfg.peft, **extra))
    elif method.trainable:
        for name, p in model.named_parameters():
            p.requires_grad_(any(name == pre or name.startswith(pre + ".") for pre in method.trainable))
    if method.freezes_blocks:
        freeze_bottom(model, frozen_blocks, model_cfg)
    return model


def count_params(model) -> dict[str, int]:
    """Trainable and total parameters, each shared tensor counted once; 4-bit weights counted as
    their logical (unpacked) element count so totals compare across methods."""
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = p.numel()
        if type(p).__name__ == "Params4bit":
            n = int(torch.Size(p.quant_state.shape).numel()) if getattr(p, "quant_state", None) else n * 2
        total += n
        if p.requires_grad:
            trainable += n
    return {"trainable_params": trainable, "total_params": total}


def memory_split(model, optimizer=None) -> dict[str, int]:
    """Bytes held by weights, gradients and optimizer state, from tensor sizes (device-independent)."""
    seen, weights, grads = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        weights += p.numel() * p.element_size()
        if p.requires_grad:
            grads += p.numel() * p.element_size()
    state = 0
    if optimizer is not None:
        for s in optimizer.state.values():
            for v in s.values():
                if torch.is_tensor(v):
                    state += v.numel() * v.element_size()
    return {"weights_bytes": weights, "gradients_bytes": grads, "optimizer_state_bytes": state}
