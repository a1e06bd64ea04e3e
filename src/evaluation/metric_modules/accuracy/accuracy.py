"""Accuracy of generated labels as a local `evaluate` metric (no Hub download).

Load by path, offline: `evaluate.load("src/metric_modules/accuracy")`. For classification as
generation, a prediction is correct when it equals its reference label (or one of its references);
by default both are compared with whitespace trimmed and case folded, on the prediction's first line.
"""

import datasets
import evaluate

_DESCRIPTION = "Exact-match accuracy of predicted labels against reference labels."
_CITATION = ""
_KWARGS = """
Args:
    predictions: list of predicted labels (strings).
    references: list of reference labels, or list of lists of acceptable labels.
    normalize: trim whitespace and case-fold both sides before comparing (default True).
    first_line: compare only the prediction's first non-empty line (default True).
Returns:
    accuracy: fraction correct, 0-1.
"""


def _norm(text, normalize):
    text = "" if text is None else str(text)
    return " ".join(text.split()).casefold() if normalize else text


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Accuracy(evaluate.Metric):
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
        )

    def _compute(self, predictions, references, normalize=True, first_line=True):
        correct = 0
        for pred, ref in zip(predictions, references, strict=True):
            pred = "" if pred is None else str(pred)
            if first_line:
                lines = [line for line in pred.splitlines() if line.strip()]
                pred = lines[0] if lines else ""
            refs = [ref] if isinstance(ref, str) else list(ref)
            correct += _norm(pred, normalize) in {_norm(r, normalize) for r in refs}
        return {"accuracy": correct / len(predictions) if len(predictions) else 0.0}
