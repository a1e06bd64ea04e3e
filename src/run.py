"""The one entrypoint: `python -m src.run [key=value ...] [-m]`.

Read top to bottom: `main` validates the composed config and wraps one run so that a failure is
recorded instead of killing a grid; `train` is the whole training path (model, method, data,
Trainer, evaluation, record metrics). Heavy libraries are imported inside `train`, so `--cfg job`
and bad-input errors answer in about a second.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from src import records
from src.config import ConfigError, batching_mode, cache_dir, flatten, validate


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> dict[str, Any]:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    run_dir = Path(hc.runtime.output_dir)
    overrides = list(hc.overrides.task)
    record: dict[str, Any] = {
        "schema_version": records.SCHEMA_VERSION,
        "status": "running",
        "error": None,
        "overrides": overrides,
        "run_dir": str(run_dir),
        "started_at": records.now(),
    }
    try:
        cfg = validate(cfg)
        record.update(
            method=cfg.method.name,
            method_settings=OmegaConf.to_container(cfg.method),
            frozen_blocks=cfg.frozen_blocks,
            optimizer=cfg.optim.name,
            lr_schedule=cfg.lr_schedule.name,
            lr=cfg.lr,
            seed=cfg.seed,
            config=OmegaConf.to_container(cfg),
            config_hash=records.config_hash(cfg),
            code_key=records.code_key(),
        )
        # Resume a grid: a run that already succeeded with this config (and this code) is not trained again.
        earlier = records.find_done(Path(hc.sweep.dir) if multirun else run_dir, record, cfg.sweep)
        if earlier is not None:
            return earlier
        name = ",".join(overrides) or "default"
        group = "/".join(Path(hc.sweep.dir).parts[-2:]) if multirun else name  # W&B groups a grid's runs
        record["group"] = group
        record["metrics"], record["env"], _ = train_with_retries(cfg, run_dir, name, group, record)
        record.update(status="success", ended_at=records.now())
        records.write_json_atomic(run_dir / records.RECORD, record)
        print(f"tunegrid: success; record: {run_dir / records.RECORD}")
    except ConfigError as e:
        print(f"tunegrid: error: {e}", file=sys.stderr)
        if not (run_dir / records.RECORD).exists():  # never overwrite an earlier run's record
            records.write_failure(run_dir, record, e, status="invalid")
        if not multirun:
            sys.exit(2)
    except Exception as e:  # the task wrapper: one crashing run must not kill a grid
        from src.callbacks import Diverged, Interrupted, SkippedOOM, is_oom

        status = {Diverged: "diverged", Interrupted: "interrupted", SkippedOOM: "skipped_oom"}.get(type(e))
        status = status or ("oom" if is_oom(e) else "failed")
        if status == "skipped_oom":
            record["metrics"] = {
                "predicted_memory_mb": e.predicted["total_mb"],
                "predicted_memory": e.predicted,
            }
        records.write_failure(run_dir, record, e, status=status)
        print(
            f"tunegrid: run {status}: {records.error_summary(e)} (record: {run_dir / records.RECORD})",
            file=sys.stderr,
        )
        if status == "interrupted":
            sys.exit(128 + getattr(e, "signum", 2))  # stop the whole grid too: the user asked to stop
        if not multirun and status != "skipped_oom":
            sys.exit(1)
    return record


def train_with_retries(cfg: DictConfig, run_dir: Path, name: str, group: str, record: dict[str, Any]):
    """train(), and after an out-of-memory error (trainer.oom_retry) once more with half the micro-batch
    and twice the accumulation (the same effective batch), then with gradient checkpointing too."""
    from src.callbacks import is_oom

    retry = cfg.trainer.oom_retry
    if retry == "auto":
        import torch

        retry = torch.cuda.is_available()
    plans = [{}]
    if retry:
        half = max(1, int(cfg.trainer.batch_size) // 2)
        accum = int(cfg.trainer.grad_accum) * int(cfg.trainer.batch_size) // half
        plans += [
            {"batch_size": half, "grad_accum": accum},
            {"batch_size": half, "grad_accum": accum, "gradient_checkpointing": True},
        ]
    for attempt, plan in enumerate(plans):
        run_cfg = cfg.copy()
        for k, v in plan.items():
            run_cfg.trainer[k] = v
        try:
            result = train(run_cfg, run_dir, name, group, attempt=attempt)
        except Exception as e:
            if attempt + 1 == len(plans) or not is_oom(e):
                raise
            print(
                f"tunegrid: out of memory ({records.error_summary(e)}); retrying with {plans[attempt + 1]}",
                file=sys.stderr,
            )
            _free_memory()
            continue
        record["oom_retries"] = attempt
        record["trainer_used"] = {
            k: run_cfg.trainer[k] for k in ("batch_size", "grad_accum", "gradient_checkpointing")
        }
        return result
    raise AssertionError("unreachable")


def _free_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train(cfg: DictConfig, run_dir: Path, name: str, group: str, attempt: int = 0) -> tuple[dict, dict, Any]:
    """Train one validated configuration; return (metrics, env) for the record, and the Trainer (for tests)."""
    import logging
    import warnings

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings(
        "ignore", category=FutureWarning
    )  # library deprecation notes, not the user's concern
    import torch
    import transformers
    from hydra.utils import instantiate
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer, TrainingArguments

    from src import callbacks, data, evaluation, methods, metrics, models
    from src.loggers import JsonlLogger, MetricsCallback, StdoutLogger

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    t = cfg.trainer
    precision = models.resolve_precision(t.precision)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    transformers.set_seed(int(t.seed))
    cache = cache_dir(cfg)
    evaluation.preflight(cfg.eval)  # an enabled reward model / judge that cannot be reached fails now

    # 1. Model, tokenizer and method.
    path = models.model_path(cfg, cache)
    tokenizer = models.load_tokenizer(path, bool(cfg.model.get("trust_remote_code", False)))
    splits = data.build(cfg.data, tokenizer, cache)
    model = models.load_model(path, cfg, models.DTYPES[precision])
    generic_before = None
    if (
        cfg.eval.forgetting and cfg.task.generates_text
    ):  # the base model's loss on generic text, the same for every method
        if torch.cuda.is_available() and cfg.method.get("quantization") is None:
            model.to("cuda")
        generic = evaluation.generic_text(cfg.eval.forgetting_text)
        generic_before = evaluation.generic_loss(
            model, tokenizer, generic, int(cfg.eval.forgetting_block_size)
        )
    model = methods.apply(model, cfg, bool(t.gradient_checkpointing), path)
    counts = methods.count_params(model)
    batching = batching_mode(cfg)
    predicted = metrics.predict_memory_mb(model, cfg, precision)
    metrics.check_fits(predicted, cfg.sweep)  # raises SkippedOOM with sweep.skip_predicted_oom

    # 2. Loggers: disk and stdout always, W&B unless logger=none.
    backends: list[Any] = [JsonlLogger(run_dir / "metrics.jsonl"), StdoutLogger()]
    if cfg.logger.get("wandb") is not None:
        tags = [
            cfg.method.name,
            *([f"study:{cfg.study}"] if cfg.get("study") else []),
            *cfg.logger.wandb.tags,
        ]
        make_wandb = instantiate(
            cfg.logger.wandb, _partial_=True
        )  # `config` clashes with instantiate's own arg
        backends.append(
            make_wandb(
                run_dir=run_dir,
                name=name,
                group=group,
                tags=tags,
                config={**flatten(cfg), "overrides": name, **counts},
            )
        )
    logger_cb = MetricsCallback(backends)

    closed: list[bool] = []

    def close(summary: dict[str, Any]) -> None:
        """Finish every logger once: W&B marks the run failed unless summary says success."""
        if not closed:
            closed.append(True)
            for lg in backends:
                lg.finish(summary)

    try:
        # 3. The Trainer, configured from the YAML (optimizer class and kwargs from optim.optimizer).
        opt = instantiate(
            cfg.optim.optimizer, _convert_="all"
        )  # functools.partial(OptimizerClass, lr=..., ...)
        sched = cfg.lr_schedule
        args = TrainingArguments(
            output_dir=str(run_dir / "checkpoints"),
            per_device_train_batch_size=int(t.batch_size),
            per_device_eval_batch_size=int(t.eval_batch_size),
            gradient_accumulation_steps=int(t.grad_accum),
            num_train_epochs=float(t.epochs),
            max_steps=int(t.max_steps),
            max_grad_norm=float(t.max_grad_norm),
            activation_checkpointing=bool(t.gradient_checkpointing),
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            learning_rate=float(cfg.lr),
            weight_decay=float(cfg.weight_decay),
            lr_scheduler_type=sched.name,
            lr_scheduler_kwargs=dict(sched.kwargs),
            warmup_steps=int(sched.warmup_steps)
            if int(sched.warmup_steps) > 0
            else float(sched.warmup_ratio),
            eval_strategy="steps",
            eval_steps=int(t.eval_every),
            logging_steps=int(t.logging_steps),
            save_strategy="steps" if t.save_every else "no",
            save_steps=int(t.save_every or 0) or 500,
            save_total_limit=int(t.keep_checkpoints),
            save_only_model=False,  # optimizer, scheduler and RNG state too: a resumed run continues exactly
            metric_for_best_model="eval_loss",
            greater_is_better=False,
            report_to="none",
            seed=int(t.seed),
            data_seed=int(t.seed),
            include_num_input_tokens_seen="non_padding",
            train_sampling_strategy="group_by_length" if batching == "group_by_length" else "random",
            dataloader_num_workers=int(t.num_workers),
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
        )
        debug = cfg.get("debug") or {}
        stop_on_signal = callbacks.StopOnSignal()
        callbacks_: list[Any] = [
            logger_cb,
            stop_on_signal,
            callbacks.FaultInjection(
                debug.get("fail_at_step"),
                debug.get("oom_at_step"),
                attempt,
                int(debug.get("oom_attempts", 1)),
                float(debug.get("sleep_per_step", 0.0)),
            ),
        ]
        if t.early_stopping_patience is not None:
            callbacks_.append(EarlyStoppingCallback(early_stopping_patience=int(t.early_stopping_patience)))
        if t.token_budget:
            callbacks_.append(callbacks.TokenBudget(int(t.token_budget)))
        loss_watch = callbacks.LossWatch(model, debug.get("nan_at_step"))
        padding = metrics.PaddingCounter()
        model.register_forward_pre_hook(padding, with_kwargs=True)  # first: it reads the mask packing drops
        packed = (
            model.register_forward_pre_hook(data.drop_packed_attention_mask, with_kwargs=True)
            if batching == "packing"
            else None
        )
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=data.collator(tokenizer, cfg.data, batching),
            compute_metrics=None if cfg.task.generates_text else _accuracy,
            train_dataset=splits["train"],
            eval_dataset=splits["validation"],
            processing_class=tokenizer,
            callbacks=callbacks_,
            optimizer_cls_and_kwargs=(opt.func, dict(opt.keywords)),
        )
        trainer.remove_callback(PrinterCallback)  # our StdoutLogger prints the same logs with split prefixes
        loss_watch.trainer = trainer

        # 4. Train, with an evaluation before (so every record shows how far the loss fell) and after.
        out: dict[str, Any] = {}
        if cfg.eval.eval_before_training:
            out["initial_eval_loss"] = trainer.evaluate()["eval_loss"]
        metrics.reset_peak_memory()
        resume = records.resumable_checkpoint(Path(args.output_dir), cfg, force=bool(cfg.sweep.force))
        if resume:
            print(f"tunegrid: resuming from {resume}")
        stop_on_signal.install()
        try:
            result = _finished_at(trainer, resume, logger_cb) or trainer.train(resume_from_checkpoint=resume)
        except BaseException as e:
            e.step_reached = trainer.state.global_step + 1  # the step in progress, for the record
            raise
        finally:
            stop_on_signal.uninstall()
            loss_watch.trainer = None  # evaluation and generation below are not training steps
        if stop_on_signal.signal is not None:
            close({"status": "interrupted"})
            stop = callbacks.Interrupted(
                f"signal {stop_on_signal.signal} at step {trainer.state.global_step}; "
                f"checkpoint saved in {args.output_dir}, re-run the same command to resume"
            )
            stop.step_reached, stop.signum = trainer.state.global_step, stop_on_signal.signal
            raise stop
        out["peak_memory_mb"] = metrics.peak_memory_mb()
        out["predicted_memory_mb"] = predicted["total_mb"]
        out["predicted_memory"] = predicted
        state = trainer.state
        # Evaluation inside trainer.train() (every eval_every steps, and at the last step under
        # eval_strategy="steps") counts in train_runtime; tokens/s is over the training time alone.
        eval_in_train_s = sum(
            float(h.get("eval_runtime", 0.0))
            for h in state.log_history
            if "eval_loss" in h and h.get("step", 0) > logger_cb.start_step
        )
        last_eval = [h for h in state.log_history if "eval_loss" in h]
        if last_eval and last_eval[-1].get("step") == state.global_step:
            final = last_eval[-1]  # the Trainer already evaluated at the last step
        else:
            final = trainer.evaluate()
        out["eval_loss"] = final["eval_loss"]
        if "eval_accuracy" in final:
            out["eval_accuracy"] = final["eval_accuracy"]
        if cfg.eval.test_split and len(splits["test"]) > 0:
            test = trainer.evaluate(splits["test"], metric_key_prefix="test")
            out["test_loss"] = test["test_loss"]
            if "test_accuracy" in test:
                out["test/accuracy"] = test["test_accuracy"]

        # 5. Save what the method trained (the adapter alone for PEFT methods) and measure it.
        ckpt = run_dir / "checkpoint"
        trainer.model.save_pretrained(ckpt, safe_serialization=True)
        train_losses = [h["train/loss"] for h in logger_cb.history if "train/loss" in h]
        runtime = float(result.metrics["train_runtime"])
        epochs_done = float(state.epoch or 0.0)
        out.update(
            train_loss=train_losses[-1] if train_losses else result.training_loss,
            perplexity=math.exp(min(out["eval_loss"], 50.0)),
            test_perplexity=math.exp(min(out["test_loss"], 50.0)) if "test_loss" in out else None,
            tokens_trained=int(state.num_input_tokens_seen),
            # this session's tokens over this session's time (a resumed run counts only what it trained)
            tokens_per_s=(state.num_input_tokens_seen - logger_cb.start_tokens) / (runtime - eval_in_train_s)
            if runtime - eval_in_train_s > 0
            else 0.0,
            train_runtime_s=runtime,
            eval_in_train_s=eval_in_train_s,
            batching=batching,
            padding_share=padding.share(),  # of the tokens trained in this session
            time_per_epoch_s=runtime / epochs_done if epochs_done > 0 else None,
            steps=int(state.global_step),
            epochs=epochs_done,
            checkpoint_bytes=metrics.weight_bytes(ckpt),
            **counts,
            trainable_pct=100.0 * counts["trainable_params"] / max(counts["total_params"], 1),
            precision=precision,
            **methods.memory_split(trainer.model, getattr(trainer.optimizer, "optimizer", trainer.optimizer)),
        )

        if packed is not None:
            packed.remove()  # generation below passes its own attention mask and positions

        # 6. Forgetting, generations on test prompts (samples.jsonl + W&B table), task / reward / judge metrics.
        extra: dict[str, float] = {}
        if generic_before is not None:
            after = evaluation.generic_loss(
                trainer.model, tokenizer, generic, int(cfg.eval.forgetting_block_size)
            )
            extra.update(
                {
                    "eval/generic_loss_before": generic_before,
                    "eval/generic_loss_after": after,
                    "eval/forgetting": evaluation.forgetting(generic_before, after),
                }
            )
        if cfg.task.generates_text:
            extra.update(
                evaluation.evaluate_generations(trainer.model, tokenizer, cfg, cache, run_dir, backends)
            )
        logger_cb.emit(extra, int(state.global_step))
        out.update(extra)

        summary = {k: v for k, v in out.items() if v is not None}
    except BaseException as e:
        close({"status": "failed", "error": records.error_summary(e)})
        raise
    close(summary)
    return out, records.env_info(device), trainer


def _finished_at(trainer, resume: str | None, logger_cb):
    """A checkpoint already at max_steps (the run was killed after its last checkpoint, say during the final
    evaluation): the Trainer resumed from it would train one step past max_steps, so load its weights and
    state instead of training. Returns the TrainOutput trainer.train would, or None when steps are left."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    if not resume or trainer.args.max_steps <= 0:
        return None
    state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
    if state.global_step < trainer.args.max_steps:
        return None
    trainer._load_from_checkpoint(resume)  # what train(resume_from_checkpoint=) loads: weights or adapter
    trainer.state = state
    logger_cb.start_step, logger_cb.start_tokens = state.global_step, state.num_input_tokens_seen
    losses = [h["loss"] for h in state.log_history if "loss" in h]
    return TrainOutput(state.global_step, losses[-1] if losses else float("nan"), {"train_runtime": 0.0})


def _accuracy(pred) -> dict[str, float]:
    """Classifier accuracy through the project's offline `evaluate` accuracy module."""
    from src import evaluation

    classes = pred.predictions.argmax(-1).tolist()
    labels = pred.label_ids.tolist()
    return {
        "accuracy": evaluation.compute_metrics(
            ["accuracy"], [str(c) for c in classes], [str(y) for y in labels], prefix="x"
        )["x/accuracy"]
    }


if __name__ == "__main__":
    main()
