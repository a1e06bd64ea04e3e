"""The baseline for the framework-overhead benchmark: one fine-tuning run written the way such studies
usually are, straight on `transformers.Trainer` + PEFT, no Hydra, no tunegrid.

    python benchmarks/plain_trainer.py --model DIR --records FILE.jsonl --out RESULT.json [options]

It trains what `python -m src.run` trains for the same settings: the same model folder, the same records
split the same way (a seeded permutation: train first, then validation), the same Alpaca prompt template
with the loss on the response only, dynamic padding, the same batch, steps, seed, learning rate, schedule
and optimizer (torch AdamW, not the Trainer's fused default, because the framework's optim=adamw is
torch.optim.AdamW). It then evaluates once and saves the trained weights, as the framework does, and
writes {tokens_per_s, train_runtime_s, tokens_trained, steps, eval_loss} where tokens/s is the Trainer's
non-padding input tokens over its train_runtime, the framework's definition.
"""

from __future__ import annotations

import argparse
import json
import time

T0 = time.perf_counter()


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a Hugging Face model folder (or hub id)")
    p.add_argument("--records", required=True, help="JSON lines with instruction / input / output")
    p.add_argument("--out", required=True, help="where the result JSON goes")
    p.add_argument(
        "--run-dir", default=None, help="Trainer output_dir and the saved weights (default: beside --out)"
    )
    p.add_argument("--method", choices=["lora", "full"], default="lora")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--targets", default="c_attn,attn.c_proj", help="LoRA target modules, comma-separated")
    p.add_argument("--fan-in-fan-out", type=int, default=1, help="1 for GPT-2's Conv1D layers")
    p.add_argument("--train-size", type=int, default=2600)
    p.add_argument("--val-size", type=int, default=200)
    p.add_argument("--split-seed", type=int, default=42)
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--prompt", required=True, help="str.format template over the record's fields")
    p.add_argument(
        "--prompt-if-empty", default=None, help="template used when --prompt-if-empty-field is empty"
    )
    p.add_argument("--prompt-if-empty-field", default="input", help="the record field that selects it")
    p.add_argument("--response", default="{output}")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--eval-batch-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=60)
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--warmup", type=float, default=0.05, help="warmup: a ratio of the steps (< 1) or steps")
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--logging-steps", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--optim", default="adamw_torch", help="TrainingArguments.optim (the framework: adamw_torch)"
    )
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--no-eval", action="store_true")
    return p.parse_args()


def main() -> None:
    a = parse()
    from pathlib import Path

    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        set_seed,
    )

    set_seed(a.seed)
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    # Data: shuffle once with the split seed, train first, then validation.
    with open(a.records) as f:
        records = [json.loads(line) for line in f if line.strip()]
    perm = np.random.default_rng(a.split_seed).permutation(len(records))
    train_recs = [records[i] for i in perm[: a.train_size]]
    val_recs = [records[i] for i in perm[a.train_size : a.train_size + a.val_size]]

    def encode(rec: dict) -> dict:
        template = (
            a.prompt_if_empty
            if a.prompt_if_empty and not str(rec.get(a.prompt_if_empty_field, "")).strip()
            else a.prompt
        )
        p = tokenizer(template.format(**rec), add_special_tokens=False)["input_ids"]
        r = tokenizer(a.response.format(**rec), add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        ids = (p + r)[: a.max_seq_len]
        labels = ([-100] * len(p) + r)[: a.max_seq_len]
        return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}

    def tokenise(recs: list[dict]) -> Dataset:
        rows = [encode(r) for r in recs]
        rows = [r for r in rows if any(x != -100 for x in r["labels"])]
        return Dataset.from_list(rows)

    train_ds, val_ds = tokenise(train_recs), tokenise(val_recs)

    # Model and method.
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    if a.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                task_type="CAUSAL_LM",
                r=a.rank,
                lora_alpha=a.alpha,
                lora_dropout=0.0,
                target_modules=a.targets.split(","),
                fan_in_fan_out=bool(a.fan_in_fan_out),
            ),
        )

    run_dir = Path(a.run_dir or Path(a.out).with_suffix(""))
    args = TrainingArguments(
        output_dir=str(run_dir / "trainer"),
        per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.eval_batch_size,
        max_steps=a.max_steps,
        learning_rate=a.lr,
        weight_decay=a.weight_decay,
        lr_scheduler_type="linear",
        warmup_steps=a.warmup,
        max_grad_norm=a.max_grad_norm,
        optim=a.optim,
        logging_steps=a.logging_steps,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        seed=a.seed,
        data_seed=a.seed,
        bf16=a.bf16,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
    )

    class TrainBegin(TrainerCallback):  # for the benchmark's start-up figure: when the training loop began
        at: float | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            TrainBegin.at = time.time()

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        processing_class=tokenizer,
        data_collator=DataCollatorForSeq2Seq(
            tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt"
        ),
        callbacks=[TrainBegin()],
    )
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    runtime = float(result.metrics["train_runtime"])
    tokens = int(trainer.state.num_input_tokens_seen)
    out = {
        "tokens_per_s": tokens / runtime if runtime > 0 else 0.0,
        "train_runtime_s": runtime,
        "tokens_trained": tokens,
        "steps": int(trainer.state.global_step),
        "train_loss": result.training_loss,
        "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "train_begin_epoch": TrainBegin.at,
    }
    if not a.no_eval:
        out["eval_loss"] = trainer.evaluate()["eval_loss"]
    trainer.model.save_pretrained(run_dir / "checkpoint", safe_serialization=True)
    out["process_s"] = time.perf_counter() - T0
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
