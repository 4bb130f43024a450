"""Video-to-text with a VideoFirst encoder: the captioning loss, generation, zero-shot multiple-choice QA by
language-model likelihood and text metrics (caption tokenization is `videofirst.data.captions`, the export
`videofirst.hub.export`).

The model is `VideoFirstForConditionalGeneration` (`modeling/modeling_videofirst_video_to_text.py`); the training
loop is `videofirst.train.video_to_text`.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from videofirst.data.captions import IGNORE_INDEX, encode_captions, encode_prompts
from videofirst.evaluation.embedding import DEFAULT_QA_TEMPLATE, evaluation_mode, model_device, unwrap_model
from videofirst.evaluation.metrics import multiple_choice_metrics
from videofirst.evaluation.sets import MultipleChoiceSet
from videofirst.modeling.modeling_videofirst_video_to_text import VideoFirstForConditionalGeneration
from videofirst.modeling.video_processing_videofirst import pad_video_batch, resolve_sampling

__all__ = [
    "DEFAULT_QA_PROMPT",
    "answer_log_likelihoods",
    "caption_metrics",
    "captioning_loss",
    "cider_available",
    "evaluate_video_question_answering",
    "generate_captions",
    "sequence_log_likelihoods",
]

logger = logging.getLogger(__name__)

#: How an EgoSchema question becomes the prompt its candidate answers are scored after: the QA template up to the
#: answer, which `encode_captions` joins with one space (so the scored text is the template's, filled in).
DEFAULT_QA_PROMPT = DEFAULT_QA_TEMPLATE.removesuffix(" {answer}")


# --------------------------------------------------------------------------------------------------------------
# Loss, likelihoods, generation
# --------------------------------------------------------------------------------------------------------------


def captioning_loss(
    model: torch.nn.Module,
    batch: Mapping[str, Any],
    tokenizer,
    prompt: str | Sequence[str] | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """The autoregressive captioning loss of a data batch (`pixel_values_videos`, `video_frame_mask`, `captions`):
    the mean next-token cross-entropy over the caption tokens and EOS, given the video and the prompt."""
    device = batch["pixel_values_videos"].device
    text = {
        key: value.to(device)
        for key, value in encode_captions(tokenizer, batch["captions"], prompt, max_length).items()
    }
    outputs = model(
        pixel_values_videos=batch["pixel_values_videos"], video_frame_mask=batch.get("video_frame_mask"), **text
    )
    return outputs.loss


def sequence_log_likelihoods(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Per-sequence log-likelihood of the labelled tokens under next-token `logits` `(batch, length, vocab)`.

    `reduction="sum"` is the log-probability of the labelled text; `"mean"` divides it by the number of labelled
    tokens (length-normalised, so that long answers are not penalised for their length).
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"`reduction` must be 'sum' or 'mean', got {reduction!r}.")
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    token_log_probs = log_probs.gather(-1, targets.clamp(min=0)[..., None]).squeeze(-1) * mask
    total = token_log_probs.sum(dim=1)
    return total / mask.sum(dim=1).clamp(min=1) if reduction == "mean" else total


def generate_captions(
    model: torch.nn.Module,
    tokenizer,
    pixel_values_videos: torch.Tensor,
    video_frame_mask: torch.Tensor | None = None,
    prompt: str | Sequence[str] | None = None,
    **generate_kwargs,
) -> list[str]:
    """Captions (or summaries) of a batch of videos: `model.generate` from `[BOS] prompt`, decoded without special
    tokens. `generate_kwargs` are generation options (`max_new_tokens`, `num_beams`, `do_sample`, ...)."""
    model: VideoFirstForConditionalGeneration = unwrap_model(model)
    device = model_device(model)
    inputs = {
        key: value.to(device) for key, value in encode_prompts(tokenizer, prompt, len(pixel_values_videos)).items()
    }
    generate_kwargs.setdefault("eos_token_id", tokenizer.eos_token_id)
    generate_kwargs.setdefault("pad_token_id", tokenizer.pad_token_id)
    with evaluation_mode(model):
        sequences = model.generate(
            **inputs,
            pixel_values_videos=pixel_values_videos.to(device),
            video_frame_mask=None if video_frame_mask is None else video_frame_mask.to(device),
            **generate_kwargs,
        )
    new_tokens = sequences[:, inputs["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def answer_log_likelihoods(
    model: torch.nn.Module,
    tokenizer,
    questions: Sequence[str],
    options: Sequence[Sequence[str]],
    *,
    pixel_values_videos: torch.Tensor | None = None,
    video_frame_mask: torch.Tensor | None = None,
    visual_latents: torch.Tensor | None = None,
    prompt_template: str = DEFAULT_QA_PROMPT,
    reduction: str = "mean",
    mask_ratio: float | None = None,
) -> torch.Tensor:
    """Score every candidate answer of every question by the language model's likelihood given the video.

    Question `i` is asked about video `i`. Each option is scored as the log-likelihood of its tokens after
    `[BOS] prompt_template.format(question=...)`, summed or length-normalised (`reduction`). The videos are encoded
    once and their latents shared by the options. Returns `(questions, options)` scores: the prediction is the
    row-wise argmax (`videofirst.evaluation.metrics.multiple_choice_metrics` turns them into an accuracy).
    """
    model: VideoFirstForConditionalGeneration = unwrap_model(model)
    if len(questions) != len(options) or not questions:
        raise ValueError(f"{len(questions)} questions for {len(options)} option lists.")
    num_options = len(options[0])
    if any(len(choices) != num_options for choices in options):
        raise ValueError("Every question needs the same number of options.")
    device = model_device(model)
    with evaluation_mode(model):
        if visual_latents is None:
            if pixel_values_videos is None:
                raise ValueError("Pass `pixel_values_videos` (or precomputed `visual_latents`).")
            visual_latents = model.get_video_features(
                pixel_values_videos.to(device),
                video_frame_mask=None if video_frame_mask is None else video_frame_mask.to(device),
                mask_ratio=mask_ratio,
            ).pooler_output
        if visual_latents.shape[0] != len(questions):
            raise ValueError(f"{visual_latents.shape[0]} videos for {len(questions)} questions.")
        prompts = [prompt_template.format(question=question) for question in questions for _ in range(num_options)]
        answers = [answer for choices in options for answer in choices]
        text = {
            key: value.to(device) for key, value in encode_captions(tokenizer, answers, prompts, add_eos=False).items()
        }
        labels = text.pop("labels")
        logits = model(**text, visual_latents=visual_latents.repeat_interleave(num_options, dim=0)).logits
        scores = sequence_log_likelihoods(logits, labels, reduction)
    return scores.view(len(questions), num_options).cpu()


def evaluate_video_question_answering(
    model: torch.nn.Module,
    tokenizer,
    video_processor,
    questions: MultipleChoiceSet,
    *,
    batch_size: int = 4,
    prompt_template: str = DEFAULT_QA_PROMPT,
    reduction: str = "mean",
    fps: float | None = None,
    num_frames: int | None = None,
    sampling: str | None = None,
) -> dict[str, float]:
    """Zero-shot multiple-choice QA (EgoSchema format,
    `videofirst.evaluation.sets.load_multiple_choice_manifest`) by
    answer likelihood. A video that fails to decode is reported and its questions are left out; `fps`,
    `num_frames` and `sampling` override the processor's frame sampling (an ambiguous request is an error).

    Returns `accuracy`, `num_questions` (scored) and `num_excluded`.
    """
    resolve_sampling(fps, num_frames, sampling)
    chosen = (("fps", fps), ("num_frames", num_frames), ("sampling", sampling))
    options = {key: value for key, value in chosen if value is not None}
    tubelet_frames = int(getattr(video_processor, "tubelet_frames", 1))
    scores, answers, excluded = [], [], 0
    order = list(range(len(questions.questions)))
    for start in range(0, len(order), batch_size):
        items, pixels = [], []
        for index in order[start : start + batch_size]:
            clip = questions.clips[questions.video_ids_of_questions[index]]
            try:
                processed = video_processor(
                    videos=clip.path, start=clip.start, end=clip.end, return_tensors="pt", **options
                )
            except (ValueError, OSError, RuntimeError) as error:
                logger.warning("Excluding the questions on %s: %s", clip.path, error)
                excluded += 1
                continue
            items.append(index)
            pixels.append(processed["pixel_values_videos"][0][processed["video_frame_mask"][0].bool()])
        if not items:
            continue
        videos, frame_mask = pad_video_batch(pixels, tubelet_frames)
        scores.append(
            answer_log_likelihoods(
                model,
                tokenizer,
                [questions.questions[index] for index in items],
                [questions.options[index] for index in items],
                pixel_values_videos=videos,
                video_frame_mask=frame_mask,
                prompt_template=prompt_template,
                reduction=reduction,
            )
        )
        answers.extend(questions.answers[index] for index in items)
    if not scores:
        raise RuntimeError("None of the questions' videos could be decoded.")
    metrics = multiple_choice_metrics(torch.cat(scores), answers)
    metrics.update(num_questions=len(answers), num_excluded=excluded)
    return metrics


# --------------------------------------------------------------------------------------------------------------
# Text metrics
# --------------------------------------------------------------------------------------------------------------


def cider_available() -> bool:
    """Whether the COCO caption evaluation code (`pip install pycocoevalcap`) is installed for CIDEr."""
    return importlib.util.find_spec("pycocoevalcap") is not None


_PUNCTUATION = re.compile(f"[{re.escape(string.punctuation)}]")


def _cider_tokens(text: str) -> str:
    # Stands in for the Java PTB tokenizer of the COCO code: lower case, punctuation removed.
    return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _as_reference_lists(references: Sequence[str | Sequence[str]], count: int) -> list[list[str]]:
    if len(references) != count:
        raise ValueError(f"{count} predictions for {len(references)} references.")
    lists = [[reference] if isinstance(reference, str) else list(reference) for reference in references]
    if any(not refs for refs in lists):
        raise ValueError("Every prediction needs at least one reference text.")
    return lists


def caption_metrics(
    predictions: Sequence[str], references: Sequence[str | Sequence[str]], cider: bool | None = None
) -> dict[str, float]:
    """Rouge-L (F-measure, stemmed, best reference; mean over videos, in [0, 1]) and, when `pycocoevalcap` is
    installed (or `cider=True`), the corpus CIDEr-D score of the COCO caption code.

    `references[i]` is one reference text or a list of them for prediction `i`.
    """
    from rouge_score import rouge_scorer

    if not predictions:
        raise ValueError("No predictions to score.")
    reference_lists = _as_reference_lists(references, len(predictions))
    # rouge_score is the scorer `evaluate`'s "rouge" module wraps; that module is a Hub download, unusable offline.
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = [
        scorer.score_multi(refs, prediction)["rougeL"].fmeasure
        for prediction, refs in zip(predictions, reference_lists)
    ]
    metrics = {"rougeL": sum(rouge) / len(rouge)}
    if cider is None:
        cider = cider_available()
    if cider:
        from pycocoevalcap.cider.cider import Cider

        gts = {index: [_cider_tokens(ref) for ref in refs] for index, refs in enumerate(reference_lists)}
        res = {index: [_cider_tokens(prediction)] for index, prediction in enumerate(predictions)}
        score, _ = Cider().compute_score(gts, res)
        metrics["cider"] = float(score)
    return metrics
