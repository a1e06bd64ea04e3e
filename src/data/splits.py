"""Records -> train / validation / test: filtered (derive's separator present, max_response_chars), shuffled
with split_seed, carved into the configured sizes (or the hub's own splits) and capped.

Sizes. A source that serves one split gives it at most its size (null: all of it). A source carved into
several splits serves its fixed sizes first, in split order, and the one null split gets the rest. When the
source is too small for them, sizes that are the data YAML's own (conf/data/<name>.yaml, its defaults
chain included) are carved in their proportions instead, and one `tunegrid:` line says so; sizes that differ
from the YAML's (given on the command line, or by a study) must fit, or the run stops with an error.

With data.group_by, records that share that field's value (E2E NLG: a meaning representation with its
several references) are shuffled and carved as one: no value is in two splits."""

from __future__ import annotations

import functools
import hashlib
import math
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.config import CONF_DIR
from src.config.data import SPLITS
from src.data.render import prepare
from src.data.sources import load_sources
from src.errors import ConfigError

# With a null split (the rest of an upstream split of unknown size) the YAML gives no proportions: when the
# fixed sizes do not fit, they share this part of the records (in their proportions), the rest the remainder.
FIXED_SHARE = 0.2


def filter_indices(ds, data_cfg: DictConfig, pairs: bool = False) -> list[int] | None:
    """Row indices that survive derive (separator present) and max_response_chars; None: keep all. With
    `pairs` a record without the separator stays: build_pairs reports it as a bad pair (data.on_bad_record)."""
    limit = data_cfg.get("max_response_chars")
    if not limit and (pairs or not data_cfg.get("derive")):
        return None
    spec = OmegaConf.to_container(data_cfg, resolve=True)  # plain dict: fast per-record access
    response = spec["response"]
    keep: list[int] = []
    offset = 0
    for batch in ds.iter(batch_size=2000):
        keys = list(batch)
        n = len(batch[keys[0]]) if keys else 0
        for i in range(n):
            rec = prepare(spec, {k: batch[k][i] for k in keys})
            if rec is None:
                if pairs:
                    keep.append(offset + i)
                continue
            if limit and len(response.format(**rec)) > int(limit):
                continue
            keep.append(offset + i)
        offset += n
    return keep


def _filter_reason(data_cfg: DictConfig, pairs: bool) -> str:
    parts = []
    if data_cfg.get("derive") and not pairs:
        parts.append(f"contain {data_cfg.derive.at_last!r} in {data_cfg.derive.field} (data.derive)")
    if data_cfg.get("max_response_chars"):
        parts.append(
            f"have a response of at most {data_cfg.max_response_chars} characters "
            f"(data.max_response_chars={data_cfg.max_response_chars})"
        )
    return " and ".join(parts)


def _and(items: list[str]) -> str:
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]


@functools.cache
def yaml_sizes(name: str) -> dict[str, Any] | None:
    """data.splits as conf/data/<name>.yaml sets it (through its defaults list), or None without such a file."""

    def load(stem: str, depth: int = 0) -> Any:
        path = CONF_DIR / "data" / f"{stem}.yaml"
        if depth > 8 or not path.is_file():
            return None
        node = OmegaConf.load(path)
        parents = list(node.pop("defaults", None) or [])
        if "_self_" not in parents:
            parents.append("_self_")
        merged = OmegaConf.create()
        for entry in parents:
            part = (
                node if entry == "_self_" else load(str(entry), depth + 1) if isinstance(entry, str) else None
            )
            if part is not None:
                merged = OmegaConf.merge(merged, part)
        return merged

    cfg = load(name)
    splits = cfg.get("splits") if cfg is not None else None
    return dict(OmegaConf.to_container(splits)) if splits is not None else None


def _apportion(total: int, weights: dict[str, int]) -> dict[str, int]:
    """`total` records shared in proportion to `weights` (largest remainder); a split that would get none
    takes one from the largest while that leaves it more than one."""
    whole = sum(weights.values())
    if total <= 0 or not whole:
        return dict.fromkeys(weights, 0)
    raw = {s: total * w / whole for s, w in weights.items()}
    out = {s: math.floor(r) for s, r in raw.items()}
    for s in sorted(weights, key=lambda s: out[s] - raw[s])[: total - sum(out.values())]:
        out[s] += 1
    for s in [s for s in weights if out[s] == 0]:
        big = max(out, key=out.get)
        if out[big] > 1:
            out[big], out[s] = out[big] - 1, 1
    return out


def _sizes_line(sizes: dict[str, Any]) -> str:
    return ", ".join(f"{s}={'null' if v is None else v}" for s, v in sizes.items())


def fit_sizes(
    data_cfg: DictConfig, wants: dict[str, int | None], n: int, name: str
) -> tuple[dict[str, int], bool]:
    """({split: records}, whether the YAML's sizes were shrunk) for the splits carved from one source of `n`
    usable records, `name` in messages (see the module's doc)."""
    fixed = {s: w for s, w in wants.items() if w is not None}
    rest = next((s for s, w in wants.items() if w is None), None)
    needs_one = rest is not None and rest != "test"  # the rest may leave an empty test split, never train
    if sum(fixed.values()) + needs_one <= n:
        return {s: (n - sum(fixed.values()) if w is None else w) for s, w in wants.items()}, False
    yaml = yaml_sizes(str(data_cfg.name)) or {}
    given = {s: w for s, w in fixed.items() if not (s in yaml and yaml[s] == w)}
    defaults = {s: w for s, w in fixed.items() if s not in given}
    room = n - sum(given.values())
    others = [s for s, w in defaults.items() if w] + ([rest] if needs_one else [])
    if not defaults or room < len(others):
        keys = " ".join(f"data.splits.{s}={w}" for s, w in given.items())
        if not given:
            raise ConfigError(
                f"data={data_cfg.name}: {name} has {n} usable records, too few for {_and(others)} (at least one "
                "each); use a bigger file"
            )
        if room < 0 or not others:
            raise ConfigError(
                f"{keys}: need{'s' if len(given) == 1 else ''} {sum(given.values())} records, but {name} has "
                f"{n} usable records; lower {'it' if len(given) == 1 else 'them'} or use a bigger file"
            )
        raise ConfigError(
            f"{keys}: leave{'s' if len(given) == 1 else ''} {room} of the {n} usable records of {name} for "
            f"{_and(others)} (at least one each); lower {'it' if len(given) == 1 else 'them'} or use a bigger file"
        )
    share = room if rest is None else max(min(room - needs_one, math.floor(room * FIXED_SHARE)), 0)
    shrunk = _apportion(share, {s: w for s, w in defaults.items() if w})
    counts = {s: given.get(s, shrunk.get(s, 0)) for s in wants}
    if rest is not None:
        counts[rest] = n - sum(v for s, v in counts.items() if s != rest)
    print(
        f"tunegrid: data={data_cfg.name}: {name} has {n} usable records, fewer than data.splits "
        f"({_sizes_line(wants)}) need; the data set's own sizes shrink in proportion: {_sizes_line(counts)} "
        "(data.splits.* chooses them)",
        file=sys.stderr,
    )
    return counts, True


def _order(ds, data_cfg: DictConfig, seed: int, grouped: bool) -> list[list[int]]:
    """The shuffled records as groups of row indices: one record each, or with data.group_by (`grouped`) all
    the records that share the field's value, in file order within a group."""
    import numpy as np

    rng = np.random.default_rng(seed)
    if not grouped:
        return [[int(i)] for i in rng.permutation(len(ds))]
    groups: dict[Any, list[int]] = {}
    for i, value in enumerate(ds[str(data_cfg.group_by)]):
        groups.setdefault(value if isinstance(value, str | int | float) else repr(value), []).append(i)
    members = list(groups.values())
    return [members[int(g)] for g in rng.permutation(len(members))]


def _assign(groups: list[list[int]], counts: dict[str, int], rest: str | None) -> dict[str, list[int]]:
    """Whole groups to splits, laid out as the splits are ordered: the sized splits before the `rest` split (the
    one whose size is null) from the front, those after it from the back, each taking groups until it has its
    count (a group may take it over by less than one group's records); the rest gets the groups between. With
    one record a group the counts are exact; without a rest split the records left over go unused."""
    out: dict[str, list[int]] = {s: [] for s in counts}
    names = list(counts)
    cut = names.index(rest) if rest is not None else len(names)
    front, back = 0, len(groups)
    for s in names[:cut]:
        while front < back and len(out[s]) < counts[s]:
            out[s] += groups[front]
            front += 1
    for s in reversed(names[cut + 1 :]):
        taken: list[list[int]] = []
        while front < back and sum(map(len, taken)) < counts[s]:
            back -= 1
            taken.append(groups[back])
        out[s] = [i for g in reversed(taken) for i in g]
    if rest is not None:
        out[rest] = [i for g in groups[front:back] for i in g]
    return out


def load_splits_info(
    data_cfg: DictConfig, cache: Path, pairs: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Untokenised train/validation/test (filtered, shuffled with split_seed, carved, capped) and what the run
    record shows of them (`data_info`): records per split, records skipped for a missing field, and whether
    the sizes were carved in proportion to fit a small source. `pairs` (build_pairs): data.pairs' fields are
    checked too, and derive's filter leaves the pairs to build_pairs. Each split keeps its source's name and
    file (`tg_name`, `tg_file`) for messages about its records."""
    import numpy as np

    sizes = data_cfg.get("splits") or {}  # validated by the schema: integers ≥ 0 or null
    sources, plan = load_sources(data_cfg, cache, pairs)
    out: dict[str, Any] = {}
    fitted = False
    for src, ds in sources.items():
        mine = [s for s in SPLITS if plan[s] == src]
        wants = {s: (None if sizes.get(s) is None else int(sizes.get(s))) for s in mine}
        keep = filter_indices(ds, data_cfg, pairs)
        total = len(ds)
        if keep is not None:
            if not keep:
                raise ConfigError(
                    f"data={data_cfg.name}: no records left after filtering: none of the {total} "
                    f"records in {ds.tg_name} {_filter_reason(data_cfg, pairs)}"
                )
            ds = ds.select(keep, keep_in_memory=True)
        n = len(ds)
        nulls = [s for s in mine if wants[s] is None]
        if len(nulls) > 1:
            hint = max(1, n // 10)
            raise ConfigError(
                f"data={data_cfg.name}: {_and([f'data.splits.{s}' for s in nulls])} are null (all records) but "
                f"come from one source ({sources[src].tg_name}, {n} usable records); give all but one a size, e.g. "
                + " ".join(f"data.splits.{s}={hint}" for s in nulls[1:])
            )
        if len(mine) == 1:  # a source of its own: the split takes at most its size
            counts = {mine[0]: n if wants[mine[0]] is None else min(wants[mine[0]], n)}
        else:
            counts, shrunk = fit_sizes(data_cfg, wants, n, sources[src].tg_name)
            fitted = fitted or shrunk
        grouped = data_cfg.get("group_by") is not None and len(mine) > 1
        rest = next((s for s in mine if wants[s] is None), None)
        chosen = _assign(_order(ds, data_cfg, int(data_cfg.split_seed), grouped), counts, rest)
        for s in mine:
            idx = np.asarray(chosen[s], dtype=np.int64)
            cap = data_cfg.get("max_train_samples" if s == "train" else "max_eval_samples")
            if cap is not None:
                idx = idx[: int(cap)]
            if len(chosen[s]) == 0 and s != "test":
                took = {o: len(chosen[o]) for o in mine if chosen[o]}
                taken = ", ".join(f"{o} took {c}" for o, c in took.items())
                lower = _and([f"data.splits.{o}" for o in took]) or "the other data.splits.* sizes"
                raise ConfigError(
                    f"data={data_cfg.name}: the {s} split is empty: {sources[src].tg_name} has {n} usable "
                    f"records ({taken or 'none'}); lower {lower} or use a bigger file"
                )
            part = ds.select(idx, keep_in_memory=True)
            rows = np.asarray(keep if keep is not None else [], dtype=np.int64).tobytes()
            part.tg_identity = {  # what split_fingerprint hashes: the source's identity and the chosen rows
                "source": sources[src].tg_source,
                "rows": hashlib.sha256(rows + idx.tobytes()).hexdigest(),
            }
            part.tg_name, part.tg_file = sources[src].tg_name, getattr(sources[src], "tg_file", None)
            out[s] = part
    info = {
        "split_records": {s: len(out[s]) for s in SPLITS},
        "bad_records_skipped": sum(int(getattr(ds, "tg_skipped", 0)) for ds in sources.values()),
        "sizes_fitted": fitted,
    }
    return {s: out[s] for s in SPLITS}, info


def load_splits(data_cfg: DictConfig, cache: Path) -> dict[str, Any]:
    """Untokenised train/validation/test (load_splits_info without the record's summary)."""
    return load_splits_info(data_cfg, cache)[0]
