"""Reward-model scores of generations: any sequence-classification model (a local folder or hub id), one
score per (prompt, response). Also the loading helpers the local LLM judge shares."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from src.errors import ConfigError


def load_error(key: str, ident: str, e: Exception) -> ConfigError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return ConfigError(
        f"{key}={ident!r}: cannot be loaded ({type(e).__name__}: {first[:200]}); offline? download it "
        f"elsewhere and pass the local folder"
    )


def load_dtype():
    """Scorer weights: the checkpoint's own dtype on a GPU (a 7B reward model in fp32 would not fit), fp32 on CPU."""
    import torch

    return "auto" if torch.cuda.is_available() else torch.float32


def reward_scores(
    prompts: Sequence[str],
    responses: Sequence[str],
    model_id: str,
    batch_size: int = 8,
    max_length: int = 512,
    label: int = -1,
    device: Any = None,
) -> list[float]:
    """Score (prompt, response) pairs with a sequence-classification reward model.

    One output label: the raw logit. Several: the softmax probability of `label` (default the last).
    Tokenizers with a chat template get [user: prompt, assistant: response]; others the text pair.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForSequenceClassification.from_pretrained(model_id, dtype=load_dtype())
    except Exception as e:
        raise load_error("eval.reward_model", model_id, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model.config.pad_token_id = tok.pad_token_id
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    scores: list[float] = []
    try:
        for i in range(0, len(prompts), batch_size):
            ps, rs = list(prompts[i : i + batch_size]), list(responses[i : i + batch_size])
            if getattr(tok, "chat_template", None):
                texts = [
                    tok.apply_chat_template(
                        [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
                    )
                    for p, r in zip(ps, rs, strict=True)
                ]
                enc = tok(
                    texts,
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                    add_special_tokens=False,
                )
            else:
                enc = tok(
                    ps,
                    rs,
                    padding=True,
                    truncation="longest_first",
                    max_length=max_length,
                    return_tensors="pt",
                )
            with torch.inference_mode():
                logits = model(**enc.to(device)).logits.float()
            vals = logits[:, 0] if logits.shape[-1] == 1 else logits.softmax(-1)[:, label]
            scores += [float(v) for v in vals.cpu()]
    finally:
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return scores


def check_reachable(model_id: str) -> None:
    """Before training: the reward model's config loads (ConfigError if not: offline, or a typo)."""
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(model_id)
    except Exception as e:
        raise load_error("eval.reward_model", model_id, e) from None
