"""Data: records from a generator, a local file or the hub -> splits -> prompts -> tokenised examples.

A data set is described in YAML (conf/data/<name>.yaml): where its records come from, their fields,
how to cut, normalise and filter them, the prompt/response templates and the split sizes. This
module only follows the description; it has no per-data-set code.

    records (hub split / data.path / generator)
      -> derive (cut a field in two)  -> normalise (lowercase, strip punctuation)
      -> filter (max_response_chars, derive's separator present)
      -> shuffle with split_seed and carve the configured split sizes, or take the hub's own splits
      -> cap (max_train_samples / max_eval_samples)
      -> render prompt + response, tokenise (cached: `datasets` cache files with explicit fingerprints)

The tokenised splits are written with `Dataset.map(new_fingerprint=..., cache_file_name=...)` under
<cache>/tokenised/. The fingerprint is a hash of the resolved data config, the tokenizer's content,
the source records' identity, the selected row indices and this module's source, so it is the same
in every process: the second run of a sweep loads the tokenised splits instead of tokenising again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.config import ConfigError

IGNORE_INDEX = -100
SPLITS = ("train", "validation", "test")
FORMATS = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}
_PUNCT = re.compile(r"[^\w\s]")
_SPACES = re.compile(r"[ \t]{2,}")
_LINE_END_SPACES = re.compile(r"[ \t]+$", re.MULTILINE)
_WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "tiger",
    "piano",
    "garden",
    "silver",
    "window",
    "rocket",
    "forest",
    "candle",
    "ocean",
    "pepper",
    "marble",
    "violet",
    "castle",
    "dragon",
    "summer",
    "winter",
    "basket",
    "orange",
    "planet",
]


# --------------------------------------------------------------------------- the synthetic task


def digits_record(xs: list[str], reverse: bool) -> dict[str, str]:
    """One synthetic task: reverse, or sort, a list of digits (also benchmarks/alpaca_like.py's)."""
    if reverse:
        return {"instruction": "Reverse the list.", "input": " ".join(xs), "output": " ".join(xs[::-1])}
    return {
        "instruction": "Sort the numbers in ascending order.",
        "input": " ".join(xs),
        "output": " ".join(sorted(xs)),
    }


def case_record(words: list[str], upper: bool) -> dict[str, str]:
    """One synthetic task: words in the other case, to be converted to upper (or lower) case."""
    text = " ".join(w.lower() if upper else w.upper() for w in words)
    return {
        "instruction": f"Convert the text to {'upper' if upper else 'lower'} case.",
        "input": text,
        "output": text.upper() if upper else text.lower(),
    }


def synthetic_records(n: int, seed: int) -> list[dict[str, str]]:
    """Deterministic Alpaca-format records: reverse/sort digits, add numbers, change a word's case."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.randrange(5)
        if kind < 2:
            out.append(digits_record([str(rng.randrange(10)) for _ in range(rng.randint(3, 7))], kind == 0))
        elif kind == 2:
            a, b = rng.randrange(50), rng.randrange(50)
            out.append({"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)})
        else:
            out.append(case_record(rng.sample(_WORDS, rng.randint(1, 3)), kind == 3))
    return out


_POSITIVE = ["great", "lovely", "superb", "moving", "brilliant", "charming", "delightful", "fresh"]
_NEGATIVE = ["dull", "awful", "clumsy", "boring", "tedious", "bland", "messy", "weak"]


def synthetic_labelled(n: int, seed: int) -> list[dict[str, Any]]:
    """Deterministic labelled "reviews" for task=classification: label 1 when positive words win."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        k = rng.choice((3, 5))
        pos = rng.randint(0, k)
        words = rng.sample(_POSITIVE, pos) + rng.sample(_NEGATIVE, k - pos)
        rng.shuffle(words)
        out.append({"sentence": "the film was " + " ".join(words), "label": int(pos * 2 > k)})
    return out


def tokenizer_corpus() -> Iterator[str]:
    """Text the tiny model's BPE is trained on: the synthetic task rendered with the Alpaca templates."""
    conf = OmegaConf.load(Path(__file__).resolve().parent.parent / "conf" / "data" / "alpaca.yaml")
    for rec in synthetic_records(3000, seed=1234):
        yield render_prompt(conf, rec) + render_response(conf, rec)


# --------------------------------------------------------------------------- records -> text


def _text(value: Any) -> Any:
    """Missing values (None, a CSV's NaN) render as the empty string."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


def _normalise(text: str, lowercase: bool, strip_punctuation: bool) -> str:
    if lowercase:
        text = text.lower()
    if strip_punctuation:
        text = _LINE_END_SPACES.sub("", _SPACES.sub(" ", _PUNCT.sub("", text)))
    return text


def prepare(data_cfg: DictConfig | dict[str, Any], rec: dict[str, Any]) -> dict[str, Any] | None:
    """A raw record as the templates see it: derived fields added, normalisation applied.

    None when `derive` is configured and the record lacks its separator (such records are dropped).
    `data_cfg` may be a DictConfig or, in the per-record loops, the same config as a plain dict.
    """
    out = {k: _text(v) for k, v in rec.items()}
    derive = data_cfg.get("derive")
    if derive:
        text = str(out.get(derive["field"], ""))
        i = text.rfind(derive["at_last"])
        if i < 0:
            return None
        cut = i + len(derive["at_last"])
        out[derive["head"]], out[derive["tail"]] = text[:cut], text[cut:]
    norm = data_cfg.get("normalize")
    if norm and (norm.get("lowercase") or norm.get("strip_punctuation")):
        for f in norm.get("fields") or list(out):
            if isinstance(out.get(f), str):
                out[f] = _normalise(out[f], bool(norm.get("lowercase")), bool(norm.get("strip_punctuation")))
    return out


def _prompt_template(data_cfg: DictConfig | dict[str, Any], rec: dict[str, Any]) -> str:
    alt = data_cfg.get("prompt_if_empty")
    if alt is not None and not str(rec.get(alt["field"], "")).strip():
        return alt["template"]
    return data_cfg["prompt"]


def _prepared(data_cfg: DictConfig, rec: dict[str, Any]) -> dict[str, Any]:
    p = prepare(data_cfg, rec)
    if p is None:
        raise ValueError(f"record has no {data_cfg.derive.at_last!r} in its {data_cfg.derive.field!r} field")
    return p


def render_prompt(data_cfg: DictConfig, rec: dict[str, Any]) -> str:
    """The prompt for a raw record (derive and normalise are applied here)."""
    p = _prepared(data_cfg, rec)
    return _prompt_template(data_cfg, p).format(**p)


def render_response(data_cfg: DictConfig, rec: dict[str, Any]) -> str:
    """The response (the tokens the loss is on) for a raw record."""
    return data_cfg.response.format(**_prepared(data_cfg, rec))


def template_fields(template: str) -> set[str]:
    """The {names} a str.format template uses."""
    return {name.split(".")[0].split("[")[0] for _, name, _, _ in string.Formatter().parse(template) if name}


# --------------------------------------------------------------------------- sources


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


def _check_json(path: Path, what: str) -> None:
    """Name the first malformed line of a JSON / JSONL file (datasets' own error does not)."""
    with path.open(encoding="utf-8", errors="replace") as f:
        head = f.read(4096).lstrip()[:1]
        f.seek(0)
        if head == "[":
            try:
                recs = json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(
                    f"{what}={str(path)!r}: not valid JSON at line {e.lineno}: {e.msg}"
                ) from None
            bad = next((i for i, r in enumerate(recs) if not isinstance(r, dict)), None)
            if bad is not None:
                raise ConfigError(f"{what}={str(path)!r}: item {bad} of the JSON list is not an object")
            return
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{what}={str(path)!r}: line {i} is not valid JSON ({e.msg})") from None
                if not isinstance(rec, dict):
                    raise ConfigError(f"{what}={str(path)!r}: line {i} is not a JSON object")


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
    kwargs = {"na_filter": False} if builder == "csv" else {}  # keep "" and "NA" as text
    quiet = datasets.logging.get_logger("datasets.packaged_modules.json.json")  # logs its own parse error
    level = quiet.level
    quiet.setLevel(50)
    try:
        ds = datasets.load_dataset(
            builder,
            data_files=str(path.resolve()),
            split="train",
            cache_dir=str(cache / "datasets"),
            **kwargs,
        )
    except Exception as e:
        if builder == "json":
            _check_json(path, what)
        cause = e.__cause__ or e
        raise ConfigError(
            f"{what}={file!r}: cannot be read as .{ext} ({type(cause).__name__}: {_first_line(cause)})"
        ) from None
    finally:
        quiet.setLevel(level)
    if len(ds) == 0:
        raise ConfigError(f"{what}={file!r}: the file holds no records")
    stat = path.resolve().stat()
    ds.tg_source = f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return ds


def _generated(data_cfg: DictConfig, cache: Path):
    """Run the configured generator once into <cache>/data/<name>-<hash>.jsonl and read that file."""
    gen = OmegaConf.to_container(data_cfg.generator, resolve=True)
    key = hashlib.sha256(json.dumps(gen, sort_keys=True).encode()).hexdigest()[:12]
    path = cache / "data" / f"{data_cfg.name}-{key}.jsonl"
    if not path.exists():
        from hydra.utils import instantiate

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}-{random.randrange(1 << 30)}")
        with tmp.open("w") as f:
            for rec in instantiate(data_cfg.generator):
                f.write(json.dumps(rec) + "\n")
        tmp.replace(path)
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


def load_sources(data_cfg: DictConfig, cache: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """({source name: Dataset}, {split: source name}); checks the fields and templates against the records."""
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
        missing = [f for f in data_cfg.fields if f not in cols]
        if (
            data_cfg.get("derive")
            and data_cfg.derive.field not in cols
            and data_cfg.derive.field not in missing
        ):
            missing.append(data_cfg.derive.field)
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
        trunc = data_cfg.get("truncate")
        if trunc and trunc.get("field") not in set(cols) | derived:
            raise ConfigError(
                f"data.truncate.field={trunc.get('field')!r}: not a field of {names[src]} "
                f"(found: {', '.join(sorted(set(cols) | derived))})"
            )
    for src in sources:
        sources[src].tg_name = names[src]
    return sources, plan


# --------------------------------------------------------------------------- filter and carve


def _filter_indices(ds, data_cfg: DictConfig) -> list[int] | None:
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

    sizes = data_cfg.get("splits") or {}
    for s in SPLITS:
        v = sizes.get(s)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ConfigError(f"data.splits.{s}={v!r}: must be an integer ≥ 0, or null (all the rest)")
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
        keep = _filter_indices(ds, data_cfg)
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


# --------------------------------------------------------------------------- tokenisation


def tokenizer_fingerprint(tokenizer) -> str:
    """A content hash of the tokenizer (vocabulary, merges, normaliser, special tokens), stable across
    processes; padding/truncation state is left out because calling the tokenizer can change it."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.eos_token_id, str(tokenizer.special_tokens_map)]).encode())
    return h.hexdigest()


def _code_fingerprint() -> str:
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def split_fingerprint(ds, split: str, spec: dict[str, Any], tok_fp: str) -> str:
    """The `datasets` fingerprint of one tokenised split (hex, 32 characters)."""
    ident = {
        "spec": spec,
        "tokenizer": tok_fp,
        "code": _code_fingerprint(),
        "split": split,
        "data": getattr(ds, "tg_identity", None) or ds._fingerprint,
    }  # built elsewhere: its own fingerprint
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _encoder(spec: dict[str, Any], tokenizer):
    """The batched map function: prompt + response + EOS -> input_ids/attention_mask/labels."""
    cfg = spec  # plain dict: fast per-record access
    max_len = int(spec["max_seq_len"])
    train_on_prompt = bool(spec.get("train_on_prompt"))
    eos = tokenizer.eos_token_id
    trunc = spec.get("truncate") or None

    def ids(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    def shorten(rec: dict[str, Any], p: list[int], r: list[int]) -> list[int]:
        """Cut truncate.field (tokens) so that prompt + response fit max_seq_len; keep at least half
        of the room the template leaves, so that a long response cannot empty the field."""
        field = trunc["field"]
        f_ids = ids([str(rec.get(field, ""))])[0]
        overhead = max(len(p) - len(f_ids), 0)
        keep = max(max_len - overhead - len(r), (max_len - overhead) // 2, 0)
        if keep >= len(f_ids):
            return p
        kept = f_ids[:keep] if trunc.get("side", "right") == "right" else f_ids[len(f_ids) - keep :]
        short = {**rec, field: tokenizer.decode(kept, clean_up_tokenization_spaces=False) if kept else ""}
        return ids([_prompt_template(cfg, short).format(**short)])[0]

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        keys = list(batch)
        n = len(batch[keys[0]]) if keys else 0
        recs = [prepare(cfg, {k: batch[k][i] for k in keys}) for i in range(n)]
        recs = [r for r in recs if r is not None]
        prompts = ids([_prompt_template(cfg, r).format(**r) for r in recs])
        responses = ids([cfg["response"].format(**r) for r in recs])
        out: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for rec, p, r in zip(recs, prompts, responses, strict=True):
            r = r + [eos]
            if trunc and len(p) + len(r) > max_len:
                p = shorten(rec, p, r)
            seq = (p + r)[:max_len]
            labels = ((p if train_on_prompt else [IGNORE_INDEX] * len(p)) + r)[:max_len]
            if all(x == IGNORE_INDEX for x in labels):
                continue  # the prompt alone fills max_seq_len: nothing to learn from
            out["input_ids"].append(seq)
            out["attention_mask"].append([1] * len(seq))
            out["labels"].append(labels)
        return out

    return encode


def _label_encoder(spec: dict[str, Any], tokenizer):
    """The batched map function for classification: rendered text -> input_ids, label_field -> one class id."""
    max_len, field = int(spec["max_seq_len"]), spec["label_field"]

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        keys = list(batch)
        recs = [
            prepare(spec, {k: batch[k][i] for k in keys}) for i in range(len(batch[keys[0]]) if keys else 0)
        ]
        recs = [r for r in recs if r is not None]
        ids = tokenizer([_prompt_template(spec, r).format(**r) for r in recs], add_special_tokens=False)[
            "input_ids"
        ]
        seqs = [x[:max_len] for x in ids]
        return {
            "input_ids": seqs,
            "attention_mask": [[1] * len(x) for x in seqs],
            "labels": [int(r[field]) for r in recs],
        }

    return encode


def tokenize_splits(
    splits: dict[str, Any], data_cfg: DictConfig, tokenizer, cache: Path | None = None
) -> dict[str, Any]:
    """prompt + response + EOS -> input_ids/labels; prompt tokens get IGNORE_INDEX unless train_on_prompt.

    Examples whose prompt alone fills max_seq_len carry no label and are dropped. With `cache`, each
    split is written to <cache>/tokenised/<name>-<split>-<fingerprint>.arrow and reloaded from there.
    """
    spec = OmegaConf.to_container(data_cfg, resolve=True)
    tok_fp = tokenizer_fingerprint(tokenizer)
    encode = _label_encoder(spec, tokenizer) if spec.get("label_field") else _encoder(spec, tokenizer)
    out = {}
    for name, ds in splits.items():
        fp = split_fingerprint(ds, name, spec, tok_fp)
        kwargs: dict[str, Any] = {"new_fingerprint": fp}
        if cache is not None:
            folder = cache / "tokenised"
            folder.mkdir(parents=True, exist_ok=True)
            kwargs["cache_file_name"] = str(folder / f"{spec['name']}-{name}-{fp}.arrow")
        out[name] = ds.map(
            encode,
            batched=True,
            batch_size=500,
            remove_columns=ds.column_names,
            desc=f"tokenise {name}",
            **kwargs,
        )
        if len(out[name]) < len(ds):
            logging.getLogger(__name__).warning(
                "data=%s: %d of %d %s examples dropped: their prompt alone fills data.max_seq_len=%s",
                spec["name"],
                len(ds) - len(out[name]),
                len(ds),
                name,
                spec["max_seq_len"],
            )
    if len(out.get("train", [None])) == 0:
        raise ConfigError(
            f"data={spec['name']}: no train example fits data.max_seq_len={spec['max_seq_len']} "
            f"(every prompt fills it); raise data.max_seq_len or set data.truncate"
        )
    return out


def collator(tokenizer, data_cfg: DictConfig | None = None, batching: str = "dynamic"):
    """How examples become batches (trainer.batching, resolved by `config.batching_mode`); labels are padded, or
    examples separated, with IGNORE_INDEX.

    packing          PackedRows: the batch's examples share rows of at most data.max_seq_len tokens, each
                     attending only to itself; the loss of padded training with little padding
    dynamic          pad to the longest example of the batch (group_by_length: the same, over batches of
                     similar lengths that the Trainer's sampler draws)
    pad_to_max       pad every example to data.max_seq_len (the common practice; for comparisons)
    """
    from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding

    if data_cfg is not None and data_cfg.get("label_field"):
        return DataCollatorWithPadding(tokenizer, return_tensors="pt")  # one class id per example
    if batching == "packing":
        return PackedRows(tokenizer.pad_token_id, int(data_cfg.max_seq_len))
    if batching == "pad_to_max":
        return DataCollatorForSeq2Seq(
            tokenizer,
            padding="max_length",
            max_length=int(data_cfg.max_seq_len),
            label_pad_token_id=IGNORE_INDEX,
            return_tensors="pt",
        )
    return DataCollatorForSeq2Seq(
        tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt"
    )


class PackedRows:
    """Collator: a batch's examples packed first-fit-decreasing into rows of at most `max_len` tokens.

    Returns input_ids, labels, position_ids and attention_mask, [rows, longest row]. Position ids restart at
    0 for every example and for a row's trailing padding (its own segment); each example's first label is
    IGNORE_INDEX (the previous example's last token must not predict it). The attention mask marks the real
    tokens so that the Trainer counts them (include_num_input_tokens_seen="non_padding") but must not reach
    the model: `drop_packed_attention_mask` removes it, and transformers then builds a block-diagonal causal
    mask from the position ids (masking_utils.find_packed_sequence_indices; sdpa, eager, flash attention),
    so every example attends only to itself and the loss equals that of padded batches.

    Not transformers' DataCollatorWithFlattening: it lays the whole batch into one row, and without a
    varlen (flash-attention) kernel attention then spans the ~2,000-token row: measured 1.7x padding to
    max_seq_len on CPU, against 3.1x for these rows (benchmarks/README.md).
    """

    def __init__(self, pad_token_id: int, max_len: int):
        self.pad = int(pad_token_id)
        self.max_len = int(max_len)

    def rows(self, lengths: list[int]) -> list[list[int]]:
        """Example indices per row: first-fit decreasing into rows of a capacity chosen to process the fewest
        positions (rows x widest row). Candidates: max_len and the multiples of the longest example below it;
        the longest itself never gives more positions than padding to it, so packing never pads more than
        dynamic padding (measured on the short, even synthetic data: full rows of max_len padded more)."""
        longest = max(1, *lengths)
        capacities = {self.max_len, *range(longest, self.max_len + 1, longest)}
        best: list[list[int]] = []
        best_cost = (math.inf, math.inf)
        for capacity in sorted(capacities):
            bins = self._first_fit(lengths, capacity)
            width = max(sum(lengths[i] for i in b) for b in bins)
            cost = (len(bins) * width, width)  # fewest positions; then the narrower rows (attention ~ width²)
            if cost < best_cost:
                best, best_cost = bins, cost
        return best

    @staticmethod
    def _first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
        bins: list[list[int]] = []
        room: list[int] = []
        for i in sorted(range(len(lengths)), key=lambda k: -lengths[k]):
            for b, free in enumerate(room):
                if lengths[i] <= free:
                    bins[b].append(i)
                    room[b] -= lengths[i]
                    break
            else:
                bins.append([i])
                room.append(capacity - lengths[i])
        return bins

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids_of = [list(f["input_ids"]) for f in features]
        labels_of = [list(f["labels"]) if "labels" in f else list(f["input_ids"]) for f in features]
        rows = []
        for members in self.rows([len(x) for x in ids_of]):
            ids, labels, pos = [], [], []
            for i in members:
                ids += ids_of[i]
                labels += [IGNORE_INDEX] + labels_of[i][1:]
                pos += list(range(len(ids_of[i])))
            rows.append((ids, labels, pos))
        width = max(len(r[0]) for r in rows)
        out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "attention_mask": []}
        for ids, labels, pos in rows:
            pad = width - len(ids)
            out["input_ids"].append(ids + [self.pad] * pad)
            out["labels"].append(labels + [IGNORE_INDEX] * pad)
            out["position_ids"].append(pos + list(range(pad)))
            out["attention_mask"].append([1] * len(ids) + [0] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}


def drop_packed_attention_mask(module, args, kwargs):
    """Forward pre-hook for PackedRows batches (training and evaluation only; remove it before generation,
    which passes a mask and positions of its own): without the 2-D mask transformers derives the per-example
    causal mask from the restarting position ids. It does so only without a KV cache, and GPT-2 (in eval
    mode), GPT-Neo and Llama create one when config.use_cache is on: examples would then see each other
    (measured: the loss moves), so the hook also turns the cache off."""
    if kwargs.get("position_ids") is not None and kwargs.get("attention_mask") is not None:
        kwargs = {k: v for k, v in kwargs.items() if k != "attention_mask"}
        kwargs["use_cache"] = False
    return args, kwargs


def build(data_cfg: DictConfig, tokenizer, cache: Path) -> dict[str, Any]:
    """The whole data path: records -> splits -> tokenised splits (cached under <cache>/tokenised)."""
    return tokenize_splits(load_splits(data_cfg, cache), data_cfg, tokenizer, cache)
