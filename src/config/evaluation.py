"""The eval group's schema (conf/eval/default.yaml): generation, task metrics, forgetting, reward model,
judge and the DPO verdict. The generation, reward, judge and verdict settings carry defaults: src/evaluation
fills a caller's partial settings from them, so the defaults live in one place besides the YAML."""

from pathlib import Path
from typing import Any, Self

from pydantic import model_validator

from src.config.values import Flag, Name, OptName, OptTexts, Section, choice, cross, custom, integer, number
from src.evaluation.task_metrics import METRICS

SEED_MAX = 2**32 - 1  # numpy's and the Trainer's seeding take 32-bit seeds


def metric_names(value: Any, ctx: dict) -> str | None:
    if value is None or (isinstance(value, list) and all(v in METRICS for v in value)):
        return None
    return "a list of metric names from " + ", ".join(METRICS)


class Generation(Section):
    """transformers generate() settings; the defaults serve callers that pass only some of them."""

    max_new_tokens: integer(lo=1) = 64
    do_sample: Flag = False
    num_beams: integer(lo=1) = 1
    temperature: number(lo=0) = 1.0
    top_p: number(lo=0, hi=1, lo_open=True) = 1.0
    top_k: integer(lo=0) = 50
    repetition_penalty: number(lo=0, lo_open=True) = 1.0
    stop_strings: OptTexts = None
    batch_size: integer(lo=1) = 8
    seed: integer(lo=0, hi=SEED_MAX) = 0

    @model_validator(mode="after")
    def _temperature_when_sampling(self) -> Self:
        if self.do_sample and not float(self.temperature) > 0:
            raise cross(f"eval.generation.temperature={self.temperature!r}: must be > 0 when sampling")
        return self


class Reward(Section):
    batch_size: integer(lo=1) = 8
    max_length: integer(lo=1) = 512
    label: integer() = -1


JUDGE_TEMPLATE = (
    "You are an impartial judge. Rate how well the RESPONSE completes the TASK, using the REFERENCE "
    "answer as a guide to what a good response contains.\n\nTASK:\n{prompt}\n\nREFERENCE:\n{reference}\n\n"
    "RESPONSE:\n{generation}\n\nGive a score from 0 (useless or wrong) to 100 (fully correct and well "
    "written). Reply with the number only."
)


class JudgeSettings(Section):
    base_url_env: Name = "OPENAI_BASE_URL"
    default_base_url: Name = "https://api.openai.com/v1"
    api_key_env: Name = "OPENAI_API_KEY"
    max_tokens: integer(lo=1) = 8
    timeout_s: number(lo=0, lo_open=True) = 60
    retries: integer(lo=0) = 2
    template: OptName = None  # null: JUDGE_TEMPLATE


class Verdict(Section):
    """A DPO policy against its reference model on the test prompts (src/evaluation/verdict.py)."""

    scorer: choice(["auto", "reward", *METRICS]) = "auto"  # auto: reward model if set, else first text metric
    bootstrap: integer(lo=1, note="bootstrap resamples of the win rate") = 1000
    seed: integer(lo=0, hi=SEED_MAX) = 0
    num_prompts: integer(lo=1, optional=True, note="null: the eval.num_samples prompts") = None


def _judge(value: Any, ctx: dict) -> str | None:
    ok = value is None or (isinstance(value, str) and value.strip() and value.strip() != "api:")
    return None if ok else "null, a local model folder / model id, or api:<model name>"


def _reward_model(value: Any, ctx: dict) -> str | None:
    ok = value is None or (isinstance(value, str) and value.strip())
    return None if ok else "null or a sequence-classification model id/folder"


def _forgetting_text(value: Any, ctx: dict) -> str | None:
    if value is None or (isinstance(value, str) and Path(value).expanduser().is_file()):
        return None
    return "null or an existing UTF-8 text file"


class Eval(Section):
    eval_before_training: Flag
    test_split: Flag
    num_samples: integer(lo=0, note="0 turns generation off")
    generation: Generation
    metrics: custom(metric_names)
    metric_args: dict[str, dict[str, Any]]
    forgetting: Flag
    forgetting_text: custom(_forgetting_text)
    forgetting_block_size: integer(lo=2)
    reward_model: custom(_reward_model)
    reward: Reward
    judge: custom(_judge)
    judge_settings: JudgeSettings
    verdict: Verdict

    @model_validator(mode="after")
    def _verdict_scorer_and_prompts(self) -> Self:
        v = self.verdict
        if v.scorer == "reward" and not self.reward_model:
            raise cross(
                "eval.verdict.scorer=reward: needs eval.reward_model (a reward model id/folder); it is null"
            )
        if v.num_prompts is not None and v.num_prompts > self.num_samples:
            raise cross(
                f"eval.verdict.num_prompts={v.num_prompts}: must be ≤ eval.num_samples={self.num_samples} "
                f"(the verdict reuses the policy's generations on those prompts)"
            )
        return self
