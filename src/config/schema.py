"""The schema of a composed config: one pydantic model per config group, every key of conf/ declared.

Unknown keys are errors (`+rnak=8` must not train with the default rank), so a key added to a YAML is
added here too. Nodes that are passed through to a library (`_target_` objects: the PEFT config, the
optimizer, the quantisation config, a model's build config, a data generator) check the keys tunegrid
knows and let the rest through to the library. What a method or task can do, and the checks across
groups, live in src/specs.py.
"""

import math
from typing import Any, Self

from pydantic import ConfigDict, Field, model_validator

from src.config.data import SPLITS, DataSection  # noqa: F401 - SPLITS: importers of the schema's name
from src.config.evaluation import SEED_MAX, Eval
from src.config.values import (
    Flag,
    Name,
    OptName,
    OptTexts,
    Section,
    Texts,
    choice,
    cross,
    custom,
    integer,
    number,
)
from src.specs import TRAINS

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
BATCHINGS = ("auto", "packing", "dynamic", "group_by_length", "pad_to_max")
WANDB_MODES = ("auto", "offline", "online", "disabled")
STRATEGIES = ("ddp", "fsdp")
ATTENTIONS = ("sdpa", "eager", "flash_attention_2", "flex_attention")  # transformers' attn_implementation
FUSED_LOSSES = ("none", "liger")
WEIGHT_DTYPES = ("fp32", "bf16")


class Target(Section):
    """An object built from `_target_` (src/build.py); keys other than the declared ones pass through."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True, defer_build=True)
    target: Name = Field(alias="_target_")
    partial: Flag | None = Field(None, alias="_partial_")


# --------------------------------------------------------------------------- model


class Gguf(Section):
    package: Name
    file: Name
    install: Name


class Tokenizer(Section):
    vocab_size: integer(lo=2)


class Pretrain(Section):
    """The embedded tiny model's one-off pretraining (src/pretrain.py); steps=0 keeps the random init."""

    corpus: Target
    steps: integer(lo=0)
    batch_size: integer(lo=1)
    block_size: integer(lo=8)
    lr: number(lo=0, lo_open=True)
    warmup_steps: integer(lo=0)


class Model(Section):
    name: Name
    name_or_path: OptName
    hub_id: OptName = None  # the hub model a saved adapter names (src/model_card.py); null: name_or_path
    family: Name
    conv1d: Flag
    build: Target | None = None  # the tiny model: a transformers config built from scratch
    init_seed: integer(lo=0, optional=True) = None
    tokenizer: Tokenizer | None = None
    pretrain: Pretrain | None = None
    gguf: Gguf | None = None  # a GGUF file shipped in a Python package (SmolLM2)
    num_layers: integer(lo=1)
    num_layers_key: OptName
    hidden_size: integer(lo=1)
    context_length: integer(lo=1)
    tied_head: Flag
    layers_pattern: Name
    block_prefix: Name
    embedding_prefixes: Texts
    head_prefix: Name
    lora_targets: dict[str, list[str]]
    lr_scale: number(lo=0, lo_open=True)
    trust_remote_code: Flag


# --------------------------------------------------------------------------- method and task


class Peft(Target):
    r: integer(lo=1, optional=True) = None
    lora_alpha: number(lo=0, lo_open=True, optional=True) = None
    lora_dropout: number(lo=0, hi=1, hi_open=True, optional=True) = None
    num_virtual_tokens: integer(lo=1, optional=True) = None


class Method(Section):
    name: Name
    trains: choice(TRAINS)
    lr_scale: number(lo=0, lo_open=True)
    peft: Peft | None
    trainable: OptTexts
    untie_head: Flag
    quantization: Target | None


class Objective(Section):
    """conf/objective/*.yaml: the recipe module that builds its data, Trainer and metrics (src/objectives)."""

    name: Name
    recipe: Name
    lr_scale: number(lo=0, lo_open=True)
    pairs: Flag
    settings: OptName


# TRL 1.16's DPOTrainer loss types (trl/trainer/dpo_trainer.py)
DPO_LOSSES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)  # fmt: skip


def _loss_types(value: Any, ctx: dict) -> str | None:
    ok = isinstance(value, list) and value and all(v in DPO_LOSSES for v in value)
    return None if ok else "a non-empty list of " + ", ".join(DPO_LOSSES)


class Dpo(Section):
    """The top-level `dpo:` section (objective=dpo): TRL's DPOConfig knobs."""

    beta: number(lo=0, lo_open=True)
    loss_type: custom(_loss_types)
    loss_weights: list[float] | None
    label_smoothing: number(lo=0, hi=0.5, hi_open=True)
    max_length: integer(lo=8)
    precompute_ref_log_probs: Flag
    disable_dropout: Flag
    use_liger_kernel: Flag

    @model_validator(mode="after")
    def _weights_match(self) -> Self:
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise cross(
                f"dpo.loss_weights={self.loss_weights}: needs one weight per dpo.loss_type ({len(self.loss_type)})"
            )
        return self


class Task(Section):
    name: Name
    auto_model: Name
    peft_task_type: Name
    head_prefix: Name
    generates_text: Flag
    labelled: Flag


# --------------------------------------------------------------------------- data (src/config/data.py)


class Data(DataSection):
    generator: Target | None = None  # records from a function (_target_), e.g. the synthetic default


# --------------------------------------------------------------------------- optimizer and schedule


def _betas(value: Any, ctx: dict) -> str | None:
    ok = isinstance(value, list) and len(value) == 2
    ok = ok and all(isinstance(b, int | float) and not isinstance(b, bool) and 0 <= b < 1 for b in value)
    return None if ok or value is None else "two numbers ≥ 0 and < 1, e.g. [0.9, 0.999]"


class Optimizer(Target):
    lr: number(lo=0, lo_open=True, optional=True) = None
    weight_decay: number(lo=0, optional=True) = None
    eps: number(lo=0, lo_open=True, optional=True) = None
    betas: custom(_betas) = None
    momentum: number(lo=0, optional=True) = None
    nesterov: Flag | None = None

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> Self:
        if self.nesterov and not float(self.momentum or 0) > 0:
            raise cross(f"optim.optimizer.momentum={self.momentum}: Nesterov SGD needs momentum > 0")
        return self


class Optim(Section):
    name: Name
    base_lr: number(lo=0, lo_open=True)
    default_weight_decay: number(lo=0)
    state_bytes_per_param: number(lo=0)  # for the memory prediction
    optimizer: Optimizer


class LrSchedule(Section):
    name: Name
    warmup_ratio: number(lo=0, hi=1, hi_open=True)
    warmup_steps: integer(lo=0)
    kwargs: dict[str, Any]


# --------------------------------------------------------------------------- trainer, logger, sweep, debug


def _max_steps(value: Any, ctx: dict) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and (value == -1 or value >= 1)
    return None if ok else "-1 (use trainer.epochs) or an integer ≥ 1"


class Trainer(Section):
    batch_size: integer(lo=1)
    eval_batch_size: integer(lo=1)
    grad_accum: integer(lo=1)
    devices: integer(lo=1)
    strategy: choice(STRATEGIES)
    epochs: number(lo=0, lo_open=True)
    max_steps: custom(_max_steps)
    max_grad_norm: number(lo=0)
    gradient_checkpointing: Flag
    precision: choice(PRECISIONS)
    eval_every: integer(lo=1)
    logging_steps: integer(lo=1)
    early_stopping_patience: integer(lo=1, optional=True)
    seed: integer(lo=0, hi=SEED_MAX)
    num_workers: integer(lo=0)
    pin_memory: choice(("auto", True, False))
    batching: choice(BATCHINGS)
    token_budget: integer(lo=1, optional=True)
    save_every: integer(lo=1, optional=True)
    keep_checkpoints: integer(lo=1)
    oom_retry: choice(("auto", True, False))
    tokens_per_batch: integer(lo=1, optional=True)
    attention: choice(ATTENTIONS)
    weights_dtype: choice(WEIGHT_DTYPES)
    compile: Flag
    fused_loss: choice(FUSED_LOSSES)

    @model_validator(mode="after")
    def _bf16_weights_compute_in_bf16(self) -> Self:
        if self.weights_dtype == "bf16" and self.precision not in ("bf16", "auto"):
            raise cross(
                f"trainer.weights_dtype=bf16: needs bf16 compute, not trainer.precision={self.precision}; "
                "set trainer.precision=bf16"
            )
        return self

    @model_validator(mode="after")
    def _fsdp_needs_processes(self) -> Self:
        if self.strategy == "fsdp" and self.devices == 1:
            raise cross(
                "trainer.strategy=fsdp: shards the model over several processes; set trainer.devices to the GPUs "
                "to use (> 1)"
            )
        return self


class Wandb(Target):
    project: Name
    entity: OptName
    mode: choice(WANDB_MODES)
    tags: Texts
    init_timeout_s: number(lo=0, lo_open=True)


class Logger(Section):
    wandb: Wandb | None


class Sweep(Section):
    force: Flag
    rerun_stale: Flag
    skip_predicted_oom: Flag
    device_memory_gb: number(lo=0, lo_open=True, optional=True)


class Debug(Section):
    """Fault injection (conf/debug/default.yaml): every failure path is tested for real."""

    fail_at_step: integer(lo=1, optional=True)
    oom_at_step: integer(lo=1, optional=True)
    oom_attempts: integer(lo=0)
    nan_at_step: integer(lo=1, optional=True)
    sleep_per_step: number(lo=0)


# --------------------------------------------------------------------------- the whole config


def _lora_targets(ctx: dict) -> list[str]:
    return list(ctx["model"].lora_targets)


class RunConfig(Section):
    """conf/config.yaml: the keys studies sweep most (top level), then one section per config group."""

    rank: integer(
        lo=1,
        hi=lambda c: c["model"].hidden_size,
        note=lambda c: f"the model's hidden size is {c['model'].hidden_size}",
    )
    alpha: number(lo=0, lo_open=True)
    lora_targets: choice(_lora_targets)
    lora_dropout: number(lo=0, hi=1, hi_open=True)
    frozen_blocks: integer(
        lo=0,
        hi=lambda c: c["model"].num_layers,
        note=lambda c: f"model={c['model'].name} has {c['model'].num_layers} blocks",
    )
    seed: integer(lo=0, hi=SEED_MAX)
    study: OptName
    beta: number(lo=0, lo_open=True)
    init_from: OptName
    lr: number(lo=0, lo_open=True)
    weight_decay: number(lo=0)
    resume: choice(("auto", "never"))
    cache_dir: OptName
    sweep: Sweep
    dpo: Dpo
    objective: Objective
    task: Task
    model: Model
    method: Method
    data: Data
    optim: Optim
    lr_schedule: LrSchedule
    trainer: Trainer
    logger: Logger
    eval: Eval
    debug: Debug
    # Helper keys that studies (sweeps/*.yaml, merged at the top level) interpolate from.
    quick_max_steps: dict[str, int] | None = None
    alpha_multiple: number(lo=0, lo_open=True, optional=True) = None
    effective_batch: integer(lo=1, optional=True) = None
    grad_accum_for_batch_size: dict[str, int] | None = None
    frozen_blocks_grid: dict[str, Any] | None = None
    sft_runs: OptName = None  # the dpo study's SFT stage (sweeps/dpo.yaml)

    @model_validator(mode="after")
    def _polynomial_has_steps_to_decay(self):
        """The polynomial schedule divides by the steps after warmup, and refuses an lr_end above the lr:
        both would fail at the first step after warmup (a ZeroDivisionError), or when the Trainer starts."""
        sched, steps = self.lr_schedule, self.trainer.max_steps
        if sched.name != "polynomial":
            return self
        warmup = sched.warmup_steps or math.ceil(steps * sched.warmup_ratio)
        if steps > 0 and warmup >= steps:
            key = "lr_schedule.warmup_steps" if sched.warmup_steps else "lr_schedule.warmup_ratio"
            value = sched.warmup_steps or sched.warmup_ratio
            raise cross(
                f"{key}={value}: leaves no step to decay over (trainer.max_steps={steps}, {warmup} warmup steps); "
                "the polynomial schedule needs warmup < max_steps"
            )
        lr_end = sched.kwargs.get("lr_end", 1e-7)
        if isinstance(lr_end, int | float) and lr_end >= self.lr:
            raise cross(
                f"lr_schedule.kwargs.lr_end={lr_end}: must be below lr={self.lr} (the schedule decays to it)"
            )
        return self

    @model_validator(mode="after")
    def _fsdp_trains_only(self):
        """Under FSDP no process holds the whole model: what runs the model outside the Trainer after training
        (generations, forgetting) would wait for the other processes, and 4-bit weights do not shard."""
        if self.trainer.strategy != "fsdp":
            return self
        if self.method.quantization is not None:
            raise cross(
                f"trainer.strategy=fsdp: method={self.method.name} loads 4-bit weights, which FSDP does not "
                "shard here; use trainer.strategy=ddp"
            )
        if self.task.generates_text and (self.eval.num_samples or self.eval.forgetting):
            key = "eval.num_samples" if self.eval.num_samples else "eval.forgetting"
            value = self.eval.num_samples if self.eval.num_samples else "true"
            raise cross(
                f"{key}={value}: generation and forgetting run the model outside the Trainer, which "
                "trainer.strategy=fsdp shards over the processes; set eval.num_samples=0 eval.forgetting=false"
            )
        return self
