"""Robust runs, end to end through `python -m src.run` in real subprocesses (no mocks).

Fault isolation (`debug.*` fault injection): a crash, a NaN loss and an out-of-memory error are recorded as
`failed` / `diverged` / `oom` at the step they happen (a single failed run's exit code is checked in
tests/test_resume.py, on the run whose checkpoint is cut short), a grid goes on past them, and `trainer.oom_retry`
recovers with a smaller micro-batch, then with gradient checkpointing. Token budget, memory prediction and
`sweep.skip_predicted_oom`. The bad-input table: every row exits non-zero with one clear line, no Python
traceback, nothing earlier touched (rows already in tests/test_cli.py and tests/test_methods.py are not
repeated); the W&B online failure falls back to offline and keeps the run.

Resume, checkpoints and signals are in tests/test_resume.py.
"""

from __future__ import annotations

import json
import math
import re
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from src.config import CONF_DIR
from src.records import RECORD
from tests.helpers import compose_cfg, earlier_run, no_traceback, record, run_cli, short, tree_digest

MB = 2**20


def rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def tunegrid_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith("tunegrid:")]


def assert_no_training(run_dir: Path) -> None:
    assert not (run_dir / "checkpoint").exists()
    assert not [r for r in rows(run_dir) if "train/loss" in r]


# --------------------------------------------------------------------------- a grid with failing cells (slow)

CELLS = {  # debug value -> (status, error)
    "{fail_at_step:3}": ("failed", "RuntimeError: injected failure at step 3 (debug.fail_at_step)"),
    "{nan_at_step:3}": ("diverged", "Diverged: training loss became nan at step 3"),
    "{oom_at_step:3}": ("oom", "MemoryError: injected out of memory at step 3 (debug.oom_at_step)"),
    "{fail_at_step:999}": ("success", None),  # never fires
}


@pytest.fixture(scope="module")
def fault_grid(tmp_path_factory):
    """One grid: a crash, a NaN loss, an out-of-memory error (all at step 3), then a cell that trains.

    Fault injection is part of a config's identity (src/config/identity.py): four cells, four folders."""
    sweep = tmp_path_factory.mktemp("faults") / "grid"
    t0 = time.perf_counter()
    proc = run_cli(
        *short("trainer.max_steps=6"),
        "debug=" + ",".join(CELLS),
        f"hydra.sweep.dir={sweep}",
        "-m",
        timeout=600,
    )
    recs = {}
    for path in sorted(sweep.glob(f"*/{RECORD}")):
        rec = json.loads(path.read_text())
        debug = next(o.partition("=")[2] for o in rec["overrides"] if o.startswith("debug="))
        recs[debug] = rec
    return SimpleNamespace(proc=proc, sweep=sweep, recs=recs, seconds=time.perf_counter() - t0)


@pytest.mark.slow
def test_grid_goes_on_past_failing_cells(fault_grid):
    proc, recs = fault_grid.proc, fault_grid.recs
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert sorted(recs) == sorted(CELLS), (list(recs), out[-3000:])
    assert [r["status"] for r in recs.values()].count("success") == 1
    no_traceback(proc)
    # The end-of-grid summary: one line per run, naming its status and overrides.
    assert re.search(rf"tunegrid: {len(CELLS)} run\(s\) in {re.escape(str(fault_grid.sweep))}", proc.stdout)
    for debug, (status, error) in CELLS.items():
        line = next(
            (ln for ln in proc.stdout.splitlines() if f"debug={debug}" in ln and ln.startswith("  ")), None
        )
        assert line is not None and line.split()[0] == status, (debug, proc.stdout[-3000:])
        if error:
            assert line.rstrip().endswith(error), line
    assert f"tunegrid: {len(CELLS) - 1} run(s) did not succeed" in proc.stderr
    print(f"fault grid ({len(CELLS)} cells): {fault_grid.seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("debug", [d for d, (s, _) in CELLS.items() if s != "success"])
def test_failure_is_recorded_at_its_step(fault_grid, debug):
    status, error = CELLS[debug]
    rec = fault_grid.recs[debug]
    run_dir = Path(rec["run_dir"])
    assert rec["status"] == status, rec
    assert rec["error"] == error and "\n" not in rec["error"]
    assert rec["step"] == 3
    assert not rec.get("metrics")
    tb = run_dir / rec["traceback_file"]
    assert tb.parent == run_dir and tb.name == "traceback.txt"
    text = tb.read_text()
    assert text.startswith("Traceback") and error.split(": ", 1)[1] in text
    # Nothing past the failing step was trained or logged, and no final checkpoint was written.
    assert all(r["step"] < 3 for r in rows(run_dir)), rows(run_dir)
    assert not (run_dir / "checkpoint").exists()
    # The grid printed one line for it while it ran.
    assert f"tunegrid: run {status}: {error} (record: {run_dir / RECORD})" in fault_grid.proc.stderr


# --------------------------------------------------------------------------- OOM retry (slow)


@pytest.fixture(scope="module")
def oom_retry_once(tmp_path_factory):
    """One OOM at step 3, retried with half the micro-batch. LoRA with plain SGD, so that the same record
    also checks the memory prediction's gradient (LoRA) and optimizer (SGD: no state) parts."""
    run_dir = tmp_path_factory.mktemp("oom1") / "run"
    proc = run_cli(
        *short("trainer.max_steps=4", "method=lora", "optim=sgd", "lr=0.01"),
        "debug.oom_at_step=3",
        "trainer.oom_retry=true",
        f"hydra.run.dir={run_dir}",
    )
    return SimpleNamespace(proc=proc, run_dir=run_dir)


@pytest.mark.slow
def test_oom_retry_halves_the_micro_batch(oom_retry_once):
    proc, run_dir = oom_retry_once.proc, oom_retry_once.run_dir
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    no_traceback(proc)
    rec = record(run_dir)
    assert rec["status"] == "success" and rec["oom_retries"] == 1
    assert rec["trainer_used"] == {"batch_size": 4, "grad_accum": 2, "gradient_checkpointing": False}
    assert rec["metrics"]["steps"] == 4
    assert (
        "tunegrid: out of memory (MemoryError: injected out of memory at step 3 (debug.oom_at_step)); "
        "retrying with {'batch_size': 4, 'grad_accum': 2}"
    ) in proc.stderr


@pytest.mark.slow
def test_oom_retry_then_gradient_checkpointing(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        *short("trainer.max_steps=4"),
        "debug.oom_at_step=3",
        "debug.oom_attempts=2",
        "trainer.oom_retry=true",
        f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    no_traceback(proc)
    rec = record(run_dir)
    assert rec["status"] == "success" and rec["oom_retries"] == 2
    assert rec["trainer_used"] == {"batch_size": 4, "grad_accum": 2, "gradient_checkpointing": True}
    retries = [ln for ln in tunegrid_lines(proc.stderr) if ln.startswith("tunegrid: out of memory")]
    assert len(retries) == 2 and retries[1].endswith("'gradient_checkpointing': True}"), retries
    assert rec["metrics"]["steps"] == 4


# --------------------------------------------------------------------------- token budget and memory (slow)

BUDGET = 1500  # about 490 tokens a step at batch 8: the budget is reached at step 4 of 12


@pytest.fixture(scope="module")
def budget_run(tmp_path_factory):
    """A token-budget run, which also checks the W&B fallback (one process less): W&B in online mode with
    a server that refuses connections. WANDB_INIT_TIMEOUT=5 keeps it short: with wandb's default (90 s)
    the fallback comes only when wandb.init gives up, 90 s later (test_wandb_fallback_is_prompt_...)."""
    run_dir = tmp_path_factory.mktemp("budget") / "run"
    env = {
        "WANDB_MODE": "online",
        "WANDB_API_KEY": "0123456789abcdef" * 2 + "01234567",
        "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}",
        "WANDB_INIT_TIMEOUT": "5",
    }
    t0 = time.perf_counter()
    proc = run_cli(
        *short("trainer.logging_steps=1", "logger=wandb"),
        f"trainer.token_budget={BUDGET}",
        f"hydra.run.dir={run_dir}",
        env=env,
    )
    return SimpleNamespace(proc=proc, run_dir=run_dir, seconds=time.perf_counter() - t0)


@pytest.mark.slow
def test_token_budget_stops_at_the_first_step_reaching_it(budget_run):
    proc, run_dir = budget_run.proc, budget_run.run_dir
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    m = record(run_dir)["metrics"]
    max_steps = int(compose_cfg(*short()).trainer.max_steps)
    assert m["tokens_trained"] >= BUDGET and 1 <= m["steps"] < max_steps, m
    seen = {
        r["step"]: r["train/tokens_seen"] for r in rows(run_dir) if "train/loss" in r
    }  # logged every step
    assert sorted(seen) == list(range(1, m["steps"] + 1)), seen
    assert seen[m["steps"]] == m["tokens_trained"]
    assert seen[m["steps"] - 1] < BUDGET, seen


def check_prediction(m: dict) -> None:
    """The prediction, made from sizes before training, against what the trained run's tensors hold (the
    record's weights / gradients / optimizer-state bytes, read off the model and the optimizer after
    training): the non-activation parts must match them, the optimizer state within the few bytes per
    tensor that a step counter takes."""
    p = m["predicted_memory"]
    assert set(p) == {
        "weights_mb",
        "gradients_mb",
        "optimizer_mb",
        "activations_mb",
        "logits_mb",
        "reference_mb",
        "total_mb",
    }, p
    assert m["predicted_memory_mb"] == p["total_mb"]
    assert math.isclose(p["total_mb"], sum(v for k, v in p.items() if k != "total_mb"), rel_tol=1e-12)
    assert math.isclose(p["weights_mb"] * MB, m["weights_bytes"], rel_tol=1e-12), (p, m["weights_bytes"])
    assert math.isclose(p["gradients_mb"] * MB, m["gradients_bytes"], rel_tol=1e-12), (
        p,
        m["gradients_bytes"],
    )
    state = m["optimizer_state_bytes"]
    assert p["optimizer_mb"] * MB <= state <= p["optimizer_mb"] * MB + 4 * 1024, (p, state)  # step counters
    assert p["activations_mb"] > 0


@pytest.mark.slow
def test_memory_prediction_full_adamw(budget_run):
    assert budget_run.proc.returncode == 0, budget_run.proc.stderr[-2000:]
    m = record(budget_run.run_dir)["metrics"]
    assert m["trainable_params"] == m["total_params"]
    check_prediction(m)
    assert m["optimizer_state_bytes"] >= 8 * m["trainable_params"]  # AdamW: two fp32 moments per parameter


@pytest.mark.slow
def test_memory_prediction_lora_sgd(oom_retry_once):
    assert oom_retry_once.proc.returncode == 0, oom_retry_once.proc.stderr[-2000:]
    m = record(oom_retry_once.run_dir)["metrics"]
    assert 0 < m["trainable_params"] < m["total_params"]
    check_prediction(m)
    assert (
        m["predicted_memory"]["optimizer_mb"] == 0 == m["optimizer_state_bytes"]
    )  # plain SGD keeps no state


@pytest.mark.slow
def test_predicted_oom_is_skipped_without_training(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(
        *short(), "sweep.skip_predicted_oom=true", "sweep.device_memory_gb=0.0001", f"hydra.run.dir={run_dir}"
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    no_traceback(proc)
    rec = record(run_dir)
    assert rec["status"] == "skipped_oom", rec
    assert re.fullmatch(r"SkippedOOM: predicted peak \d+ MiB > device memory \d+ MiB", rec["error"]), rec[
        "error"
    ]
    # The record keeps the prediction it was skipped on, and nothing measured.
    m = rec["metrics"]
    assert set(m) == {"predicted_memory_mb", "predicted_memory"}, m
    assert m["predicted_memory_mb"] == m["predicted_memory"]["total_mb"] > 0.0001 * 1024
    assert_no_training(run_dir)
    assert not (run_dir / "checkpoints").exists()
    assert tunegrid_lines(proc.stderr) == [
        f"tunegrid: run skipped_oom: {rec['error']} (record: {run_dir / RECORD})"
    ]


# --------------------------------------------------------------------------- bad input


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Local data files in the synthetic set's (Alpaca's) format, some broken."""
    d = tmp_path_factory.mktemp("data")
    good = [json.dumps({"instruction": "Say hi.", "input": "", "output": "hello there"}) for _ in range(40)]
    (d / "long_answers.jsonl").write_text("\n".join(good) + "\n")
    (d / "malformed.jsonl").write_text(
        "\n".join([*good[:2], '{"instruction": "x", "input": ', *good[2:5]]) + "\n"
    )
    (d / "no_output.jsonl").write_text(
        "".join(json.dumps({"instruction": "a", "input": "b", "answer": "c"}) + "\n" for _ in range(20))
    )
    return d


@pytest.fixture(scope="module")
def no_bitsandbytes(tmp_path_factory) -> Path:
    """A PYTHONPATH entry under which `import bitsandbytes` fails as it does where it is not installed."""
    d = tmp_path_factory.mktemp("nobnb")
    (d / "bitsandbytes").mkdir()
    (d / "bitsandbytes" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'bitsandbytes'\", name='bitsandbytes')\n"
    )
    return d


def _choices(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


TINY = compose_cfg().model
# id, overrides, the exact line the user sees (None: Hydra's own multi-line message, checked separately).
# "@DATA/" is the data folder, "@RUN" the run folder. test_cli.py already has rank=0/-4/abc, alpha=0, lr=-1,
# lr=nan, trainer.batch_size=0, frozen_blocks=99, method=nope; test_methods.py has method=qlora without
# bitsandbytes.
FAST_ROWS = [
    ("optim=nope", ["optim=nope"], None),
    ("lr_schedule=nope", ["lr_schedule=nope"], None),
    ("model=nope", ["model=nope"], None),
    ("data=nope", ["data=nope"], None),
    (
        "rank=2.5",
        ["rank=2.5"],
        f"tunegrid: error: rank=2.5: must be an integer ≥ 1 and ≤ {TINY.hidden_size} "
        f"(the model's hidden size is {TINY.hidden_size})",
    ),
    (
        "rank=129",
        ["method=lora", "rank=129"],
        f"tunegrid: error: rank=129: must be an integer ≥ 1 and ≤ {TINY.hidden_size} "
        f"(the model's hidden size is {TINY.hidden_size})",
    ),
    ("alpha=-1", ["alpha=-1"], "tunegrid: error: alpha=-1.0: must be a number > 0"),
    ("lr=0", ["lr=0"], "tunegrid: error: lr=0.0: must be a number > 0"),
    ("lr=abc", ["lr=abc"], "tunegrid: error: lr='abc': must be a number > 0"),
    (
        "frozen_blocks=-1",
        ["frozen_blocks=-1"],
        f"tunegrid: error: frozen_blocks=-1: must be an integer ≥ 0 and ≤ {TINY.num_layers} "
        f"(model=tiny has {TINY.num_layers} blocks)",
    ),
    (
        "max_seq_len>context",
        ["data.max_seq_len=1024"],
        f"tunegrid: error: data.max_seq_len=1024: must be an integer ≥ 8 and ≤ {TINY.context_length} "
        f"(model=tiny has a context of {TINY.context_length} tokens)",
    ),
    (
        "adamw_8bit-without-bitsandbytes",
        ["optim=adamw_8bit", "@NOBNB"],
        "tunegrid: error: optim=adamw_8bit: needs bitsandbytes, which is not installed "
        "(pip install 'bitsandbytes>=0.45')",
    ),
    # An output folder that cannot be created: under /proc, or under a regular file (chmod does not stop root).
    ("run-dir-in-proc", ["hydra.run.dir=/proc/tunegrid-x"], "@UNWRITABLE /proc/tunegrid-x"),
    (
        "run-dir-under-a-file",
        ["hydra.run.dir=@DATA/long_answers.jsonl/run"],
        "@UNWRITABLE @DATA/long_answers.jsonl/run",
    ),
]
# Found only once the data are read, after the model libraries load (about 10 s a run): run as one grid,
# whose cells print the same line a single run prints (a single run exits 2, like the rows above).
DATA_ROWS = [
    ("missing-data-file", "missing.jsonl", "tunegrid: error: data.path='@DATA/missing.jsonl': no such file"),
    (
        "malformed-jsonl-line",
        "malformed.jsonl",
        "tunegrid: error: data.path='@DATA/malformed.jsonl': line 3 column 31: not valid JSON (Expecting value)",
    ),
    (
        "fields-missing",
        "no_output.jsonl",
        "tunegrid: error: data=synthetic: data.path='@DATA/no_output.jsonl' lacks field(s) output "
        "(found: instruction, input, answer)",
    ),
    (
        "empty-after-filtering",
        "long_answers.jsonl",  # with data.max_response_chars=5, for every cell
        "tunegrid: error: data=synthetic: no records left after filtering: none of the 40 records in "
        "data.path='@DATA/long_answers.jsonl' have a response of at most 5 characters (data.max_response_chars=5)",
    ),
]


def run_bad_row(
    tmp_path: Path, overrides: list[str], expected: str | None, data_dir: Path, nobnb: Path | None
):
    earlier = earlier_run(tmp_path)
    before = tree_digest(earlier)
    run_dir = tmp_path / "bad"
    env = {}
    args = []
    for o in overrides:
        if o == "@NOBNB":
            env["PYTHONPATH"] = str(nobnb)
            continue
        args.append(o.replace("@DATA", str(data_dir)))
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={run_dir}")
    t0 = time.perf_counter()
    proc = run_cli(*args, "logger=none", timeout=300, env=env)
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr

    assert proc.returncode != 0, out[-3000:]
    no_traceback(proc)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if expected is None:  # an unknown group choice: Hydra's message lists what is available
        group, value = args[0].split("=")
        assert lines[0] == f"In 'config': Could not find '{group}/{value}'", proc.stderr
        for choice in _choices(group):
            assert re.search(rf"^\s*{re.escape(choice)}\s*$", proc.stderr, re.M), (choice, proc.stderr)
    elif expected.startswith("@UNWRITABLE"):
        folder = expected.split(" ", 1)[1].replace("@DATA", str(data_dir))
        assert len(lines) == 1 and lines[0].startswith("tunegrid: error: ") and folder in lines[0], (
            proc.stderr
        )
    else:
        assert lines == [expected.replace("@DATA", str(data_dir))], proc.stderr
        assert proc.returncode == 2
        if (run_dir / RECORD).exists():  # the run's own record says why it did not run
            rec = record(run_dir)
            assert rec["status"] == "invalid" and rec["error"] == expected.removeprefix(
                "tunegrid: error: "
            ).replace("@DATA", str(data_dir)), rec
        assert_no_training(run_dir)
    assert tree_digest(earlier) == before  # an earlier run's record and checkpoints are untouched
    return seconds


@pytest.mark.parametrize(("overrides", "expected"), [r[1:] for r in FAST_ROWS], ids=[r[0] for r in FAST_ROWS])
def test_bad_input_one_clear_line(tmp_path, data_dir, no_bitsandbytes, overrides, expected):
    seconds = run_bad_row(tmp_path, overrides, expected, data_dir, no_bitsandbytes)
    assert seconds < 10, f"{overrides}: {seconds:.1f} s; bad values should fail before any model loads"


def test_bad_value_in_a_grid_keeps_the_earlier_record(tmp_path):
    """A typo in a grid re-run into an earlier grid's folder (one named by job number, as grids before
    config-named folders made them): the invalid cell gets a folder of its own, and the finished run that
    folder 0 holds keeps its record and checkpoint (the single-run case is in test_cli.py)."""
    sweep = tmp_path / "grid"
    earlier = earlier_run(sweep)
    earlier.rename(sweep / "0")
    before = tree_digest(sweep / "0")
    proc = run_cli("lr=-1", "seed=0", f"hydra.sweep.dir={sweep}", "-m", timeout=120)
    assert proc.returncode != 0
    assert "tunegrid: error: lr=-1.0: must be a number > 0" in proc.stderr.splitlines(), proc.stderr
    no_traceback(proc)
    after = tree_digest(sweep / "0")
    assert {k: v for k, v in after.items() if k in before} == before, record(sweep / "0")


@pytest.fixture(scope="module")
def bad_data_grid(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("baddata")
    earlier = earlier_run(tmp)
    before = tree_digest(earlier)
    sweep = tmp / "grid"
    paths = ",".join(str(data_dir / f) for _, f, _ in DATA_ROWS)
    proc = run_cli(
        f"data.path={paths}",
        "data.max_response_chars=5",
        "logger=none",
        f"hydra.sweep.dir={sweep}",
        "-m",
        timeout=600,
    )
    recs = {
        Path(r["config"]["data"]["path"]).name: r
        for r in map(json.loads, (p.read_text() for p in sweep.glob(f"*/{RECORD}")))
    }
    return SimpleNamespace(proc=proc, recs=recs, earlier_changed=tree_digest(earlier) != before)


@pytest.mark.slow
@pytest.mark.parametrize(("file", "expected"), [r[1:] for r in DATA_ROWS], ids=[r[0] for r in DATA_ROWS])
def test_bad_data_one_clear_line(bad_data_grid, data_dir, file, expected):
    proc = bad_data_grid.proc
    expected = expected.replace("@DATA", str(data_dir))
    assert proc.returncode != 0
    no_traceback(proc)
    assert expected in proc.stderr.splitlines(), proc.stderr[-3000:]
    rec = bad_data_grid.recs[file]
    assert rec["status"] == "invalid" and rec["error"] == expected.removeprefix("tunegrid: error: "), rec
    assert_no_training(Path(rec["run_dir"]))
    assert not bad_data_grid.earlier_changed


# --------------------------------------------------------------------------- W&B online failure (slow)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_wandb_online_failure_falls_back_to_offline(budget_run):
    """Online mode with a server that refuses connections: the run must not be lost (see budget_run)."""
    proc, run_dir = budget_run.proc, budget_run.run_dir
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    no_traceback(proc)
    assert any(
        ln.startswith("tunegrid: W&B online init failed (CommError); logging offline instead")
        for ln in tunegrid_lines(proc.stderr)
    )
    assert record(run_dir)["status"] == "success"
    offline = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(offline) == 1 and offline[0].stat().st_size > 0, list((run_dir / "wandb").iterdir())
    print(f"W&B fallback (token budget) run: {budget_run.seconds:.1f} s")
    assert budget_run.seconds < 120, budget_run.seconds


@pytest.mark.slow
def test_wandb_fallback_is_prompt_with_default_settings(tmp_path):
    run_dir = tmp_path / "run"
    env = {
        "WANDB_MODE": "online",
        "WANDB_API_KEY": "0123456789abcdef" * 2 + "01234567",
        "WANDB_BASE_URL": f"http://127.0.0.1:{closed_port()}",
    }
    t0 = time.perf_counter()
    proc = run_cli(
        *short("trainer.max_steps=2", "logger=wandb"), f"hydra.run.dir={run_dir}", env=env, timeout=600
    )
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0 and "logging offline instead" in proc.stderr, proc.stderr[-2000:]
    assert seconds < 60, f"a 2-step run with W&B unreachable took {seconds:.0f} s"
