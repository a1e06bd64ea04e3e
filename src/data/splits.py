"""Records -> train / validation / test: filtered (derive's separator present, max_response_chars), shuffled
with split_seed, carved into the configured sizes (or the hub's own splits) and capped."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.config.schema import SPLITS
from src.data.render import prepare
from src.data.sources import load_sources
from src.errors import ConfigError


def filter_indices(ds, data_cfg: DictConfig) -> list[int] | None:
    """Row indices that survive derive (separator present) and max_response_chars; None: keep all."""
    limit = data_cfg.get("max_response_chars")
    if not limit and not data_cfg.get("derive"):
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
                continue
            if limit and len(response.format(**rec)) > int(limit):
                continue
            keep.append(offset + i)
        offset += n
    return keep


def _filter_reason(data_cfg: DictConfig) -> str:
    parts = []
    if data_cfg.get("derive"):
        parts.append(f"contain {data_cfg.derive.at_last!r} in {data_cfg.derive.field} (data.derive)")
    if data_cfg.get("max_response_chars"):
        parts.append(
            f"have a response of at most {data_cfg.max_response_chars} characters "
            f"(data.max_response_chars={data_cfg.max_response_chars})"
        )
    return " and ".join(parts)


def _and(items: list[str]) -> str:
    return " and ".join(items) if len(items) < 3 else ", ".join(items[:-1]) + " and " + items[-1]


def carve(n: int, wants: dict[str, int | None]) -> dict[str, tuple[int, int]]:
    """{split: (start, count)} over n shuffled records: fixed sizes are served first, in split order
    (each gets min(size, what is left)); the one split with size null gets the rest."""
    nulls = [s for s, w in wants.items() if w is None]
    counts, left = {}, n
    for s, w in wants.items():
        if w is not None:
            counts[s] = min(int(w), left)
            left -= counts[s]
    for s in nulls:
        counts[s] = left
    out, start = {}, 0
    for s in wants:
        out[s] = (start, counts[s])
        start += counts[s]
    return out


def load_splits(data_cfg: DictConfig, cache: Path) -> dict[str, Any]:
    """Untokenised train/validation/test: filtered, shuffled with split_seed, carved and capped."""
    import numpy as np

    sizes = data_cfg.get("splits") or {}  # validated by the schema: integers ≥ 0 or null
    sources, plan = load_sources(data_cfg, cache)
    out: dict[str, Any] = {}
    for src, ds in sources.items():
        mine = [s for s in SPLITS if plan[s] == src]
        wants = {s: (None if sizes.get(s) is None else int(sizes.get(s))) for s in mine}
        nulls = [s for s in mine if wants[s] is None]
        if len(nulls) > 1:
            raise ConfigError(
                f"data={data_cfg.name}: {_and([f'data.splits.{s}' for s in nulls])} are null (all records) but "
                f"come from one source ({ds.tg_name}); give all but one a size, e.g. "
                + " ".join(f"data.splits.{s}=100" for s in nulls[1:])
            )
        keep = filter_indices(ds, data_cfg)
        total = len(ds)
        if keep is not None:
            if not keep:
                raise ConfigError(
                    f"data={data_cfg.name}: no records left after filtering: none of the {total} "
                    f"records in {ds.tg_name} {_filter_reason(data_cfg)}"
                )
            ds = ds.select(keep, keep_in_memory=True)
        perm = np.random.default_rng(int(data_cfg.split_seed)).permutation(len(ds))
        for s, (start, count) in carve(len(ds), wants).items():
            idx = perm[start : start + count]
            cap = data_cfg.get("max_train_samples" if s == "train" else "max_eval_samples")
            if cap is not None:
                idx = idx[: int(cap)]
            if count == 0 and s != "test":
                took = {o: c for o, (_, c) in carve(len(ds), wants).items() if c}
                taken = ", ".join(f"{o} took {c}" for o, c in took.items())
                lower = _and([f"data.splits.{o}" for o in took]) or "the other data.splits.* sizes"
                raise ConfigError(
                    f"data={data_cfg.name}: the {s} split is empty: {sources[src].tg_name} has {len(ds)} usable "
                    f"records ({taken or 'none'}); lower {lower} or use a bigger file"
                )
            part = ds.select(idx, keep_in_memory=True)
            rows = np.asarray(keep if keep is not None else [], dtype=np.int64).tobytes()
            part.tg_identity = {  # what split_fingerprint hashes: the source's identity and the chosen rows
                "source": sources[src].tg_source,
                "rows": hashlib.sha256(rows + np.asarray(idx, dtype=np.int64).tobytes()).hexdigest(),
            }
            out[s] = part
    return {s: out[s] for s in SPLITS}
