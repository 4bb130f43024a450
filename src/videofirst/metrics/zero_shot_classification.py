"""`evaluate` module: zero-shot classification top-K accuracy (class scores from prompt-template embeddings).

Load it offline with `evaluate.load(videofirst.metrics.metric_path("zero_shot_classification"))`, or use
`ZeroShotClassification()` directly. The math lives in `videofirst.evaluation.metrics.classification_metrics`;
producing the scores (video similarity to prompt-ensembled class embeddings) is
`videofirst.evaluation.embedding.evaluate_classification`.
"""

import datasets
import evaluate

from videofirst.evaluation.metrics import classification_metrics

_CITATION = """\
@inproceedings{radford2021learning,
  title={Learning Transferable Visual Models From Natural Language Supervision},
  author={Radford, Alec and others},
  booktitle={ICML},
  year={2021}
}
"""

_DESCRIPTION = """\
Zero-shot classification: every sample gets a score per class (for a dual encoder, the similarity of the video
to the class embedding, the normalised mean over prompt templates such as "a video of {}."). Top-K accuracy is
the fraction of samples whose true class ranks within the K best. Ties are pessimistic: a true class tied with
a wrong one ranks behind it.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row per sample, the score of each class (rows of equal length).
    references (`list` of `int`): the index of the true class of each sample.
    top_k (`tuple` of `int`, defaults to `(1, 5)`): the K to report.
Returns:
    `top{K}_accuracy` for each K (`float` in [0, 1]).
Examples:
    >>> metric = ZeroShotClassification()
    >>> metric.compute(predictions=[[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]], references=[1, 2], top_k=(1, 2))
    {'top1_accuracy': 0.5, 'top2_accuracy': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ZeroShotClassification(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://arxiv.org/abs/2103.00020", "https://arxiv.org/abs/2312.07395"],
        )

    def _compute(self, predictions, references, top_k=(1, 5)) -> dict[str, float]:
        return classification_metrics(predictions, references, top_k=top_k)
