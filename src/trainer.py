"""The transformers Trainer as the recipe uses it: its arguments from the trainer and schedule configs, the
callbacks and forward hooks a run needs, resuming, and what a finished training session measured.

The Trainer does the loop, gradient accumulation, mixed precision, checkpoints and resuming; this module
only configures it. PackedRows batches need a forward pre-hook (src/data/collate.py), the padding share
another; both are registered here, in that order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src import build, callbacks, costs, distributed, interrupts, model_card, speed
from src.atomic import share
from src.checkpoints import CHECKPOINTS
from src.data.collate import collator, drop_packed_attention_mask
from src.errors import ConfigError
from src.evaluation.task_metrics import logits_accuracy
from src.specs import Spec


@dataclass(frozen=True)
class Flavour:
    """What an objective changes in the Trainer (src/objectives): the Trainer class and its arguments class
    (None: transformers' own), extra arguments for each, and whether tunegrid's collator batches (TRL's
    preference trainer brings its own, and tokenises itself)."""

    trainer_cls: Any = None
    args_cls: Any = None
    args: dict[str, Any] = field(default_factory=dict)
    init: dict[str, Any] = field(default_factory=dict)
    collate: bool = True


def training_arguments(
    cfg: DictConfig, spec: Spec, precision: str, output_dir: Path, model=None, flavour: Flavour = Flavour()
):
    """TrainingArguments (or the objective's subclass of them) from cfg.trainer and cfg.lr_schedule: the
    Trainer's own defaults never decide, nor TRL's, which differ (lr 1e-6, gradient checkpointing and bf16 on)."""
    import torch
    from transformers import TrainingArguments

    t, sched = cfg.trainer, cfg.lr_schedule
    return (flavour.args_cls or TrainingArguments)(
        output_dir=str(output_dir),
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
        warmup_steps=int(sched.warmup_steps) if int(sched.warmup_steps) > 0 else float(sched.warmup_ratio),
        eval_strategy="steps",
        eval_steps=int(t.eval_every),
        logging_steps=int(t.logging_steps),
        save_strategy="steps" if t.save_every else "no",
        save_steps=int(t.save_every or 0) or 500,
        save_total_limit=int(t.keep_checkpoints),
        save_only_model=False,  # optimizer, scheduler and RNG state too: a resumed run continues exactly
        restore_callback_states_from_checkpoint=True,  # early stopping's patience counter, too
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        report_to="none",
        seed=int(t.seed),
        data_seed=int(t.seed),
        include_num_input_tokens_seen="non_padding",
        train_sampling_strategy="group_by_length" if spec.batching == "group_by_length" else "random",
        dataloader_num_workers=int(t.num_workers),
        dataloader_pin_memory=torch.cuda.is_available() if t.pin_memory == "auto" else bool(t.pin_memory),
        torch_compile=bool(t.compile),
        logging_nan_inf_filter=False,  # a host read per micro-batch; a non-finite loss stops the run anyway
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **_over_processes(cfg, model),
        **flavour.args,
    )


def _over_processes(cfg: DictConfig, model) -> dict[str, Any]:
    """The Trainer's arguments for a run over several processes (it reads the ranks from torchrun's
    environment, and gives each rank its own shard of every batch sampler's batches)."""
    import torch

    if int(cfg.trainer.devices) == 1:
        return {}
    args: dict[str, Any] = {"ddp_backend": None if torch.cuda.is_available() else "gloo"}  # None: NCCL
    if cfg.trainer.strategy == "ddp":
        # Every trainable parameter takes part in each forward (frozen ones are not DDP's: requires_grad
        # is off), so DDP need not search the graph for unused ones at every step.
        args["ddp_find_unused_parameters"] = False
        return args
    # FSDP2: each transformer block (GPT2Block) a shard unit, the full weights gathered on rank 0 to save.
    blocks = sorted(getattr(model, "_no_split_modules", None) or ())
    if not blocks:
        raise ConfigError(f"trainer.strategy=fsdp: model={cfg.model.name} names no block class to wrap")
    config = {"transformer_layer_cls_to_wrap": blocks, "state_dict_type": "FULL_STATE_DICT"}
    return {**args, "fsdp": True, "fsdp_config": config}


@dataclass
class Hooks:
    """What the recipe reads or switches after training: the loss watch, padding counts, the run totals, the
    session's conditions (memory when training began, the machine's load)."""

    loss_watch: callbacks.LossWatch
    padding: costs.PaddingCounter
    totals: callbacks.RunTotals
    packed: Any  # the packed-rows pre-hook handle (None unless batching=packing)
    conditions: callbacks.Conditions = field(default_factory=callbacks.Conditions)
    steps: speed.StepTimes = field(default_factory=speed.StepTimes)


def make_trainer(
    cfg: DictConfig,
    spec: Spec,
    precision: str,
    model,
    tokenizer,
    splits: dict,
    metrics_cb,
    attempt: int,
    run_dir: Path,
    flavour: Flavour = Flavour(),
):
    """The Trainer for one attempt (attempt > 0: an out-of-memory retry), and its hooks."""
    from transformers import EarlyStoppingCallback, PrinterCallback, Trainer

    t, debug = cfg.trainer, cfg.debug
    args = training_arguments(cfg, spec, precision, run_dir / CHECKPOINTS, model, flavour)
    padding = costs.PaddingCounter()
    hooks = Hooks(
        loss_watch=callbacks.LossWatch(model, debug.nan_at_step),
        padding=padding,
        totals=callbacks.RunTotals(int(t.logging_steps), padding),
        packed=None,
    )
    cbs: list[Any] = [
        metrics_cb,
        callbacks.StopOnSignal(),
        callbacks.ShareCheckpoints(),
        hooks.totals,
        hooks.conditions,
        hooks.steps,
        hooks.loss_watch,
        callbacks.FaultInjection(
            debug.fail_at_step,
            debug.oom_at_step,
            attempt,
            int(debug.oom_attempts),
            float(debug.sleep_per_step),
        ),
    ]
    if t.early_stopping_patience is not None:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=int(t.early_stopping_patience)))
    if t.token_budget:
        cbs.append(callbacks.TokenBudget(int(t.token_budget)))
    if distributed.world_size() == 1:  # over several processes, one rank stopping alone would hang the rest
        model.register_forward_pre_hook(interrupts.stop_now, with_kwargs=True)  # a second signal stops here
    model.register_forward_pre_hook(hooks.padding, with_kwargs=True)  # before packing's: it reads the mask
    if spec.batching == "packing":
        hooks.packed = model.register_forward_pre_hook(drop_packed_attention_mask, with_kwargs=True)
    if t.fused_loss == "liger":
        speed.fuse_loss(model)
    trainer = (flavour.trainer_cls or Trainer)(
        model=model,
        args=args,
        data_collator=collator(tokenizer, int(cfg.data.max_seq_len), spec.batching, spec.task.labelled)
        if flavour.collate
        else None,
        compute_metrics=logits_accuracy if spec.task.labelled else None,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=tokenizer,
        callbacks=cbs,
        **flavour.init,
    )
    # The optimizer the YAML names. Set here, not passed: TRL 1.16's trainers do not take the argument, and the
    # Trainer reads the attribute when it creates the optimizer (create_optimizer).
    trainer.optimizer_cls_and_kwargs = build.optimizer(cfg.optim.optimizer)
    if distributed.world_size() == 1:
        speed.count_tokens_on_host(trainer)
    trainer.remove_callback(PrinterCallback)  # our StdoutLogger prints the same logs with split prefixes
    hooks.loss_watch.trainer = trainer
    step = trainer.training_step

    def training_step(*args, **kwargs):  # the loss of each micro-batch, as the Trainer sums it
        loss = step(*args, **kwargs)
        hooks.totals.add(loss)
        return loss

    trainer.training_step = training_step
    return trainer, hooks


def evaluate_before_training(trainer) -> float:
    """The eval loss before any step. Over several processes (DDP), the Trainer's evaluate() leaves the model
    marked as prepared by accelerate (transformers 5.24, accelerate 1.15), and train() then never wraps it in
    DistributedDataParallel: each rank would train alone on its shard, gradients never averaged (measured:
    the grad norm differs from the first step, the loss from the third). The mark comes off again here."""
    loss = trainer.evaluate()["eval_loss"]
    if distributed.world_size() > 1 and not trainer.is_fsdp_enabled:
        vars(trainer.model).pop("_is_accelerate_prepared", None)
    return loss


def finished_at(trainer, resume: str | None, metrics_cb, hooks: Hooks):
    """A checkpoint already at max_steps (the run was killed after its last checkpoint, say during the final
    evaluation): the Trainer resumed from it would train one step past max_steps, so load its weights,
    optimizer state and totals instead of training. Returns the TrainOutput trainer.train would, or None
    when steps are left."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    if not resume or trainer.args.max_steps <= 0:
        return None
    state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
    if state.global_step < trainer.args.max_steps:
        return None
    # What train(resume_from_checkpoint=) loads: weights or adapter, then the optimizer (its state is measured).
    trainer._load_from_checkpoint(resume)
    trainer.create_optimizer_and_scheduler(num_training_steps=state.max_steps)
    trainer._load_optimizer_and_scheduler(resume)
    trainer.state = state
    hooks.totals.restore(state)
    metrics_cb.on_train_begin(trainer.args, state, trainer.control)
    return TrainOutput(state.global_step, hooks.totals.train_loss(), {"train_runtime": 0.0})


def save_checkpoint(trainer, hooks: Hooks) -> None:
    """A checkpoint of the last finished step, unless the newest one is already at it: when a run is stopped
    outside the Trainer's own saving (a second signal, a signal after training)."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    step = int(trainer.state.global_step)
    if distributed.world_size() > 1:
        trainer.accelerator.wait_for_everyone()  # rank 0 may still be writing the checkpoint the others check
    if step <= 0 or (Path(trainer.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}").is_dir():
        return
    hooks.totals.export(trainer.state)
    # What the Trainer's loop saves (weights, optimizer, scheduler, RNG, state); it has no public method.
    trainer._save_checkpoint(trainer.model, trial=None)
    share(Path(trainer.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}")


def save_weights(trainer, folder: Path) -> None:
    """The trained weights (the adapter alone for PEFT methods) as safetensors in `folder`, by the main process;
    under FSDP every rank takes part in gathering them (the Trainer's save_model)."""
    if trainer.is_fsdp_enabled:
        trainer.save_model(str(folder))
    elif trainer.args.should_save:
        trainer.model.save_pretrained(folder, safe_serialization=True)
    if not trainer.args.should_save:
        return
    if not any(folder.glob("*.safetensors")):  # save_pretrained only logs some failures (folder a file)
        raise RuntimeError(f"{folder}: the weights were not saved")
    model_card.write(trainer, folder)  # adapter_config.json names the hub model; README.md, the model card
    share(folder)  # safetensors writes 0600, whatever the umask


def last_evaluation(trainer) -> dict[str, float]:
    """The Trainer's evaluation at the last step when it made one, else a new one."""
    state = trainer.state
    last_eval = [h for h in state.log_history if "eval_loss" in h]
    return (
        last_eval[-1] if last_eval and last_eval[-1].get("step") == state.global_step else trainer.evaluate()
    )


def final_losses(trainer, splits: dict, test_split: bool) -> dict[str, float]:
    """Eval loss (last_evaluation), eval accuracy of a classifier, and the test split's loss and accuracy."""
    final = last_evaluation(trainer)
    out = {"eval_loss": final["eval_loss"]}
    if "eval_accuracy" in final:
        out["eval_accuracy"] = final["eval_accuracy"]
    if test_split and len(splits["test"]) > 0:
        test = trainer.evaluate(splits["test"], metric_key_prefix="test")
        out["test_loss"] = test["test_loss"]
        if "test_accuracy" in test:
            out["test/accuracy"] = test["test_accuracy"]
    return out


def session_metrics(trainer, result, metrics_cb, hooks: Hooks, batching: str) -> dict[str, Any]:
    """What this training session measured: losses, tokens and their rate over the training time alone
    (evaluations inside trainer.train() excluded), padding share, time per epoch (and whether the session
    covered a whole epoch or it is extrapolated from a part of one), steps, the memory in use when training
    began, and how busy the machine was while it trained (callbacks.Conditions)."""
    state = trainer.state
    # Evaluation inside trainer.train() (every eval_every steps, and at the last step under
    # eval_strategy="steps") counts in train_runtime; tokens/s is over the training time alone.
    eval_in_train_s = sum(
        float(h.get("eval_runtime", 0.0))
        for h in state.log_history
        if "eval_loss" in h and h.get("step", 0) > metrics_cb.start_step
    )
    runtime = float(result.metrics["train_runtime"])
    epochs_done = float(state.epoch or 0.0)
    session_epochs = epochs_done - metrics_cb.start_epoch
    trained_for = runtime - eval_in_train_s
    per_epoch = runtime / session_epochs if session_epochs > 0 and runtime > 0 else None
    return {
        "train_loss": hooks.totals.train_loss(),  # mean over the last logging_steps steps, of the whole run
        "tokens_trained": int(state.num_input_tokens_seen),
        # this session's tokens over this session's time (a resumed run counts only what it trained)
        "tokens_per_s": (state.num_input_tokens_seen - metrics_cb.start_tokens) / trained_for
        if trained_for > 0
        else None,  # no step trained in this session (it resumed at max_steps)
        "train_runtime_s": runtime,
        "eval_in_train_s": eval_in_train_s,
        "batching": batching,
        "padding_share": hooks.padding.share(),  # of all the tokens trained (restored on resume)
        "time_per_epoch_s": per_epoch,
        # the session trained less than one epoch: time_per_epoch_s is its time scaled up, not measured
        "time_per_epoch_extrapolated": None if per_epoch is None else session_epochs < 1 - 1e-9,
        "steps": int(state.global_step),
        "epochs": epochs_done,
        "memory_before_training_mb": hooks.conditions.memory_before_mb,
        **hooks.steps.summary(state, bool(trainer.args.torch_compile)),
        "contention": hooks.conditions.summary(),
    }


def perplexities(losses: dict[str, float]) -> dict[str, float | None]:
    test = losses.get("test_loss")
    return {
        "perplexity": math.exp(min(losses["eval_loss"], 50.0)),
        "test_perplexity": math.exp(min(test, 50.0)) if test is not None else None,
    }
