"""What a method and a task can do: one spec each, resolved once from their YAML when a config is validated.

Every other module asks these specs (`spec.method.prompt_learning`, `spec.task.labelled`, `spec.batching`)
instead of branching on method or task names or PEFT types, and the checks across config groups live
here: a method against the knobs it ignores (`frozen_blocks` with prompt tuning), a task against the data
it accepts (classification needs a label field), batching against both. A method declares what it trains
(`trains:` in conf/method/*.yaml); everything else follows from that and its PEFT / quantisation nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from src.errors import ConfigError

TRAINS = ("all", "adapters", "soft_prompt", "listed")


@dataclass(frozen=True)
class MethodSpec:
    name: str
    trains: str  # all: every weight · adapters: LoRA-style modules · soft_prompt: virtual tokens · listed: prefixes
    quantised: bool  # the base loads in 4-bit (QLoRA: a model swap, not another recipe)
    untie_head: bool  # the head gets its own copy of a tied embedding before training (head-only)
    virtual_tokens: int  # positions a soft prompt prepends to every row (0 unless prompt learning)
    trainable: tuple[str, ...]  # trains=listed: parameter-name prefixes that train
    init_from_text: bool  # the soft prompt starts from a text: PEFT needs the tokenizer

    @property
    def prompt_learning(self) -> bool:
        return self.trains == "soft_prompt"

    @property
    def adapters(self) -> bool:
        return self.trains == "adapters"

    @property
    def uses_peft(self) -> bool:
        return self.adapters or self.prompt_learning

    @property
    def freezes_blocks(self) -> bool:
        """frozen_blocks freezes the bottom blocks' weights (full fine-tuning); with adapters it instead
        decides which blocks carry adapters; other methods train nothing in the blocks."""
        return self.trains == "all"

    @property
    def packs(self) -> bool:
        """Packed rows keep examples apart through position ids, which a prompt-learning wrapper drops."""
        return not self.prompt_learning


@dataclass(frozen=True)
class TaskSpec:
    name: str
    auto_model: str  # the transformers Auto class the task loads
    peft_task_type: str
    generates_text: bool  # generation samples, text metrics and forgetting apply
    labelled: bool  # one class id per example: the data needs a label field; accuracy from the logits

    @property
    def packs(self) -> bool:
        return not self.labelled


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    recipe: str  # the module of its recipe steps (src/objectives/<name>.py)
    pairs: bool  # trains on preference pairs (prompt, chosen, rejected): two sequences per example
    precomputed_reference: bool  # the reference's log-probs are computed once, before training

    @property
    def loss_is_nll(self) -> bool:
        """Its loss is a token negative log-likelihood, so exp(loss) is a perplexity (not for DPO's loss)."""
        return not self.pairs


@dataclass(frozen=True)
class Spec:
    method: MethodSpec
    task: TaskSpec
    batching: str  # trainer.batching resolved: packing, dynamic, group_by_length or pad_to_max
    num_labels: int | None  # classes of a labelled task
    text_metrics: tuple[str, ...]  # metrics over generations (eval.metrics, else the data set's)
    objective: ObjectiveSpec = ObjectiveSpec("sft", "src.objectives.sft", False, False)

    @property
    def reference(self) -> str:
        """What a preference objective compares the policy with: nothing (SFT); `adapter` (the PEFT model with
        its adapter switched off, or switched to a frozen copy of an init_from adapter: no second model);
        `precomputed` (log-probs computed once before training); `copy` (a second full model in memory)."""
        if not self.objective.pairs:
            return "none"
        if self.objective.precomputed_reference:
            return "precomputed"
        return "adapter" if self.method.uses_peft else "copy"

    def output_size(self, vocab_size: int) -> int:
        """Width of the model's output (the logits the memory prediction counts)."""
        return int(self.num_labels or 2) if self.task.labelled else int(vocab_size)

    def needs_bitsandbytes(self, optim: Any) -> dict[str, bool]:
        target = str((optim.get("optimizer") or {}).get("_target_", ""))
        return {
            f"method={self.method.name}": self.method.quantised,
            f"optim={optim.name}": target.startswith("bitsandbytes"),
        }


def method_spec(method: Any) -> MethodSpec:
    """The spec of conf/method/<name>.yaml, its declaration checked against its nodes."""
    peft = method.get("peft") or {}
    trains, name = str(method.trains), method.name
    spec = MethodSpec(
        name=name,
        trains=trains,
        quantised=method.get("quantization") is not None,
        untie_head=bool(method.get("untie_head")),
        virtual_tokens=int(peft.get("num_virtual_tokens") or 0),
        trainable=tuple(method.get("trainable") or ()),
        init_from_text=peft.get("prompt_tuning_init") == "TEXT",
    )
    wants = {
        "all": (not peft and not spec.trainable, "no method.peft and no method.trainable"),
        "adapters": (bool(peft.get("target_modules")), "method.peft with target_modules"),
        "soft_prompt": (spec.virtual_tokens > 0, "method.peft with num_virtual_tokens"),
        "listed": (
            bool(spec.trainable) and not peft,
            "method.trainable (parameter prefixes) and no method.peft",
        ),
    }
    ok, needs = wants[trains]
    if not ok:
        raise ConfigError(f"method.trains={trains}: method={name} needs {needs}")
    if spec.quantised and not spec.adapters:
        raise ConfigError(
            f"method.quantization: method={name} trains {trains}, but a 4-bit base cannot train its own weights; "
            "quantise a method that trains adapters (method.trains=adapters)"
        )
    if spec.init_from_text and not peft.get("prompt_tuning_init_text"):
        raise ConfigError("method.peft.prompt_tuning_init_text=None: TEXT init needs a text")
    return spec


def task_spec(task: Any) -> TaskSpec:
    return TaskSpec(
        name=task.name,
        auto_model=task.auto_model,
        peft_task_type=task.peft_task_type,
        generates_text=bool(task.generates_text),
        labelled=bool(task.labelled),
    )


def objective_spec(cfg: Any) -> ObjectiveSpec:
    obj = cfg.objective
    settings = cfg.get(obj.settings) if obj.get("settings") else None
    return ObjectiveSpec(
        name=obj.name,
        recipe=obj.recipe,
        pairs=bool(obj.pairs),
        precomputed_reference=bool((settings or {}).get("precompute_ref_log_probs")),
    )


def _check_objective(objective: ObjectiveSpec, method: MethodSpec, task: TaskSpec, cfg: Any) -> None:
    """A preference objective needs pairs, a text task, and a method whose reference it can form."""
    if not objective.pairs:
        return
    if not cfg.data.get("pairs"):
        raise ConfigError(
            f"data={cfg.data.name}: objective={objective.name} trains on preference pairs and this data set "
            "declares none (data.pairs); use data=hh_rlhf, data=synthetic_pairs, or data=preference "
            "data.path=<a file of prompt/chosen/rejected records>"
        )
    if task.labelled:
        raise ConfigError(
            f"task={task.name}: objective={objective.name} compares generated answers; use task=causal_lm"
        )
    if method.prompt_learning:
        raise ConfigError(
            f"method={method.name}: objective={objective.name} needs the reference model without the method's "
            "change, which a soft prompt does not give here; use method=lora, qlora, full or head_only"
        )


def _check_frozen_blocks(method: MethodSpec, cfg: Any) -> None:
    n, blocks = int(cfg.frozen_blocks), int(cfg.model.num_layers)
    if n == 0 or method.freezes_blocks:
        return
    if not method.adapters:
        trains = "its soft prompt" if method.prompt_learning else "only " + ", ".join(method.trainable)
        raise ConfigError(
            f"frozen_blocks={n}: method={method.name} trains {trains} and keeps every block frozen already, so "
            "frozen_blocks does not apply; leave it at 0"
        )
    if n >= blocks:  # PEFT reads an empty layers_to_transform as "all layers"
        raise ConfigError(
            f"frozen_blocks={n}: with method={method.name} at least one of the {blocks} blocks must stay "
            "unfrozen to carry adapters"
        )


def _check_throughput(task: TaskSpec, objective: ObjectiveSpec, trainer: Any) -> None:
    """The fused loss replaces a causal LM head's cross-entropy; token-budget micro-batches need tunegrid's
    tokenised examples (TRL tokenises preference pairs itself)."""
    if trainer.fused_loss != "none" and (task.labelled or objective.pairs):
        what = (
            f"task={task.name} has no LM head" if task.labelled else f"objective={objective.name} has its own"
        )
        hint = "use dpo.use_liger_kernel" if objective.pairs else "use trainer.fused_loss=none"
        raise ConfigError(f"trainer.fused_loss={trainer.fused_loss}: {what} loss; {hint}")
    if trainer.tokens_per_batch and objective.pairs:
        raise ConfigError(
            f"trainer.tokens_per_batch={trainer.tokens_per_batch}: objective={objective.name} batches pairs "
            "with TRL's collator; set trainer.batch_size instead"
        )


def _check_data(task: TaskSpec, data: Any) -> None:
    """A labelled task needs a label field and its number of classes; a text task must not get labels."""
    if task.labelled and not data.get("label_field"):
        raise ConfigError(
            f"data={data.name}: task={task.name} needs a labelled data set (data.label_field and data.num_labels), "
            "e.g. data=sst2, data=ag_news or data=synthetic_classification"
        )
    if task.labelled and not data.get("num_labels"):
        raise ConfigError(
            f"data.num_labels=None: task={task.name} needs the number of classes of data={data.name}"
        )
    if not task.labelled and data.get("label_field"):
        raise ConfigError(
            f"data={data.name}: has one label per example (data.label_field={data.label_field}); "
            f"task={task.name} trains on text: use task=classification"
        )


def _batching(method: MethodSpec, task: TaskSpec, objective: ObjectiveSpec, cfg: Any) -> str:
    """auto: packing where it is exact, else dynamic padding; packing asked where it cannot apply fails."""
    mode = str(cfg.trainer.batching)
    why = None
    if not method.packs:
        why = f"method={method.name} prepends virtual tokens to every row and ignores position ids"
    elif not task.packs:
        why = f"data={cfg.data.name} has one label per example"
    elif objective.pairs:
        why = f"objective={objective.name} batches each pair's two answers with TRL's own collator"
    if mode == "auto":
        return "dynamic" if why else "packing"
    if mode == "packing" and why:
        raise ConfigError(f"trainer.batching=packing: {why}; use trainer.batching=dynamic (or auto)")
    if objective.pairs and mode not in ("dynamic",):
        raise ConfigError(f"trainer.batching={mode}: {why}; use trainer.batching=auto (or dynamic)")
    return mode


def of(cfg: Any) -> Spec:
    """The spec of a resolved config (src.config.validate calls this once; the recipe again, for free)."""
    method, task, objective = method_spec(cfg.method), task_spec(cfg.task), objective_spec(cfg)
    _check_objective(objective, method, task, cfg)
    _check_frozen_blocks(method, cfg)
    _check_data(task, cfg.data)
    _check_throughput(task, objective, cfg.trainer)
    if method.prompt_learning and int(cfg.data.max_seq_len) + method.virtual_tokens > int(
        cfg.model.context_length
    ):
        raise ConfigError(
            f"method.peft.num_virtual_tokens={method.virtual_tokens}: data.max_seq_len ({cfg.data.max_seq_len}) + "
            f"virtual tokens must fit the model's {cfg.model.context_length} positions; lower one of them"
        )
    names = cfg.eval.get("metrics")
    names = cfg.data.get("metrics") if names is None else names
    return Spec(
        method=method,
        task=task,
        batching=_batching(method, task, objective, cfg),
        num_labels=int(cfg.data.num_labels) if task.labelled else None,
        text_metrics=tuple(str(n) for n in (names or ())) if task.generates_text else (),
        objective=objective,
    )
