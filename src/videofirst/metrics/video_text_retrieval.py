"""`evaluate` module: zero-shot text-to-video and video-to-text retrieval (Recall@K, median and mean rank).

Load it offline with `evaluate.load(videofirst.metrics.metric_path("video_text_retrieval"))`, or use
`VideoTextRetrieval()` directly. The math lives in `videofirst.evaluation.metrics.retrieval_metrics`.
"""

import datasets
import evaluate

from videofirst.evaluation.metrics import retrieval_metrics

_CITATION = """\
@inproceedings{papalampidi2024simple,
  title={A Simple Recipe for Contrastively Pre-training Video-First Encoders Beyond 16 Frames},
  author={Papalampidi, Pinelopi and Koppula, Skanda and Pathak, Shreya and Chiu, Justin and Heyward, Joe and
          Patraucean, Viorica and Shen, Jiajun and Miech, Antoine and Zisserman, Andrew and Nematzadeh, Aida},
  booktitle={CVPR},
  year={2024}
}
"""

_DESCRIPTION = """\
Zero-shot video-text retrieval. Every caption is one example: its scores against all videos of the gallery
(a row of the text x video similarity matrix) and the index of the video it describes. Text-to-video ranks the
caption's video among all videos; video-to-text ranks each video's best caption among all captions (a video may
have several captions; videos without one are left out of video-to-text). Ties are pessimistic: the rank is
1 + the number of wrong items scoring at least as high. The median rank is numpy's (mean of the two middle
ranks for an even count). Recall@K is a fraction in [0, 1].
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): one row per caption, its similarity to each of the N videos
        (all rows have length N).
    references (`list` of `int`): for each caption, the index in [0, N) of its video.
    recall_at (`tuple` of `int`, defaults to `(1, 5, 10)`): the K of Recall@K.
Returns:
    `t2v_recall@K`, `t2v_median_rank`, `t2v_mean_rank`, `v2t_recall@K`, `v2t_median_rank`, `v2t_mean_rank`.
Examples:
    >>> metric = VideoTextRetrieval()
    >>> metric.compute(predictions=[[0.9, 0.1], [0.2, 0.8], [0.7, 0.7]], references=[0, 1, 1], recall_at=(1,))
    {'t2v_recall@1': 0.6666666666666666, 't2v_median_rank': 1.0, 't2v_mean_rank': 1.3333333333333333, \
'v2t_recall@1': 1.0, 'v2t_median_rank': 1.0, 'v2t_mean_rank': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VideoTextRetrieval(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://arxiv.org/abs/2312.07395"],
        )

    def _compute(self, predictions, references, recall_at=(1, 5, 10)) -> dict[str, float]:
        return retrieval_metrics(predictions, references, recall_at=recall_at)
