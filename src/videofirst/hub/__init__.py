"""Checkpoints in and out: inflating image-text checkpoints, exporting publishable folders, model cards and
pushes to the Hugging Face Hub.

Modules: `conversion` (CLIP / SigLIP to VideoFirst), `export` (a model of either kind to a folder that loads
anywhere), `results` (evaluation results and run records), `cards` (model cards), `files` (the pipelines, handler and
requirements of an export), `push` (upload to the Hub), `cli` (the card options of `training/export.py` and
`training/push.py`).
"""

from videofirst.hub.cards import ModelCardOptions, render_model_card
from videofirst.hub.export import export_checkpoint, export_video_to_text
from videofirst.hub.files import register_pipelines
from videofirst.hub.push import push_to_hub

__all__ = [
    "ModelCardOptions",
    "export_checkpoint",
    "export_video_to_text",
    "push_to_hub",
    "register_pipelines",
    "render_model_card",
]
