"""Publishing VideoFirst checkpoints on the Hugging Face Hub: model cards, Hub files and pushes.

```python
from videofirst import ModelCardOptions, export_run, push_to_hub

folder = export_run("runs/long_stage", "out/videofirst-long", results="eval/msrvtt.json",
                    card=ModelCardOptions(repo_id="me/videofirst-long", hardware="8x A100 80GB"))
push_to_hub(folder, "me/videofirst-long", private=True, commit_message="Long stage, 256 frames")
```

An exported folder holds the weights (safetensors), config, processor and tokenizer, the `modeling/` code as
remote code, the pipelines (`pipeline_videofirst.py`, named in `config.json`'s `custom_pipelines`), a model card
(`README.md`) and the Inference Endpoints handler (`handler.py` + `requirements.txt`).

Model cards are rendered with `huggingface_hub`'s card API from the `hub_cards/model_card.md` template. Metadata is
built as `ModelCardData` and serialised by the YAML dumper, so user text cannot break the front matter; text that
reaches the Markdown body is escaped (no HTML, code fences, table breaks or links), and repo ids that reach the usage
snippets must be valid Hub repo ids. Evaluation results use `videofirst.evaluation.zero_shot`'s metric names and
fractions (`t2v_recall@1`, `top1_accuracy`, `accuracy`, ...) in the card's `model-index`, under task types from the
Hub's task
list; the same evaluation given twice (a run's last held-out evaluation and `training/evaluate.py` on the same
manifest) is listed once (`with_run_eval`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.hf_api import CommitInfo
from transformers import PreTrainedModel, ProcessorMixin

from videofirst.modeling import pipeline_videofirst

__all__ = [
    "BenchmarkResult",
    "ModelCardOptions",
    "RunInfo",
    "add_card_arguments",
    "card_options_from_args",
    "eval_results",
    "hub_cards_dir",
    "hub_model_id",
    "load_results",
    "push_to_hub",
    "register_pipelines",
    "render_model_card",
    "results_from_cli",
    "run_eval_results",
    "with_run_eval",
    "write_hub_files",
]

CARD_TEMPLATE = "model_card.md"
HANDLER_FILE = "handler.py"
REQUIREMENTS_FILE = "requirements.txt"
PIPELINE_MODULE = "pipeline_videofirst"
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
# Files left out of a push: caches and editor/OS debris that may sit in an export folder.
_PUSH_IGNORED = (".git", ".cache", "__pycache__", ".DS_Store")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REPO_ID_MARKER = re.compile(r"<!-- videofirst-card repo_id=([A-Za-z0-9._/-]+) -->")

_TASK_ALIASES = {"mcq": "multiple_choice", "multiple-choice": "multiple_choice"}
# The model-index task types are ids of the Hub's task list (huggingface.js `packages/tasks/src/pipelines.ts`); the
# Hub has no video retrieval task, so retrieval results are filed under text retrieval (texts retrieve videos and
# videos texts), named precisely in the task name.
TASKS = {
    "retrieval": ("text-retrieval", "Zero-shot text-video retrieval"),
    "classification": ("video-classification", "Zero-shot video classification"),
    "multiple_choice": ("multiple-choice", "Zero-shot multiple-choice video QA"),
    "summarization": ("video-text-to-text", "Video summarization (video-to-text)"),
}
# The card's pipeline tag: a Hub task id that the checkpoint's own `custom_pipelines` also serve (`HUB_TASK` of
# `pipeline_videofirst`), so `pipeline(<tag>, model=repo, trust_remote_code=True)` builds the shipped zero-shot
# classifier, not a built-in pipeline that cannot load this model.
PIPELINE_TAG = "video-classification"


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
    checkout = Path(__file__).resolve().parents[2] / "hub_cards"
    if (checkout / CARD_TEMPLATE).is_file():
        return checkout
    raise FileNotFoundError(
        "hub_cards/ (model-card template and endpoint handler) not found: install videofirst with its package data"
    )


# --------------------------------------------------------------------------------------------------------------
# Evaluation results
# --------------------------------------------------------------------------------------------------------------


@dataclass
class BenchmarkResult:
    """Metrics of one evaluation set, with `videofirst.evaluation.zero_shot`'s names (fractions for recall and
    accuracy).

    `task` is `"retrieval"`, `"classification"` or `"multiple_choice"`; inferred from the metric names when None.
    `dataset_type` is the dataset's Hub id or a short type (default: a slug of `dataset`). `manifest` is the file
    the evaluation ran on, when known (it identifies the same evaluation arriving twice).
    """

    dataset: str
    metrics: dict[str, float]
    dataset_type: str | None = None
    split: str | None = None
    task: str | None = None
    manifest: str | None = None
    dataset_config: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, str) or not self.dataset.strip():
            raise ValueError(f"a result needs a dataset name, got {self.dataset!r}")
        metrics = {}
        for name, value in dict(self.metrics).items():
            # Reference numbers (chance level), bookkeeping (step) and non-numbers are not results of the model.
            if name.startswith("chance_") or name == "step" or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                metrics[str(name)] = float(value)
        if not metrics:
            raise ValueError(f"result for {self.dataset!r} has no numeric metrics")
        self.metrics = metrics
        if self.task is None:
            self.task = _infer_task(metrics)
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r} for {self.dataset!r}; expected one of {sorted(TASKS)}")
        if self.dataset_type is None:
            self.dataset_type = re.sub(r"[^a-z0-9]+", "-", self.dataset.lower()).strip("-") or "dataset"


def _infer_task(metrics: Mapping[str, float]) -> str:
    if any(name.startswith(("t2v_", "v2t_")) for name in metrics):
        return "retrieval"
    if any(re.fullmatch(r"top\d+_accuracy", name) for name in metrics):
        return "classification"
    if "accuracy" in metrics:
        return "multiple_choice"
    if "rougeL" in metrics or "cider" in metrics:
        return "summarization"
    raise ValueError(f"cannot tell the task from the metric names {sorted(metrics)}; pass `task`")


_CAPTION_METRIC_NAMES = {"rougeL": "Rouge-L", "cider": "CIDEr-D"}


def _metric_name(key: str) -> str:
    direction = {"t2v": "Text-to-video", "v2t": "Video-to-text"}
    match = re.fullmatch(r"(t2v|v2t)_recall@(\d+)", key)
    if match:
        return f"{direction[match.group(1)]} R@{match.group(2)}"
    match = re.fullmatch(r"(t2v|v2t)_(median|mean)_rank", key)
    if match:
        return f"{direction[match.group(1)]} {match.group(2)} rank"
    match = re.fullmatch(r"top(\d+)_accuracy", key)
    if match:
        return f"Top-{match.group(1)} accuracy"
    if key in _CAPTION_METRIC_NAMES:
        return _CAPTION_METRIC_NAMES[key]
    return key.replace("_", " ").capitalize()


def _metric_display(key: str, value: float) -> str:
    if key.endswith("_rank"):
        return f"{value:.1f}"
    if "recall@" in key or key.endswith("accuracy"):
        return f"{100 * value:.1f}%"
    return f"{value:.4g}"


def _result_from_mapping(item: Mapping[str, Any], default_name: str) -> BenchmarkResult:
    if "metrics" not in item:
        return BenchmarkResult(dataset=default_name, metrics=dict(item))
    # Records of training/evaluate.py also carry counts, arguments, timings...: only these fields reach the card.
    manifest = item.get("manifest")
    dataset = item.get("dataset") or (Path(str(manifest)).stem if manifest else default_name)
    task = item.get("task")
    return BenchmarkResult(
        dataset=dataset,
        metrics=dict(item["metrics"]),
        dataset_type=item.get("dataset_type"),
        split=item.get("split"),
        task=_TASK_ALIASES.get(task, task),
        manifest=str(manifest) if manifest else None,
        dataset_config=item.get("dataset_config"),
    )


def results_from_cli(items: Iterable[str]) -> list[BenchmarkResult]:
    """`--results` values: `PATH`, or `NAME=PATH` to name the dataset (e.g. `MSR-VTT=eval_retrieval_test.json`)."""
    results = []
    for item in items:
        name, _, path = item.partition("=")
        if path and not Path(item).exists():
            results += [
                dataclasses.replace(result, dataset=name, dataset_type=None) for result in load_results(Path(path))
            ]
        else:
            results += load_results(Path(item))
    return results


def load_results(source: Any) -> list[BenchmarkResult]:
    """Evaluation results from a file, a mapping or a list.

    Accepted: `BenchmarkResult`s; `{"dataset": ..., "metrics": {...}, "split": ..., "task": ...}` records (one, or
    a list that may mix files and records); `{dataset_name: {metric: value}}`; a flat metric mapping (named after
    the file); a `.jsonl` file with one record per line; a run folder or its `metrics.jsonl` (`run_eval_results`).
    """
    if source is None:
        return []
    if isinstance(source, BenchmarkResult):
        return [source]
    if isinstance(source, (list, tuple)):
        return [result for item in source for result in load_results(item)]
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            return run_eval_results(path)
        if path.name == "metrics.jsonl":
            return run_eval_results(path.parent)
        text = path.read_text()
        if path.suffix == ".jsonl":
            return [_result_from_mapping(json.loads(line), path.stem) for line in text.splitlines() if line.strip()]
        return _results_from_json(json.loads(text), path.stem)
    return _results_from_json(source, "evaluation")


def _results_from_json(data: Any, default_name: str) -> list[BenchmarkResult]:
    if isinstance(data, BenchmarkResult):
        return [data]
    if isinstance(data, list):
        return [r for item in data for r in _results_from_json(item, default_name)]
    if not isinstance(data, Mapping):
        raise ValueError(f"cannot read evaluation results from {type(data).__name__}")
    if "metrics" in data:
        return [_result_from_mapping(data, default_name)]
    if data and all(isinstance(value, Mapping) for value in data.values()):
        return [_result_from_mapping(value, str(name)) for name, value in data.items()]
    return [_result_from_mapping(data, default_name)]


def run_eval_results(run_dir: str | Path) -> list[BenchmarkResult]:
    """The last held-out evaluation logged in a training run's `metrics.jsonl` (`eval/...` keys), if any."""
    run_dir = Path(run_dir)
    log = run_dir / "metrics.jsonl"
    if not log.is_file():
        return []
    latest: dict[str, float] = {}
    for line in log.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        metrics = {key[len("eval/") :]: value for key, value in record.items() if key.startswith("eval/")}
        if metrics:
            latest = metrics
    if not latest:
        return []
    recipe = _read_recipe(run_dir)
    manifest = (recipe.get("data") or {}).get("eval_manifest") if recipe else None
    name = "Held-out set of the training run" + (f" ({Path(manifest).name})" if manifest else "")
    return [
        BenchmarkResult(
            dataset=name,
            metrics=latest,
            dataset_type="held-out",
            split="eval",
            manifest=str(manifest) if manifest else None,
        )
    ]


def with_run_eval(results: Iterable[BenchmarkResult], run_dir: str | Path) -> list[BenchmarkResult]:
    """`results` plus the run's own held-out evaluation (`run_eval_results`), each evaluation once.

    An evaluation of the run's held-out manifest given in `results` (e.g. `training/evaluate.py` on the exported
    model, then `--results eval.json`) is the same evaluation as the run's last one: it replaces it, under the run's
    name for that set unless it was named explicitly.
    """
    results = list(results)
    for run_result in run_eval_results(run_dir):
        same = [
            index
            for index, result in enumerate(results)
            if result.task == run_result.task and _same_manifest(result.manifest, run_result.manifest)
        ]
        if not same:
            results.append(run_result)
        for index in same:
            result = results[index]
            if result.manifest and result.dataset == Path(result.manifest).stem:  # named after the file: rename
                results[index] = dataclasses.replace(
                    result, dataset=run_result.dataset, dataset_type=run_result.dataset_type, split=run_result.split
                )
    return results


def _same_manifest(given: str | None, logged: str | None) -> bool:
    if not given or not logged:
        return False
    given_path, logged_path = Path(given), Path(logged)
    if given_path.exists() and logged_path.exists():
        return given_path.resolve() == logged_path.resolve()
    return given_path.name == logged_path.name  # recorded relative to another working directory


def eval_results(results: Iterable[BenchmarkResult], model_name: str) -> list[EvalResult]:
    """`huggingface_hub` `EvalResult`s (the card's `model-index`), one per metric; values stay fractions."""
    entries = []
    for result in results:
        task_type, task_name = TASKS[result.task]
        for key, value in result.metrics.items():
            entries.append(
                EvalResult(
                    task_type=task_type,
                    task_name=task_name,
                    dataset_type=result.dataset_type,
                    dataset_name=result.dataset,
                    dataset_config=result.dataset_config,
                    dataset_split=result.split,
                    metric_type=key,
                    metric_name=_metric_name(key),
                    metric_value=value,
                )
            )
    return entries


# --------------------------------------------------------------------------------------------------------------
# What the card says
# --------------------------------------------------------------------------------------------------------------


@dataclass
class RunInfo:
    """What a training run recorded: its recipe (`recipe.yaml`) and log (`metrics.jsonl`)."""

    recipe: dict[str, Any] = field(default_factory=dict)
    final_step: int | None = None
    peak_memory_gb: float | None = None
    videos_per_second: float | None = None

    @classmethod
    def from_run_dir(cls, run_dir: str | Path) -> RunInfo:
        run_dir = Path(run_dir)
        info = cls(recipe=_read_recipe(run_dir) or {})
        log = run_dir / "metrics.jsonl"
        if log.is_file():
            for line in log.read_text().splitlines():
                if not line.strip():
                    continue
                record = json.loads(line)
                if isinstance(record.get("step"), int):
                    info.final_step = max(info.final_step or 0, record["step"])
                if isinstance(record.get("peak_memory_gb"), (int, float)):
                    info.peak_memory_gb = max(info.peak_memory_gb or 0.0, float(record["peak_memory_gb"]))
                if isinstance(record.get("videos_per_second"), (int, float)):
                    info.videos_per_second = float(record["videos_per_second"])
        return info


def _read_recipe(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        return None
    recipe = yaml.safe_load(path.read_text())
    return recipe if isinstance(recipe, dict) else None


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
    pipeline_tag: str = PIPELINE_TAG
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


def _parameter_count(model: PreTrainedModel) -> str:
    count = sum(parameter.numel() for parameter in model.parameters())
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


def _architecture(model: PreTrainedModel, processor: ProcessorMixin | None) -> list[tuple[str, str]]:
    config = model.config
    vision = config.vision_config
    text = config.text_config
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
    rows.append(("Parameters", _parameter_count(model)))
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


def hub_model_id(reference: Any) -> str | None:
    """`reference` if it names a Hub model (`namespace/name`, not an existing local path), else None: what a card's
    `base_model` may hold for a checkpoint converted from, or initialised with, that model."""
    if not isinstance(reference, str) or not _REPO_ID.match(reference) or Path(reference).exists():
        return None
    return reference


def _placeholder_repo_id(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "videofirst-model"
    return f"your-username/{slug[:90]}"


def render_model_card(
    model: PreTrainedModel,
    processor: ProcessorMixin | None = None,
    *,
    options: ModelCardOptions | None = None,
    results: Any = None,
    run: RunInfo | None = None,
) -> ModelCard:
    """The model card of `model`: metadata with a `model-index` of `results`, and the body from the template.

    `results` is anything `load_results` reads. `run` adds what the training run recorded.
    """
    options = options or ModelCardOptions()
    benchmarks = load_results(results)
    config = model.config
    model_name = options.model_name or (options.repo_id.split("/")[-1] if options.repo_id else None)
    model_name = model_name or f"VideoFirst {config.vision_config.attention_type} video-text encoder"
    repo_id = options.repo_id or _placeholder_repo_id(model_name)
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"repo_id must look like 'namespace/name' (letters, digits, '.', '_', '-'), got {repo_id!r}")

    tags = list(dict.fromkeys([*DEFAULT_TAGS, *options.tags]))
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=options.pipeline_tag,
        license=options.license,
        language=options.language,
        tags=tags,
        datasets=list(options.datasets) or None,
        base_model=options.base_model,
        model_name=model_name,
        eval_results=eval_results(benchmarks, model_name) or None,
    )
    video_processor = getattr(processor, "video_processor", None)
    sigmoid = config.loss_type == "sigmoid"
    results_view = [
        {
            "dataset": _inline(result.dataset),
            "task_name": TASKS[result.task][1],
            "split": _inline(result.split) if result.split else None,
            "rows": [(_metric_name(key), _metric_display(key, value)) for key, value in result.metrics.items()],
        }
        for result in benchmarks
    ]
    stages = [_block(stage) for stage in options.stages] if options.stages is not None else _default_stages(model, run)
    summary = (
        f"A video-first video-text dual encoder: a ViT with "
        f"{_ATTENTION_SHORT.get(config.vision_config.attention_type, config.vision_config.attention_type)} "
        f"attention over tubelets, trained contrastively against a text encoder. Videos and texts map to one "
        f"{config.projection_dim}-dimensional space for zero-shot text-to-video retrieval and video classification."
    )
    template = (hub_cards_dir() / CARD_TEMPLATE).read_text(encoding="utf-8")
    card = ModelCard.from_template(
        card_data,
        template_str=template,
        title=_inline(model_name),
        summary=summary,
        description=_block(options.description) if options.description else None,
        architecture=_architecture(model, processor),
        training=_training(run, options),
        training_data=_training_data_text(options, run),
        stages=stages,
        results=results_view,
        repo_id=repo_id,
        sampling=_sampling_text(video_processor) if video_processor is not None else "the frames given",
        has_processor=processor is not None,
        pipeline_tag=options.pipeline_tag,
        model_frames=config.vision_config.num_frames,
        image_size=config.vision_config.image_size,
        projection_dim=config.projection_dim,
        score_function="sigmoid()" if sigmoid else "softmax(dim=-1)",
        score_note=(
            "Zero-shot scores are independent sigmoid probabilities per text, calibrated only as well as the "
            "training data allows."
            if sigmoid
            else "Zero-shot scores only rank the candidate texts against each other: the softmax makes them sum to "
            "one over the labels given, so they are not absolute probabilities."
        ),
        limitations=[_block(item) for item in options.limitations],
    )
    card.text = card.text.rstrip("\n") + f"\n\n<!-- videofirst-card repo_id={repo_id} -->\n"
    return card


# --------------------------------------------------------------------------------------------------------------
# Hub files of an exported folder
# --------------------------------------------------------------------------------------------------------------


def write_hub_files(
    output_dir: str | Path,
    model: PreTrainedModel,
    processor: ProcessorMixin | None,
    *,
    card: ModelCardOptions | bool = True,
    results: Any = None,
    run: RunInfo | None = None,
) -> None:
    """Add the Hub files to a folder written by `save_pretrained`: card, and with a processor the pipelines and
    the Inference Endpoints handler (both need the processor)."""
    output_dir = Path(output_dir)
    if processor is not None:
        shutil.copyfile(pipeline_videofirst.__file__, output_dir / f"{PIPELINE_MODULE}.py")
        config_path = output_dir / "config.json"
        config = json.loads(config_path.read_text())
        config["custom_pipelines"] = pipeline_videofirst.custom_pipelines_config()
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        assets = hub_cards_dir()
        for name in (HANDLER_FILE, REQUIREMENTS_FILE):
            shutil.copyfile(assets / name, output_dir / name)
    if card is not False:
        options = card if isinstance(card, ModelCardOptions) else None
        rendered = render_model_card(model, processor, options=options, results=results, run=run)
        rendered.save(output_dir / "README.md")


def register_pipelines() -> None:
    """Register the VideoFirst pipelines with transformers for in-memory models (`pipeline(task, model=model)`)."""
    pipeline_videofirst.register_pipelines()


# --------------------------------------------------------------------------------------------------------------
# Push
# --------------------------------------------------------------------------------------------------------------


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    delete_stale: bool = True,
    create_pr: bool = False,
) -> CommitInfo:
    """Upload an exported folder as one commit of the model repo `repo_id` (created if needed).

    `private` applies when the repo is created. A `revision` other than the default branch is created from the
    default branch's head if missing. Files of the repo that are not in `folder` are deleted in the same commit
    (`delete_stale`, except `.gitattributes`), so a re-pushed checkpoint never mixes with an older one; files
    whose content did not change are not uploaded again. The card's usage snippets are pointed at `repo_id`.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not an exported checkpoint (no config.json); export it first")
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"repo_id must look like 'namespace/name', got {repo_id!r}")
    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    repo_id = repo_url.repo_id or repo_id
    if revision not in (None, "main") and not create_pr:
        api.create_branch(repo_id, branch=revision, exist_ok=True)

    files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file() and not any(part in _PUSH_IGNORED for part in path.relative_to(folder).parts)
    )
    operations: list[CommitOperationAdd | CommitOperationDelete] = []
    for path in files:
        path_in_repo = path.relative_to(folder).as_posix()
        content: Path | bytes = path
        if path_in_repo == "README.md":
            content = _card_for_repo(path.read_text(encoding="utf-8"), repo_id).encode("utf-8")
        operations.append(CommitOperationAdd(path_in_repo=path_in_repo, path_or_fileobj=content))
    if delete_stale:
        local = {operation.path_in_repo for operation in operations}
        remote = api.list_repo_files(repo_id, revision=None if create_pr else revision)
        operations += [
            CommitOperationDelete(path_in_repo=name)
            for name in remote
            if name not in local and name != ".gitattributes"
        ]
    return api.create_commit(
        repo_id,
        operations=operations,
        commit_message=commit_message or f"Upload VideoFirst checkpoint from {folder.name}",
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
    )


def _card_for_repo(card: str, repo_id: str) -> str:
    """Points the card's snippets at `repo_id` when it was rendered for another (or a placeholder) repo id."""
    match = _REPO_ID_MARKER.search(card)
    if match is None or match.group(1) == repo_id:
        return card
    old = match.group(1)
    card = card.replace(f'"{old}"', f'"{repo_id}"')
    return card.replace(match.group(0), f"<!-- videofirst-card repo_id={repo_id} -->")


# --------------------------------------------------------------------------------------------------------------
# Command-line options shared by training/export.py and training/push.py
# --------------------------------------------------------------------------------------------------------------


def add_card_arguments(parser) -> None:
    """Adds the model-card options (`--model-name`, `--license`, `--dataset`, ...) to an argparse parser."""
    group = parser.add_argument_group("model card")
    group.add_argument("--model-name", help="title of the card and name in its model-index")
    group.add_argument("--description", help="a paragraph on what this checkpoint is for")
    group.add_argument("--license", default="apache-2.0", help="license id for the card metadata (default: apache-2.0)")
    group.add_argument("--language", action="append", help="language of the captions (repeatable), e.g. en")
    group.add_argument("--dataset", action="append", default=[], help="Hub id of a training dataset (repeatable)")
    group.add_argument("--base-model", help="Hub id of the image-text model this one was initialised from")
    group.add_argument("--tag", action="append", default=[], help="extra tag (repeatable)")
    group.add_argument("--training-data", help="what the model was trained on, in words")
    group.add_argument("--hardware", help="what it was trained on, e.g. '8x A100 80GB, 20 h'")
    group.add_argument("--stage", action="append", help="one training stage, in words (repeatable, in order)")
    group.add_argument("--limitation", action="append", default=[], help="an extra limitation (repeatable)")
    group.add_argument(
        "--results",
        action="append",
        default=[],
        help="evaluation results: a JSON/JSONL file of training/evaluate.py, or NAME=FILE to name the dataset "
        "(repeatable); they go into the card's model-index",
    )
    group.add_argument("--no-run-eval", action="store_true", help="leave the run's held-out evaluation out of the card")


def card_options_from_args(args, repo_id: str | None = None) -> ModelCardOptions:
    return ModelCardOptions(
        model_name=args.model_name,
        repo_id=repo_id,
        description=args.description,
        license=args.license,
        language=args.language,
        datasets=list(args.dataset),
        base_model=args.base_model,
        tags=list(args.tag),
        training_data=args.training_data,
        hardware=args.hardware,
        stages=args.stage,
        limitations=list(args.limitation),
    )
