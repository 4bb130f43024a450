"""Command-line options shared by `training/export.py` and `training/push.py`: the model card's fields and the
evaluation results that go into it."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterable
from pathlib import Path

from videofirst.hub.cards import ModelCardOptions
from videofirst.hub.results import BenchmarkResult, load_results

__all__ = ["add_card_arguments", "card_options_from_args", "results_from_cli"]


def add_card_arguments(parser: argparse.ArgumentParser) -> None:
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


def card_options_from_args(args: argparse.Namespace, repo_id: str | None = None) -> ModelCardOptions:
    """The card options given on the command line (`add_card_arguments`), for the repo `repo_id`."""
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
