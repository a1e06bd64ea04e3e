"""What the benchmark records about the machine, and the printed report: one Markdown table per section
(median and min-max of every figure), then its ratios (with their targets) and checks."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from benchmarks.profiles import gpu_name

COLUMNS = (  # (header, figure, digits)
    ("real tok/s", "real_tokens_per_s", 0),
    ("train tok/s", "train_tokens_per_s", 0),
    ("train-only tok/s", "train_only_tokens_per_s", 0),
    ("wall s", "wall_s", 1),
    ("eval loss", "eval_loss", 4),
    ("pad share", "padding_share", 3),
    ("startup s", "startup_s", 1),
    ("1st step s", "time_to_first_step_s", 1),
    ("peak MB", "peak_memory_mb", 0),
    ("pred MB", "predicted_memory_mb", 0),
    ("MFU", "mfu", 3),
    ("steady tok/s", "tokens_per_s_steady", 0),
    ("compile s", "compile_s", 1),
    ("MFU steady", "mfu_steady", 3),
    ("syncs/step", "syncs_per_step", 1),
    ("cells/h", "cells_per_hour", 0),
    ("OOM retries", "oom_retries", 0),
)
EXTRAS = (  # printed as JSON lines
    "checks",
    "time_to_first_step_s",
    "lengths",
    "memory_vs_prediction",
    "mfu_before_after",
    "cells_per_hour",
    "skipped",
)
GAINS = (  # the speedups section's table of each knob against the baseline: (header, key, digits)
    ("tok/s ÷ baseline", "train_tokens_per_s/baseline", 3),
    ("steady ÷ baseline", "steady_tokens_per_s/baseline", 3),
    ("peak ÷ baseline", "peak_memory/baseline", 3),
    ("Δ eval loss", "eval_loss_delta", 4),
    ("loss unchanged", "loss_unchanged", 0),
)


def environment(threads: int | None) -> dict[str, Any]:
    """The machine and code a result comes from (the results file's `environment`)."""
    from src import records

    cpu = ""
    with contextlib.suppress(OSError):
        cpu = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "",
        )
    env = records.env_info()
    return {
        "git_commit": env["git_commit"],
        "git_dirty": env["git_dirty"],
        "versions": env["versions"],
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "gpu": gpu_name(),
        "loadavg_start": os.getloadavg(),
    }


def fmt(v: Any, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return str(v)


def spread(s: dict[str, Any], key: str, digits: int = 0) -> str:
    v = s.get(key)
    if not v:
        return "-"
    return f"{fmt(v['median'], digits)} ({fmt(v['min'], digits)}-{fmt(v['max'], digits)})"


def print_section(name: str, res: dict[str, Any]) -> None:
    print(f"\n### {name}: {res.get('what', '')}")
    summ = res.get("summary", {})
    cols = [c for c in COLUMNS if any(c[1] in s for s in summ.values())]
    head = "| contender | n | " + " | ".join(c[0] for c in cols) + " |"
    print(head)
    print("|" + "---|" * (len(cols) + 2))
    for contender, s in summ.items():
        failed = f" ({s['failed']} failed)" if s.get("failed") else ""
        print(f"| {contender} | {s['n']}{failed} | " + " | ".join(spread(s, k, d) for _, k, d in cols) + " |")
    if res.get("gains"):
        print("\n| knob | " + " | ".join(h for h, _, _ in GAINS) + " |")
        print("|" + "---|" * (len(GAINS) + 1))
        for knob, g in res["gains"].items():
            print(f"| {knob} | " + " | ".join(fmt(g.get(k), d) for _, k, d in GAINS) + " |")
    for k, v in (res.get("ratios") or {}).items():
        target = (res.get("targets") or {}).get(k)
        print(f"  {k}: {fmt(v, 3)}" + (f"   (target {target})" if target else ""))
    for k in EXTRAS:
        if res.get(k):
            print(
                f"  {k}: {json.dumps(res[k], default=lambda x: round(x, 4) if isinstance(x, float) else str(x))}"
            )


def print_report(result: dict[str, Any], threads: int | None, gpu: str | None) -> None:
    """The whole report: a heading naming the machine and run, then every profile's sections."""
    print(
        f"\n## tunegrid bench — {result['environment']['host']}, {result['started_at']}, "
        f"{'quick' if result['quick'] else 'full'}, threads={threads or 'default'}, gpu={gpu or 'none'}, "
        f"{result['total_s']:.0f} s"
    )
    for pname, secs in result["profiles"].items():
        for sname, res in secs.items():
            if "error" in res:
                print(f"\n### {pname} {sname}: ERROR {res['error']}")
            else:
                print_section(f"{pname} {sname}", res)
