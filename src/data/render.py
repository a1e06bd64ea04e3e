"""Records -> text: derived fields, normalisation, the prompt template (one choice), the one truncation rule,
and the test prompts that evaluation generates from (rendered here, once, from the same split).

Functions take the data config as a DictConfig or, in per-record loops, the same config as a plain dict.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

_PUNCT = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"[ \t]{2,}")
_LINE_END_SPACES = re.compile(r"[ \t]+$", re.MULTILINE)


def _text(value: Any) -> Any:
    """Missing values (None, a CSV's NaN) render as the empty string."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _normalise(text: str, lowercase: bool, strip_punctuation: bool) -> str:
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = _LINE_END_SPACES.sub("", _SPACES.sub(" ", _PUNCT.sub("", text)))
    return text


def prepare(data_cfg: Any, rec: dict[str, Any]) -> dict[str, Any] | None:
    """A raw record as the templates see it: derived fields added, normalisation applied.

    None when `derive` is configured and the record lacks its separator (such records are dropped).
    """
    out = {k: _text(v) for k, v in rec.items()}
    derive = data_cfg.get("derive")
    if derive:
        text = str(out.get(derive["field"], ""))
        i = text.rfind(derive["at_last"])
        if i < 0:
            return None
        cut = i + len(derive["at_last"])
        out[derive["head"]], out[derive["tail"]] = text[:cut], text[cut:]
    norm = data_cfg.get("normalize")
    if norm and (norm.get("lowercase") or norm.get("strip_punctuation")):
        for f in norm.get("fields") or list(out):
            if isinstance(out.get(f), str):
                out[f] = _normalise(out[f], bool(norm.get("lowercase")), bool(norm.get("strip_punctuation")))
    return out


def prompt_template(data_cfg: Any, rec: dict[str, Any]) -> str:
    """The template for a prepared record: `prompt_if_empty.template` when its field is empty, else `prompt`."""
    alt = data_cfg.get("prompt_if_empty")
    if alt is not None and not str(rec.get(alt["field"], "")).strip():
        return alt["template"]
    return data_cfg["prompt"]


def _prepared(data_cfg: Any, rec: dict[str, Any]) -> dict[str, Any]:
    p = prepare(data_cfg, rec)
    if p is None:
        raise ValueError(f"record has no {data_cfg.derive.at_last!r} in its {data_cfg.derive.field!r} field")
    return p


def render_prompt(data_cfg: Any, rec: dict[str, Any]) -> str:
    """The prompt for a raw record (derive and normalise are applied here)."""
    p = _prepared(data_cfg, rec)
    return prompt_template(data_cfg, p).format(**p)


def render_response(data_cfg: Any, rec: dict[str, Any]) -> str:
    """The response (the tokens the loss is on) for a raw record."""
    return data_cfg["response"].format(**_prepared(data_cfg, rec))


def template_fields(template: str) -> set[str]:
    """The {names} a str.format template uses."""
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


def token_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


def shortened_prompt(
    data_cfg: Any, rec: dict[str, Any], prompt_ids: list[int], reserve: int, tokenizer
) -> str | None:
    """The one truncation rule, for training examples and test prompts alike: when the prompt (`prompt_ids`)
    plus `reserve` tokens (the response in training, max_new_tokens in generation) exceed data.max_seq_len,
    the data set's `truncate` field is cut (in tokens, on its configured side) so that they fit, keeping at
    least half of the room the template leaves, so that a long answer cannot empty the field. Returns the
    shortened prompt, or None when the prompt stays as it is."""
    trunc = data_cfg.get("truncate")
    max_len = int(data_cfg["max_seq_len"])
    if not trunc or len(prompt_ids) + reserve <= max_len:
        return None
    field_name = trunc["field"]
    f_ids = token_ids(tokenizer, [str(rec.get(field_name, ""))])[0]
    overhead = max(len(prompt_ids) - len(f_ids), 0)
    keep = max(max_len - overhead - reserve, (max_len - overhead) // 2, 0)
    if keep >= len(f_ids):
        return None
    kept = f_ids[:keep] if trunc.get("side", "right") == "right" else f_ids[len(f_ids) - keep :]
    short = {**rec, field_name: tokenizer.decode(kept, clean_up_tokenization_spaces=False) if kept else ""}
    return prompt_template(data_cfg, short).format(**short)


@dataclass
class TestPrompts:
    """The first distinct prompts of the test split with their references: what evaluation generates from.

    Records that share a prompt, or with data.group_by the value of that field (E2E NLG: a meaning
    representation and its several references), are one prompt, generated once and scored against all their
    references: the reference is a string when there is one, a list of strings when there are several."""

    prompts: list[str] = field(default_factory=list)
    references: list[Any] = field(default_factory=list)


def test_prompts(
    data_cfg: Any, records: Iterable[dict[str, Any]], n: int, tokenizer, reserve: int
) -> TestPrompts:
    """The first `n` distinct prompts of `records` (distinct data.group_by values when it is set), each fitted
    to data.max_seq_len with `reserve` tokens left for the generation (shortened_prompt)."""
    if n <= 0:
        return TestPrompts()
    group_by = data_cfg.get("group_by")
    chosen: dict[Any, tuple[dict[str, Any], list[str]]] = {}
    for rec in records:
        p = prepare(data_cfg, rec)
        if p is None:
            continue
        key = str(rec.get(group_by)) if group_by else prompt_template(data_cfg, p).format(**p)
        if key not in chosen:
            if len(chosen) == n:
                continue  # only collect further references for prompts already taken
            chosen[key] = (p, [])
        chosen[key][1].append(data_cfg["response"].format(**p))
    prompts = []
    for p, _ in chosen.values():
        text = prompt_template(data_cfg, p).format(**p)
        short = shortened_prompt(data_cfg, p, token_ids(tokenizer, [text])[0], reserve, tokenizer)
        prompts.append(text if short is None else short)
    return TestPrompts(prompts, [r[0] if len(r) == 1 else r for _, r in chosen.values()])
