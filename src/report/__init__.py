"""Study reports: `python -m src.report <dir> [--allow-stale]` turns the records of a grid into something to read.

From every `result.json` under <dir> (src.records.read_records) it writes, beside them:

- `results.csv`: one row per run (every status): folder, status, stale, the varied keys, every metric
  (predicted_memory and contention flattened, peak_memory_ratio = measured / predicted, memory_added_mb =
  peak − memory when training began), why its timing is marked busy, OOM retries and the trainer settings
  finally used, the step a failed run reached, the error line, code key;
- `report.md`: a table of the successful runs (varied keys, cost and quality metrics, measured and
  predicted peak memory, memory added, a note per row that needed OOM retries) with bold only where a
  value is distinguishable (marks.py: exact sizes at their best; measured values only with replicates whose
  95% intervals separate; with a single seed none), timings taken on a busy machine marked †, time/epoch
  extrapolated from part of an epoch marked ~, each rule stated under the table; the fixed settings, the
  plots, the runs that did not succeed (error line and step; skipped_oom cells with their predicted memory)
  and the run folders without a finished record;
- `plot-*.png`, by what varied: metrics against each numeric key (memory and throughput from zero, a log2
  axis for ranks), bars per categorical key, the training- and eval-loss curves, eval loss against memory
  and trainable parameters with the Pareto frontier, and measured against predicted peak memory; on CPU
  memory is what training added (or left out for records without its baseline); labels never overprint.

Stale runs (a `code_key` other than the current records.code_key()) stay in the table, flagged, but out
of bold, plots and the frontier, and never share a replicate row with current runs; `--allow-stale`
compares them anyway. Varied keys are the settings that differ across runs: the ones the overrides
name first (not hydra.* / sweep.*), then config-group choices and the settings that follow from them
(e.g. `lr`). When `seed` varies the runs are replicates: one row per setting with mean ± std and a 95%
confidence interval. Files are written atomically; with WANDB_MODE=online the table and plots also go
to the study's W&B group. Nothing here imports torch.

Modules: stats (replicate statistics), columns (metric columns and formatting), study (loading), marks
(bold, †, ~ and the memory shown, with the sentences that explain them), tables, figures (figure machinery:
axes from zero, labels apart), plots, curves (loss curves), document (report.md), writer (write_report),
wandb_upload, cli.
"""

from src.report.cli import main
from src.report.study import Study, load
from src.report.writer import CSV_NAME, MD_NAME, Report, write_report

__all__ = ["CSV_NAME", "MD_NAME", "Report", "Study", "load", "main", "write_report"]
