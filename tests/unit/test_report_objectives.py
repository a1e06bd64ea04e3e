"""A study that holds SFT and DPO runs (the dpo study: the SFT stage's records sit under the same folder):
a DPO loss is its own column, never beside SFT's token NLL, and the DPO metrics become columns."""

from __future__ import annotations

import copy

import pytest

from src import report
from tests.unit.test_report import RANK_METRICS, _resolved, md_table, write_run

pytestmark = pytest.mark.unit


def _config(objective: str, method: str) -> dict:
    cfg = copy.deepcopy(_resolved(f"objective={objective}", f"method={method}", "logger=none"))
    return cfg


def test_dpo_loss_is_its_own_column_and_dpo_metrics_show(tmp_path):
    sft = {**RANK_METRICS[8], "eval_loss": 1.9}
    dpo = {k: v for k, v in RANK_METRICS[8].items() if k not in ("perplexity", "test_perplexity")}
    dpo.update(eval_loss=0.61, test_loss=0.63, **{"eval/reward_accuracy": 0.7, "test/win_rate": 0.625})
    write_run(tmp_path / "sft" / "lora", ["method=lora"], sft, config=_config("sft", "lora"))
    write_run(tmp_path / "dpo-lora", ["objective=dpo", "method=lora"], dpo, config=_config("dpo", "lora"))
    report.write_report(tmp_path, plots=False)
    header, table = md_table((tmp_path / "report.md").read_text())
    col = {h: i for i, h in enumerate(header)}
    rows = {r[col["objective"]]: r for r in table}
    assert rows["sft"][col["eval loss"]] == "1.9000" and rows["sft"][col["eval DPO loss"]] == "—"
    assert rows["dpo"][col["eval loss"]] == "—" and rows["dpo"][col["eval DPO loss"]] == "0.6100"
    assert (
        rows["dpo"][col["eval/reward_accuracy"]] == "0.7000" and rows["dpo"][col["test/win_rate"]] == "0.6250"
    )
