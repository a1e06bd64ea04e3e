"""Unit tier for the preference-pair data path (objective=dpo): HH-RLHF conversations split at their last
assistant turn, Alpaca-format and prompt/chosen/rejected records, the generated synthetic pairs, bad pairs and
missing fields named by their file line, the prompt shortened so the answers fit, and the test prompts equal to
`build`'s. Every file is written here in the hub's format; nothing from ../shared."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import pytest

from src import data, models
from src.config import ConfigError, validate
from src.config.data import SPLITS
from src.data.render import prepare, render_prompt, render_response, shortened_prompt, token_ids
from src.data.splits import load_splits, load_splits_info
from src.data.synthetic import synthetic_pairs, synthetic_records
from tests.helpers import SESSION_CACHE, compose_cfg

pytestmark = pytest.mark.unit

ALPACA_HEAD = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)
ALPACA_HEAD_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
HINT = "(data.on_bad_record=skip drops such pairs)"
SIZES = "data.splits={train:null,validation:4,test:4}"


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def data_cfg(name: str, *overrides: str):
    return validate(compose_cfg(f"data={name}", *overrides)).data


def hh(n: int) -> list[dict]:
    """HH-RLHF records: one or two turns, the answers differing in the last assistant turn only."""
    out = []
    for i in range(n):
        head = f"\n\nHuman: hi {i}" + ("\n\nAssistant: yes?\n\nHuman: more" if i % 2 else "")
        out.append(
            {"chosen": f"{head}\n\nAssistant: hello {i}", "rejected": f"{head}\n\nAssistant: go away {i}"}
        )
    return out


def triples(n: int) -> list[dict]:
    return [
        {"prompt": f"Question {i}?\n", "chosen": f"right {i}", "rejected": f"wrong {i}"} for i in range(n)
    ]


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def split_of(cfg, cache: Path, rec: dict) -> str:
    """The split a record lands in (build_pairs carves as load_splits_info(pairs=True) does)."""
    splits, _ = load_splits_info(cfg, cache, pairs=True)
    key = cfg.pairs.chosen
    return next(s for s in SPLITS if any(r[key] == rec[key] for r in splits[s]))


@pytest.fixture(scope="module")
def tok():
    cfg = validate(compose_cfg())
    return models.load_tokenizer(str(models.materialise_tiny(cfg.model, SESSION_CACHE)))


# --------------------------------------------------------------------------- rendering


def test_hh_pairs_split_both_conversations_at_the_last_assistant_turn(tmp_path, tok):
    recs = hh(30)
    path = write_jsonl(tmp_path / "hh.jsonl", recs)
    cfg = data_cfg("hh_rlhf", f"data.path={path}", SIZES)
    out = data.build_pairs(cfg, tok, tmp_path / "cache")

    assert {s: len(out.splits[s]) for s in SPLITS} == {"train": 22, "validation": 4, "test": 4}
    assert out.info["pairs_skipped"] == {"train": 0, "validation": 0, "test": 0}
    assert out.info["pairs_prompts_shortened"] == {"train": 0, "validation": 0, "test": 0}
    assert out.info["split_records"] == {"train": 22, "validation": 4, "test": 4}
    rejected_of = {r["chosen"]: r["rejected"] for r in recs}
    sft = load_splits(cfg, tmp_path / "cache")
    for s in SPLITS:
        rows = out.splits[s].to_list()
        assert out.splits[s].column_names == ["prompt", "chosen", "rejected"]
        for row in rows:
            assert row["prompt"].endswith("\n\nAssistant:")
            conversation = row["prompt"] + row["chosen"]
            assert row["prompt"] + row["rejected"] == rejected_of[conversation]
            assert row["chosen"] == " hello " + row["chosen"].split()[-1]
        # The same records in the same splits as SFT carves them, rendered as SFT renders them.
        assert [r["prompt"] + r["chosen"] for r in rows] == [r["chosen"] for r in sft[s]]
    two_turns = next(r for r in out.splits["train"].to_list() if "more" in r["prompt"])
    n = two_turns["chosen"].split()[-1]
    assert two_turns == {
        "prompt": f"\n\nHuman: hi {n}\n\nAssistant: yes?\n\nHuman: more\n\nAssistant:",
        "chosen": f" hello {n}",
        "rejected": f" go away {n}",
    }


def test_alpaca_format_pairs_render_the_record_with_rejected_as_its_output(tmp_path, tok):
    recs = [
        {
            "instruction": f"Task {i}.",
            "input": "" if i % 2 else f"in {i}",
            "output": f"out {i}",
            "rejected": f"no {i}",
        }
        for i in range(20)
    ]
    path = write_jsonl(tmp_path / "a.jsonl", recs)
    cfg = data_cfg("alpaca", f"data.path={path}", "data.pairs={chosen:output,rejected:rejected}", SIZES)
    out = data.build_pairs(cfg, tok, tmp_path / "cache")
    rows = {r["chosen"]: r for s in SPLITS for r in out.splits[s].to_list()}
    assert len(rows) == 20
    assert rows["out 0"] == {
        "prompt": ALPACA_HEAD + "### Instruction:\nTask 0.\n\n### Input:\nin 0\n\n### Response:\n",
        "chosen": "out 0",
        "rejected": "no 0",
    }
    assert rows["out 1"] == {
        "prompt": ALPACA_HEAD_NO_INPUT + "### Instruction:\nTask 1.\n\n### Response:\n",
        "chosen": "out 1",
        "rejected": "no 1",
    }
    for rec in recs:
        assert rows[rec["output"]]["prompt"] == render_prompt(cfg, rec)
        assert rows[rec["output"]]["rejected"] == render_response(cfg, {**rec, "output": rec["rejected"]})


def test_a_prompt_chosen_rejected_file_with_the_default_sizes(tmp_path, tok, capfd):
    path = write_jsonl(tmp_path / "pairs.jsonl", triples(20))
    out = data.build_pairs(data_cfg("preference", f"data.path={path}"), tok, tmp_path / "cache")
    assert {s: len(out.splits[s]) for s in SPLITS} == {"train": 16, "validation": 2, "test": 2}
    assert out.info["sizes_fitted"] is True
    assert (
        "the data set's own sizes shrink in proportion: train=16, validation=2, test=2"
        in capfd.readouterr().err
    )
    row = next(r for r in out.splits["train"].to_list() if r["chosen"] == "right 3")
    assert row == {"prompt": "Question 3?\n", "chosen": "right 3", "rejected": "wrong 3"}


def test_preference_needs_a_file():
    from src.data.sources import load_sources

    msg = one_line_error(load_sources, data_cfg("preference"), Path("/nonexistent-cache"))
    assert msg == "data=preference: no source; set data.path=/path/to/file or data.hub=<hub id>"


def test_a_data_set_without_pairs_is_refused(tmp_path, tok):
    msg = one_line_error(data.build_pairs, data_cfg("synthetic"), tok, tmp_path / "cache")
    assert msg.startswith("data=synthetic: declares no preference pairs (data.pairs: {chosen, rejected});")


def test_pairs_must_replace_the_field_the_answer_renders():
    msg = one_line_error(validate, compose_cfg("data=alpaca", "data.pairs={chosen:input,rejected:rejected}"))
    assert msg == (
        "data.pairs.chosen='input': not a field the answer is rendered from (data.response='{output}'); "
        "the rejected answer takes its place"
    )
    msg = one_line_error(validate, compose_cfg("data=alpaca", "data.pairs={chosen:output,rejected:output}"))
    assert msg == "data.pairs: chosen and rejected are the same field (output)"


# --------------------------------------------------------------------------- the synthetic pairs


def test_synthetic_pairs_are_deterministic_and_always_wrong():
    pairs = synthetic_pairs(600, seed=5)
    assert pairs == synthetic_pairs(600, seed=5)
    assert pairs != synthetic_pairs(600, seed=6)
    assert [{k: v for k, v in p.items() if k != "rejected"} for p in pairs] == synthetic_records(600, seed=5)
    assert all(p["rejected"] != p["output"] for p in pairs)
    for p in pairs:
        out, bad = p["output"], p["rejected"]
        if p["instruction"].startswith("Add"):
            assert 1 <= abs(int(bad) - int(out)) <= 3
        elif p["instruction"].startswith(("Reverse", "Sort")):
            assert len(bad.split()) == len(out.split())
        else:
            assert bad.lower() == out.lower()  # the same words, the wrong case
    rev = [p for p in pairs if p["instruction"].startswith("Reverse") and len(set(p["input"].split())) > 1]
    assert all(
        p["rejected"] in (p["input"], " ".join(sorted(p["input"].split())))
        for p in rev
        if p["input"] != p["output"]
    )


def test_synthetic_pairs_build_fast_with_no_bad_pair(tmp_path, tok):
    cfg = data_cfg("synthetic_pairs")
    data.build_pairs(cfg, tok, tmp_path / "cache")  # generates the records once
    start = time.perf_counter()
    out = data.build_pairs(cfg, tok, tmp_path / "cache", num_prompts=8, reserve=8)
    assert time.perf_counter() - start < 5  # 1,200 pairs; about 0.3 s on one CPU core
    assert {s: len(out.splits[s]) for s in SPLITS} == {"train": 1000, "validation": 100, "test": 100}
    assert out.info["pairs_skipped"] == {"train": 0, "validation": 0, "test": 0}
    row = out.splits["train"][0]
    assert row["prompt"].endswith("### Response:\n") and row["chosen"] != row["rejected"]


# --------------------------------------------------------------------------- the test prompts


@pytest.mark.parametrize("name", ["synthetic_pairs", "hh_rlhf"])
def test_test_prompts_and_references_are_builds(tmp_path, tok, name):
    extra = [f"data.path={write_jsonl(tmp_path / 'hh.jsonl', hh(40))}", SIZES] if name == "hh_rlhf" else []
    cfg = data_cfg(name, *extra)
    pairs = data.build_pairs(cfg, tok, tmp_path / "cache", num_prompts=3, reserve=16).test
    sft = data.build(cfg, tok, tmp_path / "cache", num_prompts=3, reserve=16).test
    assert len(pairs.prompts) == 3
    assert (pairs.prompts, pairs.references) == (sft.prompts, sft.references)


# --------------------------------------------------------------------------- bad pairs and missing fields


@pytest.mark.parametrize(
    ("name", "bad", "says"),
    [
        ("preference", {"chosen": "  \n"}, "the chosen answer is empty"),
        ("preference", {"rejected": "right 6"}, "chosen and rejected are the same answer"),
        (
            "hh_rlhf",
            {"rejected": "\n\nHuman: bye 6\n\nAssistant: go away 6"},
            "chosen and rejected render different prompts (from character 9: 'hi 6\\n\\nAssistant:' vs "
            "'bye 6\\n\\nAssistant:')",
        ),
        (
            "hh_rlhf",
            {"rejected": "\n\nHuman: hi 6 go away"},
            "rejected has no '\\n\\nAssistant:' (data.derive.at_last)",
        ),
        (
            "hh_rlhf",
            {"chosen": "\n\nHuman: hi 6 hello"},
            "chosen has no '\\n\\nAssistant:' (data.derive.at_last)",
        ),
    ],
)
def test_each_bad_pair_names_its_line_and_what_is_wrong(tmp_path, tok, name, bad, says):
    recs = triples(12) if name == "preference" else hh(12)
    recs[6].update(bad)
    path = write_jsonl(tmp_path / "p.jsonl", recs)
    # hh_rlhf skips bad pairs by default (data.pairs.on_bad=skip: the hub's data hold some); here it must fail
    strict = ("data.pairs.on_bad=error",) if name == "hh_rlhf" else ()
    cfg = data_cfg(name, f"data.path={path}", SIZES, *strict)
    split = split_of(cfg, tmp_path / "cache", recs[6])
    msg = one_line_error(data.build_pairs, cfg, tok, tmp_path / "cache")
    hint = HINT.replace("data.on_bad_record", "data.pairs.on_bad") if strict else HINT
    assert msg == f"data.path='{path}': line 7 ({split} split): {says} {hint}"


def test_a_bad_pair_in_a_json_list_is_named_by_its_index(tmp_path, tok):
    recs = [
        {**r, "rejected": r["output"] if i == 3 else r["rejected"]}
        for i, r in enumerate(synthetic_pairs(40, 1))
    ]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(recs))  # a JSON list: named by its index
    cfg = data_cfg("synthetic_pairs", f"data.path={path}", "data.splits={train:30,validation:5,test:5}")
    split = split_of(cfg, tmp_path / "cache", recs[3])
    msg = one_line_error(data.build_pairs, cfg, tok, tmp_path / "cache")
    assert msg == (
        f"data.path='{path}': the record at index 3 of the JSON list ({split} split): chosen and rejected are "
        f"the same answer {HINT}"
    )


def test_skip_drops_bad_pairs_and_counts_them_per_split(tmp_path, tok, capfd):
    recs = triples(30)
    recs[2]["chosen"] = ""
    recs[11]["rejected"] = recs[11]["chosen"]
    recs[25]["chosen"] = " "
    path = write_jsonl(tmp_path / "p.jsonl", recs)
    cfg = data_cfg("preference", f"data.path={path}", SIZES, "data.on_bad_record=skip")
    splits, _ = load_splits_info(cfg, tmp_path / "cache", pairs=True)
    bad = {recs[i]["prompt"] for i in (2, 11, 25)}
    want = {s: sum(r["prompt"] in bad for r in splits[s]) for s in SPLITS}
    capfd.readouterr()
    out = data.build_pairs(cfg, tok, tmp_path / "cache")
    assert out.info["pairs_skipped"] == want and sum(want.values()) == 3
    assert {s: len(out.splits[s]) for s in SPLITS} == {s: len(splits[s]) - want[s] for s in SPLITS}
    assert not bad & {r["prompt"] for s in SPLITS for r in out.splits[s]}
    err = capfd.readouterr().err
    counts = ", ".join(f"{s} {want[s]}" for s in SPLITS)
    assert (
        f"tunegrid: data=preference: skipped 3 bad preference pairs ({counts}; the first: data.path='{path}': line"
        in err
    )
    assert err.rstrip().endswith("(data.on_bad_record=skip)")


def test_a_split_of_bad_pairs_only_is_an_error(tmp_path, tok):
    recs = [{**r, "rejected": r["chosen"]} for r in triples(12)]
    path = write_jsonl(tmp_path / "p.jsonl", recs)
    cfg = data_cfg("preference", f"data.path={path}", SIZES, "data.on_bad_record=skip")
    msg = one_line_error(data.build_pairs, cfg, tok, tmp_path / "cache")
    assert msg.startswith("data=preference: every pair of the train split (4) is bad, e.g. data.path=")
    assert msg.endswith("chosen and rejected are the same answer; no pair is left")


def test_a_record_without_rejected_names_its_line_only_when_pairs_are_built(tmp_path, tok):
    recs = hh(12)
    del recs[4]["rejected"]
    path = write_jsonl(tmp_path / "hh.jsonl", recs)
    cfg = data_cfg("hh_rlhf", f"data.path={path}", SIZES)
    msg = one_line_error(data.build_pairs, cfg, tok, tmp_path / "cache")
    assert msg == (
        f"data.path='{path}': line 5 lacks field rejected (1 of the 12 records lacks one of chosen, rejected; "
        "data.on_bad_record=skip drops such records)"
    )
    sft = data.build(cfg, tok, tmp_path / "cache")  # SFT reads chosen only
    assert sft.info["bad_records_skipped"] == 0 and sum(sft.info["split_records"].values()) == 12
    skip = data_cfg("hh_rlhf", f"data.path={path}", SIZES, "data.on_bad_record=skip")
    out = data.build_pairs(skip, tok, tmp_path / "cache")
    assert out.info["bad_records_skipped"] == 1 and sum(len(out.splits[s]) for s in SPLITS) == 11

    no_column = write_jsonl(tmp_path / "chosen_only.jsonl", [{"chosen": r["chosen"]} for r in hh(12)])
    msg = one_line_error(
        data.build_pairs, data_cfg("hh_rlhf", f"data.path={no_column}", SIZES), tok, tmp_path / "c"
    )
    assert msg == f"data=hh_rlhf: data.path='{no_column}' lacks field(s) rejected (found: chosen)"


# --------------------------------------------------------------------------- truncation


def test_a_long_prompt_is_shortened_so_that_prompt_and_answer_fit(tmp_path, tok):
    words = ["apple", "river", "stone", "cloud", "tiger", "piano", "garden", "silver", "window", "rocket"]
    rng = random.Random(0)
    recs = triples(20)
    long_ones = {1, 8, 13}
    for i in long_ones:
        recs[i]["prompt"] = " ".join(rng.choice(words) for _ in range(120)) + f" question {i}?\n"
    path = write_jsonl(tmp_path / "p.jsonl", recs)
    cfg = data_cfg("preference", f"data.path={path}", SIZES, "data.max_seq_len=48")
    splits, _ = load_splits_info(cfg, tmp_path / "cache", pairs=True)
    out = data.build_pairs(cfg, tok, tmp_path / "cache")
    want = {s: sum(r["prompt"] in {recs[i]["prompt"] for i in long_ones} for r in splits[s]) for s in SPLITS}
    assert out.info["pairs_prompts_shortened"] == want and sum(want.values()) == 3
    by_chosen = {r["chosen"]: r for s in SPLITS for r in out.splits[s].to_list()}
    for i, rec in enumerate(recs):
        row = by_chosen[rec["chosen"]]
        if i not in long_ones:
            assert row["prompt"] == rec["prompt"]
            continue
        reserve = max(len(token_ids(tok, [row["chosen"]])[0]), len(token_ids(tok, [row["rejected"]])[0])) + 1
        original = token_ids(tok, [rec["prompt"]])[0]
        assert row["prompt"] == shortened_prompt(cfg, prepare(cfg, rec), original, reserve, tok)
        assert row["prompt"].endswith(f" question {i}?\n")  # side: left keeps the end
        assert len(token_ids(tok, [row["prompt"]])[0]) + reserve <= 48 < len(original) + reserve


def test_hh_rlhf_skips_its_bad_pairs_by_default(tmp_path, tok):
    """The hub's HH-RLHF holds pairs with an empty answer: its YAML skips them (counted), so a file of it trains
    with the defaults; data.pairs.on_bad=error makes them errors again (above)."""
    recs = hh(12)
    recs[6]["chosen"] = recs[6]["chosen"].rsplit("\n\nAssistant:", 1)[0] + "\n\nAssistant:"
    path = write_jsonl(tmp_path / "p.jsonl", recs)
    prepared = data.build_pairs(data_cfg("hh_rlhf", f"data.path={path}", SIZES), tok, tmp_path / "cache")
    assert sum(prepared.info["pairs_skipped"].values()) == 1
    assert sum(len(d) for d in prepared.splits.values()) == 11
