"""Evaluation beyond the loss, after training: generations on the test prompts the data module rendered,
task metrics over them, forgetting, and optional reward-model and LLM-judge scores.

- `generation`: batched, left-padded generation (greedy by default), prompt tuning included; samples.jsonl.
- `task_metrics`: ROUGE / BLEU / accuracy through the local `evaluate` modules in `metric_modules/`
  (loaded by path, so they work offline); accuracy of a classifier from its logits.
- `forgetting`: loss on a fixed generic English text, before and after fine-tuning.
- `reward`, `judge`: optional scorers (a sequence-classification reward model; an LLM judge, local or an
  OpenAI-compatible endpoint whose key is read at call time and never stored).
- `scoring`: the whole generation evaluation of a run, and the preflight that checks scorers before training.

This package's `__init__` imports nothing: the config schema imports `task_metrics` for the metric names and
must stay light (no torch).
"""
