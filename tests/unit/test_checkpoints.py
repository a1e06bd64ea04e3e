"""Corrupt files never leave a run stuck (in process, on real files written the way the Trainer, safetensors and
`datasets` write them, then damaged): the cheap checks name the file and why, a corrupt checkpoint is moved
out of checkpoints/ (never deleted) and the newest intact one is resumed from, and a corrupt cache entry
(tiny model, generated records, `datasets`' prepared copy, tokenised split) is rebuilt with one line."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from src import models
from src.checkpoints import resumable_checkpoint
from src.config import validate
from src.integrity import file_problem, folder_problem
from tests.helpers import QUICK, compose_cfg

UNPICKLING_ADVICE = ("weights_only", "trust the source", "can still be loaded")  # torch's advice


def tunegrid_lines(text: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.startswith("tunegrid:")]
    for ln in lines:
        assert not any(a in ln for a in UNPICKLING_ADVICE), ln
    return lines


def write_checkpoint(folder: Path, step: int) -> Path:
    """The files a Trainer checkpoint holds, written by the libraries that write them."""
    folder.mkdir(parents=True)
    layer = torch.nn.Linear(8, 4)
    save_file({k: v.contiguous() for k, v in layer.state_dict().items()}, str(folder / "model.safetensors"))
    opt = torch.optim.AdamW(layer.parameters())
    layer(torch.ones(2, 8)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), folder / "optimizer.pt")
    torch.save(torch.optim.lr_scheduler.StepLR(opt, 10).state_dict(), folder / "scheduler.pt")
    torch.save({"cpu": torch.random.get_rng_state()}, folder / "rng_state.pth")
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}, indent=2))
    return folder


def damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "garbage":
        path.write_bytes(os.urandom(4096))
    elif how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:
        raise ValueError(how)


# --------------------------------------------------------------------------- the checks


@pytest.mark.parametrize(
    ("name", "how", "reason"),
    [
        ("model.safetensors", "garbage", "not a safetensors file: header too large"),
        (
            "model.safetensors",
            "truncate",
            "not a safetensors file: incomplete metadata, file not fully covered",
        ),
        ("model.safetensors", "empty", "empty file"),
        ("optimizer.pt", "garbage", "not a torch file: File is not a zip file"),
        ("optimizer.pt", "truncate", "not a torch file: File is not a zip file"),
        ("scheduler.pt", "garbage", "not a torch file: File is not a zip file"),
        ("rng_state.pth", "empty", "empty file"),
        ("trainer_state.json", "truncate", "not valid JSON (line 2 column "),
        ("config.json", "garbage", "not valid JSON ("),
    ],
)
def test_a_damaged_file_is_named_with_a_short_reason(tmp_path, name, how, reason):
    ckpt = write_checkpoint(tmp_path / "checkpoint-5", 5)
    assert folder_problem(ckpt) is None
    damage(ckpt / name, how)
    found = folder_problem(ckpt)
    assert found is not None and found[0] == name and found[1].startswith(reason), found
    assert "\n" not in found[1] and len(found[1]) < 200


def test_a_torch_file_whose_pickle_fails_its_crc_is_caught_without_unpickling(tmp_path):
    """A flipped byte inside the pickle: torch itself would load it (it checks no CRC) and fail somewhere in
    the unpickler; the zip's CRC-32 of that member catches it."""
    path = tmp_path / "optimizer.pt"
    torch.save({"state": {}, "param_groups": [{"lr": 0.1}]}, path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(".pkl"))
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    raw[info.header_offset + 30 + name_len + extra_len + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert file_problem(path) == "not a torch file: Bad CRC-32 for file 'optimizer/data.pkl'"


def test_a_zip_that_is_not_a_torch_file_and_a_state_without_step_are_refused(tmp_path):
    with zipfile.ZipFile(tmp_path / "scheduler.pt", "w") as z:
        z.writestr("notes.txt", "hello")
    assert file_problem(tmp_path / "scheduler.pt") == "not a torch file: no pickle in the archive"
    (tmp_path / "trainer_state.json").write_text('{"log_history": []}')
    assert file_problem(tmp_path / "trainer_state.json") == "no global_step"
    (tmp_path / "notes.md").write_text("")  # other files only have to be readable
    assert file_problem(tmp_path / "notes.md") == "empty file"


def test_the_checks_read_headers_not_weights(tmp_path):
    """A 16 GB safetensors file (sparse: its tensor bytes take no disk) passes in milliseconds: reading it
    would take seconds. Its header is real, written by safetensors for a small tensor, then grown to size."""
    path = tmp_path / "model.safetensors"
    n = 16 * 2**30 // 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    header += b" " * (-len(header) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 4 * n)
    start = time.perf_counter()
    assert file_problem(path) is None
    assert time.perf_counter() - start < 0.5
    with path.open("r+b") as f:
        f.truncate(8 + len(header) + 4 * n - 1)  # one byte short
    assert file_problem(path) == "not a safetensors file: incomplete metadata, file not fully covered"


# --------------------------------------------------------------------------- resuming


@pytest.fixture(scope="module")
def cfg():
    return validate(compose_cfg(*QUICK))


def checkpoints(tmp_path: Path, cfg, steps=(5, 10)) -> Path:
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    assert resumable_checkpoint(folder, cfg) is None  # writes this config's and code's marker
    for step in steps:
        write_checkpoint(folder / f"checkpoint-{step}", step)
    return folder


def test_an_intact_checkpoint_is_resumed_silently(tmp_path, cfg, capsys):
    folder = checkpoints(tmp_path, cfg)
    assert resumable_checkpoint(folder, cfg) == str(folder / "checkpoint-10")
    out = capsys.readouterr()
    assert out.out == out.err == ""
    assert not (folder.parent / "checkpoints.corrupt").exists()


def test_a_corrupt_newest_checkpoint_is_moved_out_and_the_one_before_resumed(tmp_path, cfg, capsys):
    folder = checkpoints(tmp_path, cfg)
    damage(folder / "checkpoint-10" / "model.safetensors", "garbage")
    kept = (folder / "checkpoint-10" / "model.safetensors").read_bytes()
    assert resumable_checkpoint(folder, cfg) == str(folder / "checkpoint-5")
    moved = list((folder.parent / "checkpoints.corrupt").iterdir())
    assert len(moved) == 1 and moved[0].name.startswith("checkpoint-10-"), moved
    assert (moved[0] / "model.safetensors").read_bytes() == kept  # never deleted
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == [
        "checkpoint-5"
    ]  # out of the Trainer's reach
    out = capsys.readouterr()
    assert tunegrid_lines(out.err) == [
        "tunegrid: checkpoint checkpoint-10 is unreadable (model.safetensors: not a safetensors file: header too "
        f"large); moved to {moved[0]}; resuming from checkpoint-5"
    ]
    assert out.out == ""


def test_when_every_checkpoint_is_corrupt_the_run_starts_over(tmp_path, cfg, capsys):
    folder = checkpoints(tmp_path, cfg)
    damage(folder / "checkpoint-10" / "optimizer.pt", "garbage")
    damage(folder / "checkpoint-5" / "trainer_state.json", "truncate")
    assert resumable_checkpoint(folder, cfg) is None
    lines = tunegrid_lines(capsys.readouterr().err)
    assert [ln.split(" is unreadable (")[0] for ln in lines] == [
        "tunegrid: checkpoint checkpoint-10",
        "tunegrid: checkpoint checkpoint-5",
    ]
    assert "(optimizer.pt: not a torch file: File is not a zip file)" in lines[0]
    assert "(trainer_state.json: not valid JSON (line " in lines[1]
    assert all(ln.endswith("; no intact checkpoint left, starting over") for ln in lines), lines
    assert not list(folder.glob("checkpoint-*"))
    assert len(list((folder.parent / "checkpoints.corrupt").iterdir())) == 2
    assert resumable_checkpoint(folder, cfg) is None  # nothing left to complain about
    assert capsys.readouterr().err == ""


def test_an_unreadable_marker_moves_the_checkpoints_aside_instead_of_failing(tmp_path, cfg, capsys):
    folder = checkpoints(tmp_path, cfg)
    (folder / "tunegrid.json").write_text('{"config_hash": ')
    assert resumable_checkpoint(folder, cfg) is None
    old = [p for p in folder.parent.iterdir() if p.name.startswith("checkpoints.old-")]
    assert len(old) == 1 and (old[0] / "checkpoint-10" / "model.safetensors").is_file()
    assert "earlier checkpoints" in capsys.readouterr().out


# --------------------------------------------------------------------------- caches


def test_a_corrupt_cached_tiny_model_is_rebuilt(tmp_path, capsys):
    cfg = validate(compose_cfg(*QUICK, "model.pretrain.steps=3"))  # a short pretraining, built three times
    pretraining = "tunegrid: pretraining the tiny model once, into the cache (3 steps)"
    folder = models.materialise_tiny(cfg.model, tmp_path)
    assert tunegrid_lines(capsys.readouterr().err) == [pretraining]
    good = (folder / "model.safetensors").read_bytes()
    damage(folder / "model.safetensors", "garbage")
    assert models.materialise_tiny(cfg.model, tmp_path) == folder
    assert tunegrid_lines(capsys.readouterr().err) == [
        f"tunegrid: cached model {folder} is unreadable (model.safetensors: not a safetensors file: header too "
        "large); removed, rebuilding it",
        pretraining,
    ]
    assert (
        folder / "model.safetensors"
    ).read_bytes() == good  # the same build (seeded, pretraining included)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # nothing left beside it
    (folder / "model.safetensors").unlink()
    models.materialise_tiny(cfg.model, tmp_path)
    assert "(model.safetensors: missing)" in capsys.readouterr().err
    assert models.materialise_tiny(cfg.model, tmp_path) == folder and folder_problem(folder) is None
    assert capsys.readouterr().err == ""  # an intact entry is used as it is


def test_corrupt_data_caches_are_rebuilt(tmp_path, cfg, capsys):
    """The generated records, `datasets`' prepared copy of them and a tokenised split: each damaged in turn,
    each rebuilt on the next build with one line, and the data come out the same."""
    from src import data

    tokenizer = models.load_tokenizer(models.model_path(cfg.model, tmp_path))

    def build():
        prepared = data.build(cfg.data, tokenizer, tmp_path)
        return {k: v.to_dict()["input_ids"] for k, v in prepared.splits.items()}

    first = build()
    capsys.readouterr()
    steps = {
        "tokenised": next((tmp_path / "tokenised").glob("*-train-*.arrow")),
        "datasets": next((tmp_path / "datasets").rglob("*.arrow")),
        "generated": next((tmp_path / "data").glob("*.jsonl")),
    }
    expected = {
        "tokenised": f"tunegrid: cached tokenised data {steps['tokenised']} is unreadable (",
        "datasets": f"tunegrid: cached copy of {steps['generated']} in {tmp_path / 'datasets'} was unreadable (",
        "generated": f"tunegrid: cached data {steps['generated']} is unreadable (line ",
    }
    for what, path in steps.items():
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2 + 7])  # cut mid-record
        assert build() == first, what
        lines = tunegrid_lines(capsys.readouterr().err)
        assert len(lines) == 1 and lines[0].startswith(expected[what]), (what, lines)
        if what == "generated":
            assert path.read_bytes() == raw  # generated again: the same records
    shutil.rmtree(tmp_path / "tokenised")
    assert build() == first
    assert tunegrid_lines(capsys.readouterr().err) == []
