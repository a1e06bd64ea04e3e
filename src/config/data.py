"""The data group's schema (conf/data/*.yaml): where a data set's records come from, their fields, how they
are cut, filtered and split, the templates, and the two generation settings a data set decides
(`max_new_tokens`, `stop`: conf/eval/default.yaml interpolates them into eval.generation)."""

import string
from typing import Any, Self

from pydantic import model_validator

from src.config.evaluation import metric_names
from src.config.values import (
    Flag,
    Name,
    OptName,
    OptTexts,
    Section,
    Text,
    Texts,
    choice,
    cross,
    custom,
    integer,
)

SPLITS = ("train", "validation", "test")
BAD_RECORDS = ("error", "skip")


def _path(value: Any, ctx: dict) -> str | None:
    ok = value is None or (isinstance(value, str) and value.strip())
    ok = ok or (isinstance(value, dict) and all(isinstance(v, str) for v in value.values()))
    return None if ok else "a file, {hub split: file}, or null"


def _stop(value: Any, ctx: dict) -> str | None:
    ok = value is None or (isinstance(value, list) and all(isinstance(v, str) and v for v in value))
    return None if ok else "a list of non-empty strings, or null"


class Derive(Section):
    field: Name
    at_last: Name
    head: Name
    tail: Name


class Normalize(Section):
    fields: OptTexts
    lowercase: Flag
    strip_punctuation: Flag


class PromptIfEmpty(Section):
    field: Name
    template: Text


class Splits(Section):
    train: integer(lo=0, optional=True, allowed="an integer ≥ 0, or null (all the rest)")
    validation: integer(lo=0, optional=True, allowed="an integer ≥ 0, or null (all the rest)")
    test: integer(lo=0, optional=True, allowed="an integer ≥ 0, or null (all the rest)")


class Truncate(Section):
    field: Name
    side: choice(("left", "right"))


def _on_bad(value: Any, ctx: dict) -> str | None:
    return (
        None if value is None or value in BAD_RECORDS else "error, skip, or null (data.on_bad_record decides)"
    )


class Pairs(Section):
    """Preference pairs (objective=dpo): the preferred answer is the record's SFT rendering; the rejected one
    renders the same record with `rejected`'s value in place of `chosen`'s, so both share the prompt."""

    chosen: Name
    rejected: Name
    # a bad pair (an empty answer, both answers the same): null follows data.on_bad_record; a data set known to
    # hold some (HH-RLHF has empty answers) says skip, so that its files train with the defaults
    on_bad: custom(_on_bad) = None


def _uses(template: str) -> set[str]:
    return {n.split(".")[0].split("[")[0] for _, n, _, _ in string.Formatter().parse(template) if n}


class DataSection(Section):
    """conf/data/<name>.yaml; src/config/schema.py's `Data` adds the generator's type (a `_target_` object)."""

    name: Name
    metrics: custom(metric_names) = None
    hub: OptName
    hub_config: OptName = None
    hub_split: Name = "train"
    hub_splits: dict[str, str] | None = None
    path: custom(_path) = None
    generator: Any = None  # records from a function: a Target, declared in src/config/schema.py
    fields: Texts
    on_bad_record: choice(BAD_RECORDS) = "error"  # a record missing a field: fail, or drop it (counted)
    label_field: OptName = None  # set: one class id per example (a labelled task)
    num_labels: integer(lo=2, optional=True) = None
    derive: Derive | None = None
    normalize: Normalize
    prompt: Text
    prompt_if_empty: PromptIfEmpty | None = None
    response: Text
    max_response_chars: integer(lo=1, optional=True) = None
    splits: Splits
    split_seed: integer(lo=0)
    group_by: OptName = None  # records sharing this field's value: one split, one test prompt
    max_seq_len: integer(
        lo=8,
        hi=lambda c: c["model"].context_length,
        note=lambda c: f"model={c['model'].name} has a context of {c['model'].context_length} tokens",
    )
    truncate: Truncate | None = None
    train_on_prompt: Flag
    max_train_samples: integer(lo=1, optional=True) = None
    max_eval_samples: integer(lo=1, optional=True) = None
    max_new_tokens: integer(lo=1) = 64  # generated tokens per test prompt (eval.generation.max_new_tokens)
    stop: custom(_stop) = None  # generation stops at these strings (eval.generation.stop_strings)
    pairs: Pairs | None = None  # {chosen, rejected}: preference pairs for objective=dpo (src/data/pairs.py)

    @model_validator(mode="after")
    def _hub_splits_known(self) -> Self:
        unknown = sorted(set(self.hub_splits or {}) - set(SPLITS))
        if unknown:
            raise cross(f"data.hub_splits.{unknown[0]}: not a split; the splits are {', '.join(SPLITS)}")
        return self

    @model_validator(mode="after")
    def _pairs_replace_the_answer(self) -> Self:
        """The rejected answer replaces the field the response is rendered from: any other field would leave
        the two answers equal (or the prompts different), and every pair would be bad."""
        if self.pairs is None:
            return self
        answer = _uses(self.response) | ({self.derive.field} if self.derive else set())
        if self.pairs.chosen == self.pairs.rejected:
            raise cross(f"data.pairs: chosen and rejected are the same field ({self.pairs.chosen})")
        if self.pairs.chosen not in answer:
            raise cross(
                f"data.pairs.chosen={self.pairs.chosen!r}: not a field the answer is rendered from "
                f"(data.response={self.response!r}"
                + (f", data.derive.field={self.derive.field!r}" if self.derive else "")
                + "); the rejected answer takes its place"
            )
        return self
