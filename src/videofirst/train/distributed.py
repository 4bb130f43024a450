"""Scale-out pieces the training loops share: FSDP2 (also on CPU process groups), DDP's options, compiling.

- `enable_fsdp2_on_cpu`: accelerate (1.16) promotes a process group to FSDP only on accelerator devices (its
  `AcceleratorState` keeps a gloo `MULTI_CPU` group as plain DDP and drops the FSDP plugin without a word). An
  accelerate FSDP2 config launched on CPU processes is switched to FSDP2 here, with a warning, so the same config
  and the same accelerate code (sharded `save_state` / `load_state`, optimizer re-binding) run on CPU processes
  as on GPUs.
- `shard_model`: `fully_shard` of the layers the config names and of the rest, keeping the scalar temperature out
  (fully_shard refuses scalars) with its gradient averaged by hand.
- `exportable_model`: the trained weights gathered into an ordinary module, for evaluation and
  export on the main process.
- `sharded_model_folder` / `load_sharded_model`: a sharded checkpoint's weights, read in one process (export).
- `ddp_kwargs`: DDP's options for a recipe (image co-training, frozen parts, activation checkpointing).
- `compile_towers`: `optim.compile`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

logger = logging.getLogger(__name__)

__all__ = [
    "compile_towers",
    "ddp_kwargs",
    "enable_fsdp2_on_cpu",
    "exportable_model",
    "load_sharded_model",
    "sharded_model_folder",
]

# What accelerate's `save_state` writes for the first model under FSDP with SHARDED_STATE_DICT.
SHARDED_MODEL_FOLDER = "pytorch_model_fsdp_0"


def enable_fsdp2_on_cpu(accelerator: Accelerator) -> bool:
    """Switch a CPU process group launched with an accelerate FSDP2 config (ACCELERATE_USE_FSDP) to FSDP2; returns
    whether it did. Call right after creating the `Accelerator`, before `prepare`. A no-op anywhere else."""
    state = accelerator.state
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return False
    if state.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()
    if plugin.fsdp_version != 2:
        raise ValueError(
            "FSDP on CPU processes is supported with FSDP2 only (`fsdp_version: 2` in the accelerate config); "
            f"the config asks for version {plugin.fsdp_version}."
        )
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    # Both singletons: every new `AcceleratorState()` copies the process-level `PartialState` over its own fields.
    PartialState().distributed_type = DistributedType.FSDP
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    logger.warning(
        "accelerate keeps CPU (gloo) process groups as DDP and ignores the FSDP config there; switched this "
        "%d-process CPU group to FSDP2 (fully_shard over %s) as the config asks.",
        accelerator.num_processes,
        plugin.transformer_cls_names_to_wrap,
    )
    return True


def shard_model(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module:
    """Under FSDP2, shard `model` with torch's `fully_shard` before `accelerator.prepare` (which then keeps it as
    is); elsewhere return it unchanged. Call before building the optimizer, so that it holds the sharded
    parameters.

    Why not leave it to accelerate: `fully_shard` refuses scalar parameters, and the temperature (`logit_scale`,
    `logit_bias`) is one. Each layer class the accelerate config names (`fsdp_transformer_layer_cls_to_wrap`) is
    its own unit, the rest of the model the root unit; the scalars (and parameters with fewer rows than processes)
    stay out of the sharding, replicated, and their gradients are averaged over processes by a hook (FSDP2
    averages the sharded ones the same way).
    """
    if not accelerator.is_fsdp2:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    plugin = accelerator.state.fsdp_plugin
    if not plugin.transformer_cls_names_to_wrap:
        raise ValueError(
            "FSDP2 needs `fsdp_transformer_layer_cls_to_wrap` in the accelerate config "
            "(VideoFirstEncoderLayer,BertLayer)."
        )
    # Resolves the class names (an error names a missing one); accelerate's own call in `prepare` is then a no-op,
    # as it would not recognise the classes once `fully_shard` has renamed them.
    plugin.set_auto_wrap_policy(model)
    layer_classes = tuple(plugin.auto_wrap_policy.keywords["transformer_layer_cls"])
    model = model.to(accelerator.device)
    kwargs = {
        "mesh": init_device_mesh(accelerator.device.type, (accelerator.num_processes,)),
        "reshard_after_forward": plugin.reshard_after_forward,
        "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),
        "offload_policy": plugin.cpu_offload,
    }
    world = accelerator.num_processes
    layers = [module for module in model.modules() if isinstance(module, layer_classes)]
    for layer in layers:
        fully_shard(layer, **kwargs)
    # Scalars cannot be sharded; a parameter with fewer rows than processes (the (1, S, D) position tables) would
    # leave a process an empty shard, whose AdamW step count the sharded optimizer save and load do not restore
    # (resume then drifted from the uninterrupted run). Both stay replicated, their gradients averaged.
    replicated = {param for param in model.parameters() if param.ndim == 0 or param.shape[0] < world}
    fully_shard(model, **{**kwargs, "reshard_after_forward": False}, ignored_params=replicated)

    def average_gradient(param: torch.Tensor) -> None:
        torch.distributed.all_reduce(param.grad)  # sum: gloo has no average
        param.grad.div_(world)

    for param in replicated:
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(average_gradient)
    return model


def compile_towers(model: torch.nn.Module, backend: str = "inductor") -> torch.nn.Module:
    """Compile the vision and text towers in place (`Module.compile`: parameter names, checkpoints and the DDP /
    FSDP2 wrappers are unchanged). `dynamic=None`: a dimension that changes between steps (kept tokens under
    masking, frames, the last smaller batch) is recompiled once as dynamic, not once per new size. Graph breaks
    are allowed (`fullgraph=False`): the towers run data-dependent masking code."""
    for tower in (model.vision_model, model.text_model):
        tower.compile(backend=backend, dynamic=None, fullgraph=False)
    return model


def sharded_model_folder(checkpoint: str | Path) -> Path | None:
    """The sharded model folder of an accelerate checkpoint, or None if it holds a full model file."""
    folder = Path(checkpoint) / SHARDED_MODEL_FOLDER
    return folder if (folder / ".metadata").is_file() else None


def load_sharded_model(folder: str | Path) -> dict[str, torch.Tensor]:
    """All weights of a torch.distributed.checkpoint folder (as accelerate's FSDP `save_state` writes it), read in
    this one process without a process group."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as scratch:
        merged = Path(scratch) / "model.pt"
        dcp_to_torch_save(folder, merged)
        state = torch.load(merged, map_location="cpu", weights_only=True)
    # accelerate saves the model's state under the key "model".
    state = state.get("model", state)
    return {name: tensor for name, tensor in state.items() if torch.is_tensor(tensor)}


def exportable_model(model: torch.nn.Module, accelerator: Accelerator) -> torch.nn.Module | None:
    """The trained model as an ordinary module to export on the main process (None on the others). Every process
    must call it: under FSDP2 the shards are gathered into a fresh, unsharded copy."""
    if not accelerator.is_fsdp2:
        return accelerator.unwrap_model(model)
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule

    weights = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not accelerator.is_main_process:
        return None
    # fully_shard swaps the class for a subclass of (FSDPModule, original class); rebuild the original one.

    original = next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))
    plain = original(model.config)
    plain.load_state_dict(weights, strict=True)
    return plain


def ddp_kwargs(recipe) -> DistributedDataParallelKwargs:
    """DDP's options for a recipe (any `videofirst.recipe.Recipe`), chosen rather than left to defaults:

    - `find_unused_parameters` only with image co-training (`data.image_manifest`): a video forward pass leaves
      the 2D patch kernel without a gradient and an image pass the tubelet kernel and temporal positions, and DDP
      must be told so (it then walks the graph after every forward pass, which costs time, hence not by default).
      Frozen parts (`requires_grad=False`: frozen text tower, tubelet kernel, lower layers) are not DDP's
      concern: it only registers trainable parameters. The 2D kernel of video-only runs is frozen by
      `videofirst.adaptation`, so it is not an unused parameter there.
    - `static_graph=False`: activation checkpointing here is transformers' non-reentrant one, which replays the
      forward inside backward without changing which parameters get gradients, so DDP needs no static-graph
      mode for it; and with images the set of used parameters alternates between the two passes of a step,
      which a static graph would forbid.
    """
    images = getattr(recipe.data, "image_manifest", None) is not None
    return DistributedDataParallelKwargs(find_unused_parameters=images, static_graph=False)
