"""Evaluation results and run records as the model card reads them.

Results use `videofirst.evaluation.metrics`'s metric names and fractions (`t2v_recall@1`, `top1_accuracy`,
`accuracy`, ...) and the captioning metrics (`rougeL`, `cider`); they become the card's `model-index` under task types
from the Hub's task list. The same evaluation given twice (a run's last held-out evaluation and `training/evaluate.py`
on the same manifest) is listed once (`with_run_eval`). `RunInfo` is what a training run folder recorded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult

__all__ = [
    "TASKS",
    "BenchmarkResult",
    "RunInfo",
    "eval_results",
    "load_results",
    "metric_display",
    "metric_name",
    "run_eval_results",
    "with_run_eval",
]

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


@dataclass
class BenchmarkResult:
    """Metrics of one evaluation set, with `videofirst.evaluation.metrics`'s names (fractions for recall and
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


def metric_name(key: str) -> str:
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


def metric_display(key: str, value: float) -> str:
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
                    metric_name=metric_name(key),
                    metric_value=value,
                )
            )
    return entries


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
