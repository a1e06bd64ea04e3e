"""Unit tier for trainer.batching: the PackedRows collator's layout, packed loss == padded loss on every
architecture family the model configs use (GPT-2, GPT-Neo, Llama), and a short training run per mode.
The config-tier checks (auto's choice, packing where it cannot apply) are in test_config.py."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoConfig,
    GPTNeoForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from src import models
from src.config import validate
from src.data.collate import PackedRows, collator, drop_packed_attention_mask
from src.data.tokenise import IGNORE_INDEX
from tests.helpers import QUICK, SESSION_CACHE, compose_cfg, train_inprocess

PAD = 0
LENGTHS = (5, 9, 3, 12, 7, 1)


def features(lengths=LENGTHS, prompt=2):
    """Examples with distinct token ids (so each can be found in a packed row) and a masked prompt."""
    out, nxt = [], 1
    for n in lengths:
        ids = list(range(nxt, nxt + n))
        nxt += n
        out.append({"input_ids": ids, "labels": [IGNORE_INDEX] * min(prompt, n) + ids[prompt:]})
    return out


def padded(feats):
    width = max(len(f["input_ids"]) for f in feats)
    batch = {"input_ids": [], "labels": [], "attention_mask": []}
    for f in feats:
        pad = width - len(f["input_ids"])
        batch["input_ids"].append(f["input_ids"] + [PAD] * pad)
        batch["labels"].append(f["labels"] + [IGNORE_INDEX] * pad)
        batch["attention_mask"].append([1] * len(f["input_ids"]) + [0] * pad)
    return {k: torch.tensor(v) for k, v in batch.items()}


# --------------------------------------------------------------------------- layout


@pytest.mark.parametrize("max_len", [12, 16, 24, 64])
def test_packed_rows_hold_every_example_once_within_max_len(max_len):
    feats = features()
    batch = PackedRows(PAD, max_len)(feats)
    ids, labels, pos, mask = (batch[k] for k in ("input_ids", "labels", "position_ids", "attention_mask"))
    assert ids.shape == labels.shape == pos.shape == mask.shape
    assert ids.shape[1] <= max_len
    assert int(mask.sum()) == sum(LENGTHS)  # the Trainer's non-padding token count is unchanged
    # first-fit decreasing never needs more rows than examples, and fewer as soon as two fit together
    assert ids.shape[0] <= len(LENGTHS) and (max_len < 12 + 9 or ids.shape[0] < len(LENGTHS))
    found = 0
    for r in range(ids.shape[0]):
        n = int(mask[r].sum())
        assert mask[r, :n].all() and not mask[r, n:].any()  # real tokens first, then padding
        starts = [i for i in range(ids.shape[1]) if pos[r, i] == 0]
        for s, e in zip(starts, [*starts[1:], ids.shape[1]], strict=True):
            seg = ids[r, s:e].tolist()
            if s >= n:  # the row's trailing padding: its own segment, nothing to predict
                assert set(seg) == {PAD} and (labels[r, s:e] == IGNORE_INDEX).all()
                continue
            f = next(f for f in feats if f["input_ids"][0] == seg[0])
            assert seg == f["input_ids"]
            assert pos[r, s:e].tolist() == list(range(len(seg)))
            # the previous example's last token must not predict this one's first
            assert labels[r, s].item() == IGNORE_INDEX and labels[r, s + 1 : e].tolist() == f["labels"][1:]
            found += 1
    assert found == len(LENGTHS)


@pytest.mark.parametrize("seed", range(5))
def test_packing_never_processes_more_positions_than_dynamic_padding(seed):
    """rows x widest row <= batch x longest example (dynamic padding), and <= rows of max_len alone."""
    import random

    rng = random.Random(seed)
    packer = PackedRows(PAD, 128)
    for _ in range(200):
        lengths = [rng.randint(1, rng.choice([20, 60, 128])) for _ in range(rng.randint(1, 16))]
        rows = packer.rows(lengths)
        assert sorted(i for r in rows for i in r) == list(range(len(lengths)))
        width = max(sum(lengths[i] for i in r) for r in rows)
        assert width <= 128
        assert len(rows) * width <= len(lengths) * max(lengths)
        only_max = packer._first_fit(lengths, 128)
        assert len(rows) * width <= len(only_max) * max(sum(lengths[i] for i in r) for r in only_max)


def test_pad_to_max_and_dynamic_widths():
    cfg = validate(compose_cfg())
    tok = models.load_tokenizer(str(models.materialise_tiny(cfg.model, SESSION_CACHE)))
    feats = features()
    assert collator(tok, 32, "pad_to_max")(feats)["input_ids"].shape == (len(LENGTHS), 32)
    assert collator(tok, 32, "dynamic")(feats)["input_ids"].shape == (len(LENGTHS), max(LENGTHS))
    packing = collator(tok, 32, "packing")
    assert isinstance(packing, PackedRows) and packing.max_len == 32  # max_seq_len reaches the packer
    batch = packing(feats)
    assert batch["input_ids"].shape[1] <= 32 and int(batch["attention_mask"].sum()) == sum(LENGTHS)


# --------------------------------------------------------------------------- packed loss == padded loss

# Larger random weights than the libraries' default (0.02): attention then moves the hidden states enough that
# a leak between packed examples shows in the loss far above float noise.
INIT = {"initializer_range": 0.5}
TINY_CONFIGS = {
    "gpt2": lambda: GPT2LMHeadModel(
        GPT2Config(
            n_layer=2,
            n_embd=32,
            n_head=2,
            vocab_size=128,
            n_positions=64,
            bos_token_id=1,
            eos_token_id=1,
            **INIT,
        )
    ),
    # a local-attention layer with a window shorter than the rows, as GPT-Neo has
    "gpt_neo": lambda: GPTNeoForCausalLM(
        GPTNeoConfig(
            num_layers=2,
            hidden_size=32,
            num_heads=2,
            vocab_size=128,
            max_position_embeddings=64,
            attention_types=[[["global", "local"], 1]],
            window_size=8,
            bos_token_id=1,
            eos_token_id=1,
            **INIT,
        )
    ),
    "llama": lambda: LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=2,
            hidden_size=32,
            num_attention_heads=2,
            num_key_value_heads=1,
            intermediate_size=64,
            vocab_size=128,
            max_position_embeddings=64,
            bos_token_id=1,
            eos_token_id=1,
            **INIT,
        )
    ),
}


@pytest.mark.parametrize("arch", list(TINY_CONFIGS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_packed_loss_equals_padded_loss(arch, mode):
    """Examples packed into one row attend only to themselves: the loss (and so every gradient) is that of
    padded batches. config.use_cache stays at its default (on), the case the hook must handle."""
    torch.manual_seed(0)
    model = TINY_CONFIGS[arch]()
    assert model.config.use_cache
    for m in model.modules():  # dropout off, so that train mode is deterministic too
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    model.train(mode == "train")
    feats = features()
    reference = model(**padded(feats)).loss.item()

    batch = PackedRows(PAD, 24)(feats)
    assert batch["input_ids"].shape[0] < len(feats)  # several examples do share rows
    hook = model.register_forward_pre_hook(drop_packed_attention_mask, with_kwargs=True)
    try:
        packed = model(**batch).loss.item()
    finally:
        hook.remove()
    assert packed == pytest.approx(reference, abs=1e-5)
    # Without the hook, the attention mask makes every row one sequence: examples see each other.
    leaky = model(**batch).loss.item()
    assert abs(leaky - reference) > 1e-3, (leaky, reference)  # 100x the tolerance above


# --------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def by_mode(tmp_path_factory):
    runs = {}
    for method in ("full", "lora"):  # PEFT's wrapper passes the packed batch (and use_cache) through
        for mode in ("packing", "dynamic", "pad_to_max"):
            folder = tmp_path_factory.mktemp(f"{method}-{mode}")
            runs[method, mode] = train_inprocess(folder, f"method={method}", f"trainer.batching={mode}")[0]
    return runs


@pytest.mark.parametrize("method", ["full", "lora"])
def test_modes_train_the_same_batches_to_the_same_loss(by_mode, method):
    ref = by_mode[method, "dynamic"]
    for mode in ("packing", "pad_to_max"):
        m = by_mode[method, mode]
        assert m["batching"] == mode
        assert m["tokens_trained"] == ref["tokens_trained"]  # the same examples, the same count
        assert m["initial_eval_loss"] == pytest.approx(ref["initial_eval_loss"], abs=1e-5)
        assert m["eval_loss"] == pytest.approx(ref["eval_loss"], abs=1e-4)  # measured: equal to ~1e-6
        assert m["eval_loss"] < m["initial_eval_loss"]
    # Padding share: exact where every row has max_seq_len positions, and ordered as the modes promise.
    cfg = validate(compose_cfg(*QUICK))
    positions = cfg.trainer.max_steps * cfg.trainer.batch_size * cfg.data.max_seq_len
    pad = {mode: by_mode[method, mode]["padding_share"] for mode in ("pad_to_max", "dynamic", "packing")}
    assert pad["pad_to_max"] == pytest.approx(1 - ref["tokens_trained"] / positions, abs=1e-9)
    assert pad["pad_to_max"] > pad["dynamic"] >= pad["packing"] >= 0, pad


def test_default_batching_is_packing_and_tokens_per_s_excludes_evaluation(tmp_path):
    m, _, trainer = train_inprocess(tmp_path)  # QUICK evaluates every 6 steps, inside trainer.train()
    assert m["batching"] == "packing"
    # The evaluations inside trainer.train() are those at steps 6 and 12 (max_steps=12, eval_every=6); the
    # one before training (step 0) is not part of train_runtime and is not taken out of it.
    cfg = validate(compose_cfg(*QUICK))
    every, steps = int(cfg.trainer.eval_every), int(cfg.trainer.max_steps)
    inside = [h for h in trainer.state.log_history if "eval_loss" in h and h["step"] > 0]
    assert [h["step"] for h in inside] == list(range(every, steps + 1, every))
    assert m["eval_in_train_s"] == pytest.approx(sum(h["eval_runtime"] for h in inside), rel=1e-9)
    assert 0 < m["eval_in_train_s"] < m["train_runtime_s"]
    # tokens/s is over the training time alone: above the rate over train_runtime, which includes them.
    assert m["tokens_per_s"] > m["tokens_trained"] / m["train_runtime_s"]
    assert math.isfinite(m["eval_loss"])
