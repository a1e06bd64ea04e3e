"""The studies answer their question on the embedded default (a pretrained tiny GPT-2 fine-tuned on tasks its
pretraining never showed): the rank study separates rank 1 from rank 64 by more than the seeds spread, LoRA
at rank 8 gets near full fine-tuning, and the methods study ranks the methods in a defensible order.

Real `python -m src.run -m +sweep=...` grids on the study's own defaults (60 steps), generation and the
forgetting evaluation left out to keep them short; the eval loss they compare is on the 200 validation
records."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from src.records import RECORD
from tests.helpers import record, run_cli

pytestmark = pytest.mark.slow

QUIET = ("logger=none", "eval.num_samples=0", "eval.forgetting=false", "eval.test_split=false")


def _grid(tmp_path: Path, name: str, *args: str) -> dict[tuple[str, ...], list[float]]:
    """Eval loss per cell, the seed left out of the cell's key: {("method=lora", "rank=8"): [loss, ...]}."""
    out = tmp_path / name
    proc = run_cli("-m", *args, *QUIET, f"hydra.sweep.dir={out}", timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    cells: dict[tuple[str, ...], list[float]] = {}
    for path in sorted(out.glob(f"*/{RECORD}")):
        rec = record(path.parent)
        assert rec["status"] == "success", rec["error"]
        key = tuple(o for o in rec["overrides"] if o.split("=")[0] in ("method", "rank"))
        cells.setdefault(key, []).append(rec["metrics"]["eval_loss"])
    return cells


def test_the_rank_study_separates_ranks_beyond_the_seed_spread(tmp_path):
    cells = _grid(tmp_path, "ranks", "+sweep=ranks", "rank=1,8,64", "seed=0,1,2")
    r1, r8, r64 = cells[("rank=1",)], cells[("rank=8",)], cells[("rank=64",)]
    assert len(r1) == len(r8) == len(r64) == 3
    spread = max(max(x) - min(x) for x in (r1, r8, r64))
    # rank 1 learns less than rank 64, and not by the luck of a seed; rank 8 is already past rank 1 (how
    # far beyond 8 the loss still falls is the study's finding, not asserted here)
    assert statistics.mean(r1) - statistics.mean(r64) > spread, (r1, r8, r64)
    assert statistics.mean(r1) - statistics.mean(r8) > spread, (r1, r8, r64)


def test_the_methods_study_ranks_the_methods(tmp_path):
    loss = {k[0].split("=")[1]: v[0] for k, v in _grid(tmp_path, "methods", "+sweep=methods").items()}
    assert set(loss) == {"full", "lora", "qlora", "prompt_tuning", "head_only"}
    # LoRA (r=8) within 10% of full fine-tuning; QLoRA (the same adapter on a 4-bit base) near LoRA
    assert loss["full"] <= loss["lora"] <= 1.1 * loss["full"], loss
    assert abs(loss["qlora"] - loss["lora"]) < 0.05 * loss["lora"], loss
    # the methods that train no block (soft prompt, head) trail the ones that adapt every block
    assert max(loss["full"], loss["lora"], loss["qlora"]) < min(loss["prompt_tuning"], loss["head_only"]), (
        loss
    )
