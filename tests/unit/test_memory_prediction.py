"""Unit tier: the memory prediction's activation term (src/costs.py, BLOCK_BYTES) against what autograd really
stores. Saved-tensor hooks (torch.autograd.graph.saved_tensors_hooks) count the bytes every GPT-2 block of
the framework's own model, with each method applied as a run applies it, keeps for the backward pass, in
fp32 and under bf16 autocast, at a batch shape other than the one the constants were measured at. Peak
memory on a GPU also holds the allocator's slack and kernels' workspaces, which only a GPU run shows
(benchmarks/sections/methods.py); this pins the part that can be measured exactly here."""

from __future__ import annotations

import pytest
import torch

from src import costs, specs
from src.config import validate
from tests.helpers import apply_method, compose_cfg, load_base

MB = 2**20
B, S = 6, 96  # the constants were measured at 16 x 64


def saved_in_blocks(model, block_prefix: str, bf16: bool) -> int:
    """Bytes autograd saves inside the transformer blocks during one training forward (parameters excluded;
    each storage counted once)."""
    blocks = [
        m for name, m in model.named_modules() if name == block_prefix or name.endswith("." + block_prefix)
    ]
    if not blocks:
        raise AssertionError(f"no module named {block_prefix}")
    inside = [0]
    params = {p.data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t):
        if inside[0] and t.data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    handles = []
    for block in blocks[0]:
        handles.append(block.register_forward_pre_hook(lambda *a: inside.__setitem__(0, inside[0] + 1)))
        handles.append(block.register_forward_hook(lambda *a: inside.__setitem__(0, inside[0] - 1)))
    ids = torch.randint(1, 400, (B, S), generator=torch.Generator().manual_seed(0))
    model.train()
    saving = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with saving, torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids)
    for h in handles:
        h.remove()
    return sum(seen.values())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(
    "method",
    ["full", "lora", "qlora", "prompt_tuning", "head_only", "full frozen_blocks=2", "lora attention=eager"],
)
def test_predicted_activations_match_what_autograd_saves(method, precision):
    name, *extra = method.split()
    extra = [e if "." in e or e.startswith("frozen") else f"trainer.{e}" for e in extra]
    cfg = validate(
        compose_cfg(
            f"method={name}",
            *extra,
            "trainer.batching=pad_to_max",  # every row max_seq_len long: the positions are B x S exactly
            f"trainer.batch_size={B}",
            f"data.max_seq_len={S}",
            f"trainer.precision={precision}",
        )
    )
    spec = specs.of(cfg)
    base = load_base(cfg, torch.bfloat16 if spec.method.quantised and precision == "bf16" else None)
    if cfg.trainer.attention == "eager":
        base.set_attn_implementation("eager")
    model = apply_method(base, cfg)
    predicted = costs.predict_memory_mb(model, cfg, spec, precision)["activations_mb"] * MB
    measured = saved_in_blocks(model, cfg.model.block_prefix, precision == "bf16")
    if spec.method.trains == "listed":  # head-only: nothing below the head needs a gradient
        assert predicted == 0 and measured == 0
        return
    assert 0.85 <= predicted / measured <= 1.15, (predicted / MB, measured / MB)
