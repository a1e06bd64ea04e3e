"""The DPO verdict: win rate with ties counted half and its bootstrap interval, per-sample scores (a task
metric, a reward model the test builds), and judge_against end to end with two tiny causal LMs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from src import data, models, specs
from src.config import ConfigError, validate
from src.evaluation import generation, reward, scoring, verdict
from tests.helpers import SESSION_CACHE, TableRecorder, compose_cfg, load_base

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------- win_rate


def test_win_rate_hand_computed():
    # Outcomes: win (3>1), tie (1=1), loss (2<3), win (2>0) -> (1 + 0.5 + 0 + 1) / 4.
    got = verdict.win_rate([3, 1, 2, 2], [1, 1, 3, 0], n_boot=500, seed=7)
    assert (got["win_rate"], got["wins"], got["ties"], got["losses"], got["n"]) == (0.625, 2, 1, 1, 4)
    assert got["ci_low"] <= 0.625 <= got["ci_high"] and 0.0 <= got["ci_low"] < got["ci_high"] <= 1.0
    assert verdict.win_rate([3, 1, 2, 2], [1, 1, 3, 0], n_boot=500, seed=7) == got  # a seed, one interval
    # The percentile bootstrap over prompts, as numpy's Generator(seed) draws it.
    outcomes = np.array([1.0, 0.5, 0.0, 1.0])
    means = outcomes[np.random.default_rng(7).integers(0, 4, size=(500, 4))].mean(1)
    assert (got["ci_low"], got["ci_high"]) == tuple(np.percentile(means, [2.5, 97.5]))


def test_win_rate_ties_half_all_wins_and_one_prompt():
    ties = verdict.win_rate([0.3, 2.0], [0.3, 2.0])
    assert ties == {"win_rate": 0.5, "ci_low": 0.5, "ci_high": 0.5, "wins": 0, "ties": 2, "losses": 0, "n": 2}
    wins = verdict.win_rate([2, 3, 4], [1, 1, 1], n_boot=200)
    assert (wins["win_rate"], wins["ci_low"], wins["ci_high"], wins["wins"]) == (1.0, 1.0, 1.0, 3)
    one = verdict.win_rate([0.0], [1.0])
    assert (one["win_rate"], one["ci_low"], one["ci_high"], one["losses"]) == (0.0, 0.0, 0.0, 1)
    with pytest.raises(ValueError, match="3 policy scores but 2 reference"):
        verdict.win_rate([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="n=0"):
        verdict.win_rate([], [])
    with pytest.raises(ValueError, match="not finite"):
        verdict.win_rate([float("nan")], [1.0])


# --------------------------------------------------------------------------- config


def test_verdict_config_keys_and_validation():
    cfg = compose_cfg()
    assert OmegaConf.to_container(cfg.eval.verdict) == {
        "scorer": "auto",
        "bootstrap": 1000,
        "seed": 0,
        "num_prompts": None,
    }
    validate(compose_cfg("eval.verdict.scorer=bleu", "eval.verdict.num_prompts=8"))
    bad = {
        "eval.verdict.scorer=reward": r"eval.verdict.scorer=reward: needs eval.reward_model",
        "eval.verdict.scorer=meteor": r"eval.verdict.scorer='meteor': must be one of auto, reward, rouge, ",
        "eval.verdict.bootstrap=0": r"eval.verdict.bootstrap=0: must be an integer ≥ 1",
        "eval.verdict.num_prompts=9": r"eval.verdict.num_prompts=9: must be ≤ eval.num_samples=8",
        "+eval.verdict.boot=5": r"eval.verdict.boot: unknown key; did you mean eval.verdict.bootstrap\?",
    }
    for override, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            validate(compose_cfg(override))


# --------------------------------------------------------------------------- per-sample scores


@pytest.fixture(scope="module")
def tiny():
    """(cfg, tokenizer, policy, reference): the tiny GPT-2 spread out two ways, so their greedy answers differ
    from each other and between prompts."""
    cfg = validate(
        compose_cfg(
            "logger=none",
            "eval.num_samples=4",
            "eval.generation.max_new_tokens=6",
            f"cache_dir={SESSION_CACHE}",
        )
    )
    path = str(models.materialise_tiny(cfg.model, SESSION_CACHE))
    tok = models.load_tokenizer(path)
    pair = []
    for seed in (1, 2):
        model = load_base(cfg)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.2)
        pair.append(model)
    return cfg, tok, *pair


@pytest.fixture(scope="module")
def reward_folder(tiny, tmp_path_factory):
    """A one-label GPT-2 reward model with the tiny tokenizer beside it, saved as a local folder."""
    from transformers import GPT2Config, GPT2ForSequenceClassification

    _, tok, _, _ = tiny
    torch.manual_seed(0)
    rm = GPT2ForSequenceClassification(
        GPT2Config(
            vocab_size=len(tok), n_layer=1, n_embd=32, n_head=2, n_positions=256, num_labels=1, pad_token_id=0
        )
    )
    folder = tmp_path_factory.mktemp("rm")
    rm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_per_sample_scores_with_a_metric():
    ev = compose_cfg().eval
    gens, refs = ["positive", "negative", "neutral"], ["positive", "positive", "neutral"]
    prompts = ["p1", "p2", "p3"]
    assert verdict.per_sample_scores(prompts, gens, refs, "accuracy", ev, ()) == [1.0, 0.0, 1.0]
    assert verdict.per_sample_scores(prompts, gens, refs, "auto", ev, ("accuracy", "rouge")) == [
        1.0,
        0.0,
        1.0,
    ]
    # rouge scores a sample by rougeL: the LCS "the cat on the mat" is 5 of 6 words on both sides.
    got = verdict.per_sample_scores(
        ["p", "q"], ["the cat sat on the mat", "hello"], ["the cat is on the mat", "hello"], "rouge", ev, ()
    )
    assert got == pytest.approx([5 / 6, 1.0])
    assert verdict.scorer_label("rouge") == "rougeL" and verdict.scorer_label("reward") == "reward"
    with pytest.raises(ConfigError, match="eval.verdict.scorer=auto: no eval.reward_model"):
        verdict.per_sample_scores(prompts, gens, refs, "auto", ev, ())
    with pytest.raises(ConfigError, match="eval.verdict.scorer=reward: needs eval.reward_model"):
        verdict.per_sample_scores(prompts, gens, refs, "reward", ev, ("accuracy",))
    with pytest.raises(ValueError, match="3 prompts, 2 generations"):
        verdict.per_sample_scores(prompts, gens[:2], refs, "accuracy", ev, ())


def test_per_sample_scores_with_a_reward_model(reward_folder):
    ev = OmegaConf.merge(
        compose_cfg().eval, {"reward_model": reward_folder, "reward": {"batch_size": 2, "max_length": 64}}
    )
    prompts, gens = ["Reverse 3 1 2.", "Add 2 and 2.", "Say hi."], ["2 1 3", "4", "hi there, friend"]
    got = verdict.per_sample_scores(prompts, gens, ["x", "y", "z"], "reward", ev, ("accuracy",))
    assert got == reward.reward_scores(prompts, gens, reward_folder, 2, 64, -1)
    assert len(set(got)) == 3
    assert verdict.per_sample_scores(prompts, gens, ["x", "y", "z"], "auto", ev, ("accuracy",)) == got


# --------------------------------------------------------------------------- judge_against


def _policy_samples(cfg, tok, policy, run_dir):
    """The policy's generations as the recipe makes them: evaluate_generations on the test prompts."""
    names = specs.of(cfg).text_metrics
    n, max_new = int(cfg.eval.num_samples), int(cfg.eval.generation.max_new_tokens)
    test = data.build(cfg.data, tok, SESSION_CACHE, num_prompts=n, reserve=max_new).test
    scoring.evaluate_generations(policy, tok, test.prompts, test.references, cfg.eval, names, run_dir)
    return names, test


def test_judge_against_end_to_end(tiny, reward_folder, tmp_path, capsys):
    cfg, tok, policy, ref_model = tiny
    # The reward model (auto picks it when set): graded scores, where the tiny models' answers score 0 on
    # accuracy and rouge alike.
    cfg = OmegaConf.merge(cfg, {"eval": {"reward_model": reward_folder}})
    names, test = _policy_samples(cfg, tok, policy, tmp_path)
    assert names == ("accuracy", "rouge")
    recorder = TableRecorder()
    out = verdict.judge_against(
        None, ref_model, tok, test.prompts, test.references, cfg.eval, names, tmp_path, "the SFT model",
        loggers=[recorder, object()],
    )  # fmt: skip
    assert set(out) == {
        "test/win_rate",
        "test/win_rate_low",
        "test/win_rate_high",
        "test/verdict_n",
        "test/score_policy",
        "test/score_reference",
    }
    assert out["test/verdict_n"] == 4
    assert all(0.0 <= out[f"test/win_rate{k}"] <= 1.0 for k in ("", "_low", "_high"))
    assert out["test/win_rate_low"] <= out["test/win_rate"] <= out["test/win_rate_high"]
    rows = [json.loads(x) for x in (tmp_path / verdict.VERDICT).read_text().splitlines()]
    samples = [json.loads(x) for x in (tmp_path / generation.SAMPLES).read_text().splitlines()]
    assert len(rows) == 4 and [r["prompt"] for r in rows] == list(test.prompts)
    assert [r["generation_policy"] for r in rows] == [s["generation"] for s in samples]  # not generated again
    theirs = generation.generate(ref_model, tok, test.prompts, cfg.eval.generation)
    assert [r["generation_reference"] for r in rows] == theirs and theirs != [
        s["generation"] for s in samples
    ]
    # Scores are the reward model's (as evaluate_generations scored the policy); outcomes and win rate follow.
    assert [r["score_policy"] for r in rows] == pytest.approx([s["reward"] for s in samples], abs=1e-4)
    want = reward.reward_scores(test.prompts, theirs, reward_folder)
    assert [r["score_reference"] for r in rows] == pytest.approx(want, abs=1e-4)
    want = verdict.win_rate([r["score_policy"] for r in rows], [r["score_reference"] for r in rows], 1000, 0)
    assert out["test/win_rate"] == want["win_rate"] and out["test/win_rate_low"] == want["ci_low"]
    assert [r["outcome"] for r in rows].count("win") == want["wins"] and want["ties"] == 0
    ((key, cols, cells),) = recorder.tables
    assert key == "test/verdict" and len(cells) == 4 and cols == list(rows[0])
    line = re.escape(
        f"tunegrid: verdict against the SFT model: win rate {want['win_rate']:.2f} "
        f"[{want['ci_low']:.2f}, {want['ci_high']:.2f}] over 4 prompts (scorer reward)"
    )
    assert re.search(line, capsys.readouterr().out)
    # The policy's rows passed in instead of read from samples.jsonl: the same verdict.
    again = verdict.judge_against(
        samples, ref_model, tok, test.prompts, test.references, cfg.eval, names, tmp_path / "b", "x"
    )
    assert again == out


def test_judge_against_itself_is_all_ties_and_a_reward_scorer(tiny, reward_folder, tmp_path):
    cfg, tok, policy, _ = tiny
    cfg = OmegaConf.merge(cfg, {"eval": {"reward_model": reward_folder, "verdict": {"num_prompts": 3}}})
    names, test = _policy_samples(cfg, tok, policy, tmp_path)
    out = verdict.judge_against(
        None, policy, tok, test.prompts, test.references, cfg.eval, names, tmp_path, "itself"
    )
    assert out["test/win_rate"] == out["test/win_rate_low"] == out["test/win_rate_high"] == 0.5
    assert out["test/verdict_n"] == 3 and out["test/score_policy"] == out["test/score_reference"]
    rows = [json.loads(x) for x in (tmp_path / verdict.VERDICT).read_text().splitlines()]
    assert [r["outcome"] for r in rows] == ["tie"] * 3
    rewards = [json.loads(x)["reward"] for x in (tmp_path / generation.SAMPLES).read_text().splitlines()][:3]
    assert [r["score_policy"] for r in rows] == pytest.approx(rewards, abs=1e-4)  # the same reward model
    # Rows for other prompts than the ones given are refused; no prompts (generation off) is no verdict.
    with pytest.raises(ValueError, match="policy row 0 is for another prompt"):
        verdict.judge_against(
            None, policy, tok, list(reversed(test.prompts)), test.references, cfg.eval, names, tmp_path, "x"
        )
    assert verdict.judge_against([], policy, tok, [], [], cfg.eval, names, tmp_path / "none", "x") == {}
    assert not (tmp_path / "none").exists()
