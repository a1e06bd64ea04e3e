"""Forgetting: a model's mean token loss on a fixed generic English text (not task data), measured on the
base model before training and on the fine-tuned model after; forgetting = after - before (positive: the
model got worse at generic text)."""

from __future__ import annotations

from pathlib import Path

from src.evaluation.generation import context_length, model_device
from src.evaluation.task_metrics import METRIC_DIR

GENERIC_TEXT = METRIC_DIR / "forgetting" / "generic_en.txt"


def generic_text(path: str | Path | None = None) -> str:
    """The fixed generic English sample forgetting is measured on (or a user file)."""
    return Path(path or GENERIC_TEXT).expanduser().read_text(encoding="utf-8")


def generic_loss(
    model,
    tokenizer,
    text: str | None = None,
    block_size: int = 128,
    batch_size: int = 8,
    virtual_tokens: int = 0,
) -> float:
    """Mean next-token loss (nats per token) of `model` on generic text, in non-overlapping windows.

    The text is cut into windows of `block_size` tokens (fewer if a soft prompt and the model's positions
    demand it: `virtual_tokens` of a prompt-learning model); every token after a window's first is predicted. Dropout is off; the model's training
    mode is restored. Call once on the base model before training and once after: forgetting =
    after - before.
    """
    import torch
    import torch.nn.functional as F

    ids = tokenizer(text if text is not None else generic_text(), add_special_tokens=False, verbose=False)[
        "input_ids"
    ]
    block = max(2, min(int(block_size), context_length(model, tokenizer) - virtual_tokens))
    windows = [ids[i : i + block] for i in range(0, len(ids), block)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise ValueError("generic_loss: the text is shorter than two tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = model_device(model)
    was_training = model.training
    total, count = 0.0, 0
    try:
        model.eval()
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            width = max(len(w) for w in chunk)
            input_ids = torch.tensor([w + [pad] * (width - len(w)) for w in chunk], device=device)
            mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in chunk], device=device)
            with torch.inference_mode():
                logits = model(input_ids=input_ids, attention_mask=mask).logits[:, -width:].float()
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
            )
            keep = mask[:, 1:].reshape(-1).bool()
            total += float(nll[keep].sum())
            count += int(keep.sum())
    finally:
        model.train(was_training)
    return total / count


def forgetting(loss_before: float, loss_after: float) -> float:
    """eval/forgetting: generic-text loss after fine-tuning minus before (positive = general ability lost)."""
    return float(loss_after) - float(loss_before)
