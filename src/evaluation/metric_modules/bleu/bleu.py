"""Corpus BLEU as a local `evaluate` metric: a thin wrapper over `sacrebleu` (the reference implementation).

Load by path, offline: `evaluate.load("src/metric_modules/bleu")`. `bleu` is sacrebleu's corpus score
divided by 100 (0–1, the scale of the Hub's `bleu` module and of ROUGE). Predictions may have
different numbers of references (E2E NLG has several per meaning representation).
"""

import datasets
import evaluate
import sacrebleu

_DESCRIPTION = "Corpus-level BLEU (Papineni et al. 2002) computed with sacrebleu, reported on a 0-1 scale."
_CITATION = """@inproceedings{post-2018-call,
  title = "A Call for Clarity in Reporting {BLEU} Scores", author = "Post, Matt",
  booktitle = "Proceedings of the Third Conference on Machine Translation", year = "2018", pages = "186--191"}"""
_KWARGS = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, or list of lists of reference texts (lengths may differ).
    tokenize: sacrebleu tokenizer, default "13a".
    lowercase: case-insensitive BLEU (default False).
    smooth_method: "exp" (default), "floor", "add-k" or "none".
Returns:
    bleu (0-1), precisions (1- to 4-gram, 0-1), brevity_penalty, length_ratio, translation_length,
    reference_length.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class Bleu(evaluate.Metric):
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
            codebase_urls=["https://github.com/mjpost/sacrebleu"],
        )

    def _compute(self, predictions, references, tokenize="13a", lowercase=False, smooth_method="exp"):
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        if any(len(r) == 0 for r in refs):
            raise ValueError("bleu: every prediction needs at least one reference")
        width = max((len(r) for r in refs), default=1)
        # sacrebleu wants reference *streams*; None pads predictions that have fewer references.
        streams = [[r[i] if i < len(r) else None for r in refs] for i in range(width)]
        out = sacrebleu.corpus_bleu(
            list(predictions), streams, tokenize=tokenize, lowercase=lowercase, smooth_method=smooth_method
        )
        return {
            "bleu": out.score / 100.0,
            "precisions": [p / 100.0 for p in out.precisions],
            "brevity_penalty": out.bp,
            "length_ratio": out.ratio,
            "translation_length": out.sys_len,
            "reference_length": out.ref_len,
        }
