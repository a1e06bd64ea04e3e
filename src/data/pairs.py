"""Preference pairs for objective=dpo: each split's records as {prompt, chosen, rejected} text, the columns TRL's
DPOTrainer reads (it tokenises them itself and appends EOS).

A pair is the SFT rendering twice (data.pairs): the chosen answer is the record as SFT trains it (derive,
normalise, the templates); the rejected answer is the same record with data.pairs.rejected's value in place of
data.pairs.chosen's. The two prompts must be equal, so HH-RLHF's conversations split at their last assistant
turn and an Alpaca-format record keeps its instruction. Pairs that teach nothing or the wrong thing (the chosen
answer empty, both answers the same, the prompts different, derive's separator missing) follow
data.on_bad_record: an error naming the record, or dropped and counted.

Prompts are shortened here by the one truncation rule (render.shortened_prompt: the data set's `truncate`
field, keeping at least half the room) so that the longer answer and EOS fit data.max_seq_len; TRL 1.x cuts
whatever is still longer at DPOConfig.max_length, which the caller sets to data.max_seq_len."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from src.config.data import SPLITS
from src.data.checks import checked_fields
from src.data.render import prepare, prompt_template, shortened_prompt, test_prompts, token_ids
from src.data.splits import load_splits_info
from src.errors import ConfigError

if TYPE_CHECKING:
    from src.data import Prepared

COLUMNS = ("prompt", "chosen", "rejected")


def _skip_key(data_cfg: DictConfig) -> str:
    """The key that decides what a bad pair does: the data set's data.pairs.on_bad, else data.on_bad_record."""
    return "data.pairs.on_bad" if data_cfg.pairs.get("on_bad") else "data.on_bad_record"


def _first_difference(a: str, b: str) -> str:
    """Where two prompts part, in one line: the character and a few characters of each from there."""
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"from character {k}: {a[k : k + 30]!r} vs {b[k : k + 30]!r}"


def _pair(spec: dict[str, Any], rec: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, str, str]] | str:
    """(the prepared chosen record, (prompt, chosen, rejected)) for a raw record, or what makes it a bad pair."""
    chosen_f, rejected_f = spec["pairs"]["chosen"], spec["pairs"]["rejected"]
    derive = spec.get("derive") or {}
    p = prepare(spec, rec)
    if p is None:
        return f"{derive['field']} has no {derive['at_last']!r} (data.derive.at_last)"
    q = prepare(spec, {**rec, chosen_f: rec.get(rejected_f)})
    if q is None:
        return f"{rejected_f} has no {derive['at_last']!r} (data.derive.at_last)"
    prompt, prompt_r = prompt_template(spec, p).format(**p), prompt_template(spec, q).format(**q)
    if prompt != prompt_r:
        return f"chosen and rejected render different prompts ({_first_difference(prompt, prompt_r)})"
    chosen, rejected = spec["response"].format(**p), spec["response"].format(**q)
    if not chosen.strip():
        return "the chosen answer is empty"
    if chosen == rejected:
        return "chosen and rejected are the same answer"
    return p, (prompt, chosen, rejected)


def _where(data_cfg: DictConfig, ds, split: str, index: int, rec: dict[str, Any]) -> str:
    """The record in the words of its file (the line of a JSONL file, the index of a JSON list: the first one
    holding the record's checked fields), else its index in the split; prefixed with the source's name."""
    name = getattr(ds, "tg_name", f"data={data_cfg.name}")
    path = getattr(ds, "tg_file", None) if data_cfg.get("path") else None
    if path is not None and Path(path).suffix.lower() in (".json", ".jsonl"):
        keys = checked_fields(data_cfg, pairs=True)

        def same(other: Any) -> bool:
            return isinstance(other, dict) and all(other.get(k) == rec.get(k) for k in keys)

        with Path(path).open(encoding="utf-8", errors="replace") as f:
            if f.read(4096).lstrip()[:1] == "[":
                f.seek(0)
                i = next((i for i, r in enumerate(json.load(f)) if same(r)), None)
                if i is not None:
                    return f"{name}: the record at index {i} of the JSON list ({split} split)"
            else:
                f.seek(0)
                line = next((i for i, t in enumerate(f, 1) if t.strip() and same(json.loads(t))), None)
                if line is not None:
                    return f"{name}: line {line} ({split} split)"
    return f"data={data_cfg.name}: {name}: record {index} of the {split} split"


def _split_pairs(
    data_cfg: DictConfig, spec: dict[str, Any], ds, split: str, skip: bool
) -> tuple[list[tuple[dict, dict, tuple[str, str, str]]], int, str | None]:
    """The split's good pairs as (raw record, prepared record, texts), the number of bad ones and where and why
    the first is bad; with data.on_bad_record=error the first bad pair raises."""
    good, bad = [], []
    for i, rec in enumerate(ds.to_list()):
        got = _pair(spec, rec)
        if isinstance(got, str):
            if not skip:
                raise ConfigError(
                    f"{_where(data_cfg, ds, split, i, rec)}: {got} ({_skip_key(data_cfg)}=skip drops such pairs)"
                )
            bad.append((i, rec, got))
        else:
            good.append((rec, *got))
    if bad and not good:
        i, rec, why = bad[0]
        raise ConfigError(
            f"data={data_cfg.name}: every pair of the {split} split ({len(bad)}) is bad, e.g. "
            f"{_where(data_cfg, ds, split, i, rec)}: {why}; no pair is left"
        )
    return (
        good,
        len(bad),
        (f"{_where(data_cfg, ds, split, bad[0][0], bad[0][1])}: {bad[0][2]}" if bad else None),
    )


def _fitted(spec: dict[str, Any], pairs: list, tokenizer) -> tuple[dict[str, list[str]], int]:
    """The columns, each prompt shortened where it and the longer answer (+ EOS) exceed data.max_seq_len; and
    how many were. The tokenizer gives lengths only (three batched calls, then one per long prompt)."""
    prompts, chosen, rejected = ([t[k] for _, _, t in pairs] for k in range(3))
    p_ids, c_ids, r_ids = (token_ids(tokenizer, texts) for texts in (prompts, chosen, rejected))
    shortened = 0
    for j, (_, prep, _) in enumerate(pairs):
        reserve = max(len(c_ids[j]), len(r_ids[j])) + 1
        short = shortened_prompt(spec, prep, p_ids[j], reserve, tokenizer)
        if short is not None:
            prompts[j], shortened = short, shortened + 1
    return {"prompt": prompts, "chosen": chosen, "rejected": rejected}, shortened


def build_pairs(
    data_cfg: DictConfig, tokenizer, cache: Path, num_prompts: int = 0, reserve: int = 0
) -> Prepared:
    """The preference-pair data path: records -> the splits `build` carves (same sizes, seed, filters, checks,
    data.pairs' fields required too) -> {prompt, chosen, rejected} Datasets; the test prompts exactly as
    `build` renders them (references: the chosen answers) from the test split's good pairs; `info` as
    build's plus `pairs_skipped` and `pairs_prompts_shortened` per split."""
    import datasets

    from src.data import Prepared  # noqa: F811 - the class itself, at run time (src.data imports this module)

    if data_cfg.get("pairs") is None:
        raise ConfigError(
            f"data={data_cfg.name}: declares no preference pairs (data.pairs: {{chosen, rejected}}); use a data "
            "set that does, e.g. data=hh_rlhf, data=synthetic_pairs or data=preference data.path=/path/to/pairs.jsonl"
        )
    splits, info = load_splits_info(data_cfg, cache, pairs=True)
    spec = OmegaConf.to_container(data_cfg, resolve=True)  # plain dict: fast per-record access
    skip = (data_cfg.pairs.get("on_bad") or data_cfg.get("on_bad_record", "error")) == "skip"
    features = datasets.Features({c: datasets.Value("string") for c in COLUMNS})
    out, kept_test, skipped, shortened, first = {}, [], {}, {}, None
    for s in SPLITS:
        good, skipped[s], why = _split_pairs(data_cfg, spec, splits[s], s, skip)
        first = first or why
        columns, shortened[s] = _fitted(spec, good, tokenizer)
        out[s] = datasets.Dataset.from_dict(columns, features=features)
        if s == "test":
            kept_test = [rec for rec, _, _ in good]
    if first is not None:
        counts = ", ".join(f"{s} {n}" for s, n in skipped.items())
        print(
            f"tunegrid: data={data_cfg.name}: skipped {sum(skipped.values())} bad preference pairs ({counts}; "
            f"the first: {first}) ({_skip_key(data_cfg)}=skip)",
            file=sys.stderr,
        )
    prompts = test_prompts(data_cfg, kept_test, num_prompts, tokenizer, reserve)
    info = {**info, "pairs_skipped": skipped, "pairs_prompts_shortened": shortened}
    return Prepared(out, prompts, info)
