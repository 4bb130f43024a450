"""`evaluate` module: does a generated caption name the right events in the right order?

Load it offline with `evaluate.load(videofirst.metrics.metric_path("event_sequence"))`, or use `EventSequence()`
directly. The math lives in `videofirst.evaluation.event_order.event_sequence_metrics`: the events (coloured shapes)
are parsed out of the `"a red circle, then a blue square, ..."` captions of the synthetic order-of-events videos
(`videofirst.data.synthetic`).
"""

import datasets
import evaluate

from videofirst.evaluation.event_order import event_sequence_metrics

_CITATION = ""

_DESCRIPTION = """\
Generated captions of the synthetic order-of-events videos against their reference captions. Each caption is split
at "then" into events, an event being the first palette colour and the first palette shape its part names (a part
that names none counts as a wrong event). `event_sequence_accuracy` is the fraction of videos whose caption names
exactly the reference events in the reference order; `event_position_accuracy` the fraction of reference events
named at their position; `event_set_accuracy` the fraction of videos whose caption names the reference events in
any order; `colour_position_accuracy` the fraction of reference events whose colour is named at their position;
`colour_sequence_accuracy` the fraction of videos whose caption names exactly the reference colours in the
reference order (shapes aside). All are fractions in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated caption per video.
    references (`list` of `str`): the reference caption of each video (`videofirst.data.synthetic` grammar).
Returns:
    `event_sequence_accuracy`, `event_position_accuracy`, `event_set_accuracy`, `colour_position_accuracy`,
    `colour_sequence_accuracy` (`float` in [0, 1]).
Examples:
    >>> metric = EventSequence()
    >>> result = metric.compute(
    ...     predictions=["a blue square, then a red circle"], references=["a red circle, then a blue square"]
    ... )
    >>> result["event_sequence_accuracy"], result["event_position_accuracy"], result["event_set_accuracy"]
    (0.0, 0.0, 1.0)
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EventSequence(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        return event_sequence_metrics(predictions, references)
