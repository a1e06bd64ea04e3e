"""The benchmark's building blocks (benchmarks/), in this process: the Alpaca-like records, the batching modes
and token counter of the shim and the framework names it patches, the statistics, the plain script's
arguments. `tests/e2e/test_benchmark_run.py` runs the benchmark itself.

Nothing here asserts a speed: the benchmark measures and writes, it does not pass or fail on a number.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import alpaca_like, configs, plain_trainer, shim, stats
from benchmarks.sections import SECTION_FUNCS
from benchmarks.sections.batching import simulated_padding
from benchmarks.settings import BASE, SECTIONS
from src.data.collate import drop_packed_attention_mask


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
    batching, attn, ta, rest, syncs = shim.parse(
        [
            "--batching",
            "packing",
            "--attn",
            "eager",
            "--ta",
            "torch_compile=true",
            "--count-syncs",
            "--",
            "method=lora",
            "seed=1",
        ]
    )
    assert (batching, attn, ta, rest, syncs) == (
        "packing",
        "eager",
        {"torch_compile": True},
        ["method=lora", "seed=1"],
        True,
    )
    assert shim.parse(["--", "seed=1"])[-1] is False
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
    pad = simulated_padding(lengths, batch_size=16, max_len=512)
    assert pad["pad_to_max"] > pad["dynamic"] > pad["group_by_length"] > pad["packing"] == 0.0


def test_summaries_and_ratios():
    runs = [
        {"rc": 0, "status": "success", "train_tokens_per_s": v, "wall_s": 2.0} for v in (10.0, 30.0, 20.0)
    ]
    runs.append({"rc": 1, "status": "failed", "train_tokens_per_s": 1000.0})
    s = stats.summarise(runs)
    assert (
        s["n"] == 3
        and s["failed"] == 1
        and s["train_tokens_per_s"] == {"median": 20.0, "min": 10.0, "max": 30.0}
    )
    assert stats.ratio(stats.med(s, "train_tokens_per_s"), 10.0) == 2.0 and stats.ratio(1.0, None) is None
    assert stats.paired_ratio(runs[:2], [{"x": 1}, {"train_tokens_per_s": 10.0}], "train_tokens_per_s") == 3.0


def test_plain_argv_mirrors_the_framework_settings(monkeypatch):
    """Every setting the plain script takes is the one the framework resolved, and the script accepts them."""
    cfg = configs.compose([*BASE, "method=lora"])
    argv = configs.plain_argv(cfg, "/m", Path("/r.jsonl"), Path("/o.json"), "lora", 7, bf16=False)
    args = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert (
        args["--lr"] == repr(float(cfg.lr)) and args["--max-steps"] == "7" and args["--rank"] == str(cfg.rank)
    )
    assert args["--targets"] == ",".join(cfg.method.peft.target_modules)
    d, t = cfg.data, cfg.trainer
    assert args == {
        "--model": "/m",
        "--records": "/r.jsonl",
        "--out": "/o.json",
        "--method": "lora",
        "--train-size": str(d.splits.train),
        "--val-size": str(d.splits.validation),
        "--split-seed": str(d.split_seed),
        "--max-seq-len": str(d.max_seq_len),
        "--prompt": d.prompt,
        "--response": d.response,
        "--batch-size": str(t.batch_size),
        "--eval-batch-size": str(t.eval_batch_size),
        "--max-steps": "7",
        "--lr": repr(float(cfg.lr)),
        "--weight-decay": repr(float(cfg.weight_decay)),
        "--warmup": str(float(cfg.lr_schedule.warmup_ratio)),  # warmup_steps is 0: the ratio applies
        "--max-grad-norm": str(t.max_grad_norm),
        "--logging-steps": str(t.logging_steps),
        "--seed": str(t.seed),
        "--prompt-if-empty": d.prompt_if_empty.template,
        "--prompt-if-empty-field": d.prompt_if_empty.field,
        "--rank": str(cfg.method.peft.r),
        "--alpha": str(cfg.method.peft.lora_alpha),
        "--targets": ",".join(cfg.method.peft.target_modules),
        "--fan-in-fan-out": "1",  # GPT-2's Conv1D
    }
    assert argv[:2] == [sys.executable, str(configs.REPO / "benchmarks" / "plain_trainer.py")]
    monkeypatch.setattr(sys, "argv", argv[1:])
    parsed = plain_trainer.parse()  # the script takes every argument the bench passes
    assert (parsed.lr, parsed.max_steps, parsed.rank, parsed.prompt_if_empty_field) == (
        float(cfg.lr),
        7,
        int(cfg.rank),
        "input",
    )


def test_every_section_has_its_function():
    assert tuple(SECTION_FUNCS) == SECTIONS


def test_shim_patches_the_names_the_framework_calls(monkeypatch, tmp_path):
    """A prototype reaches a run only through the names the recipe looks up when it runs: src.methods.apply
    (src/train.py calls `methods.apply`) and src.trainer.collator (make_trainer calls `collator`)."""
    from transformers import DataCollatorWithFlattening, DataCollatorWithPadding, Trainer
    from transformers.training_args import TrainingArguments

    import src.methods
    import src.train
    import src.trainer
    from src import specs

    assert "apply" in src.train.train.__code__.co_names
    assert "collator" in src.trainer.make_trainer.__code__.co_names
    for owner, name in (
        (src.methods, "apply"),
        (src.trainer, "collator"),
        (TrainingArguments, "__post_init__"),
        (Trainer, "_get_train_sampler"),
        (Trainer, "compute_loss"),
    ):
        monkeypatch.setattr(owner, name, getattr(owner, name))  # put back after the test
    apply, collator = src.methods.apply, src.trainer.collator

    assert shim.install("packing", None, {}, None) == ["trainer.batching=packing"]  # the framework's own mode
    assert src.trainer.collator is collator and src.methods.apply is not apply
    src.methods.apply = apply

    assert shim.install("flatten", "eager", {"dataloader_drop_last": True}, None) == [
        "trainer.batching=dynamic"
    ]
    tok = _Tok()
    assert isinstance(src.trainer.collator(tok, 16, "dynamic", False), DataCollatorWithFlattening)
    assert isinstance(src.trainer.collator(tok, 16, "dynamic", True), DataCollatorWithPadding)  # labelled

    cfg = configs.compose([*BASE, "method=full"])
    model = _tiny_model()
    assert model.config._attn_implementation != "eager" and not model._forward_pre_hooks
    assert src.methods.apply is not apply
    trained = src.methods.apply(model, specs.of(cfg).method, cfg.method, cfg.model)
    assert trained.config._attn_implementation == "eager"  # --attn IMPL
    assert len(trained._forward_pre_hooks) == 1  # the TokenCounter
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert args.dataloader_drop_last is True  # --ta KEY=JSON

    src.methods.apply = apply
    sampler, loss = Trainer._get_train_sampler, Trainer.compute_loss
    shim.install("bucketed", None, {}, None)
    assert Trainer._get_train_sampler is not sampler and Trainer.compute_loss is loss
    shim.install("group_by_length_tw", None, {}, None)
    assert Trainer.compute_loss is not loss
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert args.train_sampling_strategy == "group_by_length"
