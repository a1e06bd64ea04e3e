"""The embedded default's data: deterministic instruction records in Alpaca's format (reverse or sort digits,
add two numbers, change a word's case), the same with a wrong answer for objective=dpo, labelled "reviews" for
task=classification, the tasks the tiny model is pretrained on (other tasks on the same digits and words, so
that every study fine-tunes on tasks it has not seen), and the text the tiny model's tokenizer is trained on.
The YAMLs name these generators by `_target_`."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

from omegaconf import OmegaConf

from src.config import CONF_DIR
from src.data.render import render_prompt, render_response

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "piano",
    "garden",
    "silver",
    "window",
    "rocket",
    "forest",
    "candle",
    "ocean",
    "pepper",
    "marble",
    "violet",
    "castle",
    "dragon",
    "summer",
    "winter",
    "basket",
    "orange",
    "planet",
]


# --------------------------------------------------------------------------- the synthetic task


def digits_record(xs: list[str], reverse: bool) -> dict[str, str]:
    """One synthetic task: reverse, or sort, a list of digits (also benchmarks/alpaca_like.py's)."""
    if reverse:
        return {"instruction": "Reverse the list.", "input": " ".join(xs), "output": " ".join(xs[::-1])}
    return {
        "instruction": "Sort the numbers in ascending order.",
        "input": " ".join(xs),
        "output": " ".join(sorted(xs)),
    }


def case_record(words: list[str], upper: bool) -> dict[str, str]:
    """One synthetic task: words in the other case, to be converted to upper (or lower) case."""
    text = " ".join(w.lower() if upper else w.upper() for w in words)
    return {
        "instruction": f"Convert the text to {'upper' if upper else 'lower'} case.",
        "input": text,
        "output": text.upper() if upper else text.lower(),
    }


def synthetic_records(n: int, seed: int) -> list[dict[str, str]]:
    """Deterministic Alpaca-format records: reverse/sort digits, add numbers, change a word's case."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.randrange(5)
        if kind < 2:
            out.append(digits_record([str(rng.randrange(10)) for _ in range(rng.randint(3, 7))], kind == 0))
        elif kind == 2:
            a, b = rng.randrange(50), rng.randrange(50)
            out.append({"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)})
        else:
            out.append(case_record(rng.sample(WORDS, rng.randint(1, 3)), kind == 3))
    return out


def _swapped(xs: list[str], rng: random.Random) -> str | None:
    """The list with one adjacent pair of different digits swapped (None when every digit is the same)."""
    at = [i for i in range(len(xs) - 1) if xs[i] != xs[i + 1]]
    if not at:
        return None
    i = rng.choice(at)
    return " ".join([*xs[:i], xs[i + 1], xs[i], *xs[i + 2 :]])


def _wrong_answers(rec: dict[str, str], rng: random.Random) -> list[str | None]:
    """Plausible mistakes for one synthetic record, by its instruction (those of synthetic_records)."""
    instruction, out = rec["instruction"], rec["output"]
    if instruction.startswith("Reverse"):
        xs = rec["input"].split()
        return [" ".join(xs), " ".join(sorted(xs))]  # not reversed at all, or sorted instead
    if instruction.startswith("Sort"):
        xs = out.split()
        return [" ".join(xs[::-1]), _swapped(xs, rng)]  # descending, or one pair out of order
    if instruction.startswith("Add"):
        return [str(int(out) + d) for d in (-3, -2, -1, 1, 2, 3) if int(out) + d >= 0]  # off by a little
    return [out.swapcase(), out.title()]  # the other case, or only the first letters changed


def synthetic_pairs(n: int, seed: int) -> list[dict[str, str]]:
    """synthetic_records with a plausible wrong answer in `rejected` (never the output), for objective=dpo;
    deterministic in `seed` (the records are synthetic_records(n, seed)'s, the mistakes drawn apart)."""
    rng = random.Random(f"rejected:{seed}")
    out = []
    for rec in synthetic_records(n, seed):
        wrong = [w for w in _wrong_answers(rec, rng) if w is not None and w != rec["output"]]
        if not wrong:  # a list of one repeated digit: every order is right; change a digit instead
            xs = rec["output"].split()
            wrong = [" ".join([*xs[:-1], str((int(xs[-1]) + 1) % 10)])]
        out.append({**rec, "rejected": rng.choice(wrong)})
    return out


_POSITIVE = ["great", "lovely", "superb", "moving", "brilliant", "charming", "delightful", "fresh"]
_NEGATIVE = ["dull", "awful", "clumsy", "boring", "tedious", "bland", "messy", "weak"]


def synthetic_labelled(n: int, seed: int) -> list[dict[str, Any]]:
    """Deterministic labelled "reviews" for task=classification: label 1 when positive words win."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice((3, 5))
        pos = rng.randint(0, k)
        words = rng.sample(_POSITIVE, pos) + rng.sample(_NEGATIVE, k - pos)
        rng.shuffle(words)
        out.append({"sentence": "the film was " + " ".join(words), "label": int(pos * 2 > k)})
    return out


def pretraining_records(n: int, seed: int) -> list[dict[str, str]]:
    """The tiny model's pretraining tasks: copy a list or words (in either case), pick the first or last
    number, count, give the next or the larger number. They teach the template, the digits, the words in both
    cases and copying, but none of the fine-tuning tasks (reverse, sort, add, change case)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.randrange(6)
        xs = [str(rng.randrange(10)) for _ in range(rng.randint(3, 7))]
        if kind == 0:
            out.append({"instruction": "Repeat the list.", "input": " ".join(xs), "output": " ".join(xs)})
        elif kind == 1:
            first = rng.random() < 0.5
            which = "first" if first else "last"
            out.append(
                {
                    "instruction": f"Give the {which} number.",
                    "input": " ".join(xs),
                    "output": xs[0 if first else -1],
                }
            )
        elif kind == 2:
            out.append({"instruction": "Count the numbers.", "input": " ".join(xs), "output": str(len(xs))})
        elif kind == 3:
            words = [w.upper() if rng.random() < 0.5 else w for w in rng.sample(WORDS, rng.randint(1, 4))]
            out.append(
                {"instruction": "Repeat the words.", "input": " ".join(words), "output": " ".join(words)}
            )
        elif kind == 4:
            a = rng.randrange(99)
            out.append({"instruction": "Give the next number.", "input": str(a), "output": str(a + 1)})
        else:
            a, b = rng.randrange(50), rng.randrange(50)
            out.append(
                {"instruction": "Give the larger number.", "input": f"{a} {b}", "output": str(max(a, b))}
            )
    return out


def alpaca_texts(records: list[dict[str, str]]) -> Iterator[str]:
    """Records as the Alpaca templates render them (prompt + response; no end-of-text token)."""
    conf = OmegaConf.load(CONF_DIR / "data" / "alpaca.yaml")
    for rec in records:
        yield render_prompt(conf, rec) + render_response(conf, rec)


def tokenizer_corpus() -> Iterator[str]:
    """Text the tiny model's BPE is trained on: the fine-tuning and the pretraining tasks, rendered."""
    yield from alpaca_texts(synthetic_records(3000, seed=1234))
    yield from alpaca_texts(pretraining_records(3000, seed=7))
