"""Inflating image–text checkpoints (CLIP, SigLIP) into VideoFirst video–text models.

The paper starts every video model from an image–text model: the ViT, its norms and its spatial position
embeddings are copied, the 2D patch kernel is inflated into the 3D tubelet kernel (I3D / ViViT style) and the
temporal position embeddings start at zero. The image path keeps the 2D kernel, so a converted model embeds
images exactly as its source does; the text tower and the projections come along unchanged, so the model is
immediately usable for zero-shot retrieval.

```python
from videofirst.hub.conversion import convert_image_text_model, convert_checkpoint
model = convert_image_text_model("path/to/clip", inflation="average", num_frames=16)
convert_checkpoint("path/to/clip", "out/videofirst-clip")   # weights, config, code, tokenizer / processor
```
"""

import copy
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from videofirst.hub.cards import ModelCardOptions, hub_model_id
from videofirst.hub.export import export_checkpoint
from videofirst.modeling.configuration_videofirst import VideoFirstConfig
from videofirst.modeling.modeling_videofirst import VideoFirstModel, VideoFirstVisionModel
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import VideoFirstVideoProcessor

INFLATION_MODES = ("average", "central")
POOLING_CHOICES = ("source", "mean")
SOURCE_TYPES = ("clip", "siglip")
# Vision options a conversion may set; everything else is dictated by the source ViT.
CONVERSION_VISION_OPTIONS = (
    "attention_type",
    "mask_ratio",
    "mask_type",
    "tubelet_size",
    "tubevit_kernels",
    "adapter_bottleneck",
    "attention_dropout",
)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)

Source = str | os.PathLike | PreTrainedModel


def inflate_patch_kernel(weight: torch.Tensor, kernel_size: Sequence[int], inflation: str = "average") -> torch.Tensor:
    """Turn a 2D patch kernel `(dim, channels, p, p)` into a 3D kernel `(dim, channels, t, h, w)`.

    `"average"` repeats it over the `t` frames divided by `t`; `"central"` puts it on frame `t // 2` (the
    later of the two middle frames for even `t`) with zeros elsewhere. Either way a static tubelet (one frame
    repeated) gives the patch's response. A kernel of another spatial size `h x w` is first resized
    bilinearly (antialiased when shrinking) and rescaled by `p^2 / (h w)`, which keeps its response to
    smooth image content.
    """
    if inflation not in INFLATION_MODES:
        raise ValueError(f"`inflation` must be one of {INFLATION_MODES}, got {inflation!r}.")
    frames, height, width = (int(size) for size in kernel_size)
    dim, channels, patch_height, patch_width = weight.shape
    if (height, width) != (patch_height, patch_width):
        resized = F.interpolate(weight.float(), size=(height, width), mode="bilinear", antialias=True)
        weight = (resized * (patch_height * patch_width) / (height * width)).to(weight.dtype)
    if inflation == "average":
        return weight[:, :, None].repeat(1, 1, frames, 1, 1) / frames
    kernel = weight.new_zeros(dim, channels, frames, height, width)
    kernel[:, :, frames // 2] = weight
    return kernel


def sample_spatial_positions(table: torch.Tensor, image_size: int, patch_size: int, kernel: dict) -> torch.Tensor:
    """Positions for a TubeViT kernel's token grid, read off a patch-grid table `(1, n * n, dim)` at tube centres.

    Each tube's spatial centre (in pixels) is located on the patch grid and the table is sampled there
    bicubically, so a tube covering the same pixels as a patch gets exactly that patch's position.
    """
    side = image_size // patch_size
    dim = table.shape[-1]
    grid_image = table.reshape(1, side, side, dim).permute(0, 3, 1, 2).float()
    _, offset_h, offset_w = kernel["offset"]
    _, kernel_h, kernel_w = kernel["kernel_size"]
    _, stride_h, stride_w = kernel["stride"]
    height = (image_size - offset_h - kernel_h) // stride_h + 1
    width = (image_size - offset_w - kernel_w) // stride_w + 1
    centres_y = offset_h + stride_h * torch.arange(height, dtype=torch.float32) + kernel_h / 2
    centres_x = offset_w + stride_w * torch.arange(width, dtype=torch.float32) + kernel_w / 2
    # grid_sample with align_corners=False maps pixel coordinate c to 2 c / image_size - 1.
    y, x = torch.meshgrid(2 * centres_y / image_size - 1, 2 * centres_x / image_size - 1, indexing="ij")
    grid = torch.stack([x, y], dim=-1)[None]
    sampled = F.grid_sample(grid_image, grid, mode="bicubic", padding_mode="border", align_corners=False)
    return sampled.permute(0, 2, 3, 1).reshape(1, height * width, dim).to(table.dtype)


def load_source_model(source: Source) -> PreTrainedModel:
    """A transformers `CLIPModel` or `SiglipModel` from a folder, a Hub id or an instance."""
    model = source if isinstance(source, PreTrainedModel) else AutoModel.from_pretrained(source)
    model_type = getattr(model.config, "model_type", None)
    if model_type not in SOURCE_TYPES:
        raise ValueError(
            f"Can only convert CLIPModel or SiglipModel checkpoints (model_type in {SOURCE_TYPES}), got "
            f"{type(model).__name__} with model_type {model_type!r}."
        )
    return model


def load_source_tokenizer(source: Source) -> PreTrainedTokenizerBase | None:
    """The tokenizer stored with `source` (folder or Hub id, or a model's `name_or_path`), or None if it has none."""
    path = getattr(source, "name_or_path", None) if isinstance(source, PreTrainedModel) else source
    if not path:
        return None
    # AutoTokenizer would build an empty tokenizer from a folder holding only a model config.
    if Path(path).is_dir() and not any((Path(path) / name).exists() for name in TOKENIZER_FILES):
        return None
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError):
        return None


def _vision_config(source: PreTrainedModel, pooling: str, num_frames: int, tubelet_frames: int, overrides: dict):
    unknown = set(overrides) - set(CONVERSION_VISION_OPTIONS)
    if unknown:
        raise ValueError(
            f"Unsupported conversion option(s) {sorted(unknown)}: the source dictates the architecture; "
            f"allowed vision options are {CONVERSION_VISION_OPTIONS}."
        )
    is_clip = source.config.model_type == "clip"
    vision = source.config.vision_config
    if pooling == "source":
        if is_clip:
            pooling = "cls"
        else:
            # A SigLIP without its attention head has no pooled output of its own: use the paper's mean.
            pooling = "attention" if getattr(vision, "vision_use_head", True) else "mean"
    config = {
        "hidden_size": vision.hidden_size,
        "intermediate_size": vision.intermediate_size,
        "num_hidden_layers": vision.num_hidden_layers,
        "num_attention_heads": vision.num_attention_heads,
        "num_channels": vision.num_channels,
        "image_size": vision.image_size,
        "patch_size": vision.patch_size,
        "num_frames": num_frames,
        "tubelet_size": [tubelet_frames, vision.patch_size, vision.patch_size],
        "hidden_act": vision.hidden_act,
        "layer_norm_eps": vision.layer_norm_eps,
        "attention_dropout": vision.attention_dropout,
        "initializer_range": getattr(vision, "initializer_range", 0.02),
        "qkv_bias": True,
        "pooling": pooling,
        "pre_layernorm": is_clip,
    }
    config.update(overrides)
    return config


def _converted_config(source: PreTrainedModel, vision_config: dict) -> VideoFirstConfig:
    is_clip = source.config.model_type == "clip"
    text = source.config.text_config
    logit_scale = float(source.logit_scale.detach().reshape(()))
    if is_clip:
        projection_dim = source.config.projection_dim
    else:
        # SigLIP has no projections: its embeddings are the pooled outputs, compared in the vision width.
        projection_dim = vision_config["hidden_size"]
        if text.projection_size != projection_dim or text.hidden_size != projection_dim:
            raise ValueError(
                "SigLIP conversion needs the text width and text `projection_size` to equal the vision width "
                f"(identity projections); got text hidden_size={text.hidden_size}, projection_size="
                f"{text.projection_size}, vision hidden_size={projection_dim}."
            )
    return VideoFirstConfig(
        vision_config=vision_config,
        text_config=text.to_dict(),
        projection_dim=projection_dim,
        projection_bias=False,
        text_pooling="pooler",  # CLIP's end-of-text token, SigLIP's last token through its head
        logit_scale_init_value=logit_scale,
        # Never clamp the source's own temperature (SigLIP's learned scale can exceed 100).
        max_logit_scale=max(100.0, math.exp(logit_scale)),
        loss_type="contrastive" if is_clip else "sigmoid",
        logit_bias_init_value=float(source.logit_bias.detach().reshape(())) if not is_clip else -10.0,
    )


def _vision_state(source: PreTrainedModel, target: VideoFirstVisionModel, inflation: str) -> dict[str, torch.Tensor]:
    """The converted vision tower's state dict (all but the parameters that start fresh)."""
    config = target.config
    src = source.vision_model.state_dict()
    is_clip = source.config.model_type == "clip"
    patch_weight = src["embeddings.patch_embedding.weight"]
    patch_bias = src.get("embeddings.patch_embedding.bias")
    if patch_bias is None:  # CLIP's patch convolution has no bias: a zero bias is the same function
        patch_bias = patch_weight.new_zeros(patch_weight.shape[0])
    positions = src["embeddings.position_embedding.weight"][None]
    if is_clip:
        class_position, positions = positions[0, 0], positions[:, 1:]

    state = {
        "embeddings.patch_embedding.weight": patch_weight,
        "embeddings.patch_embedding.bias": patch_bias,
        "embeddings.spatial_position_embedding": positions,
    }
    if config.tubevit_kernels is None:
        tubelet_weight = inflate_patch_kernel(patch_weight, config.tubelet_size, inflation)
        state["embeddings.tubelet_embedding.weight"] = tubelet_weight
        state["embeddings.tubelet_embedding.bias"] = patch_bias
    else:
        for index, kernel in enumerate(config.tubevit_kernels):
            prefix = f"embeddings.tubes.{index}."
            state[prefix + "projection.weight"] = inflate_patch_kernel(patch_weight, kernel["kernel_size"], inflation)
            state[prefix + "projection.bias"] = patch_bias
            state[prefix + "spatial_position_embedding"] = sample_spatial_positions(
                positions, config.image_size, config.patch_size, kernel
            )
    if config.pooling == "cls":
        state["embeddings.class_embedding"] = src["embeddings.class_embedding"]
        state["embeddings.class_position_embedding"] = class_position
    if is_clip:
        state.update({f"pre_layernorm.{name}": src[f"pre_layrnorm.{name}"] for name in ("weight", "bias")})
    for key, value in src.items():
        if key.startswith(("encoder.layers.", "post_layernorm.")):
            state[key] = value
    if config.attention_type == "factorized":
        # The paper's temporal blocks start as copies of their layer's spatial attention (gates stay at 0).
        for index in range(config.num_hidden_layers):
            prefix = f"encoder.layers.{index}."
            for key, value in src.items():
                if key.startswith(prefix + "self_attn."):
                    state[key.replace(".self_attn.", ".temporal_attn.")] = value
                elif key.startswith(prefix + "layer_norm1."):
                    state[key.replace(".layer_norm1.", ".temporal_layer_norm.")] = value
    if config.pooling == "attention":
        if "head.probe" not in src:
            raise ValueError("`pooling='attention'` needs a source with SigLIP's attention-pooling head.")
        for key, value in src.items():
            if key.startswith("head.") and not key.startswith("head.attention.in_proj"):
                state[key] = value
        # nn.MultiheadAttention packs q, k and v into one projection.
        for name in ("weight", "bias"):
            query, key_, value = src[f"head.attention.in_proj_{name}"].chunk(3, dim=0)
            state.update(
                {
                    f"head.attention.q_proj.{name}": query,
                    f"head.attention.k_proj.{name}": key_,
                    f"head.attention.v_proj.{name}": value,
                }
            )
    return state


def _fresh_parameter(name: str) -> bool:
    """Parameters with no image-model counterpart, left at their initialisation."""
    return name.endswith(("temporal_position_embedding", "temporal_gate")) or ".adapter." in name


def convert_image_text_model(
    source: Source,
    inflation: str = "average",
    pooling: str = "source",
    *,
    num_frames: int = 16,
    tubelet_frames: int = 2,
    text_source: Source | None = None,
    text_pooling: str = "mean",
    **vision_options,
) -> VideoFirstModel:
    """Inflate a transformers `CLIPModel` / `SiglipModel` into a [`VideoFirstModel`] (returned in eval mode).

    Args:
        source: a local folder or Hub id of the checkpoint, or the loaded model.
        inflation: `"average"` (default; the 2D kernel repeated over the tubelet's frames and divided by their
            number) or `"central"` (the 2D kernel on the middle frame, zeros elsewhere).
        pooling: `"source"` (CLIP's class token, SigLIP's attention-pooling head) or `"mean"` (the paper's
            mean over tokens; the source's class token or head is dropped).
        num_frames, tubelet_frames: frames the temporal positions are made for, and the tubelet length.
        text_source: a BERT-style (any transformers encoder) checkpoint replacing the source's text tower, as
            in the paper; see [`replace_text_tower`]. None keeps the source's text tower and projections.
        text_pooling: pooling of that replacement text tower (`"mean"`, the paper's).
        vision_options: any of `CONVERSION_VISION_OPTIONS` (e.g. `attention_type`, `mask_ratio`,
            `tubevit_kernels`, `adapter_bottleneck`, `tubelet_size` with another spatial size).

    Copied: ViT layers, norms, spatial positions (and CLIP's class token or SigLIP's head), the text tower,
    projections (identity for SigLIP, which has none), temperature (and SigLIP's bias, with the sigmoid loss).
    New: temporal positions (zeros), the tubelet kernel (inflated), factorized temporal blocks (copies of
    the spatial ones, closed gates), adapters (identity), TubeViT kernels (inflated and resized, spatial
    positions sampled at the tube centres).
    """
    if inflation not in INFLATION_MODES:
        raise ValueError(f"`inflation` must be one of {INFLATION_MODES}, got {inflation!r}.")
    if pooling not in POOLING_CHOICES:
        raise ValueError(f"`pooling` must be one of {POOLING_CHOICES}, got {pooling!r}.")
    src = load_source_model(source)
    vision_config = _vision_config(src, pooling, num_frames, tubelet_frames, vision_options)
    config = _converted_config(src, vision_config)
    model = VideoFirstModel(config)

    state = _vision_state(src, model.vision_model, inflation)
    missing, unexpected = model.vision_model.load_state_dict(state, strict=False)
    left_out = [name for name in missing if not _fresh_parameter(name)]
    if left_out or unexpected:
        raise RuntimeError(f"Conversion mismatch: not converted {left_out}, unexpected {unexpected}.")
    model.text_model.load_state_dict(src.text_model.state_dict())
    with torch.no_grad():
        if config.loss_type == "contrastive":
            model.video_projection.weight.copy_(src.visual_projection.weight)
            model.text_projection.weight.copy_(src.text_projection.weight)
        else:
            model.video_projection.weight.copy_(torch.eye(config.projection_dim))
            model.text_projection.weight.copy_(torch.eye(config.projection_dim))
            model.logit_bias.copy_(src.logit_bias.reshape(()))
        model.logit_scale.copy_(src.logit_scale.reshape(()))
    if text_source is not None:
        model = replace_text_tower(model, text_source, text_pooling=text_pooling)
    return model.eval()


def replace_text_tower(model: VideoFirstModel, text_source: Source, text_pooling: str = "mean") -> VideoFirstModel:
    """A copy of `model` whose text tower is loaded from `text_source` (e.g. any BERT checkpoint).

    The video tower, video projection and temperature are kept; the text projection is new (randomly
    initialised, `text hidden size -> projection_dim`), so the pair must be trained before retrieval works.
    """
    text_model = text_source if isinstance(text_source, PreTrainedModel) else AutoModel.from_pretrained(text_source)
    fields = model.config.to_dict()
    fields.update(text_config=copy.deepcopy(text_model.config).to_dict(), text_pooling=text_pooling)
    config = VideoFirstConfig.from_dict(fields)
    new_model = VideoFirstModel(config)
    kept = {
        key: value
        for key, value in model.state_dict().items()
        if not key.startswith(("text_model.", "text_projection."))
    }
    missing, unexpected = new_model.load_state_dict(kept, strict=False)
    if unexpected or any(not key.startswith(("text_model.", "text_projection.")) for key in missing):
        raise RuntimeError(f"Could not carry the video tower over: missing {missing}, unexpected {unexpected}.")
    missing, unexpected = new_model.text_model.load_state_dict(text_model.state_dict(), strict=False)
    # A text model loaded with its pooler keeps weights that mean / first-token pooling does not use.
    unexpected = [key for key in unexpected if not key.startswith("pooler.")]
    if missing or unexpected:
        raise RuntimeError(f"Text tower mismatch: missing {missing}, unexpected {unexpected}.")
    return new_model.train(model.training)


def convert_checkpoint(
    source: Source,
    output_dir: str | os.PathLike,
    *,
    text_source: Source | None = None,
    **options,
) -> Path:
    """Convert `source` and export it with [`export_checkpoint`] (weights, config, model code) to `output_dir`.

    The tokenizer of `text_source` (or of `source`) is saved with it, inside a [`VideoFirstProcessor`] whose
    video processor normalises like the source's image processor when one is stored with the source.
    `options` go to [`convert_image_text_model`].
    """
    model = convert_image_text_model(source, text_source=text_source, **options)
    tokenizer = load_source_tokenizer(text_source if text_source is not None else source)
    processor = _build_processor(source, model, tokenizer) if tokenizer is not None else None
    # The card names the Hub model it was converted from (`base_model`), when it came from the Hub.
    base_model = hub_model_id(getattr(source, "name_or_path", None) if isinstance(source, PreTrainedModel) else source)
    return export_checkpoint(model, processor, output_dir, card=ModelCardOptions(base_model=base_model))


def _build_processor(source: Source, model: VideoFirstModel, tokenizer: PreTrainedTokenizerBase):
    vision = model.config.vision_config
    settings = {
        "num_frames": vision.num_frames,
        "tubelet_frames": vision.tubelet_size[0],
        "crop_size": {"height": vision.image_size, "width": vision.image_size},
        "size": {"shortest_edge": vision.image_size},
    }
    path = getattr(source, "name_or_path", None) if isinstance(source, PreTrainedModel) else source
    try:
        image_processor = AutoImageProcessor.from_pretrained(path) if path else None
    except (OSError, ValueError):
        image_processor = None
    if image_processor is not None:
        # The converted model only matches its source on identically normalised pixels.
        settings.update(image_mean=list(image_processor.image_mean), image_std=list(image_processor.image_std))
    return VideoFirstProcessor(video_processor=VideoFirstVideoProcessor(**settings), tokenizer=tokenizer)


__all__ = [
    "CONVERSION_VISION_OPTIONS",
    "convert_checkpoint",
    "convert_image_text_model",
    "inflate_patch_kernel",
    "load_source_model",
    "load_source_tokenizer",
    "replace_text_tower",
    "sample_spatial_positions",
]
