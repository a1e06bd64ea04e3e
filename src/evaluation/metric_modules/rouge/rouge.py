"""ROUGE as a local `evaluate` metric: a thin wrapper over `rouge_score` (Google's reference package).

Load by path, offline: `evaluate.load("src/metric_modules/rouge")`. Scores are F-measures in 0–1,
averaged over examples (a plain mean, deterministic). A prediction with several references is scored
against the best one, as `rouge_score.RougeScorer.score_multi` does.
"""

import logging
import re

import datasets
import evaluate
from rouge_score import rouge_scorer

logging.getLogger("absl").setLevel(logging.WARNING)  # rouge_score logs "Using default tokenizer." at INFO

# A sentence ends at . ! or ? (closing quotes and brackets included) followed by white space.
_SENTENCE_END = re.compile(r"([.!?][\"'\u201d\u2019)\]]*)\s+")


def sentence_lines(text: str) -> str:
    """`text` with one sentence a line: its own line breaks kept, and a break after each sentence end."""
    lines = (_SENTENCE_END.sub("\\1\n", line) for line in text.splitlines())
    return "\n".join(s.strip() for line in lines for s in line.split("\n") if s.strip())


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
    split_sentences: for rougeLsum, one sentence a line before scoring (default True; its own line breaks kept).
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

    def _compute(
        self,
        predictions,
        references,
        rouge_types=None,
        use_stemmer=False,
        use_aggregator=True,
        split_sentences=True,
    ):
        rouge_types = list(rouge_types or ["rouge1", "rouge2", "rougeL", "rougeLsum"])
        per_type = {t: [] for t in rouge_types}
        # rougeLsum is the union LCS over sentences, which rouge_score takes to be the text's lines: texts are
        # put one sentence a line first (split_sentences), as summarisation evaluations do (nltk's
        # sent_tokenize there; a punctuation rule here, which needs no downloaded model).
        groups = [([t for t in rouge_types if t != "rougeLsum"], lambda x: x)]
        if "rougeLsum" in rouge_types:
            groups.append((["rougeLsum"], sentence_lines if split_sentences else (lambda x: x)))
        for types, prep in groups:
            if not types:
                continue
            scorer = rouge_scorer.RougeScorer(rouge_types=types, use_stemmer=use_stemmer)
            for pred, ref in zip(predictions, references, strict=True):
                if isinstance(ref, str):
                    scores = scorer.score(prep(ref), prep(pred))
                else:
                    scores = scorer.score_multi([prep(r) for r in ref], prep(pred))
                for t in types:
                    per_type[t].append(float(scores[t].fmeasure))
        if not use_aggregator:
            return per_type
        return {t: (sum(v) / len(v) if v else 0.0) for t, v in per_type.items()}
