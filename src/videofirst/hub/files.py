"""The Hub files of an exported folder, next to what `save_pretrained` wrote: the model card and, for the dual
encoder with its processor, the pipelines (`pipeline_videofirst.py`, named in `config.json`'s `custom_pipelines`) and
the Inference Endpoints handler (`handler.py` + `requirements.txt`)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, ProcessorMixin

from videofirst.hub.cards import ModelCardOptions, hub_cards_dir, is_video_to_text, render_model_card
from videofirst.hub.results import RunInfo
from videofirst.modeling import pipeline_videofirst

__all__ = ["HANDLER_FILE", "REQUIREMENTS_FILE", "register_pipelines", "write_hub_files"]

HANDLER_FILE = "handler.py"
REQUIREMENTS_FILE = "requirements.txt"
PIPELINE_MODULE = "pipeline_videofirst"


def write_hub_files(
    output_dir: str | Path,
    model: PreTrainedModel,
    processor: ProcessorMixin | None,
    *,
    card: ModelCardOptions | bool = True,
    results: Any = None,
    run: RunInfo | None = None,
) -> None:
    """Add the Hub files to a folder written by `save_pretrained`: the card, and `requirements.txt` (what the remote
    code needs). The dual encoder with a processor also gets the pipelines and the Inference Endpoints handler (both
    need the processor; they score videos against texts, which the video-to-text model does not do)."""
    output_dir = Path(output_dir)
    assets = hub_cards_dir()
    shutil.copyfile(assets / REQUIREMENTS_FILE, output_dir / REQUIREMENTS_FILE)
    if processor is not None and not is_video_to_text(model):
        shutil.copyfile(pipeline_videofirst.__file__, output_dir / f"{PIPELINE_MODULE}.py")
        config_path = output_dir / "config.json"
        config = json.loads(config_path.read_text())
        config["custom_pipelines"] = pipeline_videofirst.custom_pipelines_config()
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        shutil.copyfile(assets / HANDLER_FILE, output_dir / HANDLER_FILE)
    if card is not False:
        options = card if isinstance(card, ModelCardOptions) else None
        rendered = render_model_card(model, processor, options=options, results=results, run=run)
        rendered.save(output_dir / "README.md")


def register_pipelines() -> None:
    """Register the VideoFirst pipelines with transformers for in-memory models (`pipeline(task, model=model)`)."""
    pipeline_videofirst.register_pipelines()
