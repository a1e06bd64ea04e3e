"""Loading a study: the finished records under a folder, what varied across them, and which runs ran
other code than now (stale), so that the tables and plots compare like with like."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src import records
from src.config import flatten
from src.records import RECORD, STATUSES, read_records
from src.report.columns import TABLE_METRICS, Metric, _is_task_key, show, task_metric
from src.report.stats import Stat, number

METRICS_LOG = "metrics.jsonl"
SKIPPED_OOM = "skipped_oom"
SKIPPED_OOM_TEXT = "skipped (predicted not to fit)"
_PREDICTED_IN_ERROR = re.compile(r"predicted peak ([0-9.]+) MiB > device memory ([0-9.]+) MiB")


@dataclass
class Run:
    dir: Path
    name: str  # run folder relative to the report root
    record: dict[str, Any]
    settings: dict[str, Any]  # candidate keys -> values (see settings_of)
    override_keys: list[str]
    stale: bool = False  # ran with other code than the report's (see load)

    @property
    def status(self) -> str:
        return str(self.record.get("status"))

    @property
    def ok(self) -> bool:
        return self.status == "success"

    @property
    def metrics(self) -> dict[str, Any]:
        return self.record.get("metrics") or {}

    @functools.cached_property
    def values(self) -> dict[str, Any]:
        """The record's metrics plus the derived peak_memory_ratio (measured / predicted peak memory) and
        memory_added_mb (peak minus the memory in use when training began; records from before that baseline
        was measured have none)."""
        out = dict(self.metrics)
        if ((self.record.get("config") or {}).get("objective") or {}).get("pairs"):
            # A preference loss (DPO's) is not a token NLL: its own columns, never ranked or plotted with SFT's.
            for split in ("eval", "test", "initial_eval"):
                if f"{split}_loss" in out:
                    out[f"{split}_pref_loss"] = out.pop(f"{split}_loss")
        if self.status == SKIPPED_OOM and out.get("predicted_memory_mb") is None:
            out["predicted_memory_mb"] = self.predicted_skip()[0]
        peak, pred = number(out.get("peak_memory_mb")), number(out.get("predicted_memory_mb"))
        if peak is not None and pred:
            out["peak_memory_ratio"] = peak / pred
        base = number(out.get("memory_before_training_mb"))
        if peak is not None and base is not None:
            out["memory_added_mb"] = max(peak - base, 0.0)
        return out

    @property
    def contention(self) -> dict[str, Any] | None:
        """How busy the machine was while the run's last session trained (None in older records)."""
        c = self.metrics.get("contention")
        return c if isinstance(c, dict) else None

    @property
    def extrapolated(self) -> bool:
        """time_per_epoch_s is the session's time scaled up from less than one epoch. Records from before the
        flag say it through `epochs` (the epochs the run trained) below one."""
        flag = self.metrics.get("time_per_epoch_extrapolated")
        if isinstance(flag, bool):
            return flag
        epochs = number(self.metrics.get("epochs"))
        return epochs is not None and epochs < 1 - 1e-9

    @property
    def has_config(self) -> bool:
        return bool(self.record.get("config"))

    @property
    def device(self) -> str | None:
        return (self.record.get("env") or {}).get("device")

    @property
    def on_cpu(self) -> bool:
        return str(self.device).lower() == "cpu"

    def predicted_skip(self) -> tuple[float | None, float | None]:
        """(predicted peak MiB, device memory MiB) of a skipped_oom cell: from the record's metrics when it
        holds them, else from the SkippedOOM message src.costs.check_fits writes."""
        pred = number(self.metrics.get("predicted_memory_mb"))
        cap = None
        if m := _PREDICTED_IN_ERROR.search(str(self.record.get("error") or "")):
            pred = pred if pred is not None else float(m.group(1))
            cap = float(m.group(2))
        return pred, cap

    def oom_note(self) -> str | None:
        """What a run that succeeded after out-of-memory retries finally trained with; None without retries."""
        n = self.record.get("oom_retries")
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            return None
        used = self.record.get("trainer_used") or {}
        parts = [f"{k}={used[k]}" for k in ("batch_size", "grad_accum") if used.get(k) is not None]
        if used.get("gradient_checkpointing"):
            parts.append("gradient checkpointing")
        return f"{n} OOM {'retry' if n == 1 else 'retries'}" + (
            f": ran with {', '.join(parts)}" if parts else ""
        )


@dataclass
class Group:
    """One row of the table: the runs that share every varied key except seed (one run unless replicates)."""

    values: dict[str, Any]
    runs: list[Run]

    def stat(self, key: str) -> Stat | None:
        return Stat.of([v for r in self.runs if (v := number(r.values.get(key))) is not None])

    @property
    def stale(self) -> int:
        """How many of the row's runs are stale."""
        return sum(r.stale for r in self.runs)


@dataclass
class Study:
    root: Path
    runs: list[Run]  # every finished record (any of records.STATUSES)
    skipped: list[tuple[str, str]]  # (run folder, why): folders without a finished record
    keys: list[str]  # varied keys without seed: swept ones first, then derived ones
    swept: list[str]  # the varied keys some run's overrides name
    fixed: dict[str, Any]  # settings that are the same in every run
    replicates: bool  # seed varies
    task_metrics: list[Metric] = field(default_factory=list)
    code: str = ""  # the current records.code_key() that runs are compared with
    allow_stale: bool = False  # stale runs count for bold, plots and the Pareto frontier

    @property
    def ok(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    @property
    def failed(self) -> list[Run]:
        """Every run that did not succeed (skipped_oom cells included)."""
        return [r for r in self.runs if not r.ok]

    @property
    def stale(self) -> list[Run]:
        """Successful runs whose code_key differs from the current code (or that have none)."""
        return [r for r in self.ok if r.stale]

    @property
    def compared(self) -> list[Run]:
        """The successful runs that bold, plots and the Pareto frontier use: stale ones only with allow_stale."""
        return [r for r in self.ok if self.allow_stale or not r.stale]

    def counts(self) -> str:
        """'5 run(s): 3 succeeded (1 stale), 1 oom, 1 skipped (predicted not to fit)'."""
        parts = [f"{len(self.ok)} succeeded" + (f" ({len(self.stale)} stale)" if self.stale else "")]
        for status in STATUSES:  # load() keeps only records with one of these
            n = sum(r.status == status for r in self.runs)
            if status != "success" and n:
                parts.append(f"{n} {SKIPPED_OOM_TEXT if status == SKIPPED_OOM else status}")
        return f"{len(self.runs)} run(s): " + ", ".join(parts)

    @property
    def metrics(self) -> list[Metric]:
        return [*TABLE_METRICS, *self.task_metrics]

    @property
    def plot_keys(self) -> list[str]:
        """The keys plots are drawn against: the swept ones (derived keys follow from them)."""
        return self.swept or self.keys

    def groups(self) -> list[Group]:
        """Successful runs, grouped by the varied keys (seed aside) in the order they first appear. Stale
        runs never share a row with current ones (unless allow_stale)."""
        out: dict[str, Group] = {}
        for r in self.ok:
            values = {k: r.settings.get(k) for k in self.keys}
            key = ident(values) if self.replicates else r.name
            if r.stale and not self.allow_stale:
                key += " stale"
            out.setdefault(key, Group(values, [])).runs.append(r)
        return list(out.values())

    def compared_groups(self) -> list[Group]:
        """The rows that bold, plots and the Pareto frontier use: without stale runs unless allow_stale."""
        return [g for g in self.groups() if self.allow_stale or not g.stale]

    def label(self, values: dict[str, Any], keys: Sequence[str] | None = None) -> str:
        keys = self.plot_keys if keys is None else keys
        return ", ".join(f"{k}={show(values.get(k))}" for k in keys) or "run"

    @property
    def study_name(self) -> str | None:
        names = {n for r in self.runs if (n := r.settings.get("study") or r.settings.get("sweep"))}
        return names.pop() if len(names) == 1 else None


def ident(values: Any) -> str:
    """A setting's value (or a dict of them) as a hashable, order-free key."""
    return json.dumps(values, sort_keys=True, default=str)


def natural(s: str) -> list[Any]:
    """Sort key that orders run folders 2 before 10."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def parse_scalar(text: str) -> Any:
    """An override's value as the YAML scalar it denotes: '4' -> 4, '1e-3' -> 0.001, 'null' -> None."""
    low = text.strip().lower()
    if low in ("null", "none", "~"):
        return None
    if low in ("true", "false"):
        return low == "true"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip().strip("'\"")


# Config keys that are candidates for "varied keys" besides top-level scalars and group choices.
_DETAIL_PREFIXES = ("trainer.", "lr_schedule.warmup_", "data.max_seq_len", "eval.")
_NEVER = {"trainer.seed"}  # follows `seed`
# Override keys that are not settings of a run: Hydra's own, and the resume / skip switches (sweep.force,
# sweep.rerun_stale, sweep.skip_predicted_oom …) that a re-run of a grid adds.
_NOT_SETTINGS = ("hydra.", "sweep.")


def settings_of(record: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(settings, override keys) of one record. Settings: top-level scalars, each config group's choice
    (its `name`), trainer and warm-up scalars, and every key the overrides name (config value first) but
    hydra.* and sweep.* (resume switches)."""
    cfg = record.get("config") or {}
    flat = flatten(cfg) if cfg else {}
    s: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            if isinstance(v.get("name"), str | int | float):
                s[k] = v["name"]
        elif isinstance(v, list):
            s[k] = json.dumps(v)
        else:
            s[k] = v
    for k, v in flat.items():
        if k.startswith(_DETAIL_PREFIXES) and k not in _NEVER and not isinstance(v, dict | list):
            s[k] = v
    keys: list[str] = []
    for ov in record.get("overrides") or []:
        k, sep, v = str(ov).partition("=")
        k = k.lstrip("+~")
        if not sep or k.startswith(_NOT_SETTINGS) or k in keys:
            continue
        keys.append(k)
        if k not in s:
            s[k] = flat[k] if k in flat else parse_scalar(v)
    return s, keys


def _run_dirs(root: Path) -> list[Path]:
    """Folders that are (or were) one run: they hold .hydra/ or metrics.jsonl."""
    found = {p.parent for p in root.rglob(".hydra") if p.is_dir()}
    found |= {p.parent for p in root.rglob(METRICS_LOG)}
    if (root / ".hydra").is_dir() or (root / METRICS_LOG).exists():
        found.add(root)
    return sorted(found, key=lambda p: natural(str(p)))


def _rel(path: Path, root: Path) -> str:
    try:
        rel = path.resolve().relative_to(root.resolve())
        return str(rel) if str(rel) != "." else path.name
    except ValueError:
        return str(path)


def load(root: Path, allow_stale: bool = False, code: str | None = None) -> Study:
    """Read the records under root and work out what varied. A run is stale when its `code_key` differs
    from `code` (default: records.code_key(), the code and library versions of this checkout); a
    successful record without a code_key counts as stale too (as records.find_done treats it)."""
    root = Path(root)
    code = records.code_key() if code is None else code
    runs: list[Run] = []
    skipped: list[tuple[str, str]] = []
    finished: set[Path] = set()
    for rec in read_records(root):
        run_dir = Path(rec.pop("_path")).parent
        finished.add(run_dir.resolve())
        if rec.get("status") not in STATUSES:
            skipped.append((_rel(run_dir, root), f"record not finished (status {rec.get('status')!r})"))
            continue
        s, keys = settings_of(rec)
        key = rec.get("code_key")
        stale = key != code if rec.get("status") == "success" else key is not None and key != code
        runs.append(Run(run_dir, _rel(run_dir, root), rec, s, keys, stale))
    for d in _run_dirs(root):
        if d.resolve() not in finished:
            skipped.append((_rel(d, root), f"no {RECORD} (still running, killed, or not started)"))
    runs.sort(key=lambda r: natural(r.name))
    skipped.sort(key=lambda t: natural(t[0]))
    keys, swept, fixed = varied_keys(runs)
    replicates = "seed" in keys
    keys = [k for k in keys if k != "seed"]
    swept = [k for k in swept if k != "seed"]
    task: dict[str, Metric] = {}
    for r in runs:
        if r.ok:
            for k, v in r.metrics.items():
                if _is_task_key(k) and number(v) is not None:
                    task.setdefault(k, task_metric(k))
    return Study(root, runs, skipped, keys, swept, fixed, replicates, list(task.values()), code, allow_stale)


def varied_keys(runs: Sequence[Run]) -> tuple[list[str], list[str], dict[str, Any]]:
    """(varied keys: swept first, then derived; swept keys; fixed settings).

    A key varies when two runs disagree on it. Runs without a resolved config (rejected before
    validation finished) only count for the keys their overrides name.
    """
    order: list[str] = []
    for r in runs:
        order += [k for k in r.settings if k not in order]
    varied: list[str] = []
    fixed: dict[str, Any] = {}
    for k in order:
        seen = set()
        for r in runs:
            if k in r.settings:
                seen.add(ident(r.settings[k]))
            elif r.has_config:
                seen.add("<missing>")
        if len(seen) > 1:
            varied.append(k)
        elif runs and k in runs[0].settings:
            fixed[k] = runs[0].settings[k]
    swept: list[str] = []
    for r in runs:
        swept += [k for k in r.override_keys if k in varied and k not in swept]
    derived = [k for k in varied if k not in swept]
    return swept + derived, swept, fixed
