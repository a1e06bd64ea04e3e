"""In-process helpers on the framework's own config and data code: the config a run trains, its model folder,
its records, the plain script's arguments for the same settings, and the untimed preparation of a section."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.settings import REPO


def compose(overrides: list[str]):
    """The validated, resolved config `python -m src.run <overrides>` trains (a bad override fails here, in
    one line, before any run is timed)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from src.config import CONF_DIR, validate  # importing src.config registers the tg.* resolvers

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return validate(hydra_compose(config_name="config", overrides=list(overrides)))


def model_folder(cfg) -> str:
    """The folder (or hub id) the run loads: the cached tiny build, materialised here if need be."""
    from src import models
    from src.config import cache_dir

    return models.model_path(cfg.model, cache_dir(cfg))


def write_records(cfg, path: Path) -> Path:
    """The data set's generated records as JSON lines (what the framework generates for the same config)."""
    from src import build

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for rec in build.generated_records(cfg.data.generator):
            f.write(json.dumps(rec) + "\n")
    return path


def prebuild(cfg) -> list[int]:
    """Materialise the model folder and tokenise the data in this process (the framework's own code and
    cache), so that no timed run pays for it; return the train split's token lengths."""
    from src import data, models, specs
    from src.config import cache_dir

    cache = cache_dir(cfg)
    tok = models.load_tokenizer(models.model_path(cfg.model, cache), bool(cfg.model.trust_remote_code))
    prepared = data.build(cfg.data, tok, cache, labelled=specs.of(cfg).task.labelled)
    return [len(x) for x in prepared.splits["train"]["input_ids"]]


def plain_argv(cfg, model: str, records: Path, out: Path, method: str, steps: int, bf16: bool) -> list[str]:
    """benchmarks/plain_trainer.py with the settings the framework resolved for the same run."""
    d, t, s = cfg.data, cfg.trainer, cfg.lr_schedule
    warmup = int(s.warmup_steps) if int(s.warmup_steps) > 0 else float(s.warmup_ratio)
    argv = [
        sys.executable,
        str(REPO / "benchmarks" / "plain_trainer.py"),
        "--model",
        model,
        "--records",
        str(records),
        "--out",
        str(out),
        "--method",
        method,
        "--train-size",
        str(d.splits.train),
        "--val-size",
        str(d.splits.validation),
        "--split-seed",
        str(d.split_seed),
        "--max-seq-len",
        str(d.max_seq_len),
        "--prompt",
        str(d.prompt),
        "--response",
        str(d.response),
        "--batch-size",
        str(t.batch_size),
        "--eval-batch-size",
        str(t.eval_batch_size),
        "--max-steps",
        str(steps),
        "--lr",
        repr(float(cfg.lr)),
        "--weight-decay",
        repr(float(cfg.weight_decay)),
        "--warmup",
        str(warmup),
        "--max-grad-norm",
        str(t.max_grad_norm),
        "--logging-steps",
        str(t.logging_steps),
        "--seed",
        str(t.seed),
    ]
    if d.get("prompt_if_empty") is not None:
        argv += [
            "--prompt-if-empty",
            str(d.prompt_if_empty.template),
            "--prompt-if-empty-field",
            str(d.prompt_if_empty.field),
        ]
    if method == "lora":
        p = cfg.method.peft
        argv += [
            "--rank",
            str(p.r),
            "--alpha",
            str(p.lora_alpha),
            "--targets",
            ",".join(p.target_modules),
            "--fan-in-fan-out",
            str(int(bool(p.fan_in_fan_out))),
        ]
    if bf16:
        argv.append("--bf16")
    return argv
