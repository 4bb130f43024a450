"""Configurations of the VideoFirst dual encoder (video tower, any transformers text tower, projections)."""

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig

ATTENTION_TYPES = ("joint", "factorized", "frame")
MASK_TYPES = ("random", "tube")
VIDEO_POOLING_TYPES = ("mean", "cls", "attention")
TEXT_POOLING_TYPES = ("mean", "first", "pooler")
LOSS_TYPES = ("contrastive", "sigmoid")


def default_tubevit_kernels(patch_size: int = 16) -> list[dict]:
    """The TubeViT-style kernel mix selected by `tubevit_kernels="default"`, for `patch_size` p (16 for ViT-B/16).

    Sparse tubes as in TubeViT (Piergiovanni et al., CVPR 2023): one dense fine kernel on a few frames plus
    temporally long kernels at a large spatial stride, offset so that the kernels sample different places.
    At 16 frames of 224x224 (ViT-B/16) it yields 392 + 98 + 49 = 539 tokens (joint 2x16x16 tubelets: 1568; at
    256 frames 8624 against 25088), for 8.3M kernel parameters (a 2x16x16 tubelet kernel: 1.2M):

    * fine: `2 x p x p`, stride `8 x p x p`: every patch of two frames out of every eight;
    * mid: `8 x p x p`, stride `8 x 2p x 2p`, offset `p/2`: 8-frame tubes on every other patch row and column,
      shifted by half a patch;
    * long: `16 x p/2 x p/2`, stride `16 x 2p x 2p`, offset `p`: thin 16-frame tubes between the mid ones.
    """
    half = max(1, patch_size // 2)
    return [
        {"kernel_size": [2, patch_size, patch_size], "stride": [8, patch_size, patch_size], "offset": [0, 0, 0]},
        {
            "kernel_size": [8, patch_size, patch_size],
            "stride": [8, 2 * patch_size, 2 * patch_size],
            "offset": [0, half, half],
        },
        {
            "kernel_size": [16, half, half],
            "stride": [16, 2 * patch_size, 2 * patch_size],
            "offset": [0, patch_size, patch_size],
        },
    ]


def tube_grid(kernel: dict, frames: int, height: int, width: int) -> tuple[int, int, int]:
    """Tokens along (time, height, width) that one TubeViT kernel yields on a `frames x height x width` video."""
    sizes = (frames, height, width)
    return tuple(
        (size - offset - extent) // step + 1
        for size, offset, extent, step in zip(sizes, kernel["offset"], kernel["kernel_size"], kernel["stride"])
    )


def _normalize_tubevit_kernels(kernels: list[dict] | str | None, patch_size: int) -> list[dict] | str | None:
    if kernels == "default":
        return default_tubevit_kernels(patch_size)
    if not isinstance(kernels, list):
        return kernels
    normalized = []
    for kernel in kernels:
        unknown = set(kernel) - {"kernel_size", "stride", "offset"}
        if unknown or "kernel_size" not in kernel:
            raise ValueError(
                "`tubevit_kernels` entries are dicts with `kernel_size`, optional `stride` (defaults to the kernel "
                f"size) and optional `offset` (defaults to zeros), each [t, h, w]; got {kernel}."
            )
        entry = {
            "kernel_size": kernel["kernel_size"],
            "stride": kernel.get("stride", kernel["kernel_size"]),
            "offset": kernel.get("offset", [0, 0, 0]),
        }
        for key, value in entry.items():
            minimum = 0 if key == "offset" else 1
            if not isinstance(value, (list, tuple)) or len(value) != 3 or any(int(v) < minimum for v in value):
                raise ValueError(
                    f"`tubevit_kernels` `{key}` must be three integers >= {minimum} [t, h, w], got {value}."
                )
        normalized.append({key: [int(v) for v in value] for key, value in entry.items()})
    return normalized


def _require_choice(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"`{field}` must be one of {allowed}, got {value!r}.")


@strict
class VideoFirstVisionConfig(PreTrainedConfig):
    r"""
    Configuration of [`VideoFirstVisionModel`]: a ViT that embeds videos as tubelets and images as patches and
    runs one transformer over either.

    Args:
        image_size (`int`, defaults to 224): frame height and width the position embeddings are trained for.
        patch_size (`int`, defaults to 16): side of the 2D image patches.
        num_frames (`int`, defaults to 16): frames the temporal position embeddings are trained for. Longer or
            shorter videos work: the temporal embeddings are linearly interpolated to the tubelet count.
        tubelet_size (`list[int]`, defaults to `[2, 16, 16]`): `[t, h, w]` of the 3D tubelet kernel
            (also its stride). Coarser variants of the paper are `[4, 16, 16]` and `[2, 32, 32]`.
        attention_type (`str`, defaults to `"joint"`): `"joint"` space-time attention over all tokens,
            `"factorized"` (spatial then gated temporal attention in every layer) or `"frame"` (spatial only).
        mask_ratio (`float`, defaults to 0.0): fraction of video tokens dropped during training, in [0, 1).
            The paper trains long videos with 0.75.
        mask_type (`str`, defaults to `"random"`): `"random"` (independent per token) or `"tube"` (the same
            spatial positions dropped in every time step).
        pooling (`str`, defaults to `"mean"`): `"mean"` over kept tokens (the paper), `"cls"` (a class token,
            as CLIP) or `"attention"` (a learned probe attending over tokens, as SigLIP).
        pre_layernorm (`bool`, defaults to `False`): a LayerNorm before the encoder (CLIP has one).
        adapter_bottleneck (`int`, *optional*): width of the MLP adapter added after every feed-forward block
            (`h + up(act(down(h)))` on the block's output, `up` zero-initialised so a fresh adapter changes
            nothing). `None`: no adapters.
        tubevit_kernels (`list[dict]` or `"default"`, *optional*): TubeViT-style multi-resolution tokenisation.
            Each entry is `{"kernel_size": [t, h, w], "stride": [t, h, w], "offset": [t, h, w]}` (stride defaults
            to the kernel size, offset to zeros); every kernel has its own Conv3d and its own spatial and temporal
            position tables, and the tokens of all kernels are concatenated. It replaces the `tubelet_size`
            tokeniser for videos (images keep the patch path); needs `attention_type="joint"` and
            `mask_type="random"`, since the tokens do not lie on one (time, space) grid. `"default"` expands to
            [`default_tubevit_kernels`] for `patch_size`.
    """

    model_type = "videofirst_vision_model"
    base_config_key = "vision_config"

    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_channels: int = 3
    image_size: int = 224
    patch_size: int = 16
    num_frames: int = 16
    tubelet_size: list[int] | tuple[int, ...] = (2, 16, 16)
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_dropout: float | int = 0.0
    initializer_range: float = 0.02
    qkv_bias: bool = True
    attention_type: str = "joint"
    mask_ratio: float | int = 0.0
    mask_type: str = "random"
    pooling: str = "mean"
    pre_layernorm: bool = False
    adapter_bottleneck: int | None = None
    tubevit_kernels: list[dict] | str | None = None

    def __post_init__(self, **kwargs):
        self.tubelet_size = [int(size) for size in self.tubelet_size]
        self.tubevit_kernels = _normalize_tubevit_kernels(self.tubevit_kernels, self.patch_size)
        super().__post_init__(**kwargs)
        # Run the checks here too so that a bad value surfaces as a plain `ValueError` at construction.
        self.validate_architecture()

    def validate_architecture(self):
        """Reject configurations the model cannot run, naming the field and the allowed values."""
        _require_choice("attention_type", self.attention_type, ATTENTION_TYPES)
        _require_choice("mask_type", self.mask_type, MASK_TYPES)
        _require_choice("pooling", self.pooling, VIDEO_POOLING_TYPES)
        if self.pooling == "cls" and self.attention_type != "joint":
            raise ValueError(
                f"`pooling='cls'` needs `attention_type='joint'` (one class token cannot join per-frame attention), "
                f"got `attention_type={self.attention_type!r}`."
            )
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be in [0, 1), got {self.mask_ratio}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`num_attention_heads` ({self.num_attention_heads}) must divide `hidden_size` ({self.hidden_size})."
            )
        if len(self.tubelet_size) != 3 or min(self.tubelet_size) < 1:
            raise ValueError(f"`tubelet_size` must be three positive integers [t, h, w], got {self.tubelet_size}.")
        tubelet_frames, tubelet_height, tubelet_width = self.tubelet_size
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"`image_size` ({self.image_size}) must be divisible by `patch_size` ({self.patch_size}).")
        if self.image_size % tubelet_height != 0 or self.image_size % tubelet_width != 0:
            raise ValueError(
                f"`image_size` ({self.image_size}) must be divisible by the spatial `tubelet_size` "
                f"({tubelet_height}x{tubelet_width})."
            )
        if self.num_frames < 1 or self.num_frames % tubelet_frames != 0:
            raise ValueError(
                f"`num_frames` ({self.num_frames}) must be a positive multiple of the temporal `tubelet_size` "
                f"({tubelet_frames})."
            )
        if self.num_hidden_layers < 1:
            raise ValueError(f"`num_hidden_layers` must be at least 1, got {self.num_hidden_layers}.")
        if self.adapter_bottleneck is not None and self.adapter_bottleneck < 1:
            raise ValueError(f"`adapter_bottleneck` must be a positive width or None, got {self.adapter_bottleneck}.")
        self._validate_tubevit_kernels()

    def _validate_tubevit_kernels(self) -> None:
        kernels = self.tubevit_kernels
        if kernels is None:
            return
        if isinstance(kernels, str):
            raise ValueError(f"`tubevit_kernels` must be a list of kernels, 'default' or None, got {kernels!r}.")
        if not kernels:
            raise ValueError("`tubevit_kernels` must name at least one kernel (or be None).")
        if self.attention_type != "joint":
            raise ValueError(
                "`tubevit_kernels` needs `attention_type='joint'`: tube tokens lie on no common (time, space) grid "
                f"for factorized or frame attention, got `attention_type={self.attention_type!r}`."
            )
        if self.mask_type != "random":
            raise ValueError(
                f"`tubevit_kernels` needs `mask_type='random'` (tube masking needs one spatial grid), "
                f"got `mask_type={self.mask_type!r}`."
            )
        for kernel in kernels:
            if min(tube_grid(kernel, self.num_frames, self.image_size, self.image_size)) < 1:
                raise ValueError(
                    f"`tubevit_kernels` kernel {kernel} does not fit a video of `num_frames`={self.num_frames} frames "
                    f"of `image_size`={self.image_size}."
                )

    @property
    def tubelet_grid(self) -> tuple[int, int, int]:
        """Tubelets along (time, height, width) for a video of `num_frames` frames at `image_size`."""
        tubelet_frames, tubelet_height, tubelet_width = self.tubelet_size
        return (
            self.num_frames // tubelet_frames,
            self.image_size // tubelet_height,
            self.image_size // tubelet_width,
        )


@strict
class VideoFirstConfig(PreTrainedConfig):
    r"""
    Configuration of [`VideoFirstModel`], a CLIP-style dual encoder: a [`VideoFirstVisionModel`] and any
    transformers text encoder (BERT by default, as in the paper), each followed by a linear projection.

    Args:
        vision_config (`dict` or [`VideoFirstVisionConfig`]): the video tower.
        text_config (`dict` or `PreTrainedConfig`): any transformers encoder config; a dict needs a
            `model_type` unless it is BERT.
        projection_dim (`int`, defaults to 512): size of the shared embedding space.
        text_pooling (`str`, defaults to `"mean"`): `"mean"` over non-padding tokens (the paper), `"first"`
            token, or `"pooler"` (the text model's own `pooler_output`, e.g. CLIP's end-of-text token).
        logit_scale_init_value (`float`, defaults to `log(1/0.07)`): initial log temperature, as CLIP.
        max_logit_scale (`float`, defaults to 100): the exponentiated scale is clamped to this, as CLIP.
        loss_type (`str`, defaults to `"contrastive"`): `"contrastive"` (symmetric InfoNCE) or `"sigmoid"`
            (SigLIP's pairwise loss, with a learnable logit bias).
        logit_bias_init_value (`float`, defaults to -10.0): initial bias of the sigmoid loss.
    """

    model_type = "videofirst"
    sub_configs_defaults = {
        "vision_config": VideoFirstVisionConfig,
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="bert",
            init_kwargs={
                # BERT-medium, the paper's smaller text encoder.
                "hidden_size": 512,
                "num_hidden_layers": 8,
                "num_attention_heads": 8,
                "intermediate_size": 2048,
            },
        ),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 512
    projection_bias: bool = False
    text_pooling: str = "mean"
    logit_scale_init_value: float = 2.6592
    max_logit_scale: float = 100.0
    loss_type: str = "contrastive"
    logit_bias_init_value: float = -10.0
    initializer_factor: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Run the checks here too so that a bad value surfaces as a plain `ValueError` at construction.
        self.validate_architecture()

    def validate_architecture(self):
        """Reject configurations the model cannot run, naming the field and the allowed values."""
        _require_choice("text_pooling", self.text_pooling, TEXT_POOLING_TYPES)
        _require_choice("loss_type", self.loss_type, LOSS_TYPES)
        if self.projection_dim < 1:
            raise ValueError(f"`projection_dim` must be positive, got {self.projection_dim}.")
        if self.max_logit_scale <= 0:
            raise ValueError(f"`max_logit_scale` must be positive, got {self.max_logit_scale}.")


__all__ = ["VideoFirstConfig", "VideoFirstVisionConfig", "default_tubevit_kernels"]
