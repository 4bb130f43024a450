"""`evaluate` modules for VideoFirst evaluation, shipped inside the package.

Each module is a single file defining one `evaluate.Metric`; `evaluate.load` takes the path of the file::

    import evaluate
    from videofirst.metrics import metric_path

    retrieval = evaluate.load(metric_path("video_text_retrieval"))   # .../videofirst/metrics/video_text_retrieval.py

Loading from a local path never touches the network. The classes can also be used directly
(`from videofirst.metrics import VideoTextRetrieval`), and the math behind them is plain functions in
`videofirst.evaluation.metrics`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

#: Module file stem -> metric class name.
METRICS: dict[str, str] = {
    "video_text_retrieval": "VideoTextRetrieval",
    "multiple_choice_qa": "MultipleChoiceQA",
    "zero_shot_classification": "ZeroShotClassification",
    "video_captioning": "VideoCaptioning",
    "event_sequence": "EventSequence",
}

__all__ = ["METRICS", "load", "metric_path", *METRICS.values()]


def metric_path(name: str) -> str:
    """Absolute path of the metric's `.py` file, the form `evaluate.load` accepts for local modules."""
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; available: {sorted(METRICS)}.")
    return str(Path(__file__).resolve().parent / f"{name}.py")


def load(name: str, **kwargs: Any):
    """`evaluate.load(metric_path(name), **kwargs)`."""
    import evaluate

    return evaluate.load(metric_path(name), **kwargs)


def __getattr__(name: str) -> Any:
    # Import the classes lazily: `evaluate` and `datasets` are slow to import and most users only need paths.
    for module, class_name in METRICS.items():
        if name == class_name:
            return getattr(importlib.import_module(f"{__name__}.{module}"), class_name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
