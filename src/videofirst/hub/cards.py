"""Model cards of VideoFirst checkpoints, rendered with `huggingface_hub`'s card API.

The dual encoder's card comes from `hub_cards/model_card.md`, the video-to-text model's from
`hub_cards/model_card_video_to_text.md`. Metadata is built as `ModelCardData` and serialised by the YAML dumper, so
user text cannot break the front matter; text that reaches the Markdown body is escaped (no HTML, code fences, table
breaks or links), and repo ids that reach the usage snippets must be valid Hub repo ids (`huggingface_hub`'s
validator, plus a namespace).
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import PreTrainedModel, ProcessorMixin

from videofirst.hub.results import TASKS, RunInfo, eval_results, load_results, metric_display, metric_name
from videofirst.modeling.configuration_videofirst_video_to_text import VideoFirstVideoToTextConfig

__all__ = [
    "ModelCardOptions",
    "card_for_repo",
    "check_repo_id",
    "hub_cards_dir",
    "hub_model_id",
    "is_video_to_text",
    "render_model_card",
]

CARD_TEMPLATE = "model_card.md"
VIDEO_TO_TEXT_CARD_TEMPLATE = "model_card_video_to_text.md"
PAPER_ARXIV = "2312.07395"
DEFAULT_TAGS = (
    "videofirst",
    "video",
    "video-text-retrieval",
    "zero-shot-video-classification",
    "contrastive-learning",
    "custom_code",
    f"arxiv:{PAPER_ARXIV}",
)
VIDEO_TO_TEXT_TAGS = (
    "videofirst",
    "video",
    "video-captioning",
    "video-summarization",
    "custom_code",
    f"arxiv:{PAPER_ARXIV}",
)
# The card's pipeline tag: a Hub task id that the checkpoint's own `custom_pipelines` also serve (`HUB_TASK` of
# `pipeline_videofirst`), so `pipeline(<tag>, model=repo, trust_remote_code=True)` builds the shipped zero-shot
# classifier, not a built-in pipeline that cannot load this model.
PIPELINE_TAG = "video-classification"
# The video-to-text model generates text from a video (and an optional prompt): the Hub's video-text-to-text task.
VIDEO_TO_TEXT_PIPELINE_TAG = "video-text-to-text"
# The last line of a card names the repo id its snippets were rendered for (`card_for_repo` retargets them).
_REPO_ID_MARKER = "<!-- videofirst-card repo_id={repo_id} -->"
_REPO_ID_MARKER_PATTERN = re.compile(r"<!-- videofirst-card repo_id=(\S+) -->")


def hub_cards_dir() -> Path:
    """The folder with the card template, the endpoint handler and its requirements.

    Installed as the `videofirst.hub_cards` package data when packaged; in a source checkout it is the repository's
    top-level `hub_cards/`.
    """
    spec = importlib.util.find_spec("videofirst.hub_cards")
    if spec is not None and spec.submodule_search_locations:
        packaged = Path(next(iter(spec.submodule_search_locations)))
        if (packaged / CARD_TEMPLATE).is_file():
            return packaged
    checkout = Path(__file__).resolve().parents[3] / "hub_cards"
    if (checkout / CARD_TEMPLATE).is_file():
        return checkout
    raise FileNotFoundError(
        "hub_cards/ (model-card template and endpoint handler) not found: install videofirst with its package data"
    )


@dataclass
class ModelCardOptions:
    """What the person publishing says about the model; everything else comes from the model and the run.

    Free text (`description`, `training_data`, `hardware`, `stages`, `limitations`) is escaped into the Markdown
    body; `repo_id` is used in the usage snippets (a placeholder when None; `push_to_hub` fills in the real one).
    """

    model_name: str | None = None
    repo_id: str | None = None
    description: str | None = None
    license: str = "apache-2.0"
    language: list[str] | None = None
    datasets: list[str] = field(default_factory=list)
    base_model: str | None = None
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str | None = None  # by default the task of the model's kind
    training_data: str | None = None
    hardware: str | None = None
    stages: list[str] | None = None
    limitations: list[str] = field(default_factory=list)


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#])")


def _inline(text: Any) -> str:
    """One line of Markdown-escaped text: no HTML, code spans, links, emphasis or table cells can start in it."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def _block(text: Any) -> str:
    """Escaped paragraphs: line breaks kept, each line escaped and left-trimmed (no indented code blocks), and
    lines of only `-` / `=` (rules, heading underlines, front-matter fences) defused."""
    lines = [_MD_SPECIAL.sub(r"\\\1", " ".join(line.split())) for line in str(text).splitlines()]
    lines = ["\\" + line if re.fullmatch(r"[-=]+", line.replace(" ", "")) else line for line in lines]
    return "\n".join(lines).strip()


def _code(text: Any) -> str:
    """An inline code span around text we generated (config values): backticks removed, not escaped."""
    return "`" + " ".join(str(text).replace("`", "'").split()) + "`"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _number(count: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.1f}{unit} ({count:,})"
    return f"{count:,}"


_ATTENTION_SHORT = {"joint": "joint space-time", "factorized": "factorised space-time", "frame": "frame-level"}
_ATTENTION = {
    "joint": "joint space-time (every token attends to every other token of the clip)",
    "factorized": "factorised space-time (a gated temporal attention block in every layer)",
    "frame": "frame-level (each frame encoded on its own, pooled over time)",
}


def _video_encoder_rows(vision, processor: ProcessorMixin | None) -> list[tuple[str, str]]:
    """The video tower's rows, shared by both model kinds."""
    rows = [
        (
            "Video encoder",
            f"ViT, {_count(vision.num_hidden_layers, 'layer')}, width {vision.hidden_size}, "
            f"{_count(vision.num_attention_heads, 'head')}",
        ),
        ("Attention", f"{_code(vision.attention_type)}: {_ATTENTION.get(vision.attention_type, '')}".rstrip(": ")),
    ]
    if getattr(vision, "tubevit_kernels", None):
        rows.append(("Tokenizer", f"TubeViT kernels {_code(json.dumps(vision.tubevit_kernels))}"))
    else:
        tubelet = "x".join(str(size) for size in vision.tubelet_size)
        rows.append(("Tubelet (frames x height x width)", f"{tubelet} (3D convolution)"))
    rows.append(
        (
            "Frame size",
            f"{vision.image_size}x{vision.image_size} pixels, {vision.patch_size}x{vision.patch_size} patches",
        )
    )
    video_processor = getattr(processor, "video_processor", None)
    if video_processor is not None:
        rows.append(("Frames per video (processor default)", _sampling_text(video_processor)))
    rows.append(
        ("Temporal positions", f"learned for {vision.num_frames} frames, interpolated for longer or shorter videos")
    )
    return rows


def _architecture(model: PreTrainedModel, processor: ProcessorMixin | None) -> list[tuple[str, str]]:
    config = model.config
    vision = config.vision_config
    text = config.text_config
    rows = _video_encoder_rows(vision, processor)
    rows.append(
        (
            "Token masking (training)",
            f"{vision.mask_ratio:.0%} of the video tokens dropped ({_code(vision.mask_type)}); none at inference",
        )
    )
    rows.append(("Video pooling", _code(vision.pooling)))
    if getattr(vision, "adapter_bottleneck", None):
        rows.append(
            ("Adapters", f"MLP adapters after every feed-forward block, bottleneck {vision.adapter_bottleneck}")
        )
    rows.append(
        (
            "Text encoder",
            f"{_code(text.model_type)}, {_count(text.num_hidden_layers, 'layer')}, width {text.hidden_size}, "
            f"{_code(config.text_pooling)} pooling",
        )
    )
    rows.append(("Joint embedding", f"{config.projection_dim} dimensions, L2-normalised"))
    loss = "sigmoid (SigLIP-style)" if config.loss_type == "sigmoid" else "contrastive InfoNCE, learnable temperature"
    rows.append(("Training loss", loss))
    rows.append(("Parameters", _number(model.num_parameters())))
    return rows


def _video_to_text_architecture(model: PreTrainedModel, processor: ProcessorMixin | None) -> list[tuple[str, str]]:
    config = model.config
    text = config.text_config
    rows = _video_encoder_rows(config.vision_config, processor)
    rows.append(("Token masking", f"{config.mask_ratio:.0%} of the video tokens dropped, in training and at inference"))
    rows.append(
        (
            "Visual tokens",
            f"Perceiver resampler, {_count(config.resampler_depth, 'layer')}, width {config.resampler_width}: "
            f"{config.resampler_num_latents} latents whatever the number of frames (tokens pooled over time first)",
        )
    )
    every = "every" if config.cross_attention_every == 1 else f"every {config.cross_attention_every}th"
    rows.append(
        (
            "Language model",
            f"{_code(text.model_type)}, {_count(text.num_hidden_layers, 'layer')}, width {text.hidden_size}; "
            f"gated cross-attention to the visual tokens before {every} layer"
            + (" (with a gated feed-forward block)" if config.cross_attention_ffn else ""),
        )
    )
    frozen = [
        name
        for name, flag in (
            ("video encoder", config.freeze_vision_model),
            ("language model", config.freeze_language_model),
        )
        if flag
    ]
    trained = model.num_parameters(only_trainable=True)
    rows.append(
        (
            "Parameters",
            f"{_number(model.num_parameters())}, of which {_number(trained)} trained"
            + (f" ({' and '.join(frozen)} frozen)" if frozen else ""),
        )
    )
    return rows


def _sampling_text(video_processor) -> str:
    return video_processor.describe_sampling()


def _training(run: RunInfo | None, options: ModelCardOptions) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    recipe = run.recipe if run is not None else {}
    optim = recipe.get("optim") or {}
    data = recipe.get("data") or {}
    adaptation = recipe.get("adaptation") or {}
    model = recipe.get("model") or {}
    steps = run.final_step if run is not None and run.final_step else optim.get("max_steps")
    if steps:
        rows.append(("Optimizer steps", f"{steps:,}"))
    if optim.get("batch_size"):
        accumulation = optim.get("gradient_accumulation_steps", 1) or 1
        extra = f" x {accumulation} accumulation steps" if accumulation > 1 else ""
        rows.append(("Batch size per process", f"{optim['batch_size']}{extra}"))
    if optim.get("learning_rate") is not None:
        rows.append(
            (
                "Learning rate",
                f"{optim['learning_rate']:g} (warm-up {optim.get('warmup_steps', 0)} steps, "
                f"weight decay {optim.get('weight_decay', 0):g})",
            )
        )
    if optim.get("mixed_precision"):
        rows.append(("Mixed precision", _code(optim["mixed_precision"])))
    if data.get("num_frames"):
        rows.append(("Training clips", f"{data['num_frames']} frames at {data.get('fps', 1.0)} fps"))
    if adaptation.get("method"):
        rows.append(("Trained parameters", _adaptation_text(adaptation)))
    if model.get("init_from"):
        rows.append(("Initialised from", _inline(model["init_from"])))
    if options.hardware:
        rows.append(("Hardware", _inline(options.hardware)))
    elif run is not None:
        rows.append(("Hardware", "not recorded"))
    if run is not None and run.peak_memory_gb:
        rows.append(("Peak memory per process", f"{run.peak_memory_gb:.2f} GiB"))
    if run is not None and run.videos_per_second:
        rows.append(("Throughput (end of training)", f"{run.videos_per_second:.1f} videos/s"))
    return rows


def _adaptation_text(adaptation: Mapping[str, Any]) -> str:
    method = adaptation.get("method", "full")
    if method == "last_layers":
        layers = _count(adaptation.get("trainable_last_layers", 4), "video encoder layer")
        text = f"last {layers} ({_code(method)})"
    elif method == "adapters":
        text = f"MLP adapters, bottleneck {adaptation.get('adapter_bottleneck', 64)} ({_code(method)})"
    elif method == "lora":
        text = f"LoRA rank {adaptation.get('lora_rank', 8)}, merged into the weights ({_code(method)})"
    elif method == "temporal":
        text = f"temporal attention blocks only ({_code(method)})"
    else:
        text = f"all video encoder parameters ({_code(method)})"
    frozen = adaptation.get("freeze_text", method != "full")
    return text + ("; text encoder frozen" if frozen else "; text encoder trained")


def _default_stages(model: PreTrainedModel, run: RunInfo | None) -> list[str]:
    if run is None or not run.recipe:
        return []
    recipe = run.recipe
    data = recipe.get("data") or {}
    adaptation = recipe.get("adaptation") or {}
    init_from = (recipe.get("model") or {}).get("init_from")
    steps = run.final_step or (recipe.get("optim") or {}).get("max_steps")
    start = f"Continued from {_code(init_from)}" if init_from else "Trained from the initial weights"
    frames = data.get("num_frames", model.config.vision_config.num_frames)
    images = "; image-text pairs trained alongside" if data.get("image_manifest") else ""
    return [
        f"{start}: {frames}-frame clips at {data.get('fps', 1.0)} fps, "
        f"{model.config.vision_config.mask_ratio:.0%} token masking, {_adaptation_text(adaptation)}"
        + (f", {steps:,} steps" if steps else "")
        + images
    ]


def _training_data_text(options: ModelCardOptions, run: RunInfo | None) -> str | None:
    if options.training_data:
        return _block(options.training_data)
    data = (run.recipe.get("data") or {}) if run is not None else {}
    if not data.get("train_manifest"):
        return None
    text = f"video-caption pairs listed in {_code(Path(data['train_manifest']).name)}"
    if data.get("image_manifest"):
        text += f", plus image-caption pairs from {_code(Path(data['image_manifest']).name)}"
    if (data.get("synthetic") or {}).get("num_videos"):
        text += " (synthetic videos generated by the training recipe)"
    return text + "."


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid Hub model id with a namespace (`namespace/name`), else a ValueError naming it."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"invalid Hub repo_id {repo_id!r}: {error}") from None
    # The validator also accepts a bare name; the card's snippets and the push need the namespace.
    if repo_id.count("/") != 1:
        raise ValueError(f"repo_id must look like 'namespace/name', got {repo_id!r}")
    return repo_id


def hub_model_id(reference: Any) -> str | None:
    """`reference` if it names a Hub model (`namespace/name`, not an existing local path), else None: what a card's
    `base_model` may hold for a checkpoint converted from, or initialised with, that model."""
    if not isinstance(reference, str) or Path(reference).exists():
        return None
    try:
        return check_repo_id(reference)
    except ValueError:
        return None


def _placeholder_repo_id(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "videofirst-model"
    slug = re.sub(r"([-.])[-.]+", r"\1", slug)  # the Hub refuses '--' and '..'
    return f"your-username/{slug[:90].rstrip('-.')}"


def card_for_repo(card: str, repo_id: str) -> str:
    """The card text with its usage snippets pointed at `repo_id` when it was rendered for another (or a
    placeholder) repo id."""
    match = _REPO_ID_MARKER_PATTERN.search(card)
    if match is None or match.group(1) == repo_id:
        return card
    card = card.replace(f'"{match.group(1)}"', f'"{repo_id}"')
    return card.replace(match.group(0), _REPO_ID_MARKER.format(repo_id=repo_id))


def is_video_to_text(model: PreTrainedModel) -> bool:
    """Whether `model` is the video-to-text model (else the video-text dual encoder)."""
    return isinstance(model.config, VideoFirstVideoToTextConfig)


def render_model_card(
    model: PreTrainedModel,
    processor: ProcessorMixin | None = None,
    *,
    options: ModelCardOptions | None = None,
    results: Any = None,
    run: RunInfo | None = None,
) -> ModelCard:
    """The model card of `model` (the dual encoder or the video-to-text model): metadata with a `model-index` of
    `results`, and the body from the template of the model's kind.

    `results` is anything `load_results` reads. `run` adds what the training run recorded.
    """
    options = options or ModelCardOptions()
    video_to_text = is_video_to_text(model)
    benchmarks = load_results(results)
    config = model.config
    model_name = options.model_name or (options.repo_id.split("/")[-1] if options.repo_id else None)
    if video_to_text:
        model_name = model_name or f"VideoFirst video-to-text ({config.text_config.model_type} language model)"
    model_name = model_name or f"VideoFirst {config.vision_config.attention_type} video-text encoder"
    repo_id = check_repo_id(options.repo_id or _placeholder_repo_id(model_name))
    pipeline_tag = options.pipeline_tag or (VIDEO_TO_TEXT_PIPELINE_TAG if video_to_text else PIPELINE_TAG)

    tags = list(dict.fromkeys([*(VIDEO_TO_TEXT_TAGS if video_to_text else DEFAULT_TAGS), *options.tags]))
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        license=options.license,
        language=options.language,
        tags=tags,
        datasets=list(options.datasets) or None,
        base_model=options.base_model,
        model_name=model_name,
        eval_results=eval_results(benchmarks, model_name) or None,
    )
    video_processor = getattr(processor, "video_processor", None)
    fields = {
        "title": _inline(model_name),
        "description": _block(options.description) if options.description else None,
        "training": _training(run, options),
        "training_data": _training_data_text(options, run),
        "stages": [_block(stage) for stage in options.stages]
        if options.stages is not None
        else _default_stages(model, run),
        "results": [
            {
                "dataset": _inline(result.dataset),
                "task_name": TASKS[result.task][1],
                "split": _inline(result.split) if result.split else None,
                "rows": [(metric_name(key), metric_display(key, value)) for key, value in result.metrics.items()],
            }
            for result in benchmarks
        ],
        "repo_id": repo_id,
        "sampling": _sampling_text(video_processor) if video_processor is not None else "the frames given",
        "has_processor": processor is not None,
        "pipeline_tag": pipeline_tag,
        "model_frames": config.vision_config.num_frames,
        "image_size": config.vision_config.image_size,
        "limitations": [_block(item) for item in options.limitations],
    }
    attention = _ATTENTION_SHORT.get(config.vision_config.attention_type, config.vision_config.attention_type)
    if video_to_text:
        template = VIDEO_TO_TEXT_CARD_TEMPLATE
        fields.update(
            summary=(
                f"A video-to-text model: a VideoFirst video encoder ({attention} attention over tubelets), a Perceiver "
                f"resampler that turns its tokens into {config.resampler_num_latents} visual tokens, and a "
                f"{_code(config.text_config.model_type)} language model that reads them through gated "
                f"cross-attention layers. It writes captions and summaries of videos, and scores answers to "
                f"questions about them."
            ),
            architecture=_video_to_text_architecture(model, processor),
        )
    else:
        template = CARD_TEMPLATE
        sigmoid = config.loss_type == "sigmoid"
        fields.update(
            summary=(
                f"A video-first video-text dual encoder: a ViT with {attention} attention over tubelets, trained "
                f"contrastively against a text encoder. Videos and texts map to one {config.projection_dim}-"
                f"dimensional space for zero-shot text-to-video retrieval and video classification."
            ),
            architecture=_architecture(model, processor),
            projection_dim=config.projection_dim,
            score_function="sigmoid()" if sigmoid else "softmax(dim=-1)",
            score_note=(
                "Zero-shot scores are independent sigmoid probabilities per text, calibrated only as well as the "
                "training data allows."
                if sigmoid
                else "Zero-shot scores only rank the candidate texts against each other: the softmax makes them sum "
                "to one over the labels given, so they are not absolute probabilities."
            ),
        )
    card = ModelCard.from_template(
        card_data, template_str=(hub_cards_dir() / template).read_text(encoding="utf-8"), **fields
    )
    card.text = card.text.rstrip("\n") + "\n\n" + _REPO_ID_MARKER.format(repo_id=repo_id) + "\n"
    return card
