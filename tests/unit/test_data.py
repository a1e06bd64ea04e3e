"""Unit tier for the data path: every data config against a small file in the hub's own format that
the test writes itself (rendering, split sizes, filters, normalisation, hub-split mapping), the
tokenised-data cache across processes, and the bad-input errors. No network, nothing from ../shared."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src import data, models
from src.config import ConfigError, validate
from src.config.data import SPLITS
from src.data.render import prepare, render_prompt, render_response, shortened_prompt, token_ids
from src.data.splits import load_splits
from src.data.tokenise import IGNORE_INDEX
from tests.helpers import REPO_ROOT, SESSION_CACHE, compose_cfg

ALPACA_HEAD = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
)
ALPACA_HEAD_NO_INPUT = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"


# --------------------------------------------------------------------------- helpers


def write(path: Path, records: list[dict], fmt: str | None = None) -> Path:
    """Write records in a hub format chosen by the file's suffix: .json (a list), .jsonl, .csv, .parquet."""
    fmt = fmt or path.suffix.lstrip(".")
    if fmt == "json":
        path.write_text(json.dumps(records, indent=4))
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif fmt == "csv":
        import csv

        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(records[0]))
            w.writeheader()
            w.writerows(records)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)
    return path


def data_cfg(name: str, *overrides: str):
    """The validated `data` node of `python -m src.run data=<name> <overrides>`."""
    return validate(compose_cfg(f"data={name}", *overrides)).data


def alpaca_records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        out.append(
            {"instruction": f"Task {i}.", "input": "" if i % 3 == 0 else f"in {i}", "output": f"out {i}"}
        )
    return out


@pytest.fixture(scope="module")
def tok():
    """The tiny model's tokenizer (built once into the session cache, no download)."""
    cfg = validate(compose_cfg())
    return models.load_tokenizer(str(models.materialise_tiny(cfg.model, SESSION_CACHE)))


def raise_config_error(fn, *args) -> str:
    with pytest.raises(ConfigError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg, f"error message spans several lines: {msg!r}"
    return msg


# --------------------------------------------------------------------------- alpaca


def test_alpaca_json_list_renders_template_filters_512_and_carves_seeded_splits(tmp_path):
    recs = alpaca_records(40)
    recs[1]["output"] = "x" * 511  # kept: shorter than 512 characters
    recs[2]["output"] = "y" * 512  # dropped
    recs[4]["output"] = "z" * 2000  # dropped
    path = write(tmp_path / "alpaca.json", recs)
    cfg = data_cfg(
        "alpaca",
        f"data.path={path}",
        "data.splits.train=23",
        "data.splits.validation=10",
        "data.splits.test=5",
    )

    assert (
        render_prompt(cfg, recs[1])
        == ALPACA_HEAD + "### Instruction:\nTask 1.\n\n### Input:\nin 1\n\n### Response:\n"
    )
    assert (
        render_prompt(cfg, recs[0]) == ALPACA_HEAD_NO_INPUT + "### Instruction:\nTask 0.\n\n### Response:\n"
    )
    assert render_response(cfg, recs[1]) == "x" * 511

    splits = load_splits(cfg, tmp_path / "cache")
    assert {k: len(v) for k, v in splits.items()} == {"train": 23, "validation": 10, "test": 5}  # 38 kept
    outputs = [r["output"] for s in splits.values() for r in s]
    assert "x" * 511 in outputs and "y" * 512 not in outputs and "z" * 2000 not in outputs
    instructions = [r["instruction"] for s in splits.values() for r in s]
    assert len(set(instructions)) == 38  # disjoint splits

    again = load_splits(cfg, tmp_path / "cache")
    assert [r["instruction"] for r in again["train"]] == [r["instruction"] for r in splits["train"]]
    other = load_splits(
        data_cfg("alpaca", f"data.path={path}", "data.splits.train=20", "data.split_seed=7"),
        tmp_path / "cache",
    )
    assert [r["instruction"] for r in other["train"]] != [r["instruction"] for r in splits["train"]]


def test_alpaca_default_sizes_are_the_studys_subset():
    cfg = data_cfg("alpaca")
    assert cfg.hub == "tatsu-lab/alpaca" and list(cfg.fields) == ["instruction", "input", "output"]
    assert dict(cfg.splits) == {"train": 12000, "validation": 1500, "test": 100}
    assert cfg.max_response_chars == 511


def test_max_train_and_eval_samples_cut_the_splits(tmp_path):
    path = write(tmp_path / "a.jsonl", alpaca_records(60))
    cfg = data_cfg(
        "alpaca",
        f"data.path={path}",
        "data.splits.train=30",
        "data.splits.validation=20",
        "data.splits.test=10",
        "data.max_train_samples=7",
        "data.max_eval_samples=3",
    )
    splits = load_splits(cfg, tmp_path / "cache")
    assert {k: len(v) for k, v in splits.items()} == {"train": 7, "validation": 3, "test": 3}


def test_tokenised_examples_mask_the_prompt_and_end_with_eos(tmp_path, tok):
    path = write(tmp_path / "a.jsonl", alpaca_records(30))
    cfg = data_cfg(
        "alpaca",
        f"data.path={path}",
        "data.splits.train=20",
        "data.splits.validation=5",
        "data.splits.test=5",
    )
    raw = load_splits(cfg, tmp_path / "cache")
    out = data.build(cfg, tok, tmp_path / "cache").splits
    ex, rec = out["train"][0], raw["train"][0]
    n_prompt = len(tok(render_prompt(cfg, rec), add_special_tokens=False)["input_ids"])
    assert ex["labels"][:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert ex["labels"][n_prompt:] == ex["input_ids"][n_prompt:]
    assert ex["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(ex["input_ids"][n_prompt:-1]) == rec["output"]


def test_synthetic_default_still_builds(tok):
    cfg = data_cfg("synthetic")
    splits = load_splits(cfg, SESSION_CACHE)
    assert {k: len(v) for k, v in splits.items()} == {"train": 2600, "validation": 200, "test": 200}


# --------------------------------------------------------------------------- dolly


def test_dolly_jsonl_puts_context_before_instruction(tmp_path):
    recs = [
        {
            "instruction": f"Q{i}?",
            "context": "" if i % 2 else f"Background {i}.",
            "response": f"A{i}.",
            "category": "open_qa" if i % 2 else "closed_qa",
        }
        for i in range(30)
    ]
    path = write(tmp_path / "dolly.jsonl", recs)
    cfg = data_cfg("dolly", f"data.path={path}", "data.splits.validation=6", "data.splits.test=4")
    assert cfg.hub == "databricks/databricks-dolly-15k"
    assert list(cfg.fields) == ["instruction", "context", "response", "category"]
    assert render_prompt(cfg, recs[0]) + render_response(cfg, recs[0]) == "Background 0.\n\nQ0?\n\nA0."
    assert render_prompt(cfg, recs[1]) + render_response(cfg, recs[1]) == "Q1?\n\nA1."
    splits = load_splits(cfg, tmp_path / "cache")
    assert {k: len(v) for k, v in splits.items()} == {
        "train": 20,
        "validation": 6,
        "test": 4,
    }  # train: the rest


# --------------------------------------------------------------------------- cnn_dailymail


def cnn_records(n: int) -> list[dict]:
    return [
        {
            "article": f'LONDON, England (CNN) -- Story {i}: it\'s a "big" day. ' + "More words here. " * 60,
            "highlights": f"Story {i} happened .\nIt's big .",
            "id": f"{i:040x}",
        }
        for i in range(n)
    ]


def test_cnn_dailymail_parquet_prompt_sizes_and_truncation(tmp_path, tok):
    path = write(tmp_path / "cnn.parquet", cnn_records(30))
    cfg = data_cfg(
        "cnn_dailymail",
        f"data.path={path}",
        "data.splits.train=20",
        "data.splits.validation=6",
        "data.splits.test=4",
    )
    assert cfg.hub_config == "3.0.0" and cfg.max_seq_len == 256
    rec = cnn_records(1)[0]
    assert render_prompt(cfg, rec) == (
        f"Summarize the following news article.\n\n### Article:\n{rec['article']}\n\n### Summary:\n"
    )
    assert render_response(cfg, rec) == "Story 0 happened .\nIt's big ."

    splits = load_splits(cfg, tmp_path / "cache")
    assert {k: len(v) for k, v in splits.items()} == {"train": 20, "validation": 6, "test": 4}
    out = data.build(cfg, tok, tmp_path / "cache").splits
    assert len(out["train"]) == 20  # the long articles were cut, not dropped
    for ex in out["train"]:
        assert len(ex["input_ids"]) <= 256 and ex["input_ids"][-1] == tok.eos_token_id  # whole summary kept
        text = tok.decode(ex["input_ids"])
        assert text.startswith("Summarize the following news article.") and "### Summary:\nStory" in text


def test_cnn_dailymail_study_sizes_and_optional_normalisation(tmp_path):
    assert dict(data_cfg("cnn_dailymail").splits) == {"train": 21000, "validation": 6000, "test": 3000}
    rec = cnn_records(1)[0]
    cfg = data_cfg("cnn_dailymail", "data.normalize.lowercase=true", "data.normalize.strip_punctuation=true")
    assert render_response(cfg, rec) == "story 0 happened\nits big"
    assert render_prompt(cfg, rec).startswith(
        "Summarize the following news article.\n\n### Article:\nlondon england cnn story 0 its a big day more words"
    )
    only_lower = data_cfg("cnn_dailymail", "data.normalize.lowercase=true")
    assert render_response(only_lower, rec) == "story 0 happened .\nit's big ."


# --------------------------------------------------------------------------- hh_rlhf


def hh_records(n: int, prefix: str = "") -> list[dict]:
    out = []
    for i in range(n):
        chosen = (
            f"\n\nHuman: {prefix}hi {i}\n\nAssistant: Hello.\n\nHuman: And then?"
            f"\n\nAssistant: Then {i}, fine."
        )
        out.append({"chosen": chosen, "rejected": chosen.replace("fine", "no")})
    return out


def test_hh_rlhf_prompt_is_the_conversation_up_to_the_last_assistant_turn(tmp_path):
    cfg = data_cfg("hh_rlhf")
    rec = hh_records(1)[0]
    prompt, response = render_prompt(cfg, rec), render_response(cfg, rec)
    assert prompt == "\n\nHuman: hi 0\n\nAssistant: Hello.\n\nHuman: And then?\n\nAssistant:"
    assert response == " Then 0, fine."
    assert prompt + response == rec["chosen"]


def test_hh_rlhf_maps_hub_splits_and_carves_validation_from_train(tmp_path):
    train = write(tmp_path / "train.jsonl", hh_records(40, "train "))
    bad = {"chosen": "\n\nHuman: no reply here", "rejected": "x"}  # no Assistant turn: dropped
    test = write(tmp_path / "test.jsonl", [*hh_records(9, "test "), bad])
    cfg = data_cfg("hh_rlhf", f"data.path={{train:{train},test:{test}}}", "data.splits.validation=5")
    splits = load_splits(cfg, tmp_path / "cache")
    assert {k: len(v) for k, v in splits.items()} == {"train": 35, "validation": 5, "test": 9}
    assert all("train " in r["chosen"] for r in [*splits["train"], *splits["validation"]])
    assert all("test " in r["chosen"] for r in splits["test"])


def test_hh_rlhf_one_local_file_needs_sizes(tmp_path, capfd):
    """Two null sizes from one file: the error suggests a size, sized to the file, and that suggestion runs
    (the YAML's validation size, 1,000, then shrinks to fit the 30 records)."""
    path = write(tmp_path / "hh.jsonl", hh_records(30))
    msg = raise_config_error(load_splits, data_cfg("hh_rlhf", f"data.path={path}"), tmp_path / "cache")
    assert "data.splits.train and data.splits.test are null" in msg and "30 usable records" in msg
    hint = msg.rsplit("e.g. ", 1)[1]
    assert hint == "data.splits.test=3"
    capfd.readouterr()
    followed = load_splits(data_cfg("hh_rlhf", f"data.path={path}", hint), tmp_path / "cache")
    assert {k: len(v) for k, v in followed.items()} == {"train": 22, "validation": 5, "test": 3}
    assert "the data set's own sizes shrink in proportion" in capfd.readouterr().err
    cfg = data_cfg("hh_rlhf", f"data.path={path}", "data.splits.validation=5", "data.splits.test=5")
    splits = load_splits(cfg, tmp_path / "cache")
    assert {k: len(v) for k, v in splits.items()} == {"train": 20, "validation": 5, "test": 5}


# --------------------------------------------------------------------------- e2e_nlg


def e2e_records(n: int, tag: str = "") -> list[dict]:
    return [
        {
            "meaning_representation": f"name[Place {tag}{i}], eatType[pub], area[riverside]",
            "human_reference": f"Place {tag}{i} is a pub by the river.",
        }
        for i in range(n)
    ]


def test_e2e_nlg_csv_renders_mr_to_text(tmp_path):
    path = write(tmp_path / "e2e.csv", e2e_records(30))
    cfg = data_cfg("e2e_nlg", f"data.path={path}", "data.splits.validation=5", "data.splits.test=5")
    assert cfg.hub == "e2e_nlg"
    assert render_prompt(cfg, e2e_records(1)[0]) == (
        "Describe the restaurant in one or two sentences.\n\n### Meaning representation:\n"
        "name[Place 0], eatType[pub], area[riverside]\n\n### Description:\n"
    )
    assert render_response(cfg, e2e_records(1)[0]) == "Place 0 is a pub by the river."
    splits = load_splits(cfg, tmp_path / "cache")
    assert {k: len(v) for k, v in splits.items()} == {"train": 20, "validation": 5, "test": 5}


def test_e2e_nlg_uses_the_upstream_splits_whole(tmp_path):
    files = {
        s: write(tmp_path / f"{s}.jsonl", e2e_records(n, s))
        for s, n in (("train", 12), ("validation", 4), ("test", 3))
    }
    cfg = data_cfg("e2e_nlg", "data.path={" + ",".join(f"{s}:{p}" for s, p in files.items()) + "}")
    splits = load_splits(cfg, tmp_path / "cache")
    assert {k: len(v) for k, v in splits.items()} == {"train": 12, "validation": 4, "test": 3}
    for s, ds in splits.items():
        assert all(f"Place {s}" in r["human_reference"] for r in ds)


# --------------------------------------------------------------------------- test prompts: rendered once


def test_test_prompts_are_the_first_distinct_prompts_of_the_test_split_with_merged_references(tmp_path, tok):
    """build(num_prompts=n) renders the prompts evaluation generates from, from the same test split it
    tokenises: the first n distinct prompts in split order, each with every reference of the records that
    share it (a list when there are several, a string when there is one)."""
    files = {
        "train": write(tmp_path / "train.jsonl", e2e_records(12, "train")),
        "validation": write(tmp_path / "validation.jsonl", e2e_records(4, "validation")),
    }
    test_recs = [  # meaning representation k has k % 3 + 1 references
        {
            "meaning_representation": f"name[Spot {k}], eatType[pub]",
            "human_reference": f"Spot {k} is a pub, take {j}.",
        }
        for k in range(8)
        for j in range(k % 3 + 1)
    ]
    files["test"] = write(tmp_path / "test.jsonl", test_recs)
    cfg = data_cfg("e2e_nlg", "data.path={" + ",".join(f"{s}:{p}" for s, p in files.items()) + "}")
    records = list(load_splits(cfg, tmp_path / "cache")["test"])
    assert len(records) == len(test_recs)

    # What the test split says, rendered here from the records: prompt -> references, in split order.
    groups: dict[str, list[str]] = {}
    for rec in records:
        groups.setdefault(render_prompt(cfg, rec), []).append(render_response(cfg, rec))
    assert len(groups) == 8
    n = 5
    want = list(groups.items())[:n]
    assert {len(refs) for _, refs in want} != {1}, "the first prompts share no references: a vacuous test"

    out = data.build(cfg, tok, tmp_path / "cache", num_prompts=n, reserve=6)
    assert out.test.prompts == [p for p, _ in want]
    assert out.test.references == [refs[0] if len(refs) == 1 else refs for _, refs in want]
    assert any(isinstance(r, list) for r in out.test.references)
    assert any(isinstance(r, str) for r in out.test.references)

    # The same records the tokenised test split holds: each prompt is the masked head of its first
    # record's example (the map keeps the split's order; nothing is dropped at this length).
    tokenised = out.splits["test"]
    assert len(tokenised) == len(records)
    for prompt in out.test.prompts:
        i = next(i for i, rec in enumerate(records) if render_prompt(cfg, rec) == prompt)
        ids = token_ids(tok, [prompt])[0]
        assert tokenised[i]["input_ids"][: len(ids)] == ids
        assert tokenised[i]["labels"][: len(ids)] == [IGNORE_INDEX] * len(ids)

    every = data.build(cfg, tok, tmp_path / "cache", num_prompts=100, reserve=6).test
    assert every.prompts == list(groups) and len(every.references) == 8  # fewer than asked: all of them
    none = data.build(cfg, tok, tmp_path / "cache", num_prompts=0, reserve=6).test
    assert none.prompts == [] and none.references == []


CNN_HEAD = "Summarize the following news article.\n\n### Article:\n"
CNN_CUE = "\n\n### Summary:\n"


def cut_article(prompt: str, rec: dict, tok) -> list[int]:
    """The article tokens a cut prompt kept: the template's head and cue are whole and the article is cut
    on its right side (it is a start of the record's article)."""
    assert prompt.startswith(CNN_HEAD) and prompt.endswith(CNN_CUE), prompt[:80]
    kept = prompt[len(CNN_HEAD) : -len(CNN_CUE)]
    assert rec["article"].startswith(kept)
    ids = token_ids(tok, [kept])[0]
    assert ids == token_ids(tok, [rec["article"]])[0][: len(ids)]
    return ids


def assert_fits_and_is_the_longest_cut(prompt: str, rec: dict, reserve: int, tok, max_len: int) -> None:
    """prompt + reserve tokens fit max_len, and one more article token would not have fitted."""
    kept = cut_article(prompt, rec, tok)
    assert len(token_ids(tok, [prompt])[0]) + reserve <= max_len
    longer = token_ids(tok, [rec["article"]])[0][: len(kept) + 1]
    longer_prompt = CNN_HEAD + tok.decode(longer, clean_up_tokenization_spaces=False) + CNN_CUE
    assert len(token_ids(tok, [longer_prompt])[0]) + reserve > max_len


def test_one_truncation_rule_for_training_examples_and_test_prompts(tmp_path, tok):
    """On a data set with `truncate`, a record's training example and its test prompt are cut by the same
    rule (shortened_prompt), with reserve = the response (+ EOS) in training and max_new_tokens for the
    test prompt: the article loses its end, the template and the cue survive, prompt + reserve fit
    data.max_seq_len, and the article keeps at least half of the room the template leaves."""
    path = write(tmp_path / "cnn.jsonl", cnn_records(12))
    cfg = data_cfg(
        "cnn_dailymail",
        f"data.path={path}",
        "data.splits.train=6",
        "data.splits.validation=3",
        "data.splits.test=3",
    )
    assert dict(cfg.truncate) == {"field": "article", "side": "right"}
    max_len = int(cfg.max_seq_len)
    room = max_len - len(token_ids(tok, [CNN_HEAD + CNN_CUE])[0])  # what the template leaves the article
    records = list(load_splits(cfg, tmp_path / "cache")["test"])
    max_new = 64
    out = data.build(cfg, tok, tmp_path / "cache", num_prompts=3, reserve=max_new)
    assert len(out.test.prompts) == 3 and len(out.splits["test"]) == 3

    for rec, example, test_prompt in zip(records, out.splits["test"], out.test.prompts, strict=True):
        full_ids = token_ids(tok, [render_prompt(cfg, rec)])[0]
        assert len(full_ids) + max_new > max_len  # the record is long enough to be cut
        response = token_ids(tok, [render_response(cfg, rec)])[0] + [tok.eos_token_id]
        p = prepare(cfg, rec)

        # Training: the example is the prompt cut with reserve = its response, then the whole response.
        train_prompt = shortened_prompt(cfg, p, full_ids, len(response), tok)
        assert train_prompt is not None
        n_prompt = next(i for i, x in enumerate(example["labels"]) if x != IGNORE_INDEX)
        assert example["input_ids"][:n_prompt] == token_ids(tok, [train_prompt])[0]
        assert example["input_ids"][n_prompt:] == response == example["labels"][n_prompt:]
        assert_fits_and_is_the_longest_cut(train_prompt, rec, len(response), tok, max_len)

        # Generation: the test prompt of the same record, cut by the same rule with reserve = max_new_tokens.
        assert test_prompt == shortened_prompt(cfg, p, full_ids, max_new, tok)
        assert_fits_and_is_the_longest_cut(test_prompt, rec, max_new, tok, max_len)
        kept = cut_article(test_prompt, rec, tok)
        assert len(kept) >= room // 2
        assert cut_article(train_prompt, rec, tok)[: len(kept)] == kept  # a longer reserve cuts more

    # A reserve that would leave the article less than half of the room: it keeps half, not less.
    long = data.build(cfg, tok, tmp_path / "cache", num_prompts=3, reserve=room).test
    for rec, prompt in zip(records, long.prompts, strict=True):
        assert len(cut_article(prompt, rec, tok)) == room // 2


# --------------------------------------------------------------------------- the tokenised-data cache

CACHE_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from omegaconf import OmegaConf
    from src import data, models
    spec, tok_dir, cache, mode = json.loads(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
    tok = models.load_tokenizer(tok_dir)
    calls = []
    if mode == "forbid":  # the second run must not tokenise: any tokenizer call fails the test
        def refuse(*a, **k):
            raise AssertionError("tokenised again although the cache holds this data")
        type(tok).__call__ = refuse
    out = data.build(OmegaConf.create(spec), tok, cache).splits
    print(json.dumps({s: [len(ds), ds[0]["input_ids"], ds.cache_files[0]["filename"]] for s, ds in out.items()}))
""")


def run_build(spec: dict, tok_dir: str, cache: Path, mode: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "random"}
    proc = subprocess.run(
        [sys.executable, "-c", CACHE_SCRIPT, json.dumps(spec), tok_dir, str(cache), mode],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_second_build_loads_tokenised_data_from_the_cache(tmp_path, tok, monkeypatch):
    """In-process version (fast tier): a second build with fresh configs must not call the tokenizer."""
    path = write(tmp_path / "a.jsonl", alpaca_records(30))
    overrides = (
        f"data.path={path}",
        "data.splits.train=20",
        "data.splits.validation=5",
        "data.splits.test=5",
    )
    first = data.build(data_cfg("alpaca", *overrides), tok, tmp_path / "cache").splits

    def refuse(*a, **k):
        raise AssertionError("tokenised again although the cache holds this data")

    monkeypatch.setattr(type(tok), "__call__", refuse)
    second = data.build(data_cfg("alpaca", *overrides), tok, tmp_path / "cache").splits
    for s in SPLITS:
        assert second[s]["input_ids"] == first[s]["input_ids"] and second[s]["labels"] == first[s]["labels"]


@pytest.mark.slow
def test_second_process_loads_tokenised_data_from_the_cache(tmp_path, tok):
    path = write(
        tmp_path / "dolly.jsonl",
        [{"instruction": f"Q{i}?", "context": "", "response": f"A{i}.", "category": "x"} for i in range(40)],
    )
    cfg = data_cfg("dolly", f"data.path={path}", "data.splits.validation=5", "data.splits.test=5")
    spec = OmegaConf.to_container(cfg)
    tok_dir = tok.name_or_path
    cache = tmp_path / "cache"
    first = run_build(spec, tok_dir, cache, "tokenise")
    files = sorted((cache / "tokenised").glob("*.arrow"))
    assert len(files) == 3
    mtimes = [f.stat().st_mtime_ns for f in files]
    second = run_build(spec, tok_dir, cache, "forbid")  # fails if it tokenises again
    assert second == first
    assert sorted((cache / "tokenised").glob("*.arrow")) == files
    assert [f.stat().st_mtime_ns for f in files] == mtimes

    # Anything that changes the tokens changes the fingerprint: a new cache file, not a stale hit.
    changed = data.build(
        data_cfg(
            "dolly",
            f"data.path={path}",
            "data.splits.validation=5",
            "data.splits.test=5",
            "data.max_seq_len=16",
        ),
        tok,
        cache,
    ).splits
    assert len(list((cache / "tokenised").glob("*.arrow"))) == 6
    assert all(len(ex["input_ids"]) <= 16 for ex in changed["train"])


# --------------------------------------------------------------------------- bad input


def test_missing_path_file(tmp_path):
    cfg = data_cfg("alpaca", f"data.path={tmp_path / 'nope.json'}")
    msg = raise_config_error(load_splits, cfg, tmp_path / "cache")
    assert "data.path=" in msg and "nope.json" in msg and "no such file" in msg


def test_fields_that_do_not_match_name_missing_and_found(tmp_path):
    path = write(tmp_path / "d.jsonl", [{"instruction": "Q?", "response": "A."}] * 5)
    msg = raise_config_error(load_splits, data_cfg("dolly", f"data.path={path}"), tmp_path / "cache")
    assert "lacks field(s) context, category" in msg and "found: instruction, response" in msg


def test_malformed_jsonl_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"instruction": "a", "input": "", "output": "b"}\n\n{"instruction": oops}\n')
    msg = raise_config_error(load_splits, data_cfg("alpaca", f"data.path={path}"), tmp_path / "cache")
    assert "line 3" in msg and "not valid JSON" in msg


def test_malformed_json_list_names_the_line(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"instruction": "a", "input": "", "output": "b"},\n  {"instruction": }\n]\n')
    msg = raise_config_error(load_splits, data_cfg("alpaca", f"data.path={path}"), tmp_path / "cache")
    assert "line 3" in msg


def test_filter_that_leaves_nothing(tmp_path):
    recs = [{"instruction": "a", "input": "", "output": "w" * 600}] * 8
    path = write(tmp_path / "long.json", recs)
    msg = raise_config_error(load_splits, data_cfg("alpaca", f"data.path={path}"), tmp_path / "cache")
    assert "no records left after filtering" in msg and "data.max_response_chars=511" in msg


def test_unknown_hub_id_offline_points_to_data_path(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cfg = data_cfg("alpaca", "data.hub=no-such-user/no-such-data")
    msg = raise_config_error(load_splits, cfg, tmp_path / "cache")
    assert "could not reach the hub" in msg and "offline" in msg and "data.path=" in msg
    assert "no-such-user/no-such-data" in msg


def test_empty_validation_split_is_reported(tmp_path):
    path = write(tmp_path / "a.jsonl", alpaca_records(10))
    cfg = data_cfg("alpaca", f"data.path={path}", "data.splits.validation=0", "data.splits.test=0")
    msg = raise_config_error(load_splits, cfg, tmp_path / "cache")
    assert "validation split is empty" in msg and "train took 10" in msg


def test_unknown_file_format(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello\n")
    msg = raise_config_error(load_splits, data_cfg("alpaca", f"data.path={path}"), tmp_path / "cache")
    assert "unknown format .txt" in msg
