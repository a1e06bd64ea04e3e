"""The training recipe: one validated, resolved config in, one run's metrics out. Read it top to bottom.

It never touches Hydra's runtime: `src.run` (the Hydra entrypoint) calls `train_with_retries`, and so does
`python -m src.train <run_dir>/config.yaml`, which trains the config a run folder holds; with
trainer.devices=N > 1, torchrun runs `python -m src.train <run_dir>/config.yaml --worker` in N processes
(src/distributed.py), and this process records. Heavy libraries are imported inside the functions, so that
`--cfg job` and bad-input errors answer in about a second.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src import distributed, interrupts, records, specs
from src.checkpoints import resumable_checkpoint
from src.claim import Claim
from src.config import cache_dir, flatten, load_resolved, save_resolved
from src.errors import ConfigError, Interrupted, is_oom

FIND = "find"  # train(resume=FIND): choose the checkpoint to resume from (a torchrun rank is told which)


def train(
    cfg: DictConfig,
    run_dir: Path,
    name: str = "default",
    group: str = "default",
    attempt: int = 0,
    resume: str | None = FIND,
):
    """Train one validated configuration; return (metrics, env) for the record, and the Trainer (for tests).
    In a run over several processes every rank calls it; rank 0 alone logs and measures (`main`)."""
    import torch
    import transformers

    from src import build, costs, init_from, methods, models, objectives, speed
    from src import trainer as hf
    from src.evaluation import forgetting, scoring
    from src.loggers import Loggers, MetricsCallback, quiet_libraries

    quiet_libraries()
    spec = specs.of(cfg)  # what the method, task and objective can do (checked at validation)
    steps = objectives.recipe(spec.objective.recipe)  # the objective's data, Trainer and metrics (sft, dpo)
    precision = models.resolve_precision(cfg.trainer.precision)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    seed = int(cfg.trainer.seed)
    main = distributed.is_main()
    transformers.set_seed(seed)
    cache = cache_dir(cfg)
    scoring.preflight(cfg.eval)  # an enabled reward model / judge that cannot be reached fails now
    build.check_arguments(cfg)  # keys passed through to a library, before anything loads
    speed.preflight(cfg, precision)  # what the throughput knobs need here (a package, a GPU)
    start = init_from.check(cfg, spec)  # the earlier run this one starts from, if any

    # 1. Tokenizer, data (tokenised splits and the rendered test prompts), model, method.
    path = models.model_path(cfg.model, cache)
    tokenizer = models.load_tokenizer(path, bool(cfg.model.trust_remote_code))
    prompts = int(cfg.eval.num_samples) if spec.task.generates_text else 0
    reserve = int(cfg.eval.generation.max_new_tokens)  # test prompts leave room for the generation
    prepared = steps.prepare_data(cfg, spec, tokenizer, cache, prompts, reserve)
    cfg, micro = speed.by_token_budget(cfg, prepared, attempt)  # trainer.tokens_per_batch: the micro-batch
    # Each phase that draws random numbers starts from the run's seed, whatever ran before it (building a
    # cache entry, converting a GGUF file): the same config gives the same run on a fresh cache and a warm one.
    transformers.set_seed(seed)
    model, adapter_from = init_from.load(cfg, spec, path, models.DTYPES[precision], start)
    generic, generic_before = None, None
    if cfg.eval.forgetting and spec.task.generates_text and main:  # the base model's loss, for every method
        if torch.cuda.is_available() and not spec.method.quantised:
            model.to("cuda")
        generic = forgetting.generic_text(cfg.eval.forgetting_text)
        generic_before = forgetting.generic_loss(
            model, tokenizer, generic, int(cfg.eval.forgetting_block_size)
        )
    checkpointing = bool(cfg.trainer.gradient_checkpointing)
    transformers.set_seed(seed)  # adapters and soft prompts are initialised at random
    model = methods.apply(
        model, spec.method, cfg.method, cfg.model, int(cfg.frozen_blocks), checkpointing, path, adapter_from
    )
    counts = methods.count_params(model)
    predicted = costs.predict_memory_mb(model, cfg, spec, precision, costs.train_lengths(prepared))
    costs.check_fits(predicted, cfg.sweep)  # raises SkippedOOM with sweep.skip_predicted_oom

    # 2. Loggers: disk and stdout always, W&B unless logger=none.
    tags = [spec.method.name, *([f"study:{cfg.study}"] if cfg.get("study") else [])]
    config = {**flatten(cfg), "overrides": name, **counts}
    loggers = Loggers(cfg.logger, run_dir, name, group, tags, config, enabled=main)
    metrics_cb = MetricsCallback(loggers.backends, perplexity=spec.objective.loss_is_nll)
    started = False
    try:
        # 3. The Trainer, configured from the YAML.
        trainer, hooks = steps.make_trainer(
            cfg, spec, precision, model, tokenizer, prepared, metrics_cb, attempt, run_dir, start
        )

        # 4. Train, with an evaluation before (so every record shows how far the loss fell) and after.
        out: dict[str, Any] = {
            "data_info": prepared.info,
            "micro_batches": micro,
            **(start.describe() if start else {}),
        }
        if cfg.eval.eval_before_training:
            out["initial_eval_loss"] = hf.evaluate_before_training(trainer)
        costs.reset_peak_memory()
        checkpoints = Path(trainer.args.output_dir)
        if resume == FIND:
            resume = resumable_checkpoint(checkpoints, cfg, force=bool(cfg.sweep.force))
        if resume and main:
            print(f"tunegrid: resuming from {resume}")
        started = True  # from here on, an interrupted run leaves a checkpoint
        try:
            with interrupts.phase("training"):
                result = hf.finished_at(trainer, resume, metrics_cb, hooks) or trainer.train(
                    resume_from_checkpoint=resume
                )
        except BaseException as e:
            e.step_reached = trainer.state.global_step + 1  # the step in progress, for the record
            raise
        finally:
            hooks.loss_watch.trainer = None  # evaluation and generation below are not training steps
        interrupts.check()  # the first signal stopped training at the end of a step

        # 5. Losses after training, the saved weights (the adapter alone for PEFT methods), cost metrics.
        out.update(peak_memory_mb=costs.peak_memory_mb(), predicted_memory_mb=predicted["total_mb"])
        out["predicted_memory"] = predicted
        out.update(steps.final_metrics(trainer, prepared, cfg))  # losses, on every rank
        ckpt = run_dir / "checkpoint"
        hf.save_weights(trainer, ckpt)
        if not main:  # the rest (sizes, generations, scores, the W&B run) is rank 0's
            return out, {}, trainer
        session = hf.session_metrics(trainer, result, metrics_cb, hooks, spec.batching)
        out.update(
            train_loss=session.pop("train_loss"),
            **session,
            checkpoint_bytes=costs.weight_bytes(ckpt),
            **counts,
            trainable_pct=100.0 * counts["trainable_params"] / max(counts["total_params"], 1),
            precision=precision,
            **methods.memory_split(trainer.model, getattr(trainer.optimizer, "optimizer", trainer.optimizer)),
        )
        if hooks.packed is not None:
            hooks.packed.remove()  # generation below passes its own attention mask and positions
        transformers.set_seed(seed)  # sampled generations do not depend on how training got here

        # 6. Forgetting, generations on the test prompts (samples.jsonl + W&B table), task / reward / judge metrics.
        extra: dict[str, float] = {}
        virtual = spec.method.virtual_tokens
        if generic_before is not None:
            after = forgetting.generic_loss(
                trainer.model, tokenizer, generic, int(cfg.eval.forgetting_block_size), virtual_tokens=virtual
            )
            extra["eval/generic_loss_before"], extra["eval/generic_loss_after"] = generic_before, after
            extra["eval/forgetting"] = forgetting.forgetting(generic_before, after)
        test = prepared.test
        extra.update(
            scoring.evaluate_generations(
                trainer.model,
                tokenizer,
                test.prompts,
                test.references,
                cfg.eval,
                spec.text_metrics,
                run_dir,
                loggers.backends,
                virtual_tokens=virtual,
            )
        )
        # The trained model against what it started from (DPO: the verdict; SFT: none).
        extra.update(steps.verdict(trainer, tokenizer, prepared, cfg, spec, start, run_dir, loggers.backends))
        metrics_cb.emit(extra, int(trainer.state.global_step))
        out.update(extra)
    except BaseException as e:
        if isinstance(e, Interrupted):
            with interrupts.phase("deferred"):  # a further signal must not cut the checkpoint in half
                if started:
                    hf.save_checkpoint(trainer, hooks)
                    step = e.step_reached = trainer.state.global_step
                    e.args = (
                        f"{e} at step {step}; checkpoint saved in {checkpoints}, re-run the same command to resume",
                    )
                loggers.finish({"status": "interrupted", "error": str(e)})
        else:
            with contextlib.suppress(Exception):  # a second error (a full disk) must not hide the first
                loggers.finish({"status": "failed", "error": records.error_summary(e)})
        raise
    loggers.finish({k: v for k, v in out.items() if v is not None})
    return out, records.env_info(device), trainer


def retry_plans(cfg: DictConfig) -> list[dict[str, Any]]:
    """The trainer keys each attempt changes: none, then after an out-of-memory error (trainer.oom_retry) half
    the micro-batch and twice the accumulation (the same global batch), then gradient checkpointing too."""
    retry = cfg.trainer.oom_retry
    if retry == "auto":
        import torch

        retry = torch.cuda.is_available()
    plans: list[dict[str, Any]] = [{}]
    if retry:
        half = max(1, int(cfg.trainer.batch_size) // 2)
        accum = int(cfg.trainer.grad_accum) * int(cfg.trainer.batch_size) // half
        plans += [
            {"batch_size": half, "grad_accum": accum},
            {"batch_size": half, "grad_accum": accum, "gradient_checkpointing": True},
        ]
    return plans


def with_plan(cfg: DictConfig, plan: dict[str, Any]) -> DictConfig:
    run_cfg = cfg.copy()
    for k, v in plan.items():
        run_cfg.trainer[k] = v
    return run_cfg


def train_with_retries(
    cfg: DictConfig,
    run_dir: Path,
    name: str,
    group: str,
    record: dict[str, Any],
    attempt_with: Callable[[DictConfig, int], Any] | None = None,
):
    """train() in this process, or `attempt_with(cfg, attempt)` (torchrun's ranks), once per retry plan until
    one does not run out of memory."""
    plans = retry_plans(cfg)
    run = attempt_with or functools.partial(train, run_dir=run_dir, name=name, group=group)
    for attempt, plan in enumerate(plans):
        run_cfg = with_plan(cfg, plan)
        try:
            result = run(run_cfg, attempt=attempt)
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


# --------------------------------------------------------------------------- the task wrapper


def run_recorded(
    run_dir: Path,
    record: dict[str, Any],
    load: Callable[[], DictConfig],
    sweep_dir: Path | None = None,
    skip_done: bool = True,
    name: str | None = None,
    group: str | None = None,
) -> tuple[dict[str, Any], int]:
    """One run as a job, for src.run (each cell of a grid) and `python -m src.train`: validate (`load`), claim
    the folder, skip a run that already succeeded, train, record. Never raises for a failed run, so that one
    crashing cell never kills a grid; returns (the record, the exit code a single run ends with)."""
    interrupts.begin_run()
    claim = None
    try:
        with interrupts.phase("run"):
            cfg = load()
            records.describe(record, cfg)
            claim = Claim(run_dir)
            if not claim.acquire(record["started_at"]):
                return _claimed(run_dir, record, claim.holder(), sweep_dir)
            _refuse_another_configs_folder(run_dir, record)
            # Resume a grid: a run that already succeeded with this config (and this code) is not trained again.
            earlier = records.find_done(sweep_dir or run_dir, record, cfg.sweep) if skip_done else None
            if earlier is not None:
                return earlier, 0
            records.reserve(run_dir)  # room for the failure record, should the disk fill up
            save_resolved(cfg, run_dir)  # `python -m src.train <run_dir>/config.yaml` trains the same run
            name = name or ",".join(record["overrides"]) or "default"
            record["group"] = group or ("/".join(sweep_dir.parts[-2:]) if sweep_dir else name)
            record["processes"] = int(cfg.trainer.devices)
            ranks = None
            if distributed.spans(cfg):  # torchrun trains over trainer.devices processes; this one records
                ranks = functools.partial(distributed.launch, run_dir, name, record["group"])
            metrics, env, _ = train_with_retries(cfg, run_dir, name, record["group"], record, ranks)
        with interrupts.phase("deferred"):  # a signal now must not cut the record in half
            records.write_success(run_dir, record, metrics, env)
        signum = interrupts.received()
        code = 128 + signum if signum else 0
    except (Exception, Interrupted) as e:  # the task wrapper: one crashing run must not kill a grid
        with interrupts.phase("deferred"):
            code = records.record_failure(run_dir, record, e)
    finally:
        if claim is not None:
            claim.release()
    return record, code


def _refuse_another_configs_folder(run_dir: Path, record: dict[str, Any]) -> None:
    """Folders are named from the config, so only a hydra.run.dir given by hand can hold another config's
    finished run: refused before anything is written there (its checkpoints would be moved aside)."""
    mine = records.read_record(run_dir)
    if mine and mine.get("status") == "success" and mine.get("config_hash") != record["config_hash"]:
        raise ConfigError(
            f"hydra.run.dir={run_dir}: holds the finished run of another config "
            f"({','.join(mine.get('overrides') or []) or 'defaults'}); choose another folder"
        )


def _claimed(run_dir: Path, record: dict[str, Any], holder: str, sweep_dir: Path | None):
    """Another live process runs this folder: a grid moves on to its next cell, a single run stops."""
    if sweep_dir is not None:
        print(f"tunegrid: skipped, {run_dir} is being run by {holder}")
        return {**record, "status": "claimed", "error": f"being run by {holder}"}, 0
    print(
        f"tunegrid: error: {run_dir} is being run by {holder}; wait for it, or choose another hydra.run.dir",
        file=sys.stderr,
    )
    return record, 1


def main(argv: list[str] | None = None) -> int:
    """`python -m src.train <run_dir>/config.yaml`: train the resolved config a run folder holds and record it
    there, as `python -m src.run` would have (exit codes included)."""
    ap = argparse.ArgumentParser(prog="python -m src.train", description=main.__doc__.split("\n")[0])
    ap.add_argument("config", type=Path, help="a resolved config: <run_dir>/config.yaml, written by src.run")
    ap.add_argument("--name", default=None, help="W&B run name (default: the run's overrides)")
    ap.add_argument("--group", default=None, help="W&B group (default: the run's name)")
    # A torchrun rank of a run over several processes (src/distributed.py): the parent claims and records.
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--attempt", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--resume", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not args.config.is_file():  # no run folder to record in
        print(f"tunegrid: error: {args.config}: no such config file", file=sys.stderr)
        return 2
    if args.worker:
        return _work(args.config, args.name or "default", args.group or "default", args.attempt, args.resume)
    run_dir = args.config.resolve().parent
    record = records.new_record(run_dir, records.hydra_overrides(run_dir), "src.train")
    _, code = run_recorded(
        run_dir, record, lambda: load_resolved(args.config), skip_done=False, name=args.name, group=args.group
    )
    return code


def _work(config: Path, name: str, group: str, attempt: int, resume: str | None) -> int:
    """One rank (`--worker`): train attempt `attempt` of the config and leave the parent the outcome
    (src.distributed.report); no claim, no record, no retry of its own (the parent retries)."""
    run_dir = config.resolve().parent
    interrupts.install(also=(signal.SIGUSR1, signal.SIGUSR2))  # SLURM's warning signal reaches each rank
    interrupts.begin_run()
    try:
        with interrupts.phase("run"):
            distributed.setup_rank(run_dir)
            cfg = load_resolved(config)
            cfg = with_plan(cfg, retry_plans(cfg)[attempt])
            metrics, env, _ = train(cfg, run_dir, name, group, attempt, resume=resume)
        with interrupts.phase("deferred"):
            distributed.report(run_dir, metrics, env)
        return 0
    except (Exception, Interrupted) as e:
        with interrupts.phase("deferred"):
            distributed.report(run_dir, error=e)
        return 128 + getattr(e, "signum", 2) if isinstance(e, Interrupted) else 1


if __name__ == "__main__":
    interrupts.install()
    sys.exit(main())
