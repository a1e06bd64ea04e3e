"""Data: records from a generator, a local file or the hub -> splits -> prompts -> tokenised examples.

A data set is described in YAML (fields, prompt templates, split sizes, filters); this module only
follows the description. Tokenisation runs through `datasets.map` on file-backed data, so its
fingerprint cache makes the second run of a sweep skip tokenising.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.config import ConfigError

IGNORE_INDEX = -100
SPLITS = ("train", "validation", "test")
_WORDS = (
    "apple river stone cloud tiger piano garden silver window rocket forest candle "
    "ocean pepper marble violet castle dragon summer winter basket orange planet"
).split()


# --------------------------------------------------------------------------- the synthetic task


def synthetic_records(n: int, seed: int) -> list[dict[str, str]]:
    """Deterministic Alpaca-format records: reverse/sort digits, add numbers, change a word's case."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        kind = rng.randrange(5)
        if kind < 2:
            xs = [str(rng.randrange(10)) for _ in range(rng.randint(3, 7))]
            if kind == 0:
                out.append({"instruction": "Reverse the list.", "input": " ".join(xs), "output": " ".join(xs[::-1])})
            else:
                out.append(
                    {"instruction": "Sort the numbers in ascending order.", "input": " ".join(xs),
                     "output": " ".join(sorted(xs))}
                )
        elif kind == 2:
            a, b = rng.randrange(50), rng.randrange(50)
            out.append({"instruction": "Add the two numbers.", "input": f"{a} + {b}", "output": str(a + b)})
        else:
            words = rng.sample(_WORDS, rng.randint(1, 3))
            upper = kind == 3
            text = " ".join(w.lower() if upper else w.upper() for w in words)
            out.append(
                {"instruction": f"Convert the text to {'upper' if upper else 'lower'} case.", "input": text,
                 "output": text.upper() if upper else text.lower()}
            )
    return out


def tokenizer_corpus() -> Iterator[str]:
    """Text the tiny model's BPE is trained on: the synthetic task rendered with the Alpaca templates."""
    conf = OmegaConf.load(Path(__file__).resolve().parent.parent / "conf" / "data" / "alpaca.yaml")
    for rec in synthetic_records(3000, seed=1234):
        yield render_prompt(conf, rec) + render_response(conf, rec)


# --------------------------------------------------------------------------- rendering


def render_prompt(data_cfg: DictConfig, rec: dict[str, Any]) -> str:
    alt = data_cfg.get("prompt_if_empty")
    template = data_cfg.prompt
    if alt is not None and not str(rec.get(alt.field) or "").strip():
        template = alt.template
    return template.format(**{k: "" if v is None else v for k, v in rec.items()})


def render_response(data_cfg: DictConfig, rec: dict[str, Any]) -> str:
    return data_cfg.response.format(**{k: "" if v is None else v for k, v in rec.items()})


# --------------------------------------------------------------------------- loading records


def _source_files(data_cfg: DictConfig, cache: Path) -> tuple[str, str]:
    """(datasets builder, data file) for generator- and file-backed data sets."""
    if data_cfg.get("path"):
        path = Path(str(data_cfg.path)).expanduser()
        if not path.is_file():
            raise ConfigError(f"data.path={str(data_cfg.path)!r}: no such file")
        ext = path.suffix.lower().lstrip(".")
        builder = {"json": "json", "jsonl": "json", "csv": "csv", "parquet": "parquet"}.get(ext)
        if builder is None:
            raise ConfigError(f"data.path={str(path)!r}: unknown format .{ext}; use .json, .jsonl, .csv or .parquet")
        if builder == "json":
            _check_json(path)
        return builder, str(path)
    gen = OmegaConf.to_container(data_cfg.generator, resolve=True)
    key = hashlib.sha256(json.dumps(gen, sort_keys=True).encode()).hexdigest()[:12]
    path = cache / "data" / f"{data_cfg.name}-{key}.jsonl"
    if not path.exists():
        from hydra.utils import instantiate

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{random.randrange(1 << 30)}")
        with tmp.open("w") as f:
            for rec in instantiate(data_cfg.generator):
                f.write(json.dumps(rec) + "\n")
        tmp.replace(path)
    return "json", str(path)


def _check_json(path: Path) -> None:
    """Name the first malformed line of a JSONL file (datasets' own error does not)."""
    with path.open() as f:
        head = f.read(1).strip()
        f.seek(0)
        if head == "[":
            try:
                json.load(f)
            except json.JSONDecodeError as e:
                raise ConfigError(f"data.path={str(path)!r}: not valid JSON at line {e.lineno}: {e.msg}") from None
            return
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"data.path={str(path)!r}: line {i} is not valid JSON ({e.msg})") from None


def load_records(data_cfg: DictConfig, cache: Path):
    """The data set's records as one `datasets.Dataset`, before splitting."""
    import datasets

    datasets.disable_progress_bars()
    if data_cfg.get("path") or data_cfg.get("generator"):
        builder, file = _source_files(data_cfg, cache)
        ds = datasets.load_dataset(builder, data_files=file, split="train", cache_dir=str(cache / "datasets"))
    else:
        try:
            ds = datasets.load_dataset(
                data_cfg.hub, data_cfg.get("hub_config"), split=data_cfg.get("hub_split", "train"),
                cache_dir=str(cache / "datasets"),
            )
        except Exception as e:
            raise ConfigError(
                f"data={data_cfg.name}: could not load {data_cfg.hub!r} from the hub ({type(e).__name__}); "
                f"offline? download it elsewhere and pass data.path=/path/to/file"
            ) from None
    missing = [f for f in data_cfg.fields if f not in ds.column_names]
    if missing:
        raise ConfigError(
            f"data={data_cfg.name}: records lack field(s) {', '.join(missing)}; found {', '.join(ds.column_names)}"
        )
    return ds


def split_records(ds, data_cfg: DictConfig) -> dict[str, Any]:
    """Filter, shuffle with split_seed, and carve train/validation/test of the configured sizes."""
    limit = data_cfg.get("max_response_chars")
    if limit:
        ds = ds.filter(lambda r: len(render_response(data_cfg, r)) <= int(limit))
    if len(ds) == 0:
        raise ConfigError(f"data={data_cfg.name}: no records left after filtering (max_response_chars={limit})")
    ds = ds.shuffle(seed=int(data_cfg.split_seed))
    sizes = dict(data_cfg.splits)
    out, start = {}, 0
    for name in SPLITS:
        want = int(sizes.get(name) or 0)
        n = min(want, len(ds) - start)
        out[name] = ds.select(range(start, start + max(n, 0)))
        start += max(n, 0)
    if len(out["train"]) == 0:
        raise ConfigError(f"data={data_cfg.name}: the train split is empty ({len(ds)} records in all)")
    for split, key in (("train", "max_train_samples"), ("validation", "max_eval_samples"), ("test", "max_eval_samples")):
        cap = data_cfg.get(key)
        if cap is not None and len(out[split]) > int(cap):
            out[split] = out[split].select(range(int(cap)))
    return out


# --------------------------------------------------------------------------- tokenisation


def tokenize_splits(splits: dict[str, Any], data_cfg: DictConfig, tokenizer) -> dict[str, Any]:
    """prompt + response + EOS -> input_ids/labels; prompt tokens get IGNORE_INDEX unless train_on_prompt.

    Examples whose prompt alone fills max_seq_len carry no label and are dropped.
    """
    max_len = int(data_cfg.max_seq_len)
    train_on_prompt = bool(data_cfg.train_on_prompt)
    eos = tokenizer.eos_token_id
    spec = OmegaConf.to_container(data_cfg, resolve=True)

    def encode(rec: dict[str, Any]) -> dict[str, Any]:
        cfg = OmegaConf.create(spec)
        p = tokenizer(render_prompt(cfg, rec), add_special_tokens=False)["input_ids"]
        r = tokenizer(render_response(cfg, rec), add_special_tokens=False)["input_ids"] + [eos]
        ids = (p + r)[:max_len]
        labels = ((p if train_on_prompt else [IGNORE_INDEX] * len(p)) + r)[:max_len]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    out = {}
    for name, ds in splits.items():
        cols = ds.column_names
        tok = ds.map(encode, remove_columns=cols, desc=f"tokenise {name}")
        out[name] = tok.filter(lambda ex: any(x != IGNORE_INDEX for x in ex["labels"]))
    return out


def collator(tokenizer):
    """Dynamic padding to the longest example of each batch (labels padded with IGNORE_INDEX)."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE_INDEX, return_tensors="pt")


def build(data_cfg: DictConfig, tokenizer, cache: Path) -> dict[str, Any]:
    """The whole data path: records -> splits -> tokenised splits."""
    return tokenize_splits(split_records(load_records(data_cfg, cache), data_cfg), data_cfg, tokenizer)
