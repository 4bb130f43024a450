"""Exporting a training run: its final export, or one of its training checkpoints, rebuilt from the run's recipe.

`export_run(source, out_dir)` writes the same publishable folder as `videofirst.hub.export_checkpoint`, with the
run's recipe, log and evaluation results in the model card.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from videofirst.adaptation import apply_adaptation, merge_adaptation
from videofirst.hub.cards import ModelCardOptions, hub_model_id
from videofirst.hub.export import export_checkpoint
from videofirst.hub.results import RunInfo, load_results, with_run_eval
from videofirst.modeling.modeling_videofirst import VideoFirstModel
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.recipe import load_recipe
from videofirst.train.checkpointing import CheckpointError, verify
from videofirst.train.distributed import load_sharded_model, sharded_model_folder
from videofirst.train.setup import build_model, build_processor

__all__ = ["export_run"]

_TRAINER_STATE = "trainer_state.json"
logger = logging.getLogger(__name__)


def export_run(
    source: str | Path,
    output_dir: str | Path,
    *,
    results: Any = None,
    card: ModelCardOptions | None = None,
    include_run_eval: bool = True,
    overwrite: bool = False,
) -> Path:
    """Turn a training run, its exported model, or one of its training checkpoints into a publishable folder.

    `source` is one of:

    * a run folder (`recipe.yaml`, `metrics.jsonl`, `export/`): its final export, or its latest training
      checkpoint when the run has not exported yet;
    * an exported checkpoint folder (`config.json`); if it sits in a run folder (`<run>/export`) the run's record
      is used too;
    * a training checkpoint `<run>/checkpoints/step_XXXXXXXX` (accelerate state of a single-process, DDP, FSDP2 or
      plain-CPU run): the model is rebuilt from the run's recipe and loaded with that step's weights.

    The card gets the run's recipe and log, `results` (files or records, see
    `videofirst.hub.results.load_results`) and,
    with `include_run_eval`, the run's last held-out evaluation.
    """
    source = Path(source)
    output_dir = Path(output_dir)
    model, processor, run_dir = _load_source(source)
    _prepare_output(output_dir, source, overwrite)
    run = RunInfo.from_run_dir(run_dir) if run_dir is not None else None
    if run is not None and (source / _TRAINER_STATE).is_file():
        run.final_step = json.loads((source / _TRAINER_STATE).read_text()).get("step", run.final_step)
    benchmarks = load_results(results)
    card = card or ModelCardOptions()
    if card.base_model is None and run is not None:
        card = dataclasses.replace(card, base_model=hub_model_id((run.recipe.get("model") or {}).get("init_from")))
    if include_run_eval and run_dir is not None and not (source / _TRAINER_STATE).is_file():
        benchmarks = with_run_eval(benchmarks, run_dir)
    return export_checkpoint(model, processor, output_dir, card=card, results=benchmarks, run=run)


def _prepare_output(output_dir: Path, source: Path, overwrite: bool) -> None:
    # A run folder may receive the export (e.g. <run>/hub); the model folder it is read from may not.
    model_dir = (source / "export" if (source / "recipe.yaml").is_file() else source).resolve()
    output = output_dir.resolve()
    if output in (source.resolve(), model_dir) or model_dir in output.parents:
        raise ValueError(f"the output folder {output_dir} must lie outside the checkpoint it is exported from")
    if output_dir.exists() and any(output_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{output_dir} is not empty; pass overwrite=True (--overwrite) to replace it")
        if not (output_dir / "config.json").is_file():
            raise FileExistsError(f"{output_dir} does not look like an exported checkpoint; refusing to delete it")
        shutil.rmtree(output_dir)


def _load_source(source: Path):
    """(model, processor, run folder or None) for a run folder, an exported folder or a training checkpoint."""
    if not source.is_dir():
        raise FileNotFoundError(f"{source} is not a folder")
    if (source / "recipe.yaml").is_file():
        run_dir = source
        if (source / "export" / "config.json").is_file():
            source = source / "export"
        else:
            source = _newest_valid_checkpoint(run_dir)
    if (source / _TRAINER_STATE).is_file():
        problem = verify(source)
        if problem is not None:
            raise CheckpointError(f"refusing to export {source}: {problem}")
        return (*_load_training_checkpoint(source), source.parent.parent)
    if (source / "config.json").is_file():
        model = VideoFirstModel.from_pretrained(source)
        processor = None
        if (source / "processor_config.json").is_file():
            processor = VideoFirstProcessor.from_pretrained(source)
        run_dir = source.parent if (source.parent / "recipe.yaml").is_file() else None
        return model, processor, run_dir
    raise FileNotFoundError(
        f"{source} is neither a run folder (recipe.yaml), an exported checkpoint (config.json) nor a training "
        f"checkpoint ({_TRAINER_STATE})"
    )


def _newest_valid_checkpoint(run_dir: Path) -> Path:
    """The run's newest checkpoint whose files match its manifest; newer damaged ones are named in a warning."""
    checkpoints = sorted((run_dir / "checkpoints").glob("step_????????"), reverse=True)
    problems = []
    for checkpoint in checkpoints:
        problem = verify(checkpoint)
        if problem is None:
            if problems:
                logger.warning("Exporting %s; newer checkpoints are damaged: %s", checkpoint.name, "; ".join(problems))
            return checkpoint
        problems.append(problem)
    detail = f" (damaged: {'; '.join(problems)})" if problems else ""
    raise FileNotFoundError(f"run {run_dir} has neither an export/ folder nor a valid checkpoint{detail}")


def _load_training_checkpoint(checkpoint: Path):
    """Rebuild the run's model as `pretrain` did (recipe, adaptation) and load the checkpoint's weights into it."""
    run_dir = checkpoint.parent.parent
    if not (run_dir / "recipe.yaml").is_file():
        raise FileNotFoundError(f"{checkpoint} is not inside a run folder: {run_dir / 'recipe.yaml'} is missing")
    weights = sharded_model_folder(checkpoint) or checkpoint / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(
            f"{weights} not found: accelerate checkpoints with one model saved with safetensors (single process, "
            "DDP) or sharded by FSDP are supported (for DeepSpeed runs, export the run's final export/ folder)"
        )
    recipe = load_recipe(run_dir / "recipe.yaml")
    tokenizer = Path(recipe.data.tokenizer) if recipe.data.tokenizer else run_dir / "tokenizer"
    processor = build_processor(recipe, tokenizer)
    model = build_model(recipe, processor)
    apply_adaptation(model, recipe.adaptation, train_images=recipe.data.image_manifest is not None)
    state = load_sharded_model(weights) if weights.is_dir() else load_file(str(weights))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not match the run's model: "
            f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}"
        )
    model = merge_adaptation(model)
    model.eval()
    return model, processor
