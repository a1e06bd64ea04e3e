"""The W&B backend (src/loggers.py) against a real W&B offline run, read back from its .wandb file: what is
logged after training (test metrics, forgetting, the generations table) lands in the history at the last
step, not in the summary alone."""

from __future__ import annotations

from pathlib import Path

from src.loggers import WandbLogger
from tests import wandb_reader


def read_back(run_dir: Path) -> wandb_reader.WandbRun:
    """The run's .wandb file once W&B has written it all: run.finish() can return before the service flushed
    the file (measured: 7 bytes, the header alone, right after the first run of a process); teardown waits."""
    import wandb

    wandb.teardown()
    return wandb_reader.read_run(wandb_reader.find_run_file(run_dir))


def offline_run(run_dir: Path) -> WandbLogger:
    run_dir.mkdir(parents=True, exist_ok=True)
    return WandbLogger(
        project="tunegrid-test", run_dir=run_dir, name="t", group="t", config={"rank": 8}, mode="offline"
    )


def test_metrics_after_training_land_in_the_history_at_the_last_step(tmp_path):
    lg = offline_run(tmp_path)
    lg.log({"eval/loss": 3.0}, 0)
    lg.log({"train/loss": 2.5}, 3)
    lg.log({"train/loss": 2.0, "eval/loss": 2.2}, 6)
    lg.log({"test/loss": 2.3}, 6)  # the test split's evaluation, at the last step
    lg.log_table("test/samples", ["prompt", "output"], [["a", "b"]])  # generations, then their scores
    lg.log({"test/rouge1": 0.25, "eval/forgetting": 0.1}, 6)
    lg.log({"test/late": 1.0}, 5)  # below the last step: kept, in the last step's row
    lg.finish({"status": "success", "eval_loss": 2.2, "test/rouge1": 0.25})

    wb = read_back(tmp_path)
    assert [row["_step"] for row in wb.history] == [0, 3, 6]
    last = wb.history[-1]
    assert last["test/rouge1"] == 0.25 and last["eval/forgetting"] == 0.1 and last["test/late"] == 1.0
    assert last["test/loss"] == 2.3 and last["train/loss"] == 2.0
    assert last["test/samples/_type"] == "table-file" and last["test/samples/nrows"] == 1  # the reader's keys
    assert wb.summary["test/rouge1"] == 0.25 and wb.exit_code == 0
    core_logs = "".join(p.read_text() for p in tmp_path.glob("wandb/*run-*/logs/*.log"))
    assert "ignoring partial history record" not in core_logs


def test_a_table_before_any_step_is_step_zero(tmp_path):
    lg = offline_run(tmp_path)
    lg.log_table("test/samples", ["prompt", "output"], [["a", "b"]])
    lg.log({"eval/loss": 1.0}, 0)
    lg.finish({"status": "success"})
    wb = read_back(tmp_path)
    assert [row["_step"] for row in wb.history] == [0]
    assert wb.history[0]["test/samples/_type"] == "table-file" and wb.history[0]["eval/loss"] == 1.0
