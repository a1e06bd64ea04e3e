"""Config tier: a battery of bad values through `src.run.run_job`, in this process.

Each value here once got past validation, or could: it then trained with a default, or failed minutes later
inside PEFT, the Trainer or generate() with a traceback. The end-to-end table (tests/e2e/test_robustness.py)
checks a few rows as real subprocesses, seconds each; this battery puts a bad value for every kind of key
the schema checks (src/config/schema.py, evaluation.py, values.py, src/specs.py) through the same path a
single run takes, and checks what the user sees and what is left on disk: exit code 2, one line naming the
key (`key=value: what is allowed`), no traceback, an earlier run untouched, and nothing loaded.
"""

from __future__ import annotations

import copy
import functools
import json
import sys
from pathlib import Path

import pytest
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

import src.records
import src.run
import src.train
from src.config import CONF_DIR
from src.records import RECORD
from tests.helpers import compose_cfg, earlier_run, tree_digest

# --------------------------------------------------------------------------- composing fast, as Hydra does

# compose_cfg costs about 0.3 s (Hydra reads some 20 YAML files for the defaults list), 45 s for the whole
# battery. Composing does two things: the group choices (`method=lora`) build the defaults list, then every
# other override (`rank=0`, `+rnak=8`, `~trainer.batch_size`) is applied to the composed config, in struct
# mode, by ConfigLoaderImpl._apply_overrides_to_config. So the battery composes once per distinct set of
# group choices (with compose_cfg) and applies the rest with that same Hydra function: the config
# `python -m src.run <overrides>` gets, which test_fast_compose_is_compose checks against compose_cfg.
_PARSER = OverridesParser.create()


def _is_group_choice(override: str) -> bool:
    return (CONF_DIR / override.lstrip("+~").split("=", 1)[0]).is_dir()


@functools.cache
def _with_groups(*choices: str) -> DictConfig:
    return compose_cfg(*choices)


def compose_fast(*overrides: str) -> DictConfig:
    cfg = copy.deepcopy(_with_groups(*(o for o in overrides if _is_group_choice(o))))
    values = _PARSER.parse_overrides([o for o in overrides if not _is_group_choice(o)])
    ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    return cfg


# --------------------------------------------------------------------------- the bad inputs

TINY = _with_groups().model  # bounds that depend on the model are read from its YAML, not hard-coded
H, L, CTX = TINY.hidden_size, TINY.num_layers, TINY.context_length
SEED_MAX = 2**32 - 1


def bad(*overrides: str, head: str, says: str | None = None, bug: str | None = None):
    """One bad input: the overrides as typed after `python -m src.run`, the start of the error line after
    `tunegrid: error: ` up to its first `: ` (`key=value` as shown, or `key` for a key without a value),
    and optionally text the rest of the line must hold. `bug`: a real bug of the current code, as a strict
    xfail (the case stays as strict as the others; the mark goes when the bug is fixed)."""
    marks = [pytest.mark.xfail(strict=True, reason=bug)] if bug else []
    return pytest.param(list(overrides), head, says, id=" ".join(overrides), marks=marks)


LORA = "method=lora"  # test_config.py's BAD rows are composed with method=lora

CASES = [
    # ---- test_config.py's BAD list, as the CLI gets it
    bad(LORA, "rank=0", head="rank=0", says=f"the model's hidden size is {H}"),
    bad(LORA, "rank=-4", head="rank=-4"),
    bad(LORA, "rank=abc", head="rank='abc'"),
    bad(LORA, "rank=2.5", head="rank=2.5"),
    bad(LORA, f"rank={H + 1}", head=f"rank={H + 1}", says=f"≤ {H}"),
    bad(LORA, "alpha=0", head="alpha=0.0", says="must be a number > 0"),
    bad(LORA, "lr=-1", head="lr=-1.0"),
    bad(LORA, "lr=0", head="lr=0.0"),
    bad(LORA, "lr=nan", head="lr=nan"),
    bad(LORA, "lr=inf", head="lr=inf"),
    bad(LORA, "weight_decay=-0.1", head="weight_decay=-0.1"),
    bad(LORA, "lora_dropout=1", head="lora_dropout=1.0", says="< 1"),
    bad(LORA, "lora_targets=everything", head="lora_targets='everything'", says="attn"),
    bad(LORA, "frozen_blocks=-1", head="frozen_blocks=-1", says=f"model=tiny has {L} blocks"),
    bad(LORA, f"frozen_blocks={L + 1}", head=f"frozen_blocks={L + 1}"),
    bad(LORA, "frozen_blocks=99", head="frozen_blocks=99"),
    bad(LORA, f"frozen_blocks={L}", head=f"frozen_blocks={L}", says="must stay unfrozen"),
    bad(LORA, "seed=-1", head="seed=-1"),
    bad(LORA, "trainer.batch_size=0", head="trainer.batch_size=0"),
    bad(LORA, "trainer.grad_accum=0", head="trainer.grad_accum=0"),
    bad(LORA, "trainer.max_steps=0", head="trainer.max_steps=0"),
    bad(LORA, "trainer.max_steps=-2", head="trainer.max_steps=-2"),
    bad(LORA, "trainer.epochs=0", head="trainer.epochs=0.0"),
    bad(LORA, "trainer.precision=fp64", head="trainer.precision='fp64'", says="bf16"),
    bad(LORA, "trainer.batching=bogus", head="trainer.batching='bogus'", says="packing"),
    bad(LORA, "trainer.eval_every=0", head="trainer.eval_every=0"),
    bad(LORA, "trainer.early_stopping_patience=0", head="trainer.early_stopping_patience=0"),
    bad(LORA, "lr_schedule.warmup_ratio=1.0", head="lr_schedule.warmup_ratio=1.0"),
    bad(LORA, "data.max_seq_len=4", head="data.max_seq_len=4"),
    bad(LORA, f"data.max_seq_len={CTX + 1}", head=f"data.max_seq_len={CTX + 1}", says=f"{CTX} tokens"),
    # ---- values that used to get past validation
    bad("optim.optimizer.eps=-1", head="optim.optimizer.eps=-1.0"),
    bad("optim.optimizer.betas=[2,0.9]", head="optim.optimizer.betas=[2, 0.9]", says="< 1"),
    bad("optim.optimizer.betas=[0.9]", head="optim.optimizer.betas=[0.9]"),
    bad("trainer.num_workers=-1", head="trainer.num_workers=-1"),
    bad("trainer.devices=0", head="trainer.devices=0", says="integer ≥ 1"),
    bad("trainer.devices=2.5", head="trainer.devices=2.5"),
    bad("trainer.strategy=deepspeed", head="trainer.strategy='deepspeed'", says="ddp, fsdp"),
    bad("trainer.strategy=fsdp", head="trainer.strategy=fsdp", says="trainer.devices"),
    # ---- the throughput knobs (src/speed.py); what needs a package or a GPU is tests/e2e/test_speed_runs.py's
    bad("trainer.attention=flash", head="trainer.attention='flash'", says="flash_attention_2"),
    bad("trainer.fused_loss=cce", head="trainer.fused_loss='cce'", says="none, liger"),
    bad("trainer.weights_dtype=fp16", head="trainer.weights_dtype='fp16'", says="fp32, bf16"),
    bad("trainer.pin_memory=sometimes", head="trainer.pin_memory='sometimes'"),
    bad("trainer.compile=fast", head="trainer.compile='fast'"),
    bad("trainer.tokens_per_batch=0", head="trainer.tokens_per_batch=0", says="integer ≥ 1"),
    bad(
        "trainer.weights_dtype=bf16",
        "trainer.precision=fp32",
        head="trainer.weights_dtype=bf16",
        says="trainer.precision=bf16",
    ),
    bad(
        "task=classification",
        "data=synthetic_classification",
        "trainer.fused_loss=liger",
        head="trainer.fused_loss=liger",
        says="no LM head",
    ),  # fmt: skip
    bad(
        "objective=dpo",
        "trainer.fused_loss=liger",
        head="trainer.fused_loss=liger",
        says="dpo.use_liger_kernel",
    ),
    bad("objective=dpo", "trainer.tokens_per_batch=4096", head="trainer.tokens_per_batch=4096", says="TRL"),
    bad(
        "trainer.devices=2", "trainer.strategy=fsdp", head="eval.num_samples=8", says="eval.forgetting=false"
    ),
    bad(
        "method=qlora",
        "trainer.devices=2",
        "trainer.strategy=fsdp",
        "eval.num_samples=0",
        "eval.forgetting=false",
        head="trainer.strategy=fsdp",
        says="4-bit",
    ),
    bad(f"seed={SEED_MAX + 1}", head=f"seed={SEED_MAX + 1}", says=f"≤ {SEED_MAX}"),
    bad("logger.wandb.mode=bogus", head="logger.wandb.mode='bogus'", says="offline"),
    bad("eval.generation.repetition_penalty=0", head="eval.generation.repetition_penalty=0.0"),
    bad("eval.generation.do_sample=true", "eval.generation.top_k=-3", head="eval.generation.top_k=-3"),
    bad(
        "trainer.gradient_checkpointing=maybe",
        head="trainer.gradient_checkpointing='maybe'",
        says="true or false",
    ),
    bad("eval.generation.top_p=5", head="eval.generation.top_p=5.0"),
    bad("eval.generation.top_p=0", head="eval.generation.top_p=0.0"),
    # ---- keys no config declares, and a key taken away
    bad("+rnak=8", head="rnak", says="unknown key; did you mean rank?"),
    bad("+typo.key=1", head="typo", says="unknown key; the top level takes rank"),
    bad("+trainer.batchsize=8", head="trainer.batchsize", says="did you mean trainer.batch_size?"),
    bad(
        "+eval.generation.top_q=0.5", head="eval.generation.top_q", says="did you mean eval.generation.top_p?"
    ),
    bad("+model.bogus=1", head="model.bogus", says="unknown key; model takes name"),
    bad("~trainer.batch_size", head="trainer.batch_size", says="missing"),
    bad("lr=${nope}", head="lr", says="cannot be resolved"),
    # ---- across keys (src/specs.py and the schema's model validators)
    bad("task=classification", "data=alpaca", head="data=alpaca", says="needs a labelled data set"),
    bad("data=sst2", head="data=sst2", says="use task=classification"),
    bad("method=prompt_tuning", "frozen_blocks=2", head="frozen_blocks=2", says="leave it at 0"),
    bad("method=head_only", "frozen_blocks=2", head="frozen_blocks=2", says="leave it at 0"),
    bad(LORA, "frozen_blocks=x", head="frozen_blocks='x'"),  # interpolated into method.peft: named as typed
    bad(
        "method=prompt_tuning",
        f"data.max_seq_len={CTX - 6}",
        head="method.peft.num_virtual_tokens=12",
        says=f"{CTX} positions",
    ),
    bad(
        "method=prompt_tuning",
        "method.peft.prompt_tuning_init=TEXT",
        head="method.peft.prompt_tuning_init_text=None",
    ),
    bad("method=prompt_tuning", "trainer.batching=packing", head="trainer.batching=packing"),
    bad(
        "task=classification",
        "data=synthetic_classification",
        "trainer.batching=packing",
        head="trainer.batching=packing",
        says="one label per example",
    ),
    bad("task=classification", "data=sst2", "data.num_labels=1", head="data.num_labels=1"),
    bad("task=classification", "data=sst2", "data.num_labels=null", head="data.num_labels=None"),
    bad("method.trains=adapters", head="method.trains=adapters", says="method=full needs"),
    bad(
        "optim=sgd_nesterov", "optim.optimizer.momentum=0", head="optim.optimizer.momentum=0", says="Nesterov"
    ),
    bad(
        "eval.generation.do_sample=true",
        "eval.generation.temperature=0",
        head="eval.generation.temperature=0",
        says="when sampling",
    ),
    # ---- more keys of each section
    bad("resume=sometimes", head="resume='sometimes'", says="auto, never"),
    bad("cache_dir=", head="cache_dir=''"),
    bad("method.trains=bogus", head="method.trains='bogus'"),
    bad(LORA, "method.peft.r=0", head="method.peft.r=0"),
    bad("method=prompt_tuning", "method.peft.num_virtual_tokens=0", head="method.peft.num_virtual_tokens=0"),
    bad("model.num_layers=0", head="model.num_layers=0"),
    bad("model.init_seed=-1", head="model.init_seed=-1"),
    bad("optim.optimizer.weight_decay=-1", head="optim.optimizer.weight_decay=-1.0"),
    bad("optim=sgd_momentum", "optim.optimizer.momentum=-0.5", head="optim.optimizer.momentum=-0.5"),
    bad("optim=sgd", "optim.optimizer.nesterov=maybe", head="optim.optimizer.nesterov='maybe'"),
    bad("lr_schedule.warmup_ratio=-0.1", head="lr_schedule.warmup_ratio=-0.1"),
    bad("lr_schedule.warmup_steps=-1", head="lr_schedule.warmup_steps=-1"),
    bad("lr_schedule.kwargs=5", head="lr_schedule.kwargs=5"),
    bad("trainer.eval_batch_size=0", head="trainer.eval_batch_size=0"),
    bad("trainer.max_grad_norm=-1", head="trainer.max_grad_norm=-1.0"),
    bad("trainer.max_steps=1.5", head="trainer.max_steps=1.5"),
    bad("trainer.token_budget=0", head="trainer.token_budget=0"),
    bad("trainer.keep_checkpoints=0", head="trainer.keep_checkpoints=0"),
    bad("trainer.oom_retry=sometimes", head="trainer.oom_retry='sometimes'"),
    bad("trainer.seed=-1", head="trainer.seed=-1"),
    bad("data.splits.train=-1", head="data.splits.train=-1"),
    bad("data.split_seed=-1", head="data.split_seed=-1"),
    bad("data.max_train_samples=0", head="data.max_train_samples=0"),
    bad("data.train_on_prompt=maybe", head="data.train_on_prompt='maybe'"),
    bad("data.fields=abc", head="data.fields='abc'", says="a list of strings"),
    bad("data=cnn_dailymail", "data.truncate.side=middle", head="data.truncate.side='middle'"),
    bad("data=cnn_dailymail", "+data.hub_splits.bogus=x", head="data.hub_splits.bogus", says="not a split"),
    bad("eval.num_samples=-1", head="eval.num_samples=-1"),
    bad("eval.forgetting_block_size=1", head="eval.forgetting_block_size=1"),
    bad(
        "eval.forgetting_text=/nonexistent/generic.txt",
        head="eval.forgetting_text='/nonexistent/generic.txt'",
    ),
    bad("eval.metrics=[bogus]", head="eval.metrics=['bogus']", says="rouge"),
    bad("eval.test_split=2", head="eval.test_split=2"),
    bad("eval.generation.max_new_tokens=0", head="eval.generation.max_new_tokens=0"),
    bad("eval.generation.num_beams=0", head="eval.generation.num_beams=0"),
    bad("eval.generation.stop_strings=5", head="eval.generation.stop_strings=5"),
    bad("eval.reward.batch_size=0", head="eval.reward.batch_size=0"),
    bad("eval.judge=api:", head="eval.judge='api:'", says="api:<model name>"),
    bad("eval.judge_settings.timeout_s=0", head="eval.judge_settings.timeout_s=0.0"),
    bad("logger.wandb.init_timeout_s=0", head="logger.wandb.init_timeout_s=0.0"),
    bad("logger.wandb.tags=foo", head="logger.wandb.tags='foo'"),
    bad("sweep.device_memory_gb=0", head="sweep.device_memory_gb=0.0"),
    bad("debug.fail_at_step=0", head="debug.fail_at_step=0"),
    bad("debug.sleep_per_step=-1", head="debug.sleep_per_step=-1.0"),
    # ---- a bad value in a key that the top-level lr / weight_decay interpolate: the line names the key the
    # user typed, not the derived lr or weight_decay.
    bad("optim.base_lr=0", head="optim.base_lr=0.0"),
    bad("method.lr_scale=0", head="method.lr_scale=0.0"),
    bad("optim.default_weight_decay=-1", head="optim.default_weight_decay=-1.0"),
    # ---- the polynomial schedule: no step left to decay over, or an lr_end above the lr.
    bad(
        "lr_schedule=polynomial",
        "trainer.max_steps=1",
        head="lr_schedule.warmup_ratio=0.05",
        says="warmup < max_steps",
    ),
    bad(
        "lr_schedule=polynomial",
        "lr_schedule.kwargs.lr_end=1",
        head="lr_schedule.kwargs.lr_end=1",
        says="below lr",
    ),
]

# Libraries a run loads once it is past validation (torch, the model and data libraries).
HEAVY = ("torch", "transformers", "peft", "datasets", "accelerate", "bitsandbytes", "wandb")


class PastValidation(BaseException):
    """Raised by the stand-ins for what a run does after validation. A BaseException, so that run_job's
    task wrapper (`except Exception`) cannot record it as an ordinary failure: it fails the test as is."""


# What a run does once validate() has accepted its config, by module: each is replaced by a stand-in that
# raises PastValidation, wherever the task wrapper looks it up (src/run.py or src/train.py: it moves).
AFTER_VALIDATION = {
    "src.records": ("describe",),
    "src.run": ("save_resolved", "train_with_retries"),
    "src.train": ("save_resolved", "train_with_retries"),
}


@pytest.fixture
def no_loading(monkeypatch, tmp_path):
    """Whether a case failed before anything loaded. Timing ("well under a second") is flaky on a busy
    machine, and `torch not in sys.modules` proves nothing (this module imports src.run; other tests in the
    process import torch), so three checks that cannot give a false alarm: (1) every step a run takes
    after validate() (describe the config, write it, train with retries: every model, tokenizer and data
    load goes through the last) raises PastValidation; (2) the cache folder ($TUNEGRID_CACHE, where a
    model, tokenizer or tokenised data would land) is a fresh path that must still not exist afterwards;
    (3) the call must not import any of HEAVY that was not imported before it."""

    def past(*args, **kwargs):
        raise PastValidation("run_job went on past validation (the config was accepted)")

    patched = []
    for module, names in AFTER_VALIDATION.items():
        for name in names:
            if hasattr(sys.modules[module], name):
                monkeypatch.setattr(sys.modules[module], name, past)
                patched.append(name)
    assert "train_with_retries" in patched, "the task wrapper's training step moved: update AFTER_VALIDATION"
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNEGRID_CACHE", str(cache))
    return cache


def _heavy_modules() -> set[str]:
    return {m for m in sys.modules if m.split(".")[0] in HEAVY}


@pytest.mark.parametrize(("overrides", "head", "says"), CASES)
def test_bad_input_fails_in_one_line_before_anything_loads(
    tmp_path, capsys, no_loading, overrides, head, says
):
    cfg = compose_fast(*overrides)  # what `python -m src.run <overrides>` gets from Hydra
    earlier = earlier_run(tmp_path)  # a finished run beside the new one (and what a bad value must not touch)
    before = tree_digest(earlier)
    run_dir = tmp_path / "run"
    run_dir.mkdir()  # Hydra creates the run folder before the job starts
    loaded_before = _heavy_modules()
    capsys.readouterr()

    with pytest.raises(SystemExit) as exit_info:
        src.run.run_job(cfg, run_dir, list(overrides))
    out, err = capsys.readouterr()

    assert exit_info.value.code == 2, (exit_info.value.code, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"tunegrid: error: {head}: "), line
    message = line.removeprefix("tunegrid: error: ")
    assert message[len(head) + 2 :].strip(), line  # something is said after the key: what is allowed
    if says:
        assert says in message, line
    assert "Traceback" not in out + err and 'File "' not in out + err, out + err

    # Nothing of the earlier run changed, and the bad run left its record at most.
    assert tree_digest(earlier) == before
    files = {p.relative_to(run_dir).as_posix() for p in run_dir.rglob("*")}
    if RECORD in files:
        rec = json.loads((run_dir / RECORD).read_text())
        assert rec["status"] == "invalid" and rec["error"] == message, rec
        # records.write_failure keeps the traceback of every failure beside the record, an invalid run's
        # too (README: "on failure traceback.txt"; the report links it): allowed only when the record names it.
        files -= {RECORD, rec.get("traceback_file")}
    assert not files, sorted(files)

    # Failed before anything loaded (see no_loading).
    assert not Path(no_loading).exists(), sorted(Path(no_loading).rglob("*"))
    assert not _heavy_modules() - loaded_before, sorted(_heavy_modules() - loaded_before)


def test_the_battery_is_big_enough():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES), "two cases with the same id"


def _kind(overrides: list[str]) -> str:
    """How Hydra treats the overrides: adding or deleting a key, a list, an interpolation, an empty value,
    a group choice with a value; one case of each kind checks compose_fast."""
    values = [o for o in overrides if not _is_group_choice(o)]
    for kind, hit in (
        ("add", lambda o: o.startswith("+")),
        ("delete", lambda o: o.startswith("~")),
        ("list", lambda o: "=[" in o),
        ("interpolation", lambda o: "${" in o),
        ("empty", lambda o: o.endswith("=")),
    ):
        if any(hit(o) for o in values):
            return kind
    return "group and value" if len(values) < len(overrides) else "value"


FAST_CHECKS = list({_kind(c.values[0]): c for c in reversed(CASES)}.values())


@pytest.mark.parametrize(("overrides", "head", "says"), FAST_CHECKS)
def test_fast_compose_is_compose(overrides, head, says):
    fast, slow = compose_fast(*overrides), compose_cfg(*overrides)
    assert OmegaConf.to_yaml(fast) == OmegaConf.to_yaml(slow)
    assert OmegaConf.is_struct(fast) == OmegaConf.is_struct(slow)
