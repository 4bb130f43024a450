"""Configuration of the VideoFirst video-to-text model: a frozen video tower feeding a frozen causal language model.

The paper's second step (Papalampidi et al., CVPR 2024, Sec. 3): the video encoder's tokens are mean-pooled over
time, a randomly initialised Perceiver resampler maps them to a fixed number of latents in the language model's
width, and new gated cross-attention layers inserted in the language model attend to those latents. Only the
resampler and the cross-attention layers train.
"""

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec
from transformers.models.auto.configuration_auto import AutoConfig

from .configuration_videofirst import VideoFirstVisionConfig

#: What reaches the resampler: tokens averaged over time ("mean", the paper) or all of them with time embeddings.
TEMPORAL_POOLING = ("mean", "none")


def _require_positive(field: str, value: int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value < 1:
        raise ValueError(f"`{field}` must be a positive integer{' or None' if allow_none else ''}, got {value!r}.")


@strict
class VideoFirstVideoToTextConfig(PreTrainedConfig):
    r"""
    Configuration of [`VideoFirstForConditionalGeneration`].

    Args:
        vision_config (`dict` or [`VideoFirstVisionConfig`]): the (frozen) video tower.
        text_config (`dict` or `PreTrainedConfig`): any transformers causal language model config (GPT-2,
            Llama, Qwen2, ...); a dict needs a `model_type` unless it is GPT-2.
        mask_ratio (`float`, defaults to 0.0): fraction of video tokens dropped before the video tower, in
            training *and* at inference (the paper uses 0.3 for this stage). Overridable per call.
        temporal_pooling (`str`, defaults to `"mean"`): what reaches the resampler from the video tower's
            `(time, space)` token grid. `"mean"` (the paper): the tokens averaged over time at each spatial position,
            a fixed number of tokens whatever the frame count, but the order of what happens is lost (a mean does
            not depend on it). `"none"` (Flamingo): every kept token, plus a learned embedding of its tubelet step
            (`resampler.time_embedding`, one per step of the tower's `num_frames`, linearly interpolated for other
            frame counts), so that the latents can say what happened when.
        resampler_num_latents (`int`, defaults to 64): visual tokens the language model sees, whatever the
            number of frames.
        resampler_depth (`int`, defaults to 6): Perceiver resampler layers (Flamingo uses 6).
        resampler_hidden_size (`int`, *optional*): width of the resampler; defaults to the language model's.
        resampler_num_attention_heads (`int`, defaults to 8): heads of the resampler's attention.
        resampler_intermediate_size (`int`, *optional*): resampler feed-forward width; defaults to 4x its width.
        cross_attention_every (`int`, defaults to 1): insert a gated cross-attention layer before every n-th
            decoder layer of the language model (1: every layer, as the paper).
        cross_attention_num_heads (`int`, *optional*): heads of the cross-attention; defaults to the language
            model's `num_attention_heads`.
        cross_attention_ffn (`bool`, defaults to `True`): follow each cross-attention with a gated feed-forward
            block (Flamingo's "gated xattn-dense").
        cross_attention_intermediate_size (`int`, *optional*): its width; defaults to 4x the language model's.
        cross_attention_gate_init (`float`, defaults to 0.0): initial value of the tanh gates' parameters. 0 (as
            Flamingo) makes the new model reproduce the language model exactly at the start.
        decoder_layers_path (`str`, *optional*): dotted path of the language model's `nn.ModuleList` of decoder
            layers (`"transformer.h"` for GPT-2, `"model.layers"` for Llama / Qwen). Found automatically when
            None: the module list whose layers are the model's `_no_split_modules`.
        freeze_vision_model (`bool`, defaults to `True`): the paper freezes the video tower.
        freeze_language_model (`bool`, defaults to `True`): the paper freezes the language model.
        hidden_act (`str`, defaults to `"gelu"`): activation of the resampler and cross-attention feed-forwards.
        layer_norm_eps (`float`, defaults to 1e-5): epsilon of the new layer norms.
        initializer_range (`float`, defaults to 0.02): std of the new layers' weights.
    """

    model_type = "videofirst_video_to_text"
    sub_configs_defaults = {
        "vision_config": VideoFirstVisionConfig,
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="gpt2"),
    }

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    mask_ratio: float | int = 0.0
    temporal_pooling: str = "mean"
    resampler_num_latents: int = 64
    resampler_depth: int = 6
    resampler_hidden_size: int | None = None
    resampler_num_attention_heads: int = 8
    resampler_intermediate_size: int | None = None
    cross_attention_every: int = 1
    cross_attention_num_heads: int | None = None
    cross_attention_ffn: bool = True
    cross_attention_intermediate_size: int | None = None
    cross_attention_gate_init: float | int = 0.0
    decoder_layers_path: str | None = None
    freeze_vision_model: bool = True
    freeze_language_model: bool = True
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        # Run the checks here too so that a bad value surfaces as a plain `ValueError` at construction.
        self.validate_architecture()

    @property
    def resampler_width(self) -> int:
        return self.resampler_hidden_size or self.text_config.hidden_size

    @property
    def cross_attention_heads(self) -> int:
        return self.cross_attention_num_heads or self.text_config.num_attention_heads

    def validate_architecture(self):
        """Reject configurations the model cannot run, naming the field and the allowed values."""
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be in [0, 1), got {self.mask_ratio}.")
        if self.temporal_pooling not in TEMPORAL_POOLING:
            raise ValueError(f"`temporal_pooling` must be one of {TEMPORAL_POOLING}, got {self.temporal_pooling!r}.")
        for field in ("resampler_num_latents", "resampler_depth", "resampler_num_attention_heads"):
            _require_positive(field, getattr(self, field))
        _require_positive("cross_attention_every", self.cross_attention_every)
        for field in (
            "resampler_hidden_size",
            "resampler_intermediate_size",
            "cross_attention_num_heads",
            "cross_attention_intermediate_size",
        ):
            _require_positive(field, getattr(self, field), allow_none=True)
        if self.resampler_width % self.resampler_num_attention_heads != 0:
            raise ValueError(
                f"`resampler_num_attention_heads` ({self.resampler_num_attention_heads}) must divide the resampler "
                f"width ({self.resampler_width})."
            )
        if self.text_config.hidden_size % self.cross_attention_heads != 0:
            raise ValueError(
                f"`cross_attention_num_heads` ({self.cross_attention_heads}) must divide the language model's "
                f"hidden size ({self.text_config.hidden_size})."
            )
        if getattr(self.vision_config, "tubevit_kernels", None) is not None:
            raise ValueError(
                "`vision_config.tubevit_kernels` is not supported for video-to-text: pooling over time needs the "
                "tokens on one (time, space) tubelet grid."
            )


__all__ = ["VideoFirstVideoToTextConfig"]
