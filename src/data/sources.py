"""Where a data set's records come from: a local file in the hub's format, a generator, or the hub; each
split's source (`source_plan`); the fields and templates checked against what the records hold."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src import build
from src.atomic import write_lines
from src.config.data import SPLITS
from src.data.checks import (
    blank,
    check_csv,
    check_json,
    check_utf8,
    checked_fields,
    no_records,
    without_bad_records,
)
from src.data.render import template_fields
from src.errors import ConfigError, first_line

FORMATS = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}


def _first_line(e: BaseException) -> str:
    return first_line(e, 200)


def _read_file(file: str, what: str, cache: Path):
    """One local file in the hub's format (.json list, .jsonl, .csv, .parquet) as a Dataset."""
    import datasets

    path = Path(file).expanduser()
    if not path.is_file():
        raise ConfigError(f"{what}={file!r}: no such file")
    ext = path.suffix.lower().lstrip(".")
    builder = FORMATS.get(ext)
    if builder is None:
        raise ConfigError(
            f"{what}={file!r}: unknown format .{ext}; use .json (a list), .jsonl, .csv or .parquet"
        )
    if blank(path):
        raise no_records(what, path)
    kwargs = {"na_filter": False} if builder == "csv" else {}  # keep "" and "NA" as text
    quiet = datasets.logging.get_logger("datasets.packaged_modules.json.json")  # logs its own parse error
    level = quiet.level
    quiet.setLevel(50)

    def load(**mode: str):
        return datasets.load_dataset(
            builder,
            data_files=str(path.resolve()),
            split="train",
            cache_dir=str(cache / "datasets"),
            **kwargs,
            **mode,
        )

    try:
        try:
            ds = load()
        except Exception as first:
            # datasets reuses its prepared copy under <cache>/datasets unchecked, so a corrupt one fails every
            # run: prepare it again from the file, once (a file that is itself unreadable fails again below).
            ds = load(download_mode="reuse_cache_if_exists")
            print(
                f"tunegrid: cached copy of {path} in {cache / 'datasets'} was unreadable "
                f"({type(first).__name__}: {_first_line(first)}); rebuilt it from the file",
                file=sys.stderr,
            )
    except Exception as e:
        if builder == "json":
            check_json(path, what)
        elif builder == "csv":
            check_csv(path, what)
        cause = e.__cause__ or e
        raise ConfigError(
            f"{what}={file!r}: cannot be read as .{ext} ({type(cause).__name__}: {_first_line(cause)})"
        ) from None
    finally:
        quiet.setLevel(level)
    if len(ds) == 0:
        raise ConfigError(f"{what}={file!r}: the file holds no records")
    check_utf8(ds, what, path)
    stat = path.resolve().stat()
    ds.tg_source = f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    ds.tg_file = path
    return ds


def _generated(data_cfg: DictConfig, cache: Path):
    """Run the configured generator once into <cache>/data/<name>-<hash>.jsonl and read that file."""
    gen = OmegaConf.to_container(data_cfg.generator, resolve=True)
    key = hashlib.sha256(json.dumps(gen, sort_keys=True).encode()).hexdigest()[:12]
    path = cache / "data" / f"{data_cfg.name}-{key}.jsonl"

    def generate() -> None:
        write_lines(path, (json.dumps(rec) for rec in build.generated_records(data_cfg.generator)))

    if not path.exists():
        generate()
    try:
        return _read_file(str(path), "data.generator", cache)
    except ConfigError as e:  # the file is tunegrid's own cache entry: generate it again, once
        reason = str(e).removeprefix(f"data.generator={str(path)!r}: ")
        print(f"tunegrid: cached data {path} is unreadable ({reason}); generating it again", file=sys.stderr)
        generate()
        return _read_file(str(path), "data.generator", cache)


def _hub_error(data_cfg: DictConfig, split: str, e: BaseException) -> ConfigError:
    hub_splits = list(dict.fromkeys(source_plan(data_cfg).values()))
    hub, name = data_cfg.hub, data_cfg.name
    chain, c = [], e
    while c is not None and len(chain) < 10:
        chain.append(c)
        c = c.__cause__ or c.__context__
    kinds = {type(x).__name__ for x in chain}
    offline = (
        any(isinstance(x, ConnectionError | TimeoutError) for x in chain)
        or kinds & {"OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectError", "ConnectTimeout"}
        or "Couldn't reach" in str(e)
    )
    conf = f", {data_cfg.hub_config!r}" if data_cfg.get("hub_config") else ""
    if offline:
        if len(hub_splits) > 1:
            where = "'data.path={" + ",".join(f"{h}:/path/to/{h}.jsonl" for h in hub_splits) + "}'"
            save = f"save each split with datasets.load_dataset({hub!r}{conf}, split=...).to_json(...)"
        else:
            where = f"data.path=/path/to/{name}.jsonl"
            save = (
                f"save it with datasets.load_dataset({hub!r}{conf}, split={split!r}).to_json('{name}.jsonl')"
            )
        return ConfigError(
            f"data={name}: could not reach the hub for data.hub={hub!r} (this machine is offline or the hub is "
            f"unreachable, and the data set is not in the local cache); on a machine with network {save} and "
            f"pass {where} (.json, .jsonl, .csv and .parquet are read)"
        )
    if "DatasetNotFoundError" in kinds:
        return ConfigError(
            f"data={name}: data.hub={hub!r} was not found on the hub (a typo, or a gated/private "
            f"data set?); or pass a local copy with data.path=/path/to/file"
        )
    return ConfigError(
        f"data={name}: could not load split {split!r} of data.hub={hub!r}{conf} "
        f"({type(e).__name__}: {_first_line(e)})"
    )


def _from_hub(data_cfg: DictConfig, split: str):
    import datasets

    try:
        ds = datasets.load_dataset(data_cfg.hub, data_cfg.get("hub_config"), split=split)
    except Exception as e:
        raise _hub_error(data_cfg, split, e) from None
    ds.tg_source = f"hub:{data_cfg.hub}:{data_cfg.get('hub_config')}:{split}:{ds._fingerprint}"
    return ds


def source_plan(data_cfg: DictConfig) -> dict[str, str]:
    """Which source each split comes from: {split: source name}.

    With `hub_splits` a split maps to a hub split of its own; splits it does not list are carved from
    the source of `train`. Without it every split is carved from `hub_split`. A single `data.path`
    file or a generator is one source for all three splits.
    """
    path = data_cfg.get("path")
    if data_cfg.get("generator") is not None and not path:
        return dict.fromkeys(SPLITS, "generator")
    if path and not isinstance(path, DictConfig | dict):
        return dict.fromkeys(SPLITS, "file")
    mapping = data_cfg.get("hub_splits") or {}
    default = mapping.get("train") or data_cfg.get("hub_split") or "train"
    return {s: str(mapping.get(s) or default) for s in SPLITS}


def load_sources(
    data_cfg: DictConfig, cache: Path, pairs: bool = False
) -> tuple[dict[str, Any], dict[str, str]]:
    """({source name: Dataset}, {split: source name}); checks the fields and templates against the records
    (`pairs`: data.pairs' fields too, only when the preference pairs are built)."""
    import datasets

    datasets.disable_progress_bars()
    plan = source_plan(data_cfg)
    path = data_cfg.get("path")
    sources: dict[str, Any] = {}
    names: dict[str, str] = {}  # source -> how the user names it in messages
    if isinstance(path, DictConfig | dict):  # {hub split: local file}
        unused = sorted(set(path) - set(plan.values()))
        if unused:
            raise ConfigError(
                f"data.path.{unused[0]}: no split is taken from hub split {unused[0]!r} "
                f"(splits come from {sorted(set(plan.values()))}; see data.hub_splits)"
            )
        for src in dict.fromkeys(plan.values()):
            if not path.get(src):
                raise ConfigError(
                    f"data.path: no file for hub split {src!r}; add data.path.{src}=/path/to/file"
                )
            sources[src] = _read_file(str(path[src]), f"data.path.{src}", cache)
            names[src] = f"data.path.{src}={str(path[src])!r}"
    elif path:
        sources["file"] = _read_file(str(path), "data.path", cache)
        names["file"] = f"data.path={str(path)!r}"
    elif data_cfg.get("generator") is not None:
        sources["generator"] = _generated(data_cfg, cache)
        names["generator"] = "the generated records"
    elif data_cfg.get("hub"):
        for src in dict.fromkeys(plan.values()):
            sources[src] = _from_hub(data_cfg, src)
            names[src] = f"hub split {data_cfg.hub}[{src}]"
    else:
        raise ConfigError(
            f"data={data_cfg.name}: no source; set data.path=/path/to/file or data.hub=<hub id>"
        )

    derived = {data_cfg.derive.head, data_cfg.derive.tail} if data_cfg.get("derive") else set()
    for src, ds in sources.items():
        cols = ds.column_names
        missing = [f for f in checked_fields(data_cfg, pairs) if f not in cols]
        if missing:
            raise ConfigError(
                f"data={data_cfg.name}: {names[src]} lacks field(s) {', '.join(missing)} "
                f"(found: {', '.join(cols)})"
            )
        templates = {"data.prompt": data_cfg.prompt, "data.response": data_cfg.response}
        if data_cfg.get("prompt_if_empty") is not None:
            templates["data.prompt_if_empty.template"] = data_cfg.prompt_if_empty.template
        for key, template in templates.items():
            unknown = sorted(template_fields(template) - set(cols) - derived)
            if unknown:
                raise ConfigError(
                    f"{key}: uses {{{unknown[0]}}}, which {names[src]} lacks "
                    f"(found: {', '.join(sorted(set(cols) | derived))})"
                )
        for key, known in (("truncate.field", set(cols) | derived), ("group_by", set(cols))):
            value = OmegaConf.select(data_cfg, key)
            if value is not None and value not in known:
                raise ConfigError(
                    f"data.{key}={value!r}: not a field of {names[src]} (found: {', '.join(sorted(known))})"
                )
    for src in list(sources):
        sources[src] = without_bad_records(sources[src], data_cfg, names[src], pairs)
        sources[src].tg_name = names[src]
    return sources, plan
