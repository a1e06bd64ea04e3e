"""The embedded tiny model's one-off pretraining, so that the studies fine-tune a pretrained base as they
would GPT-2: from random weights LoRA cannot learn (eval loss 5.6 against 1.3 for full fine-tuning), and the
rank study on the defaults showed noise.

It runs once, when the tiny model is first built into the cache (src/models.py), with `transformers.Trainer`
on packed rows of the pretraining tasks (src/data/synthetic.py: tasks the studies never fine-tune on), about a
minute on 2 CPU cores. `model.pretrain` in conf/model/tiny.yaml says what and how long; it is part of the
cache key, so changing it builds a new model.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import torch
from omegaconf import DictConfig

from src import build


class _Rows(torch.utils.data.Dataset):
    """Token rows of `block` tokens; every token is a target (no padding, so none is masked)."""

    def __init__(self, ids: list[int], block: int):
        n = len(ids) // block
        self.rows = torch.tensor(ids[: n * block], dtype=torch.long).view(n, block)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        row = self.rows[i]
        return {"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row}


def rows(cfg: DictConfig, tokenizer) -> _Rows:
    """The corpus rendered with the Alpaca templates, each record ended by EOS, packed into rows."""
    from src.data.synthetic import alpaca_texts

    ids: list[int] = []
    for text in alpaca_texts(build.generated_records(cfg.corpus)):
        ids.extend(tokenizer(text + tokenizer.eos_token)["input_ids"])
    return _Rows(ids, int(cfg.block_size))


def pretrain(model: Any, tokenizer, cfg: DictConfig, seed: int) -> dict[str, float]:
    """Train `model` in place for cfg.steps steps; returns the first and last logged training loss."""
    from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator
    from transformers.trainer_callback import PrinterCallback

    losses: list[float] = []

    class _Losses(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    print(
        f"tunegrid: pretraining the tiny model once, into the cache ({cfg.steps} steps)",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="tunegrid-pretrain-") as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=int(cfg.steps),
            per_device_train_batch_size=int(cfg.batch_size),
            learning_rate=float(cfg.lr),
            warmup_steps=int(cfg.warmup_steps),
            lr_scheduler_type="linear",
            weight_decay=0.01,
            max_grad_norm=1.0,
            seed=seed,
            logging_steps=max(1, int(cfg.steps) // 10),
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=rows(cfg, tokenizer),
            data_collator=default_data_collator,
            callbacks=[_Losses()],
        )
        trainer.remove_callback(PrinterCallback)  # with disable_tqdm it prints every log as a dict
        trainer.train()
    model.cpu()
    return {
        "first_loss": losses[0] if losses else float("nan"),
        "last_loss": losses[-1] if losses else float("nan"),
    }
