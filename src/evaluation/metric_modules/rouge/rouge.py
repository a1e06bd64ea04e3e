"""ROUGE as a local `evaluate` metric: a thin wrapper over `rouge_score` (Google's reference package).

Load by path, offline: `evaluate.load("src/metric_modules/rouge")`. Scores are F-measures in 0–1,
averaged over examples (a plain mean, deterministic). A prediction with several references is scored
against the best one, as `rouge_score.RougeScorer.score_multi` does.
"""

import logging

import datasets
import evaluate
from rouge_score import rouge_scorer

logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score logs "Using default tokenizer." at INFO

_DESCRIPTION = "ROUGE-N / ROUGE-L / ROUGE-Lsum F-measure, computed with the rouge_score package."
_CITATION = """@inproceedings{lin-2004-rouge,
  title = "{ROUGE}: A Package for Automatic Evaluation of Summaries",
  author = "Lin, Chin-Yew", booktitle = "Text Summarization Branches Out", year = "2004",
  pages = "74--81"}"""
_KWARGS = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, or list of lists of reference texts.
    rouge_types: which scores, default ["rouge1", "rouge2", "rougeL", "rougeLsum"].
    use_stemmer: Porter-stem tokens before matching (default False, as rouge_score).
    use_aggregator: True: one mean per type; False: one list of per-example scores per type.
Returns:
    {rouge_type: mean F-measure} (or per-example lists without aggregation).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS,
            features=[
                datasets.Features(
                    {
                        "predictions": datasets.Value("string"),
                        "references": datasets.Sequence(datasets.Value("string")),
                    }
                ),
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
                ),
            ],
            codebase_urls=["https://github.com/google-research/google-research/tree/master/rouge"],
        )

    def _compute(self, predictions, references, rouge_types=None, use_stemmer=False, use_aggregator=True):
        rouge_types = list(rouge_types or ["rouge1", "rouge2", "rougeL", "rougeLsum"])
        scorer = rouge_scorer.RougeScorer(rouge_types=rouge_types, use_stemmer=use_stemmer)
        per_type = {t: [] for t in rouge_types}
        for pred, ref in zip(predictions, references, strict=True):
            scores = scorer.score(ref, pred) if isinstance(ref, str) else scorer.score_multi(list(ref), pred)
            for t in rouge_types:
                per_type[t].append(float(scores[t].fmeasure))
        if not use_aggregator:
            return per_type
        return {t: (sum(v) / len(v) if v else 0.0) for t, v in per_type.items()}
