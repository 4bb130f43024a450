"""Embedding and scoring with a model: `embed_videos`, `embed_texts`, `embed_videos_by_segments` (the
segment-aggregation baseline), `embed_class_prompts`, `embed_answer_options`, and the one-call
`evaluate_retrieval`, `evaluate_multiple_choice`, `evaluate_classification`.

Everything runs in eval mode under `torch.no_grad`, batched, on the model's device; the model's train/eval state
is restored afterwards. Embeddings come back as float32 CPU tensors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel

from videofirst.evaluation.metrics import classification_metrics, multiple_choice_metrics, retrieval_metrics

if TYPE_CHECKING:
    from videofirst.modeling.modeling_videofirst import VideoFirstModel

__all__ = [
    "DEFAULT_CLASS_TEMPLATES",
    "DEFAULT_QA_TEMPLATE",
    "embed_answer_options",
    "embed_class_prompts",
    "embed_texts",
    "embed_videos",
    "embed_videos_by_segments",
    "evaluate_classification",
    "evaluate_multiple_choice",
    "evaluate_retrieval",
    "evaluation_mode",
    "flatten_captions",
    "model_device",
    "unwrap_model",
]

#: Prompt ensemble for zero-shot classification; `{}` is replaced by the class name.
DEFAULT_CLASS_TEMPLATES: tuple[str, ...] = ("a video of {}.", "a video of a person {}.", "{}")
#: How a multiple-choice question and one candidate answer become one text (EgoSchema), for both kinds of model:
#: the contrastive model embeds the whole text (`embed_answer_options`); the video-to-text model scores the answer
#: after the text before it (`videofirst.evaluation.captioning.DEFAULT_QA_PROMPT`).
DEFAULT_QA_TEMPLATE = "question: {question} answer: {answer}"


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DistributedDataParallel / FSDP / DeepSpeed / DataParallel and torch.compile
    (accelerate's unwrapping, compile wrapper included)."""
    return extract_model_from_parallel(model, keep_torch_compile=False)


def model_device(model: torch.nn.Module, device: torch.device | str | None = None) -> torch.device:
    """`device` when given, else where the model's first parameter lives (the CPU for a model without any)."""
    if device is not None:
        return torch.device(device)
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def evaluation_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode (no dropout, no default token masking) and no autograd; restores the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _video_inputs(batch: Mapping[str, torch.Tensor] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if "pixel_values_videos" not in batch:
        raise KeyError(f"A video batch needs `pixel_values_videos`; got keys {sorted(batch)}.")
    return batch["pixel_values_videos"], batch.get("video_frame_mask")


def embed_videos(
    model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor] | torch.Tensor],
    *,
    segment_frames: int | None = None,
    segment_batch_size: int | None = None,
    mask_ratio: float | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """L2-normalised embeddings `(num_videos, projection_dim)` (float32, CPU) of all videos in `batches`.

    Args:
        model: a `VideoFirstModel` (possibly wrapped by DDP / accelerate / torch.compile).
        batches: an iterable of `(B, T, C, H, W)` tensors or of mappings with `pixel_values_videos` and an
            optional `video_frame_mask` (other keys, e.g. `input_ids`, are ignored), such as a DataLoader.
        segment_frames: if set, use the segment-aggregation baseline (`embed_videos_by_segments`) instead of
            encoding each video whole.
        segment_batch_size: segments per forward pass in segment mode (default: all of a batch at once).
        mask_ratio: token drop ratio at inference (default: the model's eval default, 0).
        device: where to run (default: the model's device).
    """
    inner: VideoFirstModel = unwrap_model(model)
    device = model_device(inner, device)
    embeddings = []
    with evaluation_mode(inner):
        for batch in batches:
            pixel_values_videos, video_frame_mask = _video_inputs(batch)
            if segment_frames is not None:
                embeds = embed_videos_by_segments(
                    inner,
                    pixel_values_videos,
                    video_frame_mask,
                    segment_frames,
                    batch_size=segment_batch_size,
                    mask_ratio=mask_ratio,
                    device=device,
                )
            else:
                if video_frame_mask is not None and bool(video_frame_mask.all()):
                    video_frame_mask = None  # nothing padded: same result, and fine for models that take no mask
                embeds = inner.get_video_features(
                    pixel_values_videos=pixel_values_videos.to(device),
                    video_frame_mask=None if video_frame_mask is None else video_frame_mask.to(device),
                    mask_ratio=mask_ratio,
                ).pooler_output
            embeddings.append(embeds.float().cpu())
    if not embeddings:
        raise ValueError("`batches` yielded no videos.")
    return torch.cat(embeddings)


def embed_videos_by_segments(
    model: torch.nn.Module,
    pixel_values_videos: torch.Tensor,
    video_frame_mask: torch.Tensor | None = None,
    segment_frames: int = 16,
    *,
    batch_size: int | None = None,
    mask_ratio: float | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Segment-aggregation baseline: embed consecutive `segment_frames`-frame segments, average, re-normalise.

    This is the paradigm the paper argues against (short-clip encoders whose segment embeddings are pooled
    afterwards), available for any checkpoint. For each video:

    * its real frames (where `video_frame_mask` is 1; all frames without a mask) are taken in order and cut
      into consecutive segments of `segment_frames`;
    * the last segment may be partial: it is zero-padded to `segment_frames` with those frames masked out, so
      it keeps the temporal positions of a full segment and the model drops its empty tubelets. Models that
      take no frame mask (TubeViT kernels, whose tubes could straddle real and padded frames) get the tail
      padded by repeating its last real frame instead;
    * segment embeddings (each L2-normalised) are averaged **weighted by their number of real frames**, so a
      short tail counts in proportion to the footage it covers (with only full segments this is the plain
      mean), and the average is L2-normalised again.

    A video shorter than `segment_frames` is a single padded segment. `segment_frames` must be a multiple of
    the tubelet length (for tubelet models).

    Returns:
        `(batch, projection_dim)` float32 embeddings on the CPU.
    """
    inner: VideoFirstModel = unwrap_model(model)
    device = model_device(inner, device)
    vision_config = inner.config.vision_config
    can_mask_frames = getattr(vision_config, "tubevit_kernels", None) is None
    tubelet_frames = vision_config.tubelet_size[0] if can_mask_frames else 1
    if segment_frames <= 0 or segment_frames % tubelet_frames != 0:
        raise ValueError(
            f"`segment_frames` must be a positive multiple of the tubelet length {tubelet_frames}, "
            f"got {segment_frames}."
        )
    if batch_size is not None and batch_size <= 0:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
    if pixel_values_videos.ndim != 5:
        raise ValueError(
            f"`pixel_values_videos` must be (batch, frames, C, H, W), got {tuple(pixel_values_videos.shape)}."
        )
    num_videos, num_frames = pixel_values_videos.shape[:2]
    if video_frame_mask is None:
        frame_valid = torch.ones(num_videos, num_frames, dtype=torch.bool, device=pixel_values_videos.device)
    elif tuple(video_frame_mask.shape) != (num_videos, num_frames):
        raise ValueError(
            f"`video_frame_mask` must have shape {(num_videos, num_frames)}, got {tuple(video_frame_mask.shape)}."
        )
    else:
        frame_valid = video_frame_mask.to(pixel_values_videos.device).bool()

    segments: list[torch.Tensor] = []
    lengths: list[int] = []
    owners: list[int] = []
    for video, valid in enumerate(frame_valid):
        frames = pixel_values_videos[video][valid]
        if frames.shape[0] == 0:
            raise ValueError(f"Video {video} of the batch has no real frame in `video_frame_mask`.")
        for start in range(0, frames.shape[0], segment_frames):
            segment = frames[start : start + segment_frames]
            lengths.append(segment.shape[0])
            owners.append(video)
            missing = segment_frames - segment.shape[0]
            if missing and can_mask_frames:
                segment = F.pad(segment, (0, 0, 0, 0, 0, 0, 0, missing))
            elif missing:
                segment = torch.cat([segment, segment[-1:].expand(missing, -1, -1, -1)])
            segments.append(segment)

    lengths_tensor = torch.tensor(lengths)
    segment_valid = torch.arange(segment_frames)[None, :] < lengths_tensor[:, None]
    step = batch_size or len(segments)
    embeddings = []
    with evaluation_mode(inner):
        for start in range(0, len(segments), step):
            chunk = torch.stack(segments[start : start + step]).to(device)
            chunk_valid = segment_valid[start : start + step]
            embeddings.append(
                inner.get_video_features(
                    pixel_values_videos=chunk,
                    # Full segments need no mask; passing none keeps the model on its unmasked fast path.
                    video_frame_mask=None if chunk_valid.all() or not can_mask_frames else chunk_valid.to(device),
                    mask_ratio=mask_ratio,
                )
                .pooler_output.float()
                .cpu()
            )
    weighted = torch.cat(embeddings) * lengths_tensor[:, None].float()
    pooled = torch.zeros(num_videos, weighted.shape[1]).index_add_(0, torch.tensor(owners), weighted)
    return F.normalize(pooled, dim=-1)


def embed_texts(
    model: torch.nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    batch_size: int = 64,
    *,
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """L2-normalised text embeddings `(len(texts), projection_dim)` (float32, CPU).

    `tokenizer` is any callable taking `text=` that returns `input_ids` and `attention_mask` (a transformers
    tokenizer, or a processor that forwards text to one). Texts are truncated to `max_length` tokens, by
    default the text encoder's `max_position_embeddings`.
    """
    if isinstance(texts, str):
        raise TypeError("`texts` must be a sequence of strings, not a single string.")
    if batch_size <= 0:
        raise ValueError(f"`batch_size` must be positive, got {batch_size}.")
    texts = list(texts)
    if not texts:
        raise ValueError("`texts` is empty.")
    inner: VideoFirstModel = unwrap_model(model)
    device = model_device(inner, device)
    if max_length is None:
        max_length = getattr(inner.config.text_config, "max_position_embeddings", None)
    embeddings = []
    with evaluation_mode(inner):
        for start in range(0, len(texts), batch_size):
            encoded = tokenizer(
                text=texts[start : start + batch_size],
                padding=True,
                truncation=max_length is not None,
                max_length=max_length,
                return_tensors="pt",
            )
            embeds = inner.get_text_features(
                input_ids=encoded["input_ids"].to(device), attention_mask=encoded["attention_mask"].to(device)
            ).pooler_output
            embeddings.append(embeds.float().cpu())
    return torch.cat(embeddings)


def embed_class_prompts(
    model: torch.nn.Module,
    tokenizer: Any,
    class_names: Sequence[str],
    templates: Sequence[str] = DEFAULT_CLASS_TEMPLATES,
    batch_size: int = 64,
    **kwargs: Any,
) -> torch.Tensor:
    """One embedding per class `(num_classes, projection_dim)`: the re-normalised mean of its prompt embeddings.

    Each template has a `{}` for the class name (CLIP's prompt ensembling). `kwargs` go to `embed_texts`.
    """
    if not templates or any("{}" not in template for template in templates):
        raise ValueError(f"`templates` must be non-empty and each contain '{{}}', got {list(templates)}.")
    prompts = [template.format(name) for name in class_names for template in templates]
    embeds = embed_texts(model, tokenizer, prompts, batch_size, **kwargs)
    return F.normalize(embeds.reshape(len(class_names), len(templates), -1).mean(dim=1), dim=-1)


def embed_answer_options(
    model: torch.nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    options: Sequence[Sequence[str]],
    template: str = DEFAULT_QA_TEMPLATE,
    batch_size: int = 64,
    **kwargs: Any,
) -> torch.Tensor:
    """Embeddings `(num_questions, num_options, projection_dim)` of every question joined with each answer.

    `template` has `{question}` and `{answer}` fields; every question must have the same number of options
    (EgoSchema: five). `kwargs` go to `embed_texts`.
    """
    if len(questions) != len(options):
        raise ValueError(f"Got {len(questions)} questions but {len(options)} option lists.")
    num_options = {len(choices) for choices in options}
    if len(num_options) != 1 or 0 in num_options:
        raise ValueError(f"Every question needs the same, non-zero number of options; got counts {num_options}.")
    texts = [
        template.format(question=question, answer=answer)
        for question, choices in zip(questions, options, strict=True)
        for answer in choices
    ]
    embeds = embed_texts(model, tokenizer, texts, batch_size, **kwargs)
    return embeds.reshape(len(questions), num_options.pop(), -1)


# --------------------------------------------------------------------------------------------------------------
# One-call evaluations (embed, score, summarise)
# --------------------------------------------------------------------------------------------------------------


def flatten_captions(captions_per_video: Sequence[Sequence[str] | str]) -> tuple[list[str], list[int]]:
    """`[[c0, c1], [c2]]` to `([c0, c1, c2], [0, 0, 1])`: the caption list and `video_ids_of_texts`."""
    texts: list[str] = []
    video_ids: list[int] = []
    for video, captions in enumerate(captions_per_video):
        captions = [captions] if isinstance(captions, str) else list(captions)
        texts.extend(captions)
        video_ids.extend([video] * len(captions))
    return texts, video_ids


def evaluate_retrieval(
    model: torch.nn.Module,
    tokenizer: Any,
    video_batches: Iterable[Mapping[str, torch.Tensor] | torch.Tensor],
    texts: Sequence[str],
    video_ids_of_texts: Sequence[int],
    *,
    recall_at: Sequence[int] = (1, 5, 10),
    text_batch_size: int = 64,
    segment_frames: int | None = None,
    **video_kwargs: Any,
) -> dict[str, float]:
    """Zero-shot retrieval: embed the videos (whole, or by segments) and captions, return `retrieval_metrics`.

    `video_batches` must yield the videos in the order `video_ids_of_texts` refers to (use `flatten_captions`
    for several captions per video). `video_kwargs` go to `embed_videos`.
    """
    video_embeds = embed_videos(model, video_batches, segment_frames=segment_frames, **video_kwargs)
    text_embeds = embed_texts(model, tokenizer, texts, text_batch_size)
    return retrieval_metrics(text_embeds @ video_embeds.t(), video_ids_of_texts, recall_at)


def evaluate_multiple_choice(
    model: torch.nn.Module,
    tokenizer: Any,
    video_batches: Iterable[Mapping[str, torch.Tensor] | torch.Tensor],
    questions: Sequence[str],
    options: Sequence[Sequence[str]],
    answers: Sequence[int],
    *,
    template: str = DEFAULT_QA_TEMPLATE,
    video_ids_of_questions: Sequence[int] | None = None,
    text_batch_size: int = 64,
    segment_frames: int | None = None,
    **video_kwargs: Any,
) -> dict[str, float]:
    """Zero-shot multiple-choice QA (EgoSchema): each option is scored by the similarity of its video to the
    text `template.format(question=..., answer=...)`; returns `multiple_choice_metrics`.

    Videos are question-aligned by default; pass `video_ids_of_questions` when several questions share a video.
    """
    video_embeds = embed_videos(model, video_batches, segment_frames=segment_frames, **video_kwargs)
    if video_ids_of_questions is not None:
        video_embeds = video_embeds[torch.as_tensor(video_ids_of_questions, dtype=torch.long)]
    if video_embeds.shape[0] != len(questions):
        raise ValueError(f"Got {video_embeds.shape[0]} videos for {len(questions)} questions.")
    option_embeds = embed_answer_options(model, tokenizer, questions, options, template, text_batch_size)
    scores = torch.einsum("qd,qod->qo", video_embeds, option_embeds)
    return multiple_choice_metrics(scores, answers)


def evaluate_classification(
    model: torch.nn.Module,
    tokenizer: Any,
    video_batches: Iterable[Mapping[str, torch.Tensor] | torch.Tensor],
    labels: Sequence[int],
    class_names: Sequence[str],
    *,
    templates: Sequence[str] = DEFAULT_CLASS_TEMPLATES,
    top_k: Sequence[int] = (1, 5),
    text_batch_size: int = 64,
    segment_frames: int | None = None,
    **video_kwargs: Any,
) -> dict[str, float]:
    """Zero-shot classification with prompt templates: score videos against class prompt embeddings and return
    `classification_metrics` (top-K accuracy)."""
    video_embeds = embed_videos(model, video_batches, segment_frames=segment_frames, **video_kwargs)
    class_embeds = embed_class_prompts(model, tokenizer, class_names, templates, text_batch_size)
    return classification_metrics(video_embeds @ class_embeds.t(), labels, top_k)
