"""Real data as its users have it (issue 15): a small local file with the data set's default sizes, records that
lack a field, empty files and JSON syntax errors, E2E NLG grouped by meaning representation and scored against
all its references, CNN/DailyMail's generation length and ROUGE-Lsum, HH-RLHF's stop string. Every file is
written here in the hub's format; nothing from ../shared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from src import data, models
from src.config import ConfigError, validate
from src.data.render import render_prompt, render_response
from src.data.splits import load_splits, load_splits_info, yaml_sizes
from src.evaluation import task_metrics
from tests.helpers import SESSION_CACHE, compose_cfg


def write_jsonl(path: Path, records: list[dict], blank_lines: bool = False) -> Path:
    sep = "\n\n" if blank_lines else "\n"
    path.write_text(sep.join(json.dumps(r) for r in records) + "\n")
    return path


def data_cfg(name: str, *overrides: str):
    return validate(compose_cfg(f"data={name}", *overrides)).data


def alpaca(n: int) -> list[dict]:
    return [
        {"instruction": f"Task {i}.", "input": "" if i % 2 else f"in {i}", "output": f"out {i}"}
        for i in range(n)
    ]


def one_line_error(fn, *args) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def tok():
    cfg = validate(compose_cfg())
    return models.load_tokenizer(str(models.materialise_tiny(cfg.model, SESSION_CACHE)))


# --------------------------------------------------------------------------- 1. a small file, the default sizes


def test_yaml_sizes_follow_the_defaults_chain():
    assert yaml_sizes("alpaca") == {"train": 12000, "validation": 1500, "test": 100}
    assert yaml_sizes("synthetic") == {
        "train": 2600,
        "validation": 200,
        "test": 200,
    }  # defaults: [alpaca, _self_]
    assert yaml_sizes("dolly") == {"train": None, "validation": 1500, "test": 500}
    assert yaml_sizes("no-such-data-set") is None


def test_a_small_file_is_carved_in_the_default_sizes_proportions(tmp_path, capfd):
    path = write_jsonl(tmp_path / "a.jsonl", alpaca(200))
    splits, info = load_splits_info(data_cfg("alpaca", f"data.path={path}"), tmp_path / "cache")
    # 12,000 / 1,500 / 100 of 200 records: 176.5 / 22.1 / 1.5, largest remainders.
    assert {k: len(v) for k, v in splits.items()} == {"train": 176, "validation": 22, "test": 2}
    assert info == {
        "split_records": {"train": 176, "validation": 22, "test": 2},
        "bad_records_skipped": 0,
        "sizes_fitted": True,
    }
    seen = [r["instruction"] for s in splits.values() for r in s]
    assert len(seen) == len(set(seen)) == 200  # disjoint, every record used
    lines = [ln for ln in capfd.readouterr().err.splitlines() if ln.startswith("tunegrid:")]
    assert len(lines) == 1, lines
    assert "200 usable records" in lines[0] and "train=176, validation=22, test=2" in lines[0]

    # A size given on the command line is kept; the YAML's others share what it leaves.
    mixed = load_splits(data_cfg("alpaca", f"data.path={path}", "data.splits.test=20"), tmp_path / "cache")
    assert {k: len(v) for k, v in mixed.items()} == {"train": 160, "validation": 20, "test": 20}


def test_a_null_split_keeps_most_of_a_small_file(tmp_path, capfd):
    """Dolly's sizes are train: the rest, 1,500 / 500: the YAML gives no proportions, so the sized splits share
    a fifth (in their proportions) and the rest takes the remainder."""
    recs = [
        {"instruction": f"Q{i}?", "context": "", "response": f"A{i}.", "category": "open_qa"}
        for i in range(300)
    ]
    path = write_jsonl(tmp_path / "d.jsonl", recs)
    splits = load_splits(data_cfg("dolly", f"data.path={path}"), tmp_path / "cache")
    assert {k: len(v) for k, v in splits.items()} == {"train": 240, "validation": 45, "test": 15}
    assert "shrink in proportion" in capfd.readouterr().err


def test_sizes_that_fit_are_used_as_they_are_and_print_nothing(tmp_path, capfd):
    path = write_jsonl(tmp_path / "a.jsonl", alpaca(60))
    cfg = data_cfg("alpaca", f"data.path={path}", "data.splits={train:40,validation:10,test:10}")
    splits, info = load_splits_info(cfg, tmp_path / "cache")
    assert {k: len(v) for k, v in splits.items()} == {"train": 40, "validation": 10, "test": 10}
    assert info["sizes_fitted"] is False
    assert "tunegrid:" not in capfd.readouterr().err


@pytest.mark.parametrize(
    ("sizes", "says"),
    [
        (
            ("data.splits.train=300",),
            "data.splits.train=300: needs 300 records, but data.path='@' has 200 usable records; lower it",
        ),
        (
            ("data.splits={train:150,validation:40,test:20}",),
            "data.splits.train=150 data.splits.validation=40 data.splits.test=20: need 210 records, but "
            "data.path='@' has 200 usable records; lower them",
        ),
        (
            ("data.splits.train=199",),
            "data.splits.train=199: leaves 1 of the 200 usable records of data.path='@' for validation and test "
            "(at least one each); lower it",
        ),
    ],
)
def test_sizes_given_on_the_command_line_must_fit(tmp_path, sizes, says):
    path = write_jsonl(tmp_path / "a.jsonl", alpaca(200))
    msg = one_line_error(load_splits, data_cfg("alpaca", f"data.path={path}", *sizes), tmp_path / "cache")
    assert says.replace("@", str(path)) in msg


def test_a_file_too_small_for_every_split(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", alpaca(2))
    msg = one_line_error(load_splits, data_cfg("alpaca", f"data.path={path}"), tmp_path / "cache")
    assert msg == (
        f"data=alpaca: data.path='{path}' has 2 usable records, too few for train, validation and test "
        "(at least one each); use a bigger file"
    )


def test_a_source_of_its_own_gives_at_most_its_size(tmp_path, capfd):
    """hub_splits: each split's own file is taken whole when it is smaller than the size (as before)."""
    recs = [{"article": f"Story {i} happened.", "highlights": f"Story {i}."} for i in range(30)]
    files = {
        s: write_jsonl(tmp_path / f"{s}.jsonl", recs[i * 10 : i * 10 + 10])
        for i, s in enumerate(("train", "validation", "test"))
    }
    cfg = data_cfg("cnn_dailymail", "data.path={" + ",".join(f"{s}:{p}" for s, p in files.items()) + "}")
    assert {k: len(v) for k, v in load_splits(cfg, tmp_path / "cache").items()} == {
        "train": 10,
        "validation": 10,
        "test": 10,
    }
    assert "tunegrid:" not in capfd.readouterr().err


# --------------------------------------------------------------------------- 2. a record that lacks a field


def test_a_record_without_a_field_names_file_line_and_field(tmp_path):
    recs = alpaca(12)
    del recs[6]["output"]
    path = write_jsonl(tmp_path / "a.jsonl", recs, blank_lines=True)  # line numbers count the blank lines
    msg = one_line_error(load_splits, data_cfg("alpaca", f"data.path={path}"), tmp_path / "cache")
    assert msg.startswith(
        f"data.path='{path}': line 13 lacks field output (1 of the 12 records lacks one of "
    )
    assert "data.on_bad_record=skip" in msg


def test_a_json_list_names_the_index_and_null_counts_as_missing(tmp_path):
    recs = alpaca(12)
    recs[4]["input"] = None
    recs[9].pop("instruction")
    path = tmp_path / "a.json"
    path.write_text(json.dumps(recs, indent=4))
    msg = one_line_error(load_splits, data_cfg("alpaca", f"data.path={path}"), tmp_path / "cache")
    assert msg.startswith(f"data.path='{path}': the record at index 4 of the JSON list has input: null ")
    assert "(2 of the 12 records lack one of instruction, input, output;" in msg


def test_skip_drops_bad_records_and_the_record_counts_them(tmp_path, tok, capfd):
    recs = alpaca(40)
    for i in (3, 17, 29):
        del recs[i]["output"]
    path = write_jsonl(tmp_path / "a.jsonl", recs)
    cfg = data_cfg(
        "alpaca", f"data.path={path}", "data.on_bad_record=skip", "data.splits={train:27,validation:5,test:5}"
    )
    out = data.build(cfg, tok, tmp_path / "cache", num_prompts=2, reserve=8)
    assert out.info["bad_records_skipped"] == 3
    assert out.info["split_records"] == {"train": 27, "validation": 5, "test": 5}
    kept = [r for s in load_splits(cfg, tmp_path / "cache").values() for r in s]
    assert all(r["output"] for r in kept) and len(kept) == 37
    assert "skipped 3 of the 40 records lack one of instruction, input, output" in capfd.readouterr().err
    every = write_jsonl(tmp_path / "none.jsonl", [{"instruction": "a", "input": "", "output": None}] * 4)
    with pytest.raises(ConfigError, match="every record lacks one of"):
        load_splits(data_cfg("alpaca", f"data.path={every}", "data.on_bad_record=skip"), tmp_path / "cache")


def test_on_bad_record_is_checked_with_the_config():
    with pytest.raises(ConfigError, match=r"data.on_bad_record='maybe': must be one of error, skip"):
        validate(compose_cfg("data.on_bad_record=maybe"))


# --------------------------------------------------------------------------- 3. empty files, JSON syntax


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n \n"),
        ("empty.json", ""),
        ("list.json", "[]"),
        ("header.csv", "instruction,input,output\n"),
        ("empty.csv", ""),
    ],
)
def test_a_file_without_records(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    msg = one_line_error(load_splits, data_cfg("alpaca", f"data.path={path}"), tmp_path / "cache")
    assert msg == f"data.path='{path}': the file holds no records"


@pytest.mark.parametrize(
    ("name", "text", "says"),
    [
        (
            "a.jsonl",
            '{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a\tb"}\n',
            "line 2 column 19: not valid JSON (Invalid control character)",
        ),
        (
            "a.json",
            '[\n  {"instruction": "a", "input": "", "output": "b"},\n  {"instruction": }\n]\n',
            "line 3 column 19: not valid JSON (Expecting value)",
        ),
        (
            "b.json",
            '[{"instruction": "a", "input": "", "output": "b"},',
            "line 1 column 51: not valid JSON (Expecting value)",
        ),
    ],
)
def test_json_syntax_errors_name_line_and_column(tmp_path, name, text, says):
    path = tmp_path / name
    path.write_text(text)
    msg = one_line_error(load_splits, data_cfg("alpaca", f"data.path={path}"), tmp_path / "cache")
    assert msg == f"data.path='{path}': {says}"


def test_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "latin.jsonl"
    path.write_bytes('{"instruction": "caf\xe9", "input": "", "output": "x"}\n'.encode("latin-1"))
    msg = one_line_error(load_splits, data_cfg("alpaca", f"data.path={path}"), tmp_path / "cache")
    assert (
        msg
        == f"data.path='{path}': field instruction holds bytes that are not UTF-8 text; save the file as UTF-8"
    )


# --------------------------------------------------------------------------- 4. E2E NLG: one MR, one split


def e2e(mrs: int) -> list[dict]:
    """`mrs` meaning representations with 3 to 9 references each, in the order of the E2E CSV files."""
    return [
        {
            "meaning_representation": f"name[Place {m}], eatType[pub], food[{m % 5}]",
            "human_reference": f"Place {m} is a pub, text {r}.",
        }
        for m in range(mrs)
        for r in range(3 + m % 7)
    ]


def test_e2e_splits_carved_from_one_file_share_no_meaning_representation(tmp_path):
    recs = e2e(60)
    path = write_jsonl(tmp_path / "e2e.jsonl", recs)
    cfg = data_cfg("e2e_nlg", f"data.path={path}", "data.splits.validation=50", "data.splits.test=50")
    assert cfg.group_by == "meaning_representation"
    splits = load_splits(cfg, tmp_path / "cache")
    mrs = {s: {r["meaning_representation"] for r in ds} for s, ds in splits.items()}
    assert (
        not (mrs["train"] & mrs["validation"])
        and not (mrs["train"] & mrs["test"])
        and not (mrs["validation"] & mrs["test"])
    )
    assert sum(len(ds) for ds in splits.values()) == len(recs)  # whole groups, nothing lost
    for s in ("validation", "test"):
        assert 50 <= len(splits[s]) < 50 + 9  # whole groups: at most one group over the size
    # Every MR of the test split keeps all its references.
    per_mr = {}
    for r in recs:
        per_mr.setdefault(r["meaning_representation"], []).append(r["human_reference"])
    assert all(
        sum(r["meaning_representation"] == m for r in splits["test"]) == len(per_mr[m]) for m in mrs["test"]
    )
    # Without group_by the same file leaks MRs across splits (what the setting prevents).
    loose = load_splits(
        data_cfg(
            "e2e_nlg",
            f"data.path={path}",
            "data.splits.validation=50",
            "data.splits.test=50",
            "data.group_by=null",
        ),
        tmp_path / "cache",
    )
    assert {r["meaning_representation"] for r in loose["test"]} & {
        r["meaning_representation"] for r in loose["train"]
    }


def test_e2e_generates_once_per_mr_and_bleu_uses_all_its_references(tmp_path, tok):
    recs = e2e(40)
    path = write_jsonl(tmp_path / "e2e.jsonl", recs)
    cfg = data_cfg("e2e_nlg", f"data.path={path}", "data.splits.validation=40", "data.splits.test=60")
    test_records = list(load_splits(cfg, tmp_path / "cache")["test"])
    groups: dict[str, list[str]] = {}
    for r in test_records:
        groups.setdefault(render_prompt(cfg, r), []).append(render_response(cfg, r))
    prepared = data.build(cfg, tok, tmp_path / "cache", num_prompts=100, reserve=8).test
    assert prepared.prompts == list(groups)  # one prompt per distinct MR
    assert prepared.references == [refs if len(refs) > 1 else refs[0] for refs in groups.values()]
    assert all(isinstance(r, list) and len(r) >= 3 for r in prepared.references)
    # Multi-reference corpus BLEU, as the E2E benchmark scores it: each hypothesis against all its references.
    hyps = [refs[-1].replace("text", "words") for refs in groups.values()]
    got = task_metrics.compute_metrics(["bleu"], hyps, prepared.references)["test/bleu"]
    width = max(len(r) for r in prepared.references)
    streams = [[r[i] if i < len(r) else None for r in prepared.references] for i in range(width)]
    assert got == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score / 100, abs=1e-12)
    single = sacrebleu.corpus_bleu(hyps, [[r[0] for r in prepared.references]]).score / 100
    assert got > single  # all the references count, not the first


# --------------------------------------------------------------------------- 5. CNN/DailyMail, 6. HH-RLHF


def test_generation_settings_come_from_the_data_set():
    cnn = validate(compose_cfg("data=cnn_dailymail"))
    assert cnn.data.max_new_tokens == 128 and cnn.eval.generation.max_new_tokens == 128
    assert "rougeLsum" in cnn.data.metrics and "rougeL" in task_metrics.METRICS["rouge"][1]
    hh = validate(compose_cfg("data=hh_rlhf"))
    assert list(hh.eval.generation.stop_strings) == ["\n\nHuman:"]
    default = validate(compose_cfg())
    assert default.eval.generation.max_new_tokens == 64 and default.eval.generation.stop_strings is None
    # The command line still wins, and a bad data-set value is named as the user set it.
    assert (
        validate(
            compose_cfg("data=cnn_dailymail", "eval.generation.max_new_tokens=32")
        ).eval.generation.max_new_tokens
        == 32
    )
    with pytest.raises(ConfigError, match=r"^data.max_new_tokens=0: must be an integer ≥ 1"):
        validate(compose_cfg("data.max_new_tokens=0"))
    with pytest.raises(ConfigError, match=r"^data.stop="):
        validate(compose_cfg("data.stop=['']"))


def test_rouge_lsum_scores_sentences_on_lines():
    pred = "The cat sat on the mat. It was happy. Then it slept."
    ref = "The cat was happy.\nIt sat on the mat.\nThen the cat slept."
    got = task_metrics.compute_metrics(
        ["rougeL", "rougeLsum"], [pred], [ref], metric_args={"rouge": {"use_stemmer": True}}
    )
    scorer = rouge_scorer.RougeScorer(["rougeL", "rougeLsum"], use_stemmer=True)
    want = scorer.score(ref, "The cat sat on the mat.\nIt was happy.\nThen it slept.")
    assert got["test/rougeLsum"] == pytest.approx(want["rougeLsum"].fmeasure, abs=1e-12)
    assert got["test/rougeL"] == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure, abs=1e-12)
    assert got["test/rougeLsum"] != pytest.approx(
        scorer.score(ref, pred)["rougeLsum"].fmeasure
    )  # split made a difference
