"""The configurations the memory / speed benchmarks measure, and their training step.

One configuration is a [`Spec`]: a video tower (ours or one of transformers' video models) at some size, frame
count and training recipe. What a training step is, for every tower alike: forward on a random video batch,
mean-pooled features, an InfoNCE loss against fixed random targets, backward, `AdamW.step()`, `zero_grad()`.
With `text_tower=True` the step is instead the full [`VideoFirstModel`] forward (video tower, BERT text tower,
projections, contrastive loss) on random captions, as in `videofirst.train.pretraining`. [`build`] makes the model,
optimizer, inputs and that step of a spec.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _flops import MATMUL_SIZES, QUICK_MATMUL_SIZES, count_step_flops

FAMILIES = ("videofirst", "vivit", "timesformer", "videomae", "videoprism")

SIZES = {
    # ViT-S width, 12 layers, 96 px (36 patches per tubelet step; 96 is the smallest size that 32x32 tubelets and
    # TubeViT's strides divide), batch 2: what one shared CPU core can sweep in minutes.
    "cpu": dict(hidden_size=384, num_heads=6, intermediate_size=1536, num_layers=12, image_size=96, batch_size=2),
    "vit-b": dict(hidden_size=768, num_heads=12, intermediate_size=3072, num_layers=12, image_size=224, batch_size=8),
    "micro": dict(
        hidden_size=32, num_heads=2, intermediate_size=64, num_layers=2, image_size=32, patch_size=16, batch_size=2
    ),
}


@dataclass
class Spec:
    """One configuration to measure. Sizes default to the CPU tower of `SIZES`."""

    name: str
    family: str = "videofirst"
    frames: int = 16
    image_size: int = 96
    patch_size: int = 16
    hidden_size: int = 384
    num_layers: int = 12
    num_heads: int = 6
    intermediate_size: int = 1536
    batch_size: int = 2
    attention_type: str = "joint"
    mask_ratio: float = 0.0
    mask_type: str = "random"
    tubelet_size: tuple[int, int, int] = (2, 16, 16)
    tubevit: bool = False
    adaptation: str = "full"  # full | last_layers | adapters | lora (`videofirst.adaptation` methods)
    train_patch_embedding: bool = True
    checkpointing: bool = False
    # "indexed": the masked path's former position lookup (`indexed_kept_positions`), the sweep's "positions" baseline.
    position_lookup: str = "gathered"
    attn_implementation: str = "sdpa"
    text_tower: bool = False  # full dual encoder with a BERT-medium text tower (the `limit` benchmark)
    bf16_autocast: bool = False  # mixed precision as the recipes' `mixed_precision: bf16`
    count_flops: bool = False
    matmul_peak: bool = False  # also time plain matmuls in the same process (the efficiency's denominator)
    matmul_sizes: tuple[int, ...] = MATMUL_SIZES

    def to_json(self) -> dict:
        return dataclasses.asdict(self)  # JSON writes the tuples as lists: `from_json` turns them back

    @classmethod
    def from_json(cls, data: dict) -> Spec:
        data = dict(data, tubelet_size=tuple(data["tubelet_size"]), matmul_sizes=tuple(data["matmul_sizes"]))
        return cls(**data)


def measured_tower(name: str, size: str, quick: bool, **changes: Any) -> Spec:
    """The spec the throughput benchmarks start from: tower `size` of `SIZES`, FLOPs counted, matmul peak timed
    (on a tiny matmul in `quick` mode)."""
    sizes = QUICK_MATMUL_SIZES if quick else MATMUL_SIZES
    return Spec(name, count_flops=True, matmul_peak=True, matmul_sizes=sizes, **SIZES[size], **changes)


BERT_MEDIUM = {"hidden_size": 512, "num_hidden_layers": 8, "num_attention_heads": 8, "intermediate_size": 2048}
CAPTION_TOKENS = 32


def _tower_sizes(spec: Spec) -> dict[str, Any]:
    """The config fields that size a video tower, named as transformers' vision configs name them."""
    return {
        "image_size": spec.image_size,
        "num_frames": spec.frames,
        "hidden_size": spec.hidden_size,
        "num_attention_heads": spec.num_heads,
        "intermediate_size": spec.intermediate_size,
    }


def _videofirst(spec: Spec) -> Any:
    """Our model (the video tower, plus the text tower the step uses or a stub), adapted as the recipe says."""
    from videofirst.modeling.configuration_videofirst import VideoFirstConfig
    from videofirst.modeling.modeling_videofirst import VideoFirstModel

    from videofirst.adaptation import apply_adaptation

    vision = {
        **_tower_sizes(spec),
        "num_hidden_layers": spec.num_layers,
        "patch_size": spec.patch_size,
        "tubelet_size": list(spec.tubelet_size),
        "attention_type": spec.attention_type,
        "mask_ratio": spec.mask_ratio,
        "mask_type": spec.mask_type,
        "tubevit_kernels": "default" if spec.tubevit else None,
    }
    # Without the text tower in the step, a one-layer stub stands in (frozen or unused: no memory, no time).
    text = (
        dict(BERT_MEDIUM)
        if spec.text_tower
        else {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    )
    config = VideoFirstConfig(vision_config=vision, text_config={"model_type": "bert", **text}, projection_dim=512)
    config._attn_implementation = spec.attn_implementation
    config.vision_config._attn_implementation = spec.attn_implementation
    config.text_config._attn_implementation = "sdpa"
    model = VideoFirstModel(config)
    # The text tower is frozen for every method but "full" (`apply_adaptation`'s default, as in the recipes).
    apply_adaptation(
        model,
        method=spec.adaptation,
        train_patch_embedding=spec.train_patch_embedding,
        trainable_last_layers=min(4, spec.num_layers),
    )
    if spec.checkpointing:
        model.activation_checkpointing_enable()
    if spec.position_lookup == "indexed":
        model.vision_model.embeddings.kept_positions = indexed_kept_positions
    return model


def indexed_kept_positions(spatial: Any, temporal: Any, token_indices: Any) -> Any:
    """The kept tokens' positions as the masked path looked them up before `VideoFirstEmbeddings.kept_positions`:
    both tables indexed at all samples' kept (step, position) at once, added in place. Its backward accumulates many
    samples' gradients into one table row in no fixed order (nondeterministic with 2+ threads and on GPUs); kept here
    only as the speed baseline of the deterministic path."""
    positions = spatial.shape[0]
    return spatial[token_indices % positions].add_(temporal[token_indices // positions])


def _peer(spec: Spec) -> tuple[Any, str]:
    """transformers' own video towers, sized like ours (width, depth, heads, MLP, patch, frames), and the
    attention implementation they run with."""
    import transformers

    common = {**_tower_sizes(spec), "hidden_act": "gelu", "qkv_bias": True}
    patch = spec.patch_size
    if spec.family == "vivit":  # joint space-time attention over 2x16x16 tubelets, a CLS token
        config = transformers.VivitConfig(**common, num_hidden_layers=spec.num_layers, tubelet_size=[2, patch, patch])
        model_class = transformers.VivitModel
        kwargs = {"add_pooling_layer": False}
    elif spec.family == "timesformer":  # divided space-time attention over per-frame 16x16 patches
        config = transformers.TimesformerConfig(
            **common, num_hidden_layers=spec.num_layers, patch_size=patch, attention_type="divided_space_time"
        )
        model_class, kwargs = transformers.TimesformerModel, {}
    elif spec.family == "videomae":  # joint attention over 2x16x16 tubelets, fixed sinusoidal positions
        config = transformers.VideoMAEConfig(
            **common, num_hidden_layers=spec.num_layers, patch_size=patch, tubelet_size=2, use_mean_pooling=True
        )
        model_class, kwargs = transformers.VideoMAEModel, {}
    elif spec.family == "videoprism":
        # Factorised encoder: L spatial layers per frame, then L/3 temporal layers per position (VideoPrism's own
        # 12:4), which matches our factorized tower's parameters (L layers with an extra temporal attention).
        config = transformers.VideoPrismVisionConfig(
            **common,
            tubelet_size=[1, patch, patch],
            num_spatial_layers=spec.num_layers,
            num_temporal_layers=max(1, spec.num_layers // 3),
        )
        model_class, kwargs = transformers.VideoPrismVisionModel, {}
    else:
        raise ValueError(f"Unknown family {spec.family!r}; known: {FAMILIES}.")
    implementation = spec.attn_implementation if model_class._supports_sdpa else "eager"
    config._attn_implementation = implementation
    model = model_class(config, **kwargs)
    if spec.checkpointing:
        model.activation_checkpointing_enable()
    return model, implementation


@dataclass
class Trainee:
    """A built configuration: a training step closure and what it processes."""

    step: Callable[..., Any]
    grid_tokens: int  # video tokens per clip before masking
    seen: dict  # filled by the step: "kept", the tokens per clip the encoder attends over
    parameters: int
    trainable: int
    attention: str  # the attention implementation used
    flops: int | None = None  # FLOPs of one training step, when counted

    @property
    def kept_tokens(self) -> int:
        return int(self.seen["kept"])

    def columns(self) -> dict[str, Any]:
        """What the configuration processes, for its result row (the kept tokens are known after a step)."""
        return {
            "grid_tokens": self.grid_tokens,
            "kept_tokens": self.kept_tokens,
            "parameters": self.parameters,
            "trainable": self.trainable,
            "attention": self.attention,
        }


def build(spec: Spec, device: str, warm_up: bool = True) -> Trainee:
    """Model, optimizer and inputs of `spec`, and its training step.

    `warm_up`: run one step now (FLOPs are counted on it with `spec.count_flops`). Without it, the optimizer
    state is allocated by an update with zero gradients (no forward pass; AdamW then changes nothing). The
    kept-token count is known after the first step.
    """
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(0)
    videos = torch.randn(spec.batch_size, spec.frames, 3, spec.image_size, spec.image_size, generator=generator)
    videos = videos.to(device)
    implementation = spec.attn_implementation
    if spec.family == "videofirst":
        full = _videofirst(spec).to(device).train()
        model = full if spec.text_tower else full.vision_model
    else:
        model, implementation = _peer(spec)
        model = model.to(device).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = _adamw(parameters)
    targets = torch.randn(spec.batch_size, spec.hidden_size, generator=generator).to(device)
    labels = torch.arange(spec.batch_size, device=device)
    input_ids = torch.randint(1, 1000, (spec.batch_size, CAPTION_TOKENS), generator=generator).to(device)
    seen = {}

    def forward() -> torch.Tensor:
        if spec.text_tower:
            out = model(
                pixel_values_videos=videos,
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                return_loss=True,
            )
            seen["kept"] = out.vision_model_output.last_hidden_state.shape[1]
            return out.loss
        if spec.family == "videofirst":
            out = model(pixel_values_videos=videos)
            pooled = out.pooler_output
        else:
            out = model(pixel_values_videos=videos) if spec.family == "videoprism" else model(pixel_values=videos)
            pooled = out.last_hidden_state.mean(dim=1)
        seen["kept"] = out.last_hidden_state.shape[1]
        logits = F.normalize(pooled, dim=-1) @ F.normalize(targets, dim=-1).t() / 0.07
        return F.cross_entropy(logits, labels)

    def step(after_forward: Callable[[], None] | None = None) -> float:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=spec.bf16_autocast):
            loss = forward()
        if after_forward is not None:
            after_forward()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    flops = None
    if warm_up:
        flops = count_step_flops(step) if spec.count_flops else None
        if flops is None:
            step()
    else:
        for parameter in parameters:
            parameter.grad = torch.zeros_like(parameter)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return Trainee(
        step=step,
        grid_tokens=_grid_tokens(spec),
        seen=seen,
        parameters=model.num_parameters(),
        trainable=model.num_parameters(only_trainable=True),
        attention=implementation,
        flops=flops,
    )


def _adamw(parameters: list) -> Any:
    """AdamW, fused where torch has the kernel (CPU and CUDA, torch >= 2.4): the for-each-parameter loop costs up
    to 10x more on CPU, a fixed cost per step that would hide the model's own speed."""
    import torch

    try:
        return torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.0, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(parameters, lr=1e-4, weight_decay=0.0)


def _grid_tokens(spec: Spec) -> int:
    side = spec.image_size // spec.patch_size
    if spec.family in ("timesformer", "videoprism"):
        return spec.frames * side * side  # per-frame 2D patches
    if spec.family in ("vivit", "videomae"):
        return spec.frames // 2 * side * side
    if spec.tubevit:
        from videofirst.modeling.configuration_videofirst import default_tubevit_kernels, tube_grid

        return sum(
            math.prod(tube_grid(k, spec.frames, spec.image_size, spec.image_size))
            for k in default_tubevit_kernels(spec.patch_size)
        )
    t, h, w = spec.tubelet_size
    return (spec.frames // t) * (spec.image_size // h) * (spec.image_size // w)
