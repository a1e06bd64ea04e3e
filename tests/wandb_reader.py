"""Read a W&B offline run back from its `run-<id>.wandb` file, for tests.

wandb 0.31 no longer ships a Python reader for its transaction log, so this module parses the file
itself. The format is LevelDB's log format with a W&B header:

* a 7-byte file header: b":W&B", magic 0xBEE1 (uint16, little-endian), version (one byte);
* then 32 KiB blocks (the header counts towards the first one) of physical records, each
  checksum (uint32 LE: CRC-32 of the type byte then the payload), length (uint16 LE), type
  (FULL=1, FIRST=2, MIDDLE=3, LAST=4) and `length` payload bytes. A record never straddles a
  block boundary; when fewer than 7 bytes are left in a block they are zero padding. A logical
  record is one FULL chunk or FIRST + MIDDLE* + LAST chunks;
* each logical record is a serialised `wandb.proto.wandb_internal_pb2.Record`.

`read_run(path)` returns what a test wants to check: the run's group, name, tags, config items,
history rows and summary, each value decoded from W&B's JSON encoding.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEADER = struct.Struct("<4sHB")
IDENT, MAGIC = b":W&B", 0xBEE1
CHUNK = struct.Struct("<IHB")
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class WandbRun:
    run_id: str = ""
    project: str = ""
    group: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    record_types: dict[str, int] = field(default_factory=dict)  # record kind -> how many, for debugging
    exit_code: int | None = None


def read_records(path: str | Path) -> list[bytes]:
    """The logical records' payloads, in order. Raises ValueError on a bad header, checksum or chunk order."""
    data = Path(path).read_bytes()
    if len(data) < HEADER.size:
        raise ValueError(f"{path}: too short for a W&B header")
    ident, magic, _version = HEADER.unpack_from(data, 0)
    if ident != IDENT or magic != MAGIC:
        raise ValueError(f"{path}: not a W&B transaction log (header {data[: HEADER.size]!r})")
    out: list[bytes] = []
    pending: bytearray | None = None
    pos = HEADER.size
    while pos < len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # block trailer: zero padding
            pos += left
            continue
        if pos + CHUNK.size > len(data):
            break  # a truncated tail (a run still being written); ignore it
        checksum, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding (pre-allocated or block tail)
            pos += left
            continue
        start, end = pos + CHUNK.size, pos + CHUNK.size + length
        if end > len(data):
            break
        payload = data[start:end]
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != checksum:
            raise ValueError(f"{path}: checksum mismatch in the chunk at byte {pos}")
        if kind == FULL:
            if pending is not None:
                raise ValueError(f"{path}: FULL chunk inside a fragmented record at byte {pos}")
            out.append(payload)
        elif kind == FIRST:
            if pending is not None:
                raise ValueError(f"{path}: FIRST chunk inside a fragmented record at byte {pos}")
            pending = bytearray(payload)
        elif kind in (MIDDLE, LAST):
            if pending is None:
                raise ValueError(
                    f"{path}: {'MIDDLE' if kind == MIDDLE else 'LAST'} chunk without FIRST at byte {pos}"
                )
            pending += payload
            if kind == LAST:
                out.append(bytes(pending))
                pending = None
        else:
            raise ValueError(f"{path}: unknown chunk type {kind} at byte {pos}")
        pos = end
    return out


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _value(item: Any) -> Any:
    return json.loads(item.value_json) if item.value_json else None


def read_run(path: str | Path) -> WandbRun:
    """Decode one run file: run metadata, config (run record + later config records), history rows and
    the summary after all updates (W&B's summary semantics: later updates win, removals delete)."""
    from wandb.proto import wandb_internal_pb2 as pb

    run = WandbRun()
    for payload in read_records(path):
        rec = pb.Record()
        rec.ParseFromString(payload)
        kind = rec.WhichOneof("record_type") or "none"
        run.record_types[kind] = run.record_types.get(kind, 0) + 1
        if kind == "run":
            r = rec.run
            run.run_id, run.project, run.group, run.name = r.run_id, r.project, r.run_group, r.display_name
            run.tags = list(r.tags)
            for item in r.config.update:
                run.config[_key(item)] = _value(item)
            for item in r.summary.update:
                run.summary[_key(item)] = _value(item)
        elif kind == "config":
            for item in rec.config.update:
                run.config[_key(item)] = _value(item)
            for item in rec.config.remove:
                run.config.pop(_key(item), None)
        elif kind == "history":
            run.history.append({_key(item): _value(item) for item in rec.history.item})
        elif kind == "summary":
            for item in rec.summary.update:
                run.summary[_key(item)] = _value(item)
            for item in rec.summary.remove:
                run.summary.pop(_key(item), None)
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    return run


def find_run_file(run_dir: str | Path) -> Path:
    """The single `run-*.wandb` file under a tunegrid run directory (`<run_dir>/wandb/offline-run-*/`)."""
    files = sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb"))
    if len(files) != 1:
        raise FileNotFoundError(
            f"expected one W&B run file under {run_dir}/wandb, found {[str(f) for f in files]}"
        )
    return files[0]


if __name__ == "__main__":  # python tests/wandb_reader.py <run dir or .wandb file>
    import sys

    target = Path(sys.argv[1])
    r = read_run(target if target.suffix == ".wandb" else find_run_file(target))
    print(json.dumps({k: v for k, v in r.__dict__.items() if k != "history"}, indent=1, default=str))
    for row in r.history:
        print(json.dumps(row))
