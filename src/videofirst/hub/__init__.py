"""Checkpoints in and out: inflating image-text checkpoints, exporting publishable folders, model cards and
pushes to the Hugging Face Hub.

Modules: `conversion` (CLIP / SigLIP to VideoFirst), `export` (a model to a folder that loads anywhere),
`publishing` (results, model cards, Hub files, pushes).
"""

from videofirst.hub.export import export_checkpoint
from videofirst.hub.publishing import ModelCardOptions, push_to_hub, register_pipelines, render_model_card

__all__ = ["ModelCardOptions", "export_checkpoint", "push_to_hub", "register_pipelines", "render_model_card"]
