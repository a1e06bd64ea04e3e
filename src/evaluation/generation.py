"""Generation on test prompts: batched by length, left-padded, with the KV cache, greedy unless
eval.generation.do_sample, cut at the data set's stop strings; works for plain and PEFT models, prompt tuning
included. `write_samples` writes samples.jsonl beside the record and `samples_table` shapes the W&B table."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from src.atomic import write_lines
from src.config.evaluation import Generation
from src.errors import ConfigError
from src.evaluation.task_metrics import plain

SAMPLES = "samples.jsonl"


def settings(gen_cfg: Any = None) -> Generation:
    """eval.generation, with the schema's defaults for keys a caller leaves out (None included)."""
    given = {k: v for k, v in (plain(gen_cfg) or {}).items() if v is not None}
    return Generation.model_validate(given)


def model_device(model):
    dev = getattr(model, "device", None)
    return dev if dev is not None else next(model.parameters()).device


def context_length(model, tokenizer=None) -> int:
    """The model's number of positions (n_positions / max_position_embeddings), capped by the tokenizer's."""
    config = model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            break
    else:
        value = 2048
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        value = min(value, tok_max)
    return value


def _with_soft_prompt(model):
    """A generate function for a prompt-learning PEFT model that prepends the soft prompt as embeddings.

    PEFT's own generate path for prompt learning drops position_ids (wrong positions for left-padded
    batches) and, with transformers 5 (which passes the KV cache as `cache`), re-inserts the soft prompt at
    every decoding step. Generating from `inputs_embeds` on the base model avoids both: positions come
    from the attention mask and the cache works.
    """
    import torch

    base = model.get_base_model()

    def run(input_ids, attention_mask, kwargs):
        embeds = base.get_input_embeddings()(input_ids)
        prompt = model.get_prompt(batch_size=input_ids.shape[0]).to(embeds.dtype)
        ones = torch.ones(prompt.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        return base.generate(
            inputs_embeds=torch.cat([prompt, embeds], 1),
            attention_mask=torch.cat([ones, attention_mask], 1),
            **kwargs,
        )

    return run


def _left_padded(rows: list[list[int]], pad_id: int, device) -> dict[str, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = [[pad_id] * (width - len(r)) + r for r in rows]
    mask = [[0] * (width - len(r)) + [1] * len(r) for r in rows]
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long, device=device),
        "attention_mask": torch.tensor(mask, dtype=torch.long, device=device),
    }


def cut_at_stop(text: str, stops: Sequence[str]) -> str:
    """A generation cut at the first of the stop strings (eval.generation.stop_strings, from data.stop), stripped:
    generate() stops a row once its text ends in one, and the stop string itself is not part of the answer."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut].strip()


def generate(
    model, tokenizer, prompts: Sequence[str], gen_cfg: Any = None, virtual_tokens: int = 0
) -> list[str]:
    """Continuations of `prompts` (new text only), in batches of eval.generation.batch_size prompts of similar
    lengths, left-padded, with the KV cache; greedy results equal one prompt at a time. `virtual_tokens` > 0:
    the model is a prompt-learning PEFT model whose soft prompt takes that many positions (the method spec
    says so). Generation stops at EOS or at a stop string (transformers' stop_strings), cut there.

    Prompts longer than the model's positions minus max_new_tokens (and any soft prompt) lose their
    beginning, so the end of the prompt (e.g. "### Response:") is kept.
    """
    import torch

    gen = settings(gen_cfg)
    max_new = gen.max_new_tokens
    room = context_length(model, tokenizer) - virtual_tokens - max_new
    if room < 1:
        raise ConfigError(
            f"eval.generation.max_new_tokens={max_new}: leaves no room for the prompt in the model's "
            f"{context_length(model, tokenizer)} positions; lower it"
        )
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new,
        "do_sample": gen.do_sample,
        "num_beams": gen.num_beams,
        "repetition_penalty": float(gen.repetition_penalty),
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "use_cache": True,
    }
    if gen.do_sample:
        kwargs.update(temperature=float(gen.temperature), top_p=float(gen.top_p), top_k=gen.top_k)
        torch.manual_seed(gen.seed)
    stops = list(gen.stop_strings or [])
    if stops:
        kwargs.update(stop_strings=stops, tokenizer=tokenizer)

    device = model_device(model)
    soft = _with_soft_prompt(model) if virtual_tokens else None
    was_training = model.training
    sides = tokenizer.padding_side, tokenizer.truncation_side
    pad_missing = tokenizer.pad_token is None
    if pad_missing:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    out: list[str] = [""] * len(prompts)
    try:
        model.eval()
        ids_of = tokenizer(list(prompts), truncation=True, max_length=room, add_special_tokens=False)[
            "input_ids"
        ]
        # Batches of similar lengths (longest first, so that running out of memory happens at once): a batch
        # pads to its longest prompt, and a short prompt beside a long one would pay for the long one's padding.
        order = sorted(range(len(prompts)), key=lambda i: (-len(ids_of[i]), i))
        for b in range(0, len(order), gen.batch_size):
            members = order[b : b + gen.batch_size]
            enc = _left_padded([ids_of[i] for i in members], tokenizer.pad_token_id, device)
            with torch.inference_mode():
                if soft is None:
                    ids = model.generate(
                        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs
                    )
                    new = ids[:, enc["input_ids"].shape[1] :]
                else:
                    new = soft(enc["input_ids"], enc["attention_mask"], kwargs)
            for i, text in zip(members, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                out[i] = cut_at_stop(text, stops)
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
        if pad_missing:
            tokenizer.pad_token = None
        model.train(was_training)
    return out


def generate_samples(
    model,
    tokenizer,
    prompts: Sequence[str],
    references: Sequence[Any],
    gen_cfg: Any = None,
    virtual_tokens: int = 0,
) -> list[dict]:
    """One row per prompt: {"index", "prompt", "reference", "generation"} (reference: str or list of str)."""
    if len(prompts) != len(references):
        raise ValueError(f"generate_samples: {len(prompts)} prompts but {len(references)} references")
    gens = generate(model, tokenizer, prompts, gen_cfg, virtual_tokens)
    return [
        {"index": i, "prompt": p, "reference": plain(r), "generation": g}
        for i, (p, r, g) in enumerate(zip(prompts, references, gens, strict=True))
    ]


def write_samples(path: Path, rows: Iterable[dict]) -> Path:
    """samples.jsonl: one JSON object per generated sample (written atomically)."""
    return write_lines(Path(path), (json.dumps(row, ensure_ascii=False) for row in rows))


def samples_table(rows: Sequence[dict]) -> tuple[list[str], list[list[Any]]]:
    """(columns, data) for WandbLogger.log_table: prompt, reference, generation, and reward/judge when scored."""
    cols = ["index", "prompt", "reference", "generation"]
    cols += [c for c in ("reward", "judge") if any(c in r for r in rows)]

    def cell(row: dict, col: str) -> Any:
        v = row.get(col)
        return "\n---\n".join(v) if isinstance(v, list) else v

    return cols, [[cell(r, c) for c in cols] for r in rows]
