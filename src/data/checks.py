"""What a data file and its records must be, checked where `datasets` would fail obscurely or not at all: a
file that holds no records, a JSON syntax error (its line and column), bytes that are not UTF-8, and records
that lack a field (data.on_bad_record: an error naming the file, the line or index and the field, or the
records dropped and counted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from omegaconf import DictConfig

from src.errors import ConfigError


def _json_error(what: str, path: Path, e: json.JSONDecodeError) -> ConfigError:
    reason = e.msg.removesuffix(" at")  # "Invalid control character at": the place is lineno / colno
    return ConfigError(f"{what}={str(path)!r}: line {e.lineno} column {e.colno}: not valid JSON ({reason})")


def no_records(what: str, path: Path) -> ConfigError:
    return ConfigError(f"{what}={str(path)!r}: the file holds no records")


def check_json(path: Path, what: str) -> None:
    """Name the first malformed line of a JSON / JSONL file (datasets' own error does not), or say that it holds
    no records (datasets: StopIteration, `Instruction "train" corresponds to no data!`)."""
    with path.open(encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()[:1]
        f.seek(0)
        if head == "[":
            try:
                recs = json.load(f)
            except json.JSONDecodeError as e:
                raise _json_error(what, path, e) from None
            if not recs:
                raise no_records(what, path)
            bad = next((i for i, r in enumerate(recs) if not isinstance(r, dict)), None)
            if bad is not None:
                raise ConfigError(f"{what}={str(path)!r}: item {bad} of the JSON list is not an object")
            return
        seen = False
        for i, line in enumerate(f, 1):
            if line.strip():
                seen = True
                try:
                    rec = json.loads(line.rstrip("\r\n"))  # its error at the end of this line, not the next
                except json.JSONDecodeError as e:
                    e.lineno = i
                    raise _json_error(what, path, e) from None
                if not isinstance(rec, dict):
                    raise ConfigError(f"{what}={str(path)!r}: line {i} is not a JSON object")
        if not seen:
            raise no_records(what, path)


def check_csv(path: Path, what: str) -> None:
    """A CSV file with a header and no row holds no records (datasets: `corresponds to no data`)."""
    import csv

    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        rows = csv.reader(f)
        next(rows, None)
        if not any(any(cell.strip() for cell in row) for row in rows):
            raise no_records(what, path)


def blank(path: Path) -> bool:
    """An empty file, or one of whitespace only (read up to 64 KiB: a longer one is taken as not blank)."""
    with path.open("rb") as f:
        head = f.read(65536)
    return not head.strip() and len(head) < 65536


def check_utf8(ds, what: str, path: Path) -> None:
    """pyarrow reads bytes that are not UTF-8 into text columns unchecked, so that the first record read fails
    later with a UnicodeDecodeError; its full validation (C++, linear) finds them now."""
    import pyarrow as pa

    table = ds.data.table
    for name, col in zip(table.column_names, table.columns, strict=True):
        try:
            col.validate(full=True)
        except pa.ArrowInvalid:
            raise ConfigError(
                f"{what}={str(path)!r}: field {name} holds bytes that are not UTF-8 text; save the file as UTF-8"
            ) from None


# --------------------------------------------------------------------------- records that lack a field


def checked_fields(data_cfg: DictConfig, pairs: bool = False) -> list[str]:
    """The fields every record must hold (not null): data.fields and derive's field, and with `pairs` (the
    preference pairs are built) data.pairs' two fields, which SFT on the same data set does not need."""
    fields = list(data_cfg.fields)
    extra = [data_cfg.derive.field] if data_cfg.get("derive") else []
    if pairs and data_cfg.get("pairs"):
        extra += [data_cfg.pairs.chosen, data_cfg.pairs.rejected]
    for f in extra:
        if f not in fields:
            fields.append(f)
    return fields


def _bad_rows(ds, fields: list[str]):
    """Row indices (numpy) whose value of one of `fields` is null or NaN: a JSON record that lacks the key or
    holds null, a Parquet or hub row without it. Arrow's null counts make the clean case free."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    # The rows as the dataset has them (a dataset with an indices mapping reads them through it).
    table = ds.data.table if ds._indices is None else ds.with_format("arrow")[:]
    mask = None
    for f in fields:
        col = table.column(f)
        if col.null_count == 0 and not pa.types.is_floating(col.type):
            continue
        m = pc.is_null(col, nan_is_null=True)
        mask = m if mask is None else pc.or_(mask, m)
    if mask is None:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False), dtype=bool))


def _lacks(rec: dict, fields: list[str]) -> str | None:
    for f in fields:
        if f not in rec:
            return f"lacks field {f}"
        v = rec[f]
        if v is None or (isinstance(v, float) and v != v):
            return f"has {f}: {json.dumps(v)}"
    return None


def _first_bad(ds, row: int, fields: list[str]) -> str:
    """Where the first bad record is, in the words of its file: the line of a JSONL file, the index of a JSON
    list; a row otherwise (CSV, Parquet, the hub, a generator)."""
    path = getattr(ds, "tg_file", None)
    if path is not None and path.suffix.lower() in (".json", ".jsonl"):
        with path.open(encoding="utf-8", errors="replace") as f:
            if f.read(4096).lstrip()[:1] == "[":
                f.seek(0)
                for i, rec in enumerate(json.load(f)):
                    if why := _lacks(rec, fields):
                        return f"the record at index {i} of the JSON list {why}"
            else:
                f.seek(0)
                for i, line in enumerate(f, 1):
                    if line.strip() and (why := _lacks(json.loads(line), fields)):
                        return f"line {i} {why}"
    rec = ds[int(row)]
    return f"row {row} {_lacks(rec, fields) or 'lacks a field'}"


def without_bad_records(ds, data_cfg: DictConfig, name: str, pairs: bool = False):
    """The source without its records that lack a field (data.on_bad_record=skip; the count is kept as
    `tg_skipped`), or a ConfigError naming the first of them (error, the default): such a record would train
    on an empty response. `pairs`: data.pairs' fields are checked too (checked_fields)."""
    fields = checked_fields(data_cfg, pairs)
    bad = _bad_rows(ds, fields)
    if len(bad) == 0:
        ds.tg_skipped = 0
        return ds
    total = len(ds)
    what = f"{len(bad)} of the {total} records lack" if len(bad) > 1 else f"1 of the {total} records lacks"
    if data_cfg.get("on_bad_record", "error") != "skip":
        raise ConfigError(
            f"{name}: {_first_bad(ds, int(bad[0]), fields)} ({what} one of {', '.join(fields)}; "
            f"data.on_bad_record=skip drops such records)"
        )
    if len(bad) == total:
        raise ConfigError(f"{name}: every record lacks one of {', '.join(fields)}; no record is left to use")
    import numpy as np

    keep = np.setdiff1d(np.arange(total), bad)
    out = ds.select(keep, keep_in_memory=True)
    for attr in ("tg_source", "tg_file"):
        if hasattr(ds, attr):
            setattr(out, attr, getattr(ds, attr))
    out.tg_source = f"{getattr(ds, 'tg_source', ds._fingerprint)}:without:{len(bad)}"
    out.tg_skipped = len(bad)
    print(
        f"tunegrid: {name}: skipped {what} one of {', '.join(fields)} (data.on_bad_record=skip)",
        file=sys.stderr,
    )
    return out
