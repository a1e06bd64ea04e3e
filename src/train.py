"""The training recipe: one validated, resolved config in, one run's metrics out. Read it top to bottom.

It never touches Hydra's runtime: `src.run` (the Hydra entrypoint) calls `train_with_retries`, and so does
`python -m src.train <run_dir>/config.yaml`, which trains the config a run folder holds (what a launcher
that starts several processes runs in each). Heavy libraries are imported inside the functions, so that
`--cfg job` and bad-input errors answer in about a second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from src import records, specs
from src.checkpoints import resumable_checkpoint
from src.config import cache_dir, flatten, load_resolved
from src.errors import Interrupted, is_oom


def train(cfg: DictConfig, run_dir: Path, name: str = "default", group: str = "default", attempt: int = 0):
    """Train one validated configuration; return (metrics, env) for the record, and the Trainer (for tests)."""
    import torch
    import transformers

    from src import costs, data, methods, models
    from src import trainer as hf
    from src.evaluation import forgetting, scoring
    from src.loggers import Loggers, MetricsCallback

    _quiet_libraries()
    spec = specs.of(cfg)  # what the method and task can do (checked at validation)
    precision = models.resolve_precision(cfg.trainer.precision)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    transformers.set_seed(int(cfg.trainer.seed))
    cache = cache_dir(cfg)
    scoring.preflight(cfg.eval)  # an enabled reward model / judge that cannot be reached fails now

    # 1. Tokenizer, data (tokenised splits and the rendered test prompts), model, method.
    path = models.model_path(cfg.model, cache)
    tokenizer = models.load_tokenizer(path, bool(cfg.model.trust_remote_code))
    prompts = int(cfg.eval.num_samples) if spec.task.generates_text else 0
    reserve = int(cfg.eval.generation.max_new_tokens)  # test prompts leave room for the generation
    prepared = data.build(cfg.data, tokenizer, cache, spec.task.labelled, prompts, reserve)
    model = models.load_model(path, cfg.model, spec, cfg.method.quantization, models.DTYPES[precision])
    generic, generic_before = None, None
    if cfg.eval.forgetting and spec.task.generates_text:  # the base model's loss, the same for every method
        if torch.cuda.is_available() and not spec.method.quantised:
            model.to("cuda")
        generic = forgetting.generic_text(cfg.eval.forgetting_text)
        generic_before = forgetting.generic_loss(
            model, tokenizer, generic, int(cfg.eval.forgetting_block_size)
        )
    checkpointing = bool(cfg.trainer.gradient_checkpointing)
    model = methods.apply(
        model, spec.method, cfg.method, cfg.model, int(cfg.frozen_blocks), checkpointing, path
    )
    counts = methods.count_params(model)
    predicted = costs.predict_memory_mb(model, cfg, spec, precision)
    costs.check_fits(predicted, cfg.sweep)  # raises SkippedOOM with sweep.skip_predicted_oom

    # 2. Loggers: disk and stdout always, W&B unless logger=none.
    tags = [spec.method.name, *([f"study:{cfg.study}"] if cfg.get("study") else [])]
    loggers = Loggers(cfg.logger, run_dir, name, group, tags, {**flatten(cfg), "overrides": name, **counts})
    metrics_cb = MetricsCallback(loggers.backends)
    try:
        # 3. The Trainer, configured from the YAML.
        trainer, hooks = hf.make_trainer(
            cfg, spec, precision, model, tokenizer, prepared.splits, metrics_cb, attempt, run_dir
        )

        # 4. Train, with an evaluation before (so every record shows how far the loss fell) and after.
        out: dict[str, Any] = {}
        if cfg.eval.eval_before_training:
            out["initial_eval_loss"] = trainer.evaluate()["eval_loss"]
        costs.reset_peak_memory()
        checkpoints = Path(trainer.args.output_dir)
        resume = resumable_checkpoint(checkpoints, cfg, force=bool(cfg.sweep.force))
        if resume:
            print(f"tunegrid: resuming from {resume}")
        hooks.stop.install()
        try:
            result = hf.finished_at(trainer, resume, metrics_cb) or trainer.train(
                resume_from_checkpoint=resume
            )
        except BaseException as e:
            e.step_reached = trainer.state.global_step + 1  # the step in progress, for the record
            raise
        finally:
            hooks.stop.uninstall()
            hooks.loss_watch.trainer = None  # evaluation and generation below are not training steps
        if hooks.stop.signal is not None:
            loggers.finish({"status": "interrupted"})
            raise _interrupted(hooks.stop.signal, trainer.state.global_step, checkpoints)

        # 5. Losses after training, the saved weights (the adapter alone for PEFT methods), cost metrics.
        out.update(peak_memory_mb=costs.peak_memory_mb(), predicted_memory_mb=predicted["total_mb"])
        out["predicted_memory"] = predicted
        out.update(hf.final_losses(trainer, prepared.splits, bool(cfg.eval.test_split)))
        ckpt = run_dir / "checkpoint"
        trainer.model.save_pretrained(ckpt, safe_serialization=True)
        session = hf.session_metrics(trainer, result, metrics_cb, hooks, spec.batching)
        out.update(
            train_loss=session.pop("train_loss"),
            **hf.perplexities(out),
            **session,
            checkpoint_bytes=costs.weight_bytes(ckpt),
            **counts,
            trainable_pct=100.0 * counts["trainable_params"] / max(counts["total_params"], 1),
            precision=precision,
            **methods.memory_split(trainer.model, getattr(trainer.optimizer, "optimizer", trainer.optimizer)),
        )
        if hooks.packed is not None:
            hooks.packed.remove()  # generation below passes its own attention mask and positions

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
        metrics_cb.emit(extra, int(trainer.state.global_step))
        out.update(extra)
    except BaseException as e:
        loggers.finish({"status": "failed", "error": records.error_summary(e)})
        raise
    loggers.finish({k: v for k, v in out.items() if v is not None})
    return out, records.env_info(device), trainer


def _quiet_libraries() -> None:
    """Library deprecation notes and progress bars are not the user's concern."""
    import logging
    import warnings

    import transformers

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _interrupted(signum: int, step: int, checkpoints: Path) -> Interrupted:
    stop = Interrupted(
        f"signal {signum} at step {step}; checkpoint saved in {checkpoints}, re-run the same command to resume"
    )
    stop.step_reached, stop.signum = step, signum
    return stop


def train_with_retries(cfg: DictConfig, run_dir: Path, name: str, group: str, record: dict[str, Any]):
    """train(), and after an out-of-memory error (trainer.oom_retry) once more with half the micro-batch
    and twice the accumulation (the same effective batch), then with gradient checkpointing too."""
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


def main(argv: list[str] | None = None) -> int:
    """`python -m src.train <run_dir>/config.yaml`: train the resolved config a run folder holds and record it
    there, as `python -m src.run` would have (exit codes included)."""
    ap = argparse.ArgumentParser(prog="python -m src.train", description=main.__doc__.split("\n")[0])
    ap.add_argument("config", type=Path, help="a resolved config: <run_dir>/config.yaml, written by src.run")
    ap.add_argument("--name", default=None, help="W&B run name (default: the run's overrides)")
    ap.add_argument("--group", default=None, help="W&B group (default: the run's name)")
    args = ap.parse_args(argv)
    if not args.config.is_file():  # no run folder to record in
        print(f"tunegrid: error: {args.config}: no such config file", file=sys.stderr)
        return 2
    run_dir = args.config.resolve().parent
    record = records.new_record(run_dir, records.hydra_overrides(run_dir))
    try:
        cfg = load_resolved(args.config)
        records.describe(record, cfg)
        name = args.name or ",".join(record["overrides"]) or "default"
        record["group"] = args.group or name
        metrics, env, _ = train_with_retries(cfg, run_dir, name, record["group"], record)
        records.write_success(run_dir, record, metrics, env)
    except Exception as e:
        return records.record_failure(run_dir, record, e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
