"""A saved model folder that can be shared: adapter_config.json names the hub model the weights were trained
on (not the local cache folder PEFT writes), and README.md is a model card, the way PEFT and the hub write
one (YAML metadata, then text): the base model, the method, the data set, the metrics known when the weights
were saved and the run's resolved config.

`write(trainer, folder)` runs on the main process right after the weights are saved (src/trainer.py
save_weights). The config is the run folder's config.yaml (src.config.RESOLVED, written by the task wrapper
before training); the metrics are the Trainer's log at that moment. Metrics computed after saving (generation
metrics such as test/rouge1, forgetting) are in the run's result.json, which the card points to.
"""

from __future__ import annotations

import json
import math
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from src import specs
from src.atomic import write_bytes, write_json
from src.config import RESOLVED

CARD = "README.md"
ADAPTER_CONFIG = "adapter_config.json"  # PEFT's file: its presence makes the folder an adapter
PATH_KEYS = ("base_model_name_or_path", "tokenizer_name_or_path")  # PEFT keys that name the base model
VERSIONS = ("torch", "transformers", "peft", "tunegrid")


def hub_id(model_cfg: Any) -> str | None:
    """The hub id of the weights a run started from: model.hub_id when set (a GGUF model, or name_or_path a
    local copy of a hub model), else name_or_path unless it is a local folder; None for a model that is on no
    hub (the embedded tiny model, built and pretrained from its config into the cache)."""
    if model_cfg.get("hub_id"):
        return str(model_cfg.hub_id)
    given = model_cfg.get("name_or_path")
    if given and not Path(str(given)).expanduser().exists():
        return str(given)
    return None


def write(trainer, folder: Path) -> None:
    """Point adapter_config.json at the hub model and write README.md into the saved folder `folder`."""
    folder = Path(folder)
    run_dir = Path(trainer.args.output_dir).parent  # the Trainer's checkpoints live in <run_dir>/checkpoints
    resolved = run_dir / RESOLVED
    cfg = OmegaConf.load(resolved) if resolved.is_file() else None
    base = hub_id(cfg.model) if cfg is not None else None
    adapter = folder / ADAPTER_CONFIG
    local = None
    if adapter.is_file():
        adapter_cfg = json.loads(adapter.read_text())
        local = adapter_cfg.get("base_model_name_or_path")
        if base is not None and local != base:
            for key in PATH_KEYS:
                if adapter_cfg.get(key) == local:
                    adapter_cfg[key] = base
            write_json(adapter, adapter_cfg, fsync=False)
    write_bytes(folder / CARD, card(cfg, trainer.state, run_dir, base, local, adapter.is_file()))


def card(
    cfg: DictConfig | None,
    state: Any,
    run_dir: Path,
    base: str | None,
    local: str | None,
    is_adapter: bool,
) -> str:
    """The model card's text: YAML metadata, then Markdown."""
    if cfg is None:
        return (
            "---\n"
            + yaml.safe_dump({"library_name": "peft" if is_adapter else "transformers", "tags": ["tunegrid"]})
            + "---\n\n# A tunegrid fine-tune\n\n"
            f"No resolved config was saved beside it ({run_dir / RESOLVED}): trained outside `python -m src.run` "
            "and `python -m src.train`, so the base model, method and data set are not known here.\n\n"
            + _metrics_section(state)
        )
    method, task = specs.method_spec(cfg.method), specs.task_spec(cfg.task)
    meta: dict[str, Any] = {}
    if base is not None:
        meta["base_model"] = base
    meta["library_name"] = "peft" if is_adapter else "transformers"
    meta["pipeline_tag"] = "text-generation" if task.generates_text else "text-classification"
    tags = ["tunegrid", str(cfg.method.name)]
    if is_adapter and base is not None:
        tags.append(f"base_model:adapter:{base}")
    elif base is not None:
        tags.append(f"base_model:finetune:{base}")
    meta["tags"] = tags
    if cfg.data.get("hub"):
        meta["datasets"] = [str(cfg.data.hub)]
    what = "adapter" if is_adapter else "fine-tuned model"
    title = f"{cfg.method.name} {what} of {base or cfg.model.name} on {cfg.data.name}"
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {title}",
        "",
        f"Trained with tunegrid, run `{run_dir.name}` (its record: `result.json` in the run folder).",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | {_base_text(cfg, base, local)} |",
        f"| Method | {_method_text(cfg, method)} |",
        f"| Task | {cfg.task.name} (`{cfg.task.auto_model}`) |",
        f"| Data set | {_data_text(cfg)} |",
        f"| Training | {int(state.global_step)} steps, {float(state.epoch or 0):.3g} epochs, "
        f"{int(state.num_input_tokens_seen or 0)} tokens; lr {cfg.lr}, seed {cfg.seed} |",
        "",
        _metrics_section(state),
        _usage(cfg, base, local, is_adapter, method.quantised),
        "## Config",
        "",
        "The run's resolved config (`python -m src.train config.yaml` trains it again):",
        "",
        "```yaml",
        OmegaConf.to_yaml(cfg).rstrip(),
        "```",
        "",
        "## Framework versions",
        "",
        *(f"- {name} {_version(name)}" for name in VERSIONS),
        "",
    ]
    return "\n".join(lines)


def _base_text(cfg: DictConfig, base: str | None, local: str | None) -> str:
    model = cfg.model
    if base is None and model.get("build") is not None:
        return (
            f"tunegrid's embedded model `{model.name}` ({model.num_layers} layers, hidden size {model.hidden_size}): "
            "no hub id, it is built and pretrained from the config below into tunegrid's cache"
            + (f" (`{local}` on the machine that trained it)" if local else "")
        )
    if base is None:
        return f"the local folder `{model.name_or_path}` (no hub id: set model.hub_id to name its hub model)"
    text = f"[{base}](https://huggingface.co/{base})"
    gguf = model.get("gguf")
    if gguf is not None:
        text += (
            f". Trained on weights decoded from the 4-bit GGUF file `{gguf.file}` (Python package `{gguf.package}`), "
            "not on the hub's own weights: the adapter applies to the hub model, whose weights differ by that "
            "quantisation error"
        )
    return text


def _method_text(cfg: DictConfig, method: specs.MethodSpec) -> str:
    text = f"`{cfg.method.name}`: trains {method.trains}"
    peft = cfg.method.get("peft")
    if peft is not None:
        shown = {
            k: v for k, v in OmegaConf.to_container(peft).items() if not k.startswith("_") and v is not None
        }
        text += f" (`{peft._target_}` " + ", ".join(f"{k}={v}" for k, v in shown.items()) + ")"
    if method.quantised:
        text += "; the base model loaded in 4-bit (`method.quantization` in the config)"
    if int(cfg.get("frozen_blocks") or 0):
        text += f"; frozen_blocks={cfg.frozen_blocks}"
    return text


def _data_text(cfg: DictConfig) -> str:
    data = cfg.data
    if data.get("hub"):
        source = f"[{data.hub}](https://huggingface.co/datasets/{data.hub})"
        if data.get("hub_config"):
            source += f" ({data.hub_config})"
    elif data.get("path"):
        source = f"the file `{data.path}`"
    elif data.get("generator") is not None:
        source = f"generated by `{data.generator._target_}` (no download)"
    else:
        source = "see the config"
    splits = data.get("splits")
    sizes = ", ".join(f"{k} {v}" for k, v in OmegaConf.to_container(splits).items()) if splits else ""
    return f"`{data.name}`: {source}" + (f"; splits: {sizes}" if sizes else "")


def final_metrics(state: Any) -> dict[str, float]:
    """What the Trainer's log holds when the weights are saved: the last logged training loss, the eval loss at
    the end, the test split's loss, and the accuracies of a classifier (the evaluation before training is not
    in it: train() starts a new log)."""
    history = list(getattr(state, "log_history", None) or [])
    out: dict[str, float] = {}
    train = [h for h in history if "loss" in h]
    if train:
        out["train/loss"] = train[-1]["loss"]
    for split in ("eval", "test"):
        rows = [h for h in history if f"{split}_loss" in h]
        if rows:
            out[f"{split}_loss"] = rows[-1][f"{split}_loss"]
            loss = rows[-1][f"{split}_loss"]
            if isinstance(loss, int | float) and math.isfinite(loss):
                out[f"{split}_perplexity"] = math.exp(min(loss, 50.0))
            if f"{split}_accuracy" in rows[-1]:
                out[f"{split}_accuracy"] = rows[-1][f"{split}_accuracy"]
    return out


def _metrics_section(state: Any) -> str:
    metrics = final_metrics(state)
    rows = [f"| {k} | {v:.4g} |" for k, v in metrics.items() if isinstance(v, int | float)]
    return "\n".join(
        [
            "## Metrics at save time",
            "",
            *(["| metric | value |", "|---|---|", *rows] if rows else ["None logged."]),
            "",
            "Generation metrics (test/rouge1 …) and forgetting are computed after the weights are saved: they "
            "are in the run's `result.json`.",
            "",
        ]
    )


def _usage(cfg: DictConfig, base: str | None, local: str | None, is_adapter: bool, quantised: bool) -> str:
    """Loading the folder: the PEFT Auto class of the task's for an adapter, the task's Auto class otherwise."""
    auto = str(cfg.task.auto_model).rsplit(".", 1)[-1]  # AutoModelForCausalLM
    source = base or local or str(cfg.model.get("name_or_path") or "<base model folder>")
    if is_adapter:
        cls = "AutoPeftModel" + auto.removeprefix("AutoModel")
        code = [f"from peft import {cls}", f'model = {cls}.from_pretrained("<this folder>")']
        if quantised:  # 4-bit, as trained: method.quantization ("auto" values: the run's precision)
            quant = {k: v for k, v in OmegaConf.to_container(cfg.method.quantization).items() if k[0] != "_"}
            args = ", ".join(f"{k}={v!r}" for k, v in quant.items() if v != "auto")
            code[0] += "\nfrom transformers import BitsAndBytesConfig"
            code[-1] = (
                f'model = {cls}.from_pretrained("<this folder>", quantization_config=BitsAndBytesConfig({args}))'
            )
    else:
        code = [f"from transformers import {auto}", f'model = {auto}.from_pretrained("<this folder>")']
    code += [
        "from transformers import AutoTokenizer",
        f'tokenizer = AutoTokenizer.from_pretrained("{source}")',
    ]
    return "\n".join(["## How to load", "", "```python", *code, "```", ""])


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"
