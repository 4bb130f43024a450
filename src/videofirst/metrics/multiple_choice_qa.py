"""`evaluate` module: zero-shot multiple-choice QA accuracy in the EgoSchema format (a question, five answers).

Load it offline with `evaluate.load(videofirst.metrics.metric_path("multiple_choice_qa"))`, or use
`MultipleChoiceQA()` directly. The math lives in `videofirst.evaluation.metrics.multiple_choice_metrics`; producing
the scores (video similarity to "question + answer" texts) is
`videofirst.evaluation.embedding.evaluate_multiple_choice`.
"""

import datasets
import evaluate

from videofirst.evaluation.metrics import multiple_choice_metrics

_CITATION = """\
@inproceedings{mangalam2023egoschema,
  title={EgoSchema: A Diagnostic Benchmark for Very Long-form Video Language Understanding},
  author={Mangalam, Karttikeya and Akshulakov, Raiymbek and Malik, Jitendra},
  booktitle={NeurIPS Datasets and Benchmarks},
  year={2023}
}
"""

_DESCRIPTION = """\
Multiple-choice question answering scored zero-shot: every candidate answer gets a score (for a dual encoder,
the similarity of the video to the text "question answer"), and the highest-scoring option is the prediction.
Accuracy is the fraction of questions answered correctly. Ties are pessimistic: a correct answer tied with a
wrong one counts as a miss.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row per question, the score of each option (all rows have
        the same length, five for EgoSchema).
    references (`list` of `int`): the index of the correct option of each question.
Returns:
    `accuracy` (`float` in [0, 1]).
Examples:
    >>> metric = MultipleChoiceQA()
    >>> metric.compute(predictions=[[0.1, 0.5, 0.2, 0.0, 0.3], [0.4, 0.4, 0.1, 0.0, 0.2]], references=[1, 0])
    {'accuracy': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MultipleChoiceQA(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://arxiv.org/abs/2308.09126", "https://arxiv.org/abs/2312.07395"],
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        return multiple_choice_metrics(predictions, references)
