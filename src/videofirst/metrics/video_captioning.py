"""`evaluate` module: captioning / summarisation quality of generated text (Rouge-L, and CIDEr when available).

Load it offline with `evaluate.load(videofirst.metrics.metric_path("video_captioning"))`, or use
`VideoCaptioning()` directly. The math lives in `videofirst.evaluation.captioning.caption_metrics`: Rouge-L with
Google's
`rouge_score` package (the paper reports Rouge-L for summarisation), CIDEr-D with the COCO caption evaluation code
(`pycocoevalcap`) when it is installed.
"""

import datasets
import evaluate

from videofirst.evaluation.captioning import caption_metrics

_CITATION = """\
@inproceedings{lin2004rouge,
  title={ROUGE: A Package for Automatic Evaluation of Summaries},
  author={Lin, Chin-Yew},
  booktitle={Text Summarization Branches Out},
  year={2004}
}
@inproceedings{vedantam2015cider,
  title={CIDEr: Consensus-based Image Description Evaluation},
  author={Vedantam, Ramakrishna and Zitnick, C. Lawrence and Parikh, Devi},
  booktitle={CVPR},
  year={2015}
}
"""

_DESCRIPTION = """\
Generated captions or summaries against one or more references per video. `rougeL` is the mean over videos of the
Rouge-L F-measure (longest common subsequence, Porter stemming; the best reference counts), a fraction in [0, 1]
(the paper's tables multiply it by 100). `cider` is the corpus CIDEr-D score of the COCO caption evaluation code
(on its usual scale, where 1.0 is reported as 100), present when `pycocoevalcap` is installed; captions are
lower-cased and punctuation is removed instead of running the Java PTB tokenizer.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): one generated text per video.
    references (`list` of `list` of `str`): the reference texts of each video.
    cider (`bool`, *optional*): compute CIDEr; by default when `pycocoevalcap` is installed.
Returns:
    `rougeL` (`float` in [0, 1]) and, with CIDEr, `cider` (`float` >= 0).
Examples:
    >>> metric = VideoCaptioning()
    >>> metric.compute(predictions=["a red circle"], references=[["a red circle", "a circle"]], cider=False)
    {'rougeL': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class VideoCaptioning(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
            ),
            reference_urls=["https://aclanthology.org/W04-1013", "https://arxiv.org/abs/1411.5726"],
        )

    def _compute(self, predictions, references, cider=None) -> dict[str, float]:
        return caption_metrics(predictions, references, cider=cider)
