"""Splits -> tokenised examples, cached: `datasets` cache files with explicit fingerprints.

The fingerprint of a tokenised split hashes the resolved data config, the tokenizer's content, the source
records' identity, the selected row indices and this package's source, so it is the same in every process:
the second run of a sweep loads the tokenised splits instead of tokenising again."""

from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.data.render import prepare, prompt_template, shortened_prompt, token_ids
from src.errors import ConfigError

IGNORE_INDEX = -100


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
    """The data package's source: a change to how records are rendered or tokenised invalidates the cache."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.read_bytes())
    return h.hexdigest()


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
    max_len = int(spec["max_seq_len"])
    train_on_prompt = bool(spec.get("train_on_prompt"))
    eos = tokenizer.eos_token_id

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        keys = list(batch)
        n = len(batch[keys[0]]) if keys else 0
        recs = [prepare(spec, {k: batch[k][i] for k in keys}) for i in range(n)]
        recs = [r for r in recs if r is not None]
        prompts = token_ids(tokenizer, [prompt_template(spec, r).format(**r) for r in recs])
        responses = token_ids(tokenizer, [spec["response"].format(**r) for r in recs])
        out: dict[str, list[Any]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for rec, p, r in zip(recs, prompts, responses, strict=True):
            r = r + [eos]
            if (short := shortened_prompt(spec, rec, p, len(r), tokenizer)) is not None:
                p = token_ids(tokenizer, [short])[0]
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
        ids = token_ids(tokenizer, [prompt_template(spec, r).format(**r) for r in recs])
        seqs = [x[:max_len] for x in ids]
        return {
            "input_ids": seqs,
            "attention_mask": [[1] * len(x) for x in seqs],
            "labels": [int(r[field]) for r in recs],
        }

    return encode


def _intact(path: Path) -> Path:
    """`datasets` loads an existing cache file unchecked, so a corrupt one would fail every run: open it first
    (memory-mapped, reading the record batches' framing only: about a millisecond for a few MB) and remove it
    when it is unreadable (the cache is tunegrid's own), so that the split is tokenised again."""
    import datasets

    if not path.exists():
        return path
    try:
        datasets.Dataset.from_file(str(path))
    except Exception as e:  # pyarrow's ArrowInvalid, OSError
        path.unlink(missing_ok=True)
        lines = str(e).strip().splitlines()
        reason = f"{type(e).__name__}: {lines[0][:160] if lines else ''}".rstrip(": ")
        print(
            f"tunegrid: cached tokenised data {path} is unreadable ({reason}); removed, tokenising again",
            file=sys.stderr,
        )
    return path


def tokenize_splits(
    splits: dict[str, Any], data_cfg: DictConfig, tokenizer, cache: Path | None = None, labelled: bool = False
) -> dict[str, Any]:
    """prompt + response + EOS -> input_ids/labels; prompt tokens get IGNORE_INDEX unless train_on_prompt.

    `labelled` (the task spec's): one class id per example from data.label_field instead.
    Examples whose prompt alone fills max_seq_len carry no label and are dropped. With `cache`, each
    split is written to <cache>/tokenised/<name>-<split>-<fingerprint>.arrow and reloaded from there.
    """
    spec = OmegaConf.to_container(data_cfg, resolve=True)
    tok_fp = tokenizer_fingerprint(tokenizer)
    encode = _label_encoder(spec, tokenizer) if labelled else _encoder(spec, tokenizer)
    out = {}
    for name, ds in splits.items():
        fp = split_fingerprint(ds, name, spec, tok_fp)
        kwargs: dict[str, Any] = {"new_fingerprint": fp}
        if cache is not None:
            folder = cache / "tokenised"
            folder.mkdir(parents=True, exist_ok=True)
            kwargs["cache_file_name"] = str(_intact(folder / f"{spec['name']}-{name}-{fp}.arrow"))
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
