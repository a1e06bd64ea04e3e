"""Evaluation beyond the loss: generations on test prompts, task metrics, forgetting, reward and judge scores.

- Generation: `generate_samples` runs batched, left-padded generation (greedy by default) on the first
  `eval.num_samples` test prompts; works for plain models and PEFT models, prompt tuning included.
  `write_samples` writes `samples.jsonl` beside the record; `samples_table` shapes a W&B table.
- Task metrics: `compute_metrics` scores generations against references with the local `evaluate`
  modules in `src/metric_modules/` (loaded by path, so they work offline). Which metrics a data set
  uses is data: the data YAML's `metrics:` list (or `eval.metrics`), names from `METRICS`.
- Forgetting: `generic_loss` is a model's mean token loss on a fixed generic English text (not task
  data); measured on the base model before training and on the fine-tuned model after,
  forgetting = after - before (positive: the model got worse at generic text).
- Optional, off by default: `reward_scores` (any sequence-classification reward model) and
  `judge_scores` (an LLM judge 0-100: a local causal LM, or an OpenAI-compatible endpoint whose URL and
  key come from environment variables; the key is read at call time and never stored).
- `evaluate_generations` runs the generation part end to end for `src/run.py`.

torch, transformers and evaluate are imported inside functions: `validate_eval` runs in the config
validation path, which must answer in milliseconds.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.config import ConfigError

METRIC_DIR = Path(__file__).resolve().parent / "metric_modules"
GENERIC_TEXT = METRIC_DIR / "forgetting" / "generic_en.txt"
SAMPLES = "samples.jsonl"

# Metric name (data YAML `metrics:` / `eval.metrics`) -> (local module, result keys it contributes).
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "rouge": ("rouge", ("rouge1", "rouge2", "rougeL")),
    "rouge1": ("rouge", ("rouge1",)),
    "rouge2": ("rouge", ("rouge2",)),
    "rougeL": ("rouge", ("rougeL",)),
    "rougeLsum": ("rouge", ("rougeLsum",)),
    "bleu": ("bleu", ("bleu",)),
    "accuracy": ("accuracy", ("accuracy",)),
}

# Generation settings (eval.generation); keys not given fall back to these.
GEN_DEFAULTS: dict[str, Any] = {
    "max_new_tokens": 64,
    "do_sample": False,
    "num_beams": 1,
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 50,
    "repetition_penalty": 1.0,
    "stop_strings": None,
    "batch_size": 8,
    "seed": 0,
}

JUDGE_TEMPLATE = (
    "You are an impartial judge. Rate how well the RESPONSE completes the TASK, using the REFERENCE "
    "answer as a guide to what a good response contains.\n\nTASK:\n{prompt}\n\nREFERENCE:\n{reference}\n\n"
    "RESPONSE:\n{generation}\n\nGive a score from 0 (useless or wrong) to 100 (fully correct and well "
    "written). Reply with the number only."
)
JUDGE_DEFAULTS: dict[str, Any] = {
    "base_url_env": "OPENAI_BASE_URL",
    "default_base_url": "https://api.openai.com/v1",
    "api_key_env": "OPENAI_API_KEY",
    "max_tokens": 8,
    "timeout_s": 60,
    "retries": 2,
    "template": JUDGE_TEMPLATE,
}
REWARD_DEFAULTS: dict[str, Any] = {"batch_size": 8, "max_length": 512, "label": -1}


class JudgeError(RuntimeError):
    """The judge endpoint failed (after retries); the message never contains the API key."""


# --------------------------------------------------------------------------- config


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) or OmegaConf.is_list(x) else x


def _settings(given: Any, defaults: dict[str, Any]) -> dict[str, Any]:
    given = _plain(given) or {}
    return {**defaults, **{k: v for k, v in given.items() if v is not None or k not in defaults}}


def metric_names(cfg: DictConfig) -> list[str]:
    """The task metrics of a run: `eval.metrics` when set, else the data set's `metrics` list, else none."""
    names = cfg.eval.get("metrics")
    if names is None:
        names = cfg.data.get("metrics")
    return [str(n) for n in (_plain(names) or [])]


def validate_eval(cfg: DictConfig) -> None:
    """Check the eval group's values (no torch import); raise ConfigError naming the key."""
    ev = cfg.eval
    n = ev.get("num_samples", 0)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ConfigError(f"eval.num_samples={n!r}: must be an integer ≥ 0 (0 turns generation off)")
    gen = _settings(ev.get("generation"), GEN_DEFAULTS)
    unknown = sorted(set(gen) - set(GEN_DEFAULTS))
    if unknown:
        raise ConfigError(f"eval.generation.{unknown[0]}: unknown key; allowed: {', '.join(GEN_DEFAULTS)}")
    for key in ("max_new_tokens", "num_beams", "batch_size"):
        v = gen[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"eval.generation.{key}={v!r}: must be an integer ≥ 1")
    if not isinstance(gen["do_sample"], bool):
        raise ConfigError(f"eval.generation.do_sample={gen['do_sample']!r}: must be true or false")
    if gen["do_sample"] and not float(gen["temperature"]) > 0:
        raise ConfigError(f"eval.generation.temperature={gen['temperature']!r}: must be > 0 when sampling")
    names = metric_names(cfg)
    for name in names:
        if name not in METRICS:
            where = "eval.metrics" if ev.get("metrics") is not None else "data.metrics"
            raise ConfigError(f"{where}: unknown metric {name!r}; allowed: {', '.join(METRICS)}")
    text = ev.get("forgetting_text")
    if ev.get("forgetting") and text and not Path(str(text)).expanduser().is_file():
        raise ConfigError(f"eval.forgetting_text={str(text)!r}: no such file")
    block = ev.get("forgetting_block_size", 128)
    if isinstance(block, bool) or not isinstance(block, int) or block < 2:
        raise ConfigError(f"eval.forgetting_block_size={block!r}: must be an integer ≥ 2")
    judge = ev.get("judge")
    if judge is not None and (not isinstance(judge, str) or not judge.strip() or judge.strip() == "api:"):
        raise ConfigError(
            f"eval.judge={judge!r}: must be null, a local model folder / model id, or api:<model name>"
        )
    reward = ev.get("reward_model")
    if reward is not None and (not isinstance(reward, str) or not reward.strip()):
        raise ConfigError(
            f"eval.reward_model={reward!r}: must be null or a sequence-classification model id/folder"
        )


# --------------------------------------------------------------------------- examples


def _splits(data_cfg: DictConfig, cache: Path) -> dict[str, Any]:
    from src import data

    if hasattr(data, "load_splits"):
        return data.load_splits(data_cfg, cache)
    return data.split_records(data.load_records(data_cfg, cache), data_cfg)  # the first data module


def _prepared(data_cfg: DictConfig, rec: dict[str, Any]) -> tuple[str, dict[str, Any], str] | None:
    """(prompt template, prepared record, reference) for a raw record; None when the data set drops it."""
    from src import data

    if not hasattr(data, "prepare"):  # the first data module: no derive / normalise / truncate
        p = {k: "" if v is None else v for k, v in rec.items()}
    else:
        p = data.prepare(data_cfg, rec)
        if p is None:
            return None
    alt = data_cfg.get("prompt_if_empty")
    template = alt.template if alt is not None and not str(p.get(alt.field, "")).strip() else data_cfg.prompt
    return template, p, data_cfg.response.format(**p)


def _fit(data_cfg: DictConfig, template: str, p: dict[str, Any], tokenizer, budget: int | None) -> str:
    """The prompt; over `budget` tokens, the data set's `truncate` field is cut on its configured side
    (as the training examples were), so the instruction and the response cue survive."""
    prompt = template.format(**p)
    trunc = data_cfg.get("truncate")
    if tokenizer is None or not budget or not trunc:
        return prompt
    n = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if n <= budget:
        return prompt
    field = str(trunc.field)
    f_ids = tokenizer(str(p.get(field, "")), add_special_tokens=False)["input_ids"]
    keep = max(budget - (n - len(f_ids)), 0)
    kept = f_ids[:keep] if trunc.get("side", "right") == "right" else f_ids[len(f_ids) - keep :]
    return template.format(
        **{**p, field: tokenizer.decode(kept, clean_up_tokenization_spaces=False) if kept else ""}
    )


def load_examples(
    data_cfg: DictConfig,
    cache: Path,
    n: int,
    split: str = "test",
    tokenizer=None,
    prompt_tokens: int | None = None,
) -> tuple[list[str], list[Any]]:
    """The first `n` distinct prompts of a split (the data set's templates) and their references.

    Records that share a prompt (E2E NLG: several references per meaning representation) are merged:
    the reference is a string when there is one, a list of strings when there are several. With a
    tokenizer and `prompt_tokens`, longer prompts lose part of the data set's `truncate` field.
    """
    if n <= 0:
        return [], []
    records = _splits(data_cfg, cache).get(split)
    chosen: dict[str, tuple[str, dict[str, Any], list[str]]] = {}
    for rec in records if records is not None else []:
        prep = _prepared(data_cfg, rec)
        if prep is None:
            continue
        template, p, reference = prep
        key = template.format(**p)
        if key not in chosen:
            if len(chosen) == n:
                continue  # only collect further references for prompts already taken
            chosen[key] = (template, p, [])
        chosen[key][2].append(reference)
    prompts = [_fit(data_cfg, t, p, tokenizer, prompt_tokens) for t, p, _ in chosen.values()]
    return prompts, [r[0] if len(r) == 1 else r for _, _, r in chosen.values()]


# --------------------------------------------------------------------------- generation


def _model_device(model):
    dev = getattr(model, "device", None)
    return dev if dev is not None else next(model.parameters()).device


def virtual_tokens(model) -> int:
    """Positions a prompt-learning PEFT model prepends (prompt tuning's soft prompt); 0 otherwise."""
    try:
        peft_cfg = model.active_peft_config
    except AttributeError:
        return 0
    return int(peft_cfg.num_virtual_tokens) if getattr(peft_cfg, "is_prompt_learning", False) else 0


def context_length(model, tokenizer=None) -> int:
    """The model's number of positions (n_positions / max_position_embeddings), capped by the tokenizer's."""
    config = model.config
    for key in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            break
    else:
        value = 2048
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        value = min(value, tok_max)
    return value


def _soft_prompt(model):
    """For prompt tuning / P-tuning: a generate function that prepends the soft prompt as embeddings.

    PEFT's own generate path for prompt learning drops position_ids (wrong positions for left-padded
    batches) and, with transformers 5 (which passes the KV cache as `cache`), re-inserts the soft prompt at
    every decoding step. Generating from `inputs_embeds` on the base model avoids both: positions come
    from the attention mask and the cache works. None for every other model.
    """
    try:
        peft_cfg = model.active_peft_config
    except AttributeError:
        return None
    if str(getattr(peft_cfg, "peft_type", "")).split(".")[-1] not in ("PROMPT_TUNING", "P_TUNING"):
        return None
    import torch

    base = model.get_base_model()

    def run(input_ids, attention_mask, kwargs):
        embeds = base.get_input_embeddings()(input_ids)
        prompt = model.get_prompt(batch_size=input_ids.shape[0]).to(embeds.dtype)
        ones = torch.ones(prompt.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        return base.generate(
            inputs_embeds=torch.cat([prompt, embeds], 1),
            attention_mask=torch.cat([ones, attention_mask], 1),
            **kwargs,
        )

    return run


def generate(model, tokenizer, prompts: Sequence[str], gen_cfg: Any = None) -> list[str]:
    """Continuations of `prompts` (new text only): batched, left-padded, greedy unless do_sample.

    Prompts longer than the model's positions minus max_new_tokens (and any soft prompt) lose their
    beginning, so the end of the prompt (e.g. "### Response:") is kept.
    """
    import torch

    gen = _settings(gen_cfg, GEN_DEFAULTS)
    max_new = int(gen["max_new_tokens"])
    room = context_length(model, tokenizer) - virtual_tokens(model) - max_new
    if room < 1:
        raise ConfigError(
            f"eval.generation.max_new_tokens={max_new}: leaves no room for the prompt in the model's "
            f"{context_length(model, tokenizer)} positions; lower it"
        )
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new,
        "do_sample": bool(gen["do_sample"]),
        "num_beams": int(gen["num_beams"]),
        "repetition_penalty": float(gen["repetition_penalty"]),
        "pad_token_id": tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "use_cache": True,
    }
    if gen["do_sample"]:
        kwargs.update(
            temperature=float(gen["temperature"]), top_p=float(gen["top_p"]), top_k=int(gen["top_k"])
        )
    stops = [str(s) for s in (gen["stop_strings"] or [])]
    if stops:
        kwargs.update(stop_strings=stops, tokenizer=tokenizer)
    if gen["do_sample"]:
        torch.manual_seed(int(gen["seed"]))

    device = _model_device(model)
    soft = _soft_prompt(model)
    was_training = model.training
    sides = tokenizer.padding_side, tokenizer.truncation_side
    pad_missing = tokenizer.pad_token is None
    if pad_missing:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side, tokenizer.truncation_side = "left", "left"
    out: list[str] = []
    try:
        model.eval()
        bs = int(gen["batch_size"])
        for i in range(0, len(prompts), bs):
            enc = tokenizer(
                list(prompts[i : i + bs]),
                return_tensors="pt",
                padding=True,
                truncation=True,
                max_length=room,
                add_special_tokens=False,
            ).to(device)
            with torch.inference_mode():
                if soft is None:
                    ids = model.generate(
                        input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], **kwargs
                    )
                    new = ids[:, enc["input_ids"].shape[1] :]
                else:
                    new = soft(enc["input_ids"], enc["attention_mask"], kwargs)
            for text in tokenizer.batch_decode(new, skip_special_tokens=True):
                for s in stops:
                    text = text.split(s, 1)[0]
                out.append(text.strip())
    finally:
        tokenizer.padding_side, tokenizer.truncation_side = sides
        if pad_missing:
            tokenizer.pad_token = None
        model.train(was_training)
    return out


def generate_samples(
    model, tokenizer, prompts: Sequence[str], references: Sequence[Any], gen_cfg: Any = None
) -> list[dict]:
    """One row per prompt: {"index", "prompt", "reference", "generation"} (reference: str or list of str)."""
    if len(prompts) != len(references):
        raise ValueError(f"generate_samples: {len(prompts)} prompts but {len(references)} references")
    gens = generate(model, tokenizer, prompts, gen_cfg)
    return [
        {"index": i, "prompt": p, "reference": _plain(r), "generation": g}
        for i, (p, r, g) in enumerate(zip(prompts, references, gens, strict=True))
    ]


def write_samples(path: Path, rows: Iterable[dict]) -> Path:
    """samples.jsonl: one JSON object per generated sample (written atomically)."""
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def samples_table(rows: Sequence[dict]) -> tuple[list[str], list[list[Any]]]:
    """(columns, data) for WandbLogger.log_table: prompt, reference, generation, and reward/judge when scored."""
    cols = ["index", "prompt", "reference", "generation"]
    cols += [c for c in ("reward", "judge") if any(c in r for r in rows)]

    def cell(row: dict, col: str) -> Any:
        v = row.get(col)
        return "\n---\n".join(v) if isinstance(v, list) else v

    return cols, [[cell(r, c) for c in cols] for r in rows]


# --------------------------------------------------------------------------- task metrics


@functools.cache
def load_metric(module: str):
    """A local metric module (`src/metric_modules/<module>/<module>.py`) through `evaluate.load`, by path."""
    import evaluate

    path = METRIC_DIR / module
    if not (path / f"{module}.py").is_file():
        raise ConfigError(f"metric module {module!r}: no {path / (module + '.py')}")
    return evaluate.load(str(path), keep_in_memory=True)


def compute_metrics(
    names: Sequence[str],
    predictions: Sequence[str],
    references: Sequence[Any],
    prefix: str = "test",
    metric_args: Any = None,
) -> dict[str, float]:
    """Score predictions against references: {"<prefix>/<key>": value}, e.g. test/rouge1, test/bleu.

    `names` come from `METRICS`; `metric_args` maps a module name to extra compute() kwargs
    (e.g. {"rouge": {"use_stemmer": True}}). A reference may be a string or a list of strings.
    """
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ConfigError(f"unknown metric {unknown[0]!r}; allowed: {', '.join(METRICS)}")
    if not names or not predictions:
        return {}
    args = _plain(metric_args) or {}
    refs = [_plain(r) for r in references]
    if any(isinstance(r, list) for r in refs):  # evaluate needs one feature type per call
        refs = [r if isinstance(r, list) else [r] for r in refs]
    wanted: dict[str, list[str]] = {}
    for name in names:
        module, keys = METRICS[name]
        wanted.setdefault(module, [])
        wanted[module] += [k for k in keys if k not in wanted[module]]
    out: dict[str, float] = {}
    for module, keys in wanted.items():
        kwargs = dict(args.get(module) or {})
        if module == "rouge":
            kwargs["rouge_types"] = keys
        result = load_metric(module).compute(predictions=list(predictions), references=refs, **kwargs)
        for k in keys:
            out[f"{prefix}/{k}"] = float(result[k])
    return out


# --------------------------------------------------------------------------- forgetting


def generic_text(path: str | Path | None = None) -> str:
    """The fixed generic English sample forgetting is measured on (or a user file)."""
    return Path(path or GENERIC_TEXT).expanduser().read_text(encoding="utf-8")


def generic_loss(
    model, tokenizer, text: str | None = None, block_size: int = 128, batch_size: int = 8
) -> float:
    """Mean next-token loss (nats per token) of `model` on generic text, in non-overlapping windows.

    The text is cut into windows of `block_size` tokens (fewer if a soft prompt and the model's positions
    demand it); every token after a window's first is predicted. Dropout is off; the model's training
    mode is restored. Call once on the base model before training and once after: forgetting =
    after - before.
    """
    import torch
    import torch.nn.functional as F

    ids = tokenizer(text if text is not None else generic_text(), add_special_tokens=False, verbose=False)[
        "input_ids"
    ]
    block = max(2, min(int(block_size), context_length(model, tokenizer) - virtual_tokens(model)))
    windows = [ids[i : i + block] for i in range(0, len(ids), block)]
    windows = [w for w in windows if len(w) >= 2]
    if not windows:
        raise ValueError("generic_loss: the text is shorter than two tokens")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = _model_device(model)
    was_training = model.training
    total, count = 0.0, 0
    try:
        model.eval()
        for i in range(0, len(windows), batch_size):
            chunk = windows[i : i + batch_size]
            width = max(len(w) for w in chunk)
            input_ids = torch.tensor([w + [pad] * (width - len(w)) for w in chunk], device=device)
            mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for w in chunk], device=device)
            with torch.inference_mode():
                logits = model(input_ids=input_ids, attention_mask=mask).logits[:, -width:].float()
            nll = F.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), input_ids[:, 1:].reshape(-1), reduction="none"
            )
            keep = mask[:, 1:].reshape(-1).bool()
            total += float(nll[keep].sum())
            count += int(keep.sum())
    finally:
        model.train(was_training)
    return total / count


def forgetting(loss_before: float, loss_after: float) -> float:
    """eval/forgetting: generic-text loss after fine-tuning minus before (positive = general ability lost)."""
    return float(loss_after) - float(loss_before)


# --------------------------------------------------------------------------- reward model


def _load_error(key: str, ident: str, e: Exception) -> ConfigError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return ConfigError(
        f"{key}={ident!r}: cannot be loaded ({type(e).__name__}: {first[:200]}); offline? download it "
        f"elsewhere and pass the local folder"
    )


def _load_dtype():
    """Scorer weights: the checkpoint's own dtype on a GPU (a 7B reward model in fp32 would not fit), fp32 on CPU."""
    import torch

    return "auto" if torch.cuda.is_available() else torch.float32


def reward_scores(
    prompts: Sequence[str],
    responses: Sequence[str],
    model_id: str,
    batch_size: int = 8,
    max_length: int = 512,
    label: int = -1,
    device: Any = None,
) -> list[float]:
    """Score (prompt, response) pairs with a sequence-classification reward model.

    One output label: the raw logit. Several: the softmax probability of `label` (default the last).
    Tokenizers with a chat template get [user: prompt, assistant: response]; others the text pair.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(model_id)
        model = AutoModelForSequenceClassification.from_pretrained(model_id, dtype=_load_dtype())
    except Exception as e:
        raise _load_error("eval.reward_model", model_id, e) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    model.config.pad_token_id = tok.pad_token_id
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    scores: list[float] = []
    try:
        for i in range(0, len(prompts), batch_size):
            ps, rs = list(prompts[i : i + batch_size]), list(responses[i : i + batch_size])
            if getattr(tok, "chat_template", None):
                texts = [
                    tok.apply_chat_template(
                        [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
                    )
                    for p, r in zip(ps, rs, strict=True)
                ]
                enc = tok(
                    texts,
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                    add_special_tokens=False,
                )
            else:
                enc = tok(
                    ps,
                    rs,
                    padding=True,
                    truncation="longest_first",
                    max_length=max_length,
                    return_tensors="pt",
                )
            with torch.inference_mode():
                logits = model(**enc.to(device)).logits.float()
            vals = logits[:, 0] if logits.shape[-1] == 1 else logits.softmax(-1)[:, label]
            scores += [float(v) for v in vals.cpu()]
    finally:
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return scores


# --------------------------------------------------------------------------- LLM judge


_SCORE = re.compile(r"(?<![\d.])(\d{1,3})(?:\.\d+)?(?![\d])")


def parse_score(text: str) -> int | None:
    """The first number 0-100 in a judge's reply, or None."""
    for m in _SCORE.finditer(text or ""):
        v = int(m.group(1))
        if 0 <= v <= 100:
            return v
    return None


def _endpoint(settings: dict[str, Any]) -> tuple[str, str | None]:
    """(base URL, API key or None), both read from the environment now; neither is stored."""
    base = os.environ.get(str(settings["base_url_env"])) or str(settings["default_base_url"])
    key = os.environ.get(str(settings["api_key_env"])) or None
    return base.rstrip("/"), key


def _redact(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))  # no user:password, no query


def _open(req: urllib.request.Request, timeout: float):
    host = urllib.parse.urlsplit(req.full_url).hostname or ""
    handlers = [urllib.request.ProxyHandler({})] if host in ("localhost", "127.0.0.1", "::1") else []
    return urllib.request.build_opener(*handlers).open(req, timeout=timeout)


def _request(url: str, key: str | None, payload: dict | None, timeout: float) -> dict:
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(payload).encode() if payload is not None else None
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
    with _open(req, timeout) as resp:
        return json.loads(resp.read().decode("utf-8") or "{}")


def chat(content: str, model: str, settings: Any = None) -> str:
    """One user message to an OpenAI-compatible /chat/completions endpoint; the reply's text.

    Retries HTTP 429/5xx and connection errors `retries` times; then raises JudgeError (without the key).
    """
    s = _settings(settings, JUDGE_DEFAULTS)
    base, key = _endpoint(s)
    url = base + "/chat/completions"
    payload = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": int(s["max_tokens"]),
        "temperature": 0,
    }
    attempts = int(s["retries"]) + 1
    for attempt in range(attempts):
        try:
            data = _request(url, key, payload, float(s["timeout_s"]))
            return str(data["choices"][0]["message"]["content"] or "")
        except urllib.error.HTTPError as e:
            reason = f"HTTP {e.code} {e.reason}"
            retry = e.code == 429 or e.code >= 500
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            reason = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            retry = True
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise JudgeError(
                f"eval.judge: {_redact(url)} answered without choices[0].message.content ({type(e).__name__})"
            ) from None
        if not retry or attempt == attempts - 1:
            raise JudgeError(
                f"eval.judge: {_redact(url)} failed after {attempt + 1} attempt(s): {reason}; "
                f"URL from ${s['base_url_env']}, key from ${s['api_key_env']}"
            )
        time.sleep(min(0.5 * 2**attempt, 8.0))
    raise AssertionError("unreachable")


def judge_prompts(rows: Sequence[dict], template: str) -> list[str]:
    def ref(r: Any) -> str:
        return "\n".join(r) if isinstance(r, list) else str(r)

    return [
        template.format(prompt=r["prompt"], reference=ref(r["reference"]), generation=r["generation"])
        for r in rows
    ]


def judge_scores(
    rows: Sequence[dict], judge: str, settings: Any = None
) -> tuple[list[int | None], list[str]]:
    """(scores 0-100 or None where the reply had no number, raw replies) for generated rows.

    `judge` is "api:<model name>" for an OpenAI-compatible endpoint (URL from $<base_url_env>, key from
    $<api_key_env>), otherwise a local causal-LM folder or model id run greedily here.
    """
    s = _settings(settings, JUDGE_DEFAULTS)
    texts = judge_prompts(rows, str(s["template"]))
    if judge.startswith("api:"):
        replies = [chat(t, judge[4:], s) for t in texts]
    else:
        replies = _local_judge(judge, texts, int(s["max_tokens"]))
    return [parse_score(r) for r in replies], replies


def _local_judge(path: str, texts: list[str], max_tokens: int) -> list[str]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_load_dtype())
    except Exception as e:
        raise _load_error("eval.judge", path, e) from None
    model.to("cuda" if torch.cuda.is_available() else "cpu")
    if getattr(tok, "chat_template", None):
        texts = [
            tok.apply_chat_template(
                [{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True
            )
            for t in texts
        ]
    try:
        return generate(model, tok, texts, {"max_new_tokens": max_tokens, "batch_size": 4})
    finally:
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def preflight(eval_cfg: DictConfig) -> None:
    """Before training: fail fast (ConfigError) when an enabled reward model or judge is unreachable."""
    reward = eval_cfg.get("reward_model")
    if reward:
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(str(reward))
        except Exception as e:
            raise _load_error("eval.reward_model", str(reward), e) from None
    judge = eval_cfg.get("judge")
    if not judge:
        return
    judge = str(judge)
    if not judge.startswith("api:"):
        from transformers import AutoConfig

        try:
            AutoConfig.from_pretrained(judge)
        except Exception as e:
            raise _load_error("eval.judge", judge, e) from None
        return
    s = _settings(eval_cfg.get("judge_settings"), JUDGE_DEFAULTS)
    base, key = _endpoint(s)
    try:
        _request(base + "/models", key, None, min(float(s["timeout_s"]), 15.0))
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise ConfigError(
                f"eval.judge={judge!r}: {_redact(base)} rejected the key (HTTP {e.code}); "
                f"set ${s['api_key_env']}"
            ) from None
        # Any other HTTP answer (404: no /models route) means the server is there.
    except (urllib.error.URLError, TimeoutError, ConnectionError, ValueError) as e:
        raise ConfigError(
            f"eval.judge={judge!r}: endpoint {_redact(base)} unreachable ({type(e).__name__}: "
            f"{getattr(e, 'reason', e)}); set ${s['base_url_env']} to an OpenAI-compatible base URL (…/v1)"
        ) from None


# --------------------------------------------------------------------------- the whole generation eval


def _mean(xs: Iterable[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return sum(vals) / len(vals) if vals else None


def evaluate_generations(
    model,
    tokenizer,
    cfg: DictConfig,
    cache: Path,
    run_dir: Path,
    loggers: Sequence[Any] = (),
    prefix: str = "test",
) -> dict[str, float]:
    """Generate on the first eval.num_samples test prompts, score them, write samples.jsonl and a W&B table.

    Returns split-prefixed metrics for the record: test/rouge1 … (the configured task metrics),
    test/reward (mean, when eval.reward_model is set), test/judge (mean 0-100 over parsed replies) and
    test/judge_parsed (fraction of replies with a score), when eval.judge is set.
    """
    ev = cfg.eval
    n = int(ev.get("num_samples") or 0)
    gen = _settings(ev.get("generation"), GEN_DEFAULTS)
    budget = max(int(cfg.data.max_seq_len) - int(gen["max_new_tokens"]), int(cfg.data.max_seq_len) // 2)
    prompts, refs = load_examples(cfg.data, cache, n, "test", tokenizer, budget)
    if not prompts:
        return {}
    rows = generate_samples(model, tokenizer, prompts, refs, gen)
    out: dict[str, float] = compute_metrics(
        metric_names(cfg),
        [r["generation"] for r in rows],
        [r["reference"] for r in rows],
        prefix,
        ev.get("metric_args"),
    )
    if ev.get("reward_model"):
        rs = _settings(ev.get("reward"), REWARD_DEFAULTS)
        scores = reward_scores(
            prompts,
            [r["generation"] for r in rows],
            str(ev.reward_model),
            int(rs["batch_size"]),
            int(rs["max_length"]),
            int(rs["label"]),
        )
        for row, sc in zip(rows, scores, strict=True):
            row["reward"] = sc
        out[f"{prefix}/reward"] = _mean(scores)
    if ev.get("judge"):
        scores, replies = judge_scores(rows, str(ev.judge), ev.get("judge_settings"))
        for row, sc, reply in zip(rows, scores, replies, strict=True):
            row["judge"], row["judge_reply"] = sc, reply
        mean = _mean(scores)
        if mean is not None:
            out[f"{prefix}/judge"] = mean
        out[f"{prefix}/judge_parsed"] = sum(s is not None for s in scores) / len(scores)
    write_samples(Path(run_dir) / SAMPLES, rows)
    cols, data = samples_table(rows)
    for lg in loggers:
        if hasattr(lg, "log_table"):
            lg.log_table(f"{prefix}/samples", cols, data)
    return {k: v for k, v in out.items() if v is not None}
