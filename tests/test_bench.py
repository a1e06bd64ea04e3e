"""The benchmark (benchmarks/): its building blocks in the unit tier, and one `--quick` run end to end (slow).

Nothing here asserts a speed: the benchmark measures and writes, it does not pass or fail on a number.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest
import torch

from benchmarks import alpaca_like, bench, shim
from src.config import REPO_ROOT
from src.data import drop_packed_attention_mask


def test_alpaca_like_records_are_deterministic_and_right_skewed():
    a = alpaca_like.records(400, seed=3)
    assert a == alpaca_like.records(400, seed=3)
    assert {"instruction", "input", "output"} <= set(a[0])
    words = [len(r["input"].split()) for r in a]
    assert statistics.median(words) < statistics.mean(words) < max(words) / 3  # a long right tail


def _tiny_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        n_positions=64,
        vocab_size=50,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(cfg).eval()


class _Tok:
    """The little of a tokenizer DataCollatorForSeq2Seq needs."""

    pad_token_id = 0
    padding_side = "right"
    model_input_names = ["input_ids", "attention_mask"]

    def pad(self, features, padding=True, max_length=None, pad_to_multiple_of=None, return_tensors="pt", **_):
        longest = max(len(f["input_ids"]) for f in features)
        target = max_length if padding == "max_length" else longest
        ids = [f["input_ids"] + [0] * (target - len(f["input_ids"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (target - len(f["input_ids"])) for f in features]
        out = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask)}
        if "labels" in features[0]:
            out["labels"] = torch.tensor([f["labels"] for f in features])
        return out


def _features():
    lens = [5, 9, 3, 12]
    feats = []
    for i, n in enumerate(lens):
        ids = [(7 * i + j) % 49 + 1 for j in range(n)]
        labels = [-100] * 2 + ids[2:]  # loss on the "response" only
        feats.append({"input_ids": ids, "attention_mask": [1] * n, "labels": labels})
    return feats


@pytest.mark.parametrize("mode", ["pad_to_max", "dynamic", "packing", "flatten"])
def test_batching_modes_give_the_loss_of_unpadded_examples(mode):
    """Every mode trains what the examples alone give: padding is masked, packed examples never see each other."""
    model = _tiny_model()
    feats = _features()
    with torch.no_grad():  # the reference: each example alone, token-weighted mean over label tokens
        total, count = 0.0, 0
        for f in feats:
            out = model(input_ids=torch.tensor([f["input_ids"]]), labels=torch.tensor([f["labels"]]))
            n = sum(x != -100 for x in f["labels"][1:])
            total, count = total + out.loss.item() * n, count + n
        reference = total / count
        batch = shim.make_collator(mode, _Tok(), max_seq_len=16)([dict(f) for f in feats])
        if mode == "flatten":
            assert "attention_mask" not in batch and batch["input_ids"].shape == (1, 29)
            assert batch["position_ids"][0, :6].tolist() == [0, 1, 2, 3, 4, 0]
        if mode == "packing":  # rows of <= 16 tokens, first-fit decreasing: [12 + 3], [9 + 5 + 1 padding]
            assert (
                batch["input_ids"].shape == (2, 15) and batch["attention_mask"].sum() == 29
            )  # the real tokens
            assert batch["position_ids"][1].tolist() == [*range(9), *range(5), 0]
            assert shim.real_tokens_of_packed(batch["position_ids"], batch["labels"]) == 29
            leaky = model(**batch, use_cache=False).loss.item()  # the 2-D mask reaching the model: rows leak
            assert abs(leaky - reference) > 1e-3
            model.register_forward_pre_hook(drop_packed_attention_mask, with_kwargs=True)
        if mode == "pad_to_max":
            assert batch["input_ids"].shape == (4, 16)
        # packing's hook turns the KV cache off itself (a cache switches transformers' packed-sequence detection
        # off); the flatten prototype has no hook, so the test does it
        loss = model(**batch, **({"use_cache": False} if mode == "flatten" else {})).loss.item()
    assert loss == pytest.approx(reference, abs=1e-5)


def test_token_counter_counts_real_tokens_in_training_only():
    counter = shim.TokenCounter()
    model = _tiny_model()
    model.register_forward_pre_hook(counter, with_kwargs=True)
    ids, mask = torch.ones(2, 6, dtype=torch.long), torch.tensor([[1] * 6, [1] * 2 + [0] * 4])
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)  # eval mode: not counted
        model.train()
        model(input_ids=ids, attention_mask=mask)
        model(input_ids=torch.ones(1, 5, dtype=torch.long), position_ids=torch.tensor([[0, 1, 0, 1, 2]]))
    assert counter.as_dict() == {
        "tokens_processed": 17,
        "tokens_real": 13,
        "train_batches": 2,
        "padding_share": pytest.approx(4 / 17),
    }


def test_shim_parses_its_options_and_passes_the_overrides_on():
    batching, attn, ta, rest = shim.parse(
        [
            "--batching",
            "packing",
            "--attn",
            "eager",
            "--ta",
            "torch_compile=true",
            "--",
            "method=lora",
            "seed=1",
        ]
    )
    assert (batching, attn, ta, rest) == (
        "packing",
        "eager",
        {"torch_compile": True},
        ["method=lora", "seed=1"],
    )
    assert shim.training_args_for("group_by_length") == {"train_sampling_strategy": "group_by_length"}


def test_shuffled_length_groups_keep_the_batches_and_change_their_order():
    lengths = [(i * 37) % 300 + 10 for i in range(256)]
    sampler = shim.ShuffledLengthGroupedSampler(lengths, batch_size=16, seed=0)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(256)) and first != second  # a permutation, a new one each epoch
    batches = [first[k : k + 16] for k in range(0, 256, 16)]
    spread = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert statistics.median(spread) < 100  # batches of similar lengths (random ones span ~290)
    maxima = [max(lengths[i] for i in b) for b in batches]
    assert maxima != sorted(maxima, reverse=True)


def test_simulated_padding_orders_the_modes():
    lengths = [int(40 * 1.6 ** (i % 7)) % 500 + 20 for i in range(640)]
    pad = bench.simulated_padding(lengths, batch_size=16, max_len=512)
    assert pad["pad_to_max"] > pad["dynamic"] > pad["group_by_length"] > pad["packing"] == 0.0


def test_summaries_and_ratios():
    runs = [
        {"rc": 0, "status": "success", "train_tokens_per_s": v, "wall_s": 2.0} for v in (10.0, 30.0, 20.0)
    ]
    runs.append({"rc": 1, "status": "failed", "train_tokens_per_s": 1000.0})
    s = bench.summarise(runs)
    assert (
        s["n"] == 3
        and s["failed"] == 1
        and s["train_tokens_per_s"] == {"median": 20.0, "min": 10.0, "max": 30.0}
    )
    assert bench.ratio(bench.med(s, "train_tokens_per_s"), 10.0) == 2.0 and bench.ratio(1.0, None) is None
    assert bench.paired_ratio(runs[:2], [{"x": 1}, {"train_tokens_per_s": 10.0}], "train_tokens_per_s") == 3.0


def test_plain_argv_mirrors_the_framework_settings():
    cfg = bench.compose([*bench.BASE, "method=lora"])
    argv = bench.plain_argv(cfg, "/m", bench.Path("/r.jsonl"), bench.Path("/o.json"), "lora", 7, bf16=False)
    args = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert (
        args["--lr"] == repr(float(cfg.lr)) and args["--max-steps"] == "7" and args["--rank"] == str(cfg.rank)
    )
    assert args["--targets"] == ",".join(cfg.method.peft.target_modules)


@pytest.mark.slow
def test_quick_benchmark_writes_its_json(tmp_path):
    """`bench.py --quick` over one section runs, prints its table and writes a valid result file."""
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/bench.py",
            "--quick",
            "--sections",
            "overhead",
            "--out-dir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    files = list(tmp_path.glob("*-quick.json"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    result = json.loads(files[0].read_text())
    section = result["profiles"]["tiny-cpu"]["overhead"]
    assert "error" not in section
    assert section["summary"]["framework"]["n"] == 1 and section["summary"]["plain"]["n"] == 1
    assert section["checks"]["tokens_trained_identical"]
    assert section["ratios"]["train_tokens_per_s framework/plain"] > 0
    assert "framework/plain" in out.stdout
