"""End-to-end tier: `python -m src.run` in real subprocesses, the way a user runs it.

Fast: bad input (one line on stderr, no traceback, before any model loads, nothing else touched),
`--cfg job`, and the W&B log reader on a synthetic file. Slow (real training, real W&B offline):
one short run's record schema and its W&B read-back, the two-run LoRA rank grid, a grid in which
runs fail, and the default run itself."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
import time
import zlib
from datetime import datetime
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from src.config import CONF_DIR, REPO_ROOT, flatten, validate
from src.records import PACKAGES, RECORD
from tests import wandb_reader
from tests.helpers import QUICK, cli_env, compose_cfg, earlier_run, no_traceback, run_cli, tree_digest

TINY = compose_cfg().model
METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))


def quick(logger: str = "none", **replace: object) -> list[str]:
    """QUICK with another logger and some keys replaced (e.g. max_steps)."""
    out = [o for o in QUICK if not o.startswith("logger=") and o.split("=")[0] not in replace]
    return [*out, *(f"{k}={v}" for k, v in replace.items()), f"logger={logger}"]


def numeric(token: str) -> float | None:
    try:
        return float(token.strip("'\""))
    except ValueError:
        return None


# --------------------------------------------------------------------------- bad input (fast)

BAD = [  # override, key, a fragment of "what is allowed"
    ("rank=0", "rank", "≥ 1"),
    ("rank=-4", "rank", "≥ 1"),
    ("alpha=0", "alpha", "> 0"),
    ("lr=-1", "lr", "> 0"),
    ("rank=abc", "rank", "integer"),
    ("lr=nan", "lr", "> 0"),
    ("trainer.batch_size=0", "trainer.batch_size", "≥ 1"),
    ("frozen_blocks=99", "frozen_blocks", f"≤ {TINY.num_layers}"),
    ("trainer.batching=bogus", "trainer.batching", "packing"),
]


@pytest.mark.parametrize(("override", "key", "allowed"), BAD, ids=[b[0] for b in BAD])
def test_bad_value_fails_fast_in_one_line(tmp_path, override, key, allowed):
    earlier = earlier_run(tmp_path)
    before = tree_digest(earlier)
    run_dir = tmp_path / "bad"

    t0 = time.perf_counter()
    proc = run_cli(override, f"hydra.run.dir={run_dir}", timeout=120)
    seconds = time.perf_counter() - t0

    assert proc.returncode != 0, proc.stdout + proc.stderr
    no_traceback(proc)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    # The key and the value the user typed ...
    m = re.search(rf"(?<![\w.]){re.escape(key)}=(\S+?):", line)
    assert m, f"{key}=<value> not named in {line!r}"
    given, shown = override.partition("=")[2], m.group(1)
    if numeric(given) is None:
        assert shown.strip("'\"") == given, line
    else:
        a, b = numeric(given), numeric(shown)
        assert b is not None and (a == b or (math.isnan(a) and math.isnan(b))), line
    # ... and what is allowed.
    assert allowed in line, line
    # Before any model or data was loaded: fast, and nothing of a training run on disk.
    assert seconds < 10, f"{override} took {seconds:.1f} s"
    assert not (run_dir / "checkpoint").exists() and not (run_dir / "metrics.jsonl").exists()
    assert not (run_dir / "wandb").exists()
    if (run_dir / RECORD).exists():  # the run's own record says why it did not run
        rec = json.loads((run_dir / RECORD).read_text())
        assert rec["status"] == "invalid" and key in rec["error"], rec
    # An earlier run's directory is untouched.
    assert tree_digest(earlier) == before


def test_unknown_choice_lists_the_available_ones(tmp_path):
    earlier = earlier_run(tmp_path)
    before = tree_digest(earlier)
    t0 = time.perf_counter()
    proc = run_cli("method=nope", f"hydra.run.dir={tmp_path / 'bad'}", timeout=120)
    seconds = time.perf_counter() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "nope" in out
    for choice in METHODS:
        assert re.search(rf"^\s*{re.escape(choice)}\s*$", out, re.M), f"{choice} not listed:\n{out}"
    no_traceback(proc)
    assert seconds < 10, seconds
    assert tree_digest(earlier) == before


def test_bad_value_keeps_the_record_of_a_run_in_the_same_folder(tmp_path):
    """A typo re-run into a pinned run folder (hydra.run.dir=...) must not replace the finished run's record
    with an `invalid` one: nothing ran, so nothing about that folder changed."""
    earlier = earlier_run(tmp_path)
    before = tree_digest(earlier)
    proc = run_cli("rank=0", f"hydra.run.dir={earlier}", timeout=120)
    assert proc.returncode != 0
    assert json.loads((earlier / RECORD).read_text())["status"] == "success"
    assert {k: v for k, v in tree_digest(earlier).items() if k in before} == before


def test_cfg_job_prints_the_composed_config_quickly():
    from omegaconf import OmegaConf

    t0 = time.perf_counter()
    proc = run_cli("method=lora", "rank=16", "--cfg", "job", timeout=120)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr
    cfg = OmegaConf.create(proc.stdout)
    assert cfg.method.name == "lora" and cfg.rank == 16 and cfg.model.name == "tiny"
    assert "hydra" not in cfg
    print(f"--cfg job answered in {seconds:.2f} s")
    assert seconds < 10, seconds


# --------------------------------------------------------------------------- the W&B reader (fast)


def _write_wandb_log(path: Path, payloads: list[bytes]) -> None:
    """Write records the way W&B's LevelDB-style log does (a writer for testing the reader)."""
    r = wandb_reader
    out = bytearray(r.HEADER.pack(r.IDENT, r.MAGIC, 0))
    for payload in payloads:
        first = True
        while True:
            left = r.BLOCK - len(out) % r.BLOCK
            if left < r.CHUNK.size:
                out += b"\0" * left
                continue
            chunk, payload = payload[: left - r.CHUNK.size], payload[left - r.CHUNK.size :]
            last = not payload
            kind = (r.FULL if last else r.FIRST) if first else (r.LAST if last else r.MIDDLE)
            out += r.CHUNK.pack(zlib.crc32(chunk, zlib.crc32(bytes([kind]))), len(chunk), kind) + chunk
            first = False
            if last:
                break
    path.write_bytes(bytes(out))


def test_wandb_reader_on_a_synthetic_log(tmp_path):
    from wandb.proto import wandb_internal_pb2 as pb

    run = pb.Record()
    run.run.run_id, run.run.run_group, run.run.display_name = "abc123", "grid/1", "rank=8"
    run.run.tags.append("lora")
    item = run.run.config.update.add()
    item.key, item.value_json = "rank", "8"
    big = pb.Record()  # spans several 32 KiB blocks: FIRST, MIDDLE..., LAST
    for i in range(3000):
        it = big.config.update.add()
        it.key, it.value_json = f"k{i:04d}", json.dumps("x" * 20)
    hist = pb.Record()
    for key, nested, value in (("", ["train", "loss"], 2.5), ("eval/loss", [], 2.0), ("_step", [], 3)):
        it = hist.history.item.add()
        it.key, it.value_json = key, json.dumps(value)
        it.nested_key.extend(nested)
    summ = pb.Record()
    it = summ.summary.update.add()
    it.key, it.value_json = "eval_loss", "1.25"
    payloads = [
        run.SerializeToString(),
        big.SerializeToString(),
        hist.SerializeToString(),
        summ.SerializeToString(),
    ]
    assert len(payloads[1]) > 2 * wandb_reader.BLOCK
    path = tmp_path / "run-abc123.wandb"
    _write_wandb_log(path, payloads)

    assert wandb_reader.read_records(path) == payloads
    got = wandb_reader.read_run(path)
    assert (got.run_id, got.group, got.name, got.tags) == ("abc123", "grid/1", "rank=8", ["lora"])
    assert got.config["rank"] == 8 and got.config["k2999"] == "x" * 20 and len(got.config) == 3001
    assert got.history == [{"train/loss": 2.5, "eval/loss": 2.0, "_step": 3}]
    assert got.summary == {"eval_loss": 1.25}

    corrupt = bytearray(path.read_bytes())
    corrupt[40] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="checksum"):
        wandb_reader.read_records(path)
    path.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="header"):
        wandb_reader.read_records(path)


# --------------------------------------------------------------------------- one short run (slow)


def _check_record(rec: dict, run_dir: Path, overrides: list[str]) -> dict:
    """The record schema: types and consistency. Returns the metrics."""
    assert rec["status"] == "success" and rec["error"] is None
    assert rec["overrides"] == overrides
    assert Path(rec["run_dir"]) == run_dir
    started, ended = datetime.fromisoformat(rec["started_at"]), datetime.fromisoformat(rec["ended_at"])
    assert started.tzinfo is not None and started <= ended

    config = rec["config"]
    assert isinstance(config, dict)
    flat = flatten(config)
    assert not [k for k, v in flat.items() if isinstance(v, str) and "${" in v], "config not resolved"
    for o in overrides:
        key, _, value = o.partition("=")
        if (CONF_DIR / key).is_dir():  # a group choice: its name, where it has one
            assert config[key].get("name", value) == value, (key, config[key])
            continue
        got = flat.get(key, config.get(key))
        same_text = str(got).lower() == value.lower() or (got is None and value == "null")
        assert same_text or (numeric(value) is not None and numeric(str(got)) == numeric(value)), (key, got)
    assert rec["method"] == config["method"]["name"] and rec["lr"] == config["lr"]

    m = rec["metrics"]
    for key in (
        "train_loss",
        "eval_loss",
        "initial_eval_loss",
        "perplexity",
        "tokens_per_s",
        "time_per_epoch_s",
        "peak_memory_mb",
    ):
        assert isinstance(m[key], float) and math.isfinite(m[key]) and m[key] >= 0, (key, m[key])
    for key in ("checkpoint_bytes", "trainable_params", "total_params", "steps"):
        assert isinstance(m[key], int) and not isinstance(m[key], bool) and m[key] > 0, (key, m[key])
    assert m["tokens_per_s"] > 0 and m["time_per_epoch_s"] > 0 and m["peak_memory_mb"] > 0
    max_steps = config["trainer"]["max_steps"]
    assert (m["steps"] == max_steps) if max_steps > 0 else (m["steps"] > 0)
    assert math.isclose(m["perplexity"], math.exp(m["eval_loss"]), rel_tol=1e-9)
    assert m["eval_loss"] < m["initial_eval_loss"]
    assert 0 < m["trainable_params"] <= m["total_params"]
    weights = sorted((run_dir / "checkpoint").glob("*.safetensors"))
    assert weights, "no safetensors checkpoint"
    assert m["checkpoint_bytes"] == sum(p.stat().st_size for p in weights)

    env = rec["env"]
    commit = env["git_commit"]
    assert re.fullmatch(r"[0-9a-f]{40}", commit) or commit == "unknown", commit
    if (
        commit != "unknown"
    ):  # this checkout's HEAD when the run started (or an ancestor, if a commit came since)
        ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=REPO_ROOT)
        assert ancestor.returncode == 0, commit
    assert isinstance(env["git_dirty"], bool)
    assert set(PACKAGES) <= set(env["versions"])
    for name in ("torch", "transformers", "peft", "hydra-core", "wandb"):
        assert env["versions"][name] == metadata.version(name)
    import torch

    assert env["device"] == (torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    assert env["python"].count(".") == 2
    json.dumps(rec, allow_nan=False)  # plain JSON: no NaN/Infinity
    return m


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    """One short run of the default job with W&B offline on."""
    run_dir = tmp_path_factory.mktemp("single") / "run"
    overrides = quick(logger="wandb")
    t0 = time.perf_counter()
    proc = run_cli(*overrides, f"hydra.run.dir={run_dir}", timeout=600)
    return SimpleNamespace(proc=proc, run_dir=run_dir, overrides=overrides, seconds=time.perf_counter() - t0)


@pytest.mark.slow
def test_single_run_record(single_run):
    proc, run_dir = single_run.proc, single_run.run_dir
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    no_traceback(proc)
    assert f"record: {run_dir / RECORD}" in proc.stdout
    rec = json.loads((run_dir / RECORD).read_text())
    m = _check_record(rec, run_dir, single_run.overrides)
    assert m["trainable_params"] == m["total_params"]  # full fine-tuning: everything trains
    # The disk log agrees with the record.
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/loss" in r]
    assert evals[0]["step"] == 0 and evals[0]["eval/loss"] == m["initial_eval_loss"]
    assert evals[-1]["eval/loss"] == m["eval_loss"]
    assert any("train/loss" in r for r in rows)
    print(f"single short run: {single_run.seconds:.1f} s")


@pytest.mark.slow
def test_train_module_trains_the_resolved_config_of_a_run_folder(single_run, tmp_path):
    """`python -m src.train <run_dir>/config.yaml` (what a launcher of several processes starts): the validated
    config a Hydra run left in its folder trains again without Hydra, to the same metrics, recorded there."""
    first = json.loads((single_run.run_dir / RECORD).read_text())
    again = tmp_path / "again"
    again.mkdir()
    shutil.copy(single_run.run_dir / "config.yaml", again / "config.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "src.train", str(again / "config.yaml"), "--name", "again"],
        cwd=REPO_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    no_traceback(proc)
    rec = json.loads((again / RECORD).read_text())
    assert rec["status"] == "success" and rec["overrides"] == [] and not (again / ".hydra").exists()
    assert rec["config"] == first["config"] and rec["config_hash"] == first["config_hash"]
    for key in ("initial_eval_loss", "eval_loss", "train_loss", "test_loss", "trainable_params", "steps"):
        assert rec["metrics"][key] == first["metrics"][key], key


def test_train_module_refuses_a_bad_config_in_one_line(tmp_path):
    cfg = validate(compose_cfg(*QUICK, "method=lora"))
    cfg.rank = 0
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "src.train", str(tmp_path / "config.yaml")],
        cwd=REPO_ROOT,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "tunegrid: error: rank=0: must be an integer ≥ 1 and ≤ 128 (the model's hidden size is 128)"
    ]
    rec = json.loads((tmp_path / RECORD).read_text())
    assert rec["status"] == "invalid" and rec["error"].startswith("rank=0: ")


@pytest.mark.slow
def test_wandb_offline_readback(single_run):
    """Read the offline run's transaction log back: config, history and summary arrived."""
    assert single_run.proc.returncode == 0, single_run.proc.stderr[-3000:]
    rec = json.loads((single_run.run_dir / RECORD).read_text())
    m = rec["metrics"]
    wb = wandb_reader.read_run(wandb_reader.find_run_file(single_run.run_dir))

    name = ",".join(single_run.overrides)
    assert wb.name == name and wb.group == name  # a single run is its own group
    assert wb.project == compose_cfg().logger.wandb.project
    assert rec["method"] in wb.tags
    assert wb.exit_code == 0

    # Run config = the resolved config flattened (plus the overrides and parameter counts).
    default = compose_cfg()
    assert wb.config["rank"] == default.rank and wb.config["method.name"] == default.method.name
    assert wb.config["model.name"] == default.model.name
    given = dict(o.split("=", 1) for o in single_run.overrides)
    for key in ("trainer.batch_size", "trainer.max_steps", "data.splits.validation"):
        assert wb.config[key] == int(given[key]), key
    assert wb.config["overrides"] == name
    assert wb.config["trainable_params"] == m["trainable_params"]
    for key, value in flatten(rec["config"]).items():
        assert key in wb.config, key
        got = wb.config[key]
        if isinstance(value, float):
            assert math.isclose(got, value, rel_tol=1e-12), key
        else:
            assert got == value, key

    # History: split-prefixed metrics, perplexity alongside loss, steps in order.
    keys = {k for row in wb.history for k in row}
    assert {"train/loss", "eval/loss", "eval/perplexity", "test/loss"} <= keys, keys
    assert all(k.startswith("_") or k.split("/")[0] in ("train", "eval", "test") for k in keys), keys
    steps = [row["_step"] for row in wb.history]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == m["steps"]
    evals = [row for row in wb.history if "eval/loss" in row]
    assert evals[0]["_step"] == 0 and evals[0]["eval/loss"] == m["initial_eval_loss"]
    assert evals[-1]["eval/loss"] == m["eval_loss"]
    for row in evals:
        assert math.isclose(row["eval/perplexity"], math.exp(row["eval/loss"]), rel_tol=1e-9)
    assert any("train/loss" in row and row["_step"] > 0 for row in wb.history)

    # Summary: the record's final metrics.
    for key in (
        "train_loss",
        "eval_loss",
        "perplexity",
        "tokens_per_s",
        "time_per_epoch_s",
        "peak_memory_mb",
        "checkpoint_bytes",
        "trainable_params",
        "total_params",
        "initial_eval_loss",
    ):
        assert key in wb.summary, key
        assert math.isclose(wb.summary[key], m[key], rel_tol=1e-9), key


@pytest.mark.slow
def test_a_saved_model_has_a_model_card(single_run):
    """checkpoint/README.md: the model card of the weights beside it, with the run's resolved config."""
    assert single_run.proc.returncode == 0, single_run.proc.stderr[-3000:]
    rec = json.loads((single_run.run_dir / RECORD).read_text())
    meta, body = _model_card(single_run.run_dir / "checkpoint")
    assert meta["library_name"] == "transformers" and "base_model" not in meta  # tiny: on no hub
    assert "no hub id" in body and f"`{rec['config']['method']['name']}`" in body
    assert _card_config(body) == rec["config"]
    assert f"| eval_loss | {rec['metrics']['eval_loss']:.4g} |" in body


@pytest.fixture(scope="module")
def evaluated_lora_run(tmp_path_factory):
    """A short LoRA run with W&B, generation and forgetting on: the metrics measured after training."""
    run_dir = tmp_path_factory.mktemp("evaluated") / "run"
    overrides = ["method=lora", *quick(logger="wandb", **{"eval.num_samples": 2, "eval.forgetting": "true"})]
    proc = run_cli(*overrides, f"hydra.run.dir={run_dir}", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return SimpleNamespace(proc=proc, run_dir=run_dir, rec=json.loads((run_dir / RECORD).read_text()))


@pytest.mark.slow
def test_metrics_after_training_reach_the_wandb_history(evaluated_lora_run):
    """Test ROUGE, forgetting and the generations table, logged after the last step, are in the last step's
    history row (W&B drops a row for a step lower than its current one), and in the summary."""
    m, run_dir = evaluated_lora_run.rec["metrics"], evaluated_lora_run.run_dir
    wb = wandb_reader.read_run(wandb_reader.find_run_file(run_dir))
    last = wb.history[-1]
    assert last["_step"] == m["steps"] and [r["_step"] for r in wb.history].count(m["steps"]) == 1
    pairs = {k: k for k in ("test/rouge1", "test/rougeL", "test/accuracy", "eval/forgetting")}
    for key, in_record in {**pairs, "test/loss": "test_loss"}.items():  # W&B key -> record key
        assert math.isclose(last[key], m[in_record], rel_tol=1e-9), key
        assert math.isclose(wb.summary[in_record], m[in_record], rel_tol=1e-9), key
    assert last["test/samples/_type"] == "table-file" and last["test/samples/nrows"] == 2
    logs = "".join(p.read_text() for p in run_dir.glob("wandb/*run-*/logs/*.log"))
    assert "ignoring partial history record" not in logs


@pytest.mark.slow
def test_a_saved_adapter_has_a_model_card_and_loads(evaluated_lora_run):
    from peft import AutoPeftModelForCausalLM

    rec, folder = evaluated_lora_run.rec, evaluated_lora_run.run_dir / "checkpoint"
    meta, body = _model_card(folder)
    assert meta["library_name"] == "peft" and "lora" in meta["tags"]
    assert _card_config(body) == rec["config"]
    assert f"| test_loss | {rec['metrics']['test_loss']:.4g} |" in body
    # The tiny model has no hub id: the adapter names the cached folder it was trained on, and loads from it.
    base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert Path(base).is_dir() and base in body
    model = AutoPeftModelForCausalLM.from_pretrained(str(folder))
    assert model.peft_config["default"].r == rec["config"]["rank"]


def _model_card(folder: Path) -> tuple[dict, str]:
    import yaml

    text = (folder / "README.md").read_text()
    assert text.startswith("---\n"), text[:200]
    meta, _, body = text[4:].partition("\n---\n")
    return yaml.safe_load(meta), body


def _card_config(body: str) -> dict:
    import yaml

    return yaml.safe_load(body.split("```yaml\n", 1)[1].split("\n```", 1)[0])


# --------------------------------------------------------------------------- grids (slow)


def lora_params_per_rank(cfg) -> int:
    """Σ(d_in + d_out) over the modules the LoRA preset targets, from a model built from the YAML's
    architecture (LoRA adds r·d_in + d_out·r parameters per targeted matrix)."""
    from hydra.utils import instantiate
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_config(instantiate(cfg.model.build, vocab_size=16))
    targets = list(cfg.model.lora_targets[cfg.lora_targets])
    total = 0
    for name, mod in model.named_modules():
        if any(name == t or name.endswith("." + t) for t in targets):
            total += sum(mod.weight.shape)  # (in, out) for Conv1D, (out, in) for Linear: the sum is the same
    return total


@pytest.mark.slow
def test_lora_rank_grid(tmp_path):
    sweep = tmp_path / "grid"
    # `-m` last, as in the README: Hydra's argparse takes no overrides after the flag.
    proc = run_cli(
        "method=lora", "rank=8,16", *quick(logger="wandb"), f"hydra.sweep.dir={sweep}", "-m", timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    no_traceback(proc)

    recs = {}
    for path in sorted(sweep.glob(f"*/{RECORD}")):  # one folder per config: `…,rank=8-<hash>`
        rec = json.loads(path.read_text())
        _check_record(rec, path.parent, rec["overrides"])
        assert f"rank={rec['config']['rank']}" in path.parent.name
        recs[rec["config"]["rank"]] = rec
    assert sorted(recs) == [8, 16]
    for rank, rec in recs.items():
        assert f"rank={rank}" in rec["overrides"] and "method=lora" in rec["overrides"]
        assert rec["config"]["method"]["peft"]["r"] == rank

    # Trainable parameters: exactly rank × Σ(d_in + d_out) of the targeted matrices.
    cfg = compose_cfg("method=lora")
    per_rank = lora_params_per_rank(cfg)
    b = cfg.model.build
    if list(cfg.model.lora_targets[cfg.lora_targets]) == ["c_attn", "attn.c_proj"]:  # GPT-2: n→3n and n→n
        assert per_rank == b.n_layer * ((b.n_embd + 3 * b.n_embd) + (b.n_embd + b.n_embd))
    m8, m16 = recs[8]["metrics"], recs[16]["metrics"]
    assert m8["trainable_params"] == 8 * per_rank and m16["trainable_params"] == 16 * per_rank
    assert m16["total_params"] - m8["total_params"] == 8 * per_rank
    for rec in recs.values():  # the checkpoint is the adapter alone (fp32), not the model
        m = rec["metrics"]
        files = sorted(p.name for p in (Path(rec["run_dir"]) / "checkpoint").glob("*.safetensors"))
        assert files == ["adapter_model.safetensors"], files
        assert 4 * m["trainable_params"] <= m["checkpoint_bytes"] < 4 * m["trainable_params"] + 65536

    # W&B: both runs in one group (the sweep), named after their overrides, rank in the run config.
    group = "/".join(sweep.parts[-2:])
    for rank, rec in recs.items():
        wb = wandb_reader.read_run(wandb_reader.find_run_file(rec["run_dir"]))
        assert wb.group == group and wb.name == ",".join(rec["overrides"])
        assert (
            wb.config["rank"] == rank
            and wb.config["method.peft.r"] == rank
            and wb.config["method.name"] == "lora"
        )
        assert wb.config["trainable_params"] == rec["metrics"]["trainable_params"]
        assert "lora" in wb.tags
        assert math.isclose(wb.summary["eval_loss"], rec["metrics"]["eval_loss"], rel_tol=1e-9)

    # The grid summary: one line per run.
    assert re.search(r"tunegrid: 2 run\(s\) in ", proc.stdout), proc.stdout[-2000:]
    for rank in (8, 16):
        assert re.search(rf"^\s*success\s+\S*rank={rank}\b", proc.stdout, re.M), proc.stdout[-2000:]


@pytest.fixture(scope="module")
def failing_grid(tmp_path_factory):
    """A grid whose first runs fail: invalid values (lr=-1) and a crash inside training (debug.fail_at_step=1
    raises at the first step, after the model loaded and W&B started)."""
    sweep = tmp_path_factory.mktemp("failing") / "grid"
    short = quick(logger="wandb", **{"trainer.max_steps": 6, "trainer.eval_every": 3})
    proc = run_cli(
        "debug.fail_at_step=1,null", "lr=-1,1e-3", *short, f"hydra.sweep.dir={sweep}", "-m", timeout=600
    )
    recs = {
        tuple(r["overrides"]): r
        for r in (json.loads(p.read_text()) for p in sorted(sweep.glob(f"*/{RECORD}")))
    }

    def rec_for(fail: str, lr: str) -> dict:
        """The record of the cell with these values (Hydra writes swept numbers its own way: 1e-3 -> 0.001)."""

        def same(o: tuple[str, ...], key: str, want: str) -> bool:
            got = next(x.partition("=")[2] for x in o if x.partition("=")[0] == key)
            return got == want or (numeric(got) is not None and numeric(got) == numeric(want))

        return next(r for o, r in recs.items() if same(o, "debug.fail_at_step", fail) and same(o, "lr", lr))

    return SimpleNamespace(proc=proc, sweep=sweep, recs=recs, rec_for=rec_for)


@pytest.mark.slow
def test_failing_runs_are_recorded_and_the_grid_goes_on(failing_grid):
    """Invalid runs (status invalid) and a crashed run (status failed, traceback.txt) come first; the last run
    still trains, every run has a record, the summary lists all, the exit code says so."""
    proc, recs, rec_for = failing_grid.proc, failing_grid.recs, failing_grid.rec_for
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert len(recs) == 4, list(recs)
    for fail in ("1", "null"):
        bad = rec_for(fail, "-1")
        assert bad["status"] == "invalid" and bad["error"].startswith("lr=-1"), bad["error"]
        assert not bad.get("metrics")
    crashed = rec_for("1", "1e-3")
    assert crashed["status"] == "failed", crashed
    assert crashed["error"] == "RuntimeError: injected failure at step 1 (debug.fail_at_step)"
    tb = Path(crashed["run_dir"]) / crashed["traceback_file"]
    assert "Traceback" in tb.read_text()
    ok = rec_for("null", "1e-3")
    assert ok["status"] == "success", ok.get("error")
    _check_record(ok, Path(ok["run_dir"]), ok["overrides"])

    assert re.search(r"tunegrid: 4 run\(s\) in ", proc.stdout), proc.stdout[-2000:]
    for rec in recs.values():
        line = rf"^\s*{rec['status']}\s+{re.escape(','.join(rec['overrides']))}"
        assert re.search(line, proc.stdout, re.M), (line, proc.stdout[-2000:])
    assert "3 run(s) did not succeed" in proc.stderr


@pytest.mark.slow
def test_crashed_run_is_not_marked_finished_in_wandb(failing_grid):
    """W&B must show the crashed run as failed (non-zero exit code), the successful one as finished."""
    crashed, ok = failing_grid.rec_for("1", "1e-3"), failing_grid.rec_for("null", "1e-3")
    assert crashed["status"] == "failed" and ok["status"] == "success"
    assert wandb_reader.read_run(wandb_reader.find_run_file(ok["run_dir"])).exit_code == 0
    wb = wandb_reader.read_run(wandb_reader.find_run_file(crashed["run_dir"]))
    assert wb.exit_code not in (None, 0), f"W&B run of a crashed run exited with {wb.exit_code}"


# --------------------------------------------------------------------------- the default run (slow)


@pytest.mark.slow
def test_default_run(tmp_path):
    """`python -m src.run` with nothing but its output folder moved: the README's main job (3 epochs of the
    tiny model: about 450 s of CPU time, so 4-8 minutes on 2 cores; the rest of the slow tier takes ~2)."""
    run_dir = tmp_path / "default"
    t0 = time.perf_counter()
    proc = run_cli(f"hydra.run.dir={run_dir}", timeout=3600)
    seconds = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    no_traceback(proc)
    m = re.search(r"record: (\S+)", proc.stdout)
    assert m and Path(m.group(1)) == run_dir / RECORD, proc.stdout[-1000:]
    rec = json.loads(Path(m.group(1)).read_text())
    metrics = _check_record(rec, run_dir, [])
    assert metrics["eval_loss"] < 0.5 * metrics["initial_eval_loss"], metrics
    assert math.isclose(metrics["perplexity"], math.exp(metrics["eval_loss"]), rel_tol=1e-9)
    wb = wandb_reader.read_run(wandb_reader.find_run_file(run_dir))
    assert wb.name == wb.group == "default" and wb.exit_code == 0
    assert math.isclose(wb.summary["eval_loss"], metrics["eval_loss"], rel_tol=1e-9)
    print(
        f"default run: {seconds:.0f} s, eval loss {metrics['initial_eval_loss']:.2f} -> {metrics['eval_loss']:.2f}"
    )


def test_quick_overrides_are_valid():
    """The slow tier's short-training overrides compose, validate and reach the keys they name (fails fast
    instead of mid-grid)."""
    from src.config import validate

    for logger in ("none", "wandb"):
        cfg = validate(compose_cfg(*quick(logger=logger)))
        assert (cfg.trainer.max_steps, cfg.trainer.batch_size, cfg.eval.num_samples) == (12, 8, 0)
        assert (cfg.logger.wandb is None) == (logger == "none")
