"""PyTorch VideoFirst video-to-text: a frozen VideoFirst video tower feeding a frozen causal language model.

The paper's second step (Papalampidi et al., CVPR 2024, arXiv 2312.07395, Sec. 3), built Flamingo-style:

1. **Video tower** ([`VideoFirstVisionModel`], frozen). Optionally a fraction of the video tokens is dropped, in
   training and at inference (`config.mask_ratio`; the paper uses 30%).
2. **Mean over time.** The output tokens are averaged over the tubelet steps at every spatial position, so the
   language model sees a fixed number of visual tokens whatever the number of frames (the paper does this for
   stability). Without masking or padding this is a reshape `(B, T, S, D) -> mean over T -> (B, S, D)`. With
   masking, the kept tokens are a subset of the `(T, S)` grid (`token_indices`): each spatial position averages
   the tokens kept there. *A position with no kept token in any step* carries no information; it is excluded
   from the resampler's attention (a key mask) rather than filled with a made-up value. (With 30% random
   masking that happens with probability `0.3 ** T` per position.) A class token, when the tower has one
   (`pooling="cls"`), is appended as one more visual token.
   With `config.temporal_pooling="none"` (Flamingo's way) nothing is averaged: every kept token goes on, plus a
   learned embedding of its tubelet step, so that the order of events survives (a mean over time does not
   depend on it: the paper's pooling gives the same visual tokens for the same events in any order).
3. **Perceiver resampler** (new, trained): `resampler_num_latents` learned latents cross-attend to
   `[visual tokens; latents]` for `resampler_depth` layers, then are projected to the language model's width.
4. **Gated cross-attention** (new, trained) before every (or every n-th) decoder layer of any transformers causal
   language model (frozen): `h = h + tanh(a) * xattn(ln(h), latents)`, then `h = h + tanh(b) * ffn(ln(h))`,
   with `a = b = 0` at initialisation, so the wrapped language model starts as the plain one.

**How the cross-attention is inserted.** Each selected entry of the language model's decoder-layer list
(GPT-2 `transformer.h`, Llama / Qwen `model.layers`, found through the model's `_no_split_modules` or
`config.decoder_layers_path`) is replaced by a parameter-free [`VideoFirstDecoderLayerWithCrossAttention`] that
holds the original layer and calls it with the original arguments, after updating the hidden states with its
cross-attention layer. The language model's own forward (masks, positions, KV cache) is untouched. The
cross-attention layers themselves belong to [`VideoFirstForConditionalGeneration`] (`cross_attention_layers`):
the wrappers reach them and the current visual latents through a [`VisualConditioning`] object that the model
fills for the duration of its forward pass only. Outside it the language model is the plain language model.
Cross-attention needs no cache of its own: the latents are constant during generation and are passed to every
step (see [`VideoFirstForConditionalGeneration.generate`]).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.generation import GenerationMixin
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.auto.modeling_auto import AutoModelForCausalLM
from transformers.utils import ModelOutput

from .configuration_videofirst_video_to_text import VideoFirstVideoToTextConfig
from .modeling_videofirst import (
    VideoFirstModel,
    VideoFirstVisionModel,
    VideoFirstVisionModelOutput,
    additive_key_mask,
    eager_attention_forward,
    resize_temporal_positions,
)


@dataclass
class VideoFirstVideoToTextOutput(CausalLMOutputWithPast):
    r"""
    The language model's [`CausalLMOutputWithPast`] fields (`loss` when `labels` are given, `logits`, the key/value
    cache, `hidden_states` and `attentions` when requested), plus:

    visual_latents (`torch.FloatTensor` of shape `(batch_size, resampler_num_latents, text_hidden_size)`, *optional*):
        The resampler's output the cross-attention attended to; generation passes it on to the next steps.
    """

    # Inheriting the fields keeps the cache field's name that of the installed transformers (`past_key_values`
    # before 5.24, `cache` from 5.24 on), which generation reads back.
    visual_latents: torch.FloatTensor | None = None


def pool_tokens_over_time(
    hidden_states: torch.Tensor,
    grid: tuple[int, int],
    token_indices: torch.LongTensor | None = None,
    token_mask: torch.BoolTensor | None = None,
) -> tuple[torch.Tensor, torch.BoolTensor | None]:
    """Average video tokens over time at each spatial position.

    Args:
        hidden_states: `(batch, kept, dim)` tokens of a `(T, S)` grid (no class token).
        grid: `(T, S)`, tubelet steps and spatial positions per step.
        token_indices: `(batch, kept)` grid position of each token (`VideoFirstVisionModelOutput.token_indices`);
            None when all `T * S` tokens are present in order.
        token_mask: `(batch, kept)` False for right padding of rows that kept fewer tokens.

    Returns:
        `(batch, S, dim)` means, and `(batch, S)` flags of the positions that had at least one token (None when
        all had). Positions without any token are zeros and must be masked by the consumer.
    """
    batch_size, _, dim = hidden_states.shape
    steps, spatial = grid
    if token_indices is None:
        return hidden_states.reshape(batch_size, steps, spatial, dim).mean(dim=1), None
    positions = token_indices % spatial
    if token_mask is None:
        weights = torch.ones(positions.shape, dtype=hidden_states.dtype, device=hidden_states.device)
    else:
        weights = token_mask.to(hidden_states.dtype)
    sums = hidden_states.new_zeros(batch_size, spatial, dim)
    sums = sums.scatter_add(1, positions[:, :, None].expand(-1, -1, dim), hidden_states * weights[:, :, None])
    counts = hidden_states.new_zeros(batch_size, spatial).scatter_add(1, positions, weights)
    pooled = sums / counts.clamp(min=1.0)[:, :, None]
    valid = counts > 0
    return pooled, None if bool(valid.all()) else valid


class VideoFirstVideoToTextMLP(nn.Module):
    """Pre-norm feed-forward block (`ffn(ln(x))`) used by the resampler and the gated cross-attention."""

    def __init__(self, width: int, intermediate_size: int, config: VideoFirstVideoToTextConfig):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.fc1 = nn.Linear(width, intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(intermediate_size, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(self.norm(hidden_states))))


class VideoFirstMultiHeadAttention(nn.Module):
    """Multi-head attention from `queries` to separate `keys_values` through the configured attention backend."""

    def __init__(self, config: VideoFirstVideoToTextConfig, width: int, num_heads: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.q_proj = nn.Linear(width, width, bias=False)
        self.k_proj = nn.Linear(width, width, bias=False)
        self.v_proj = nn.Linear(width, width, bias=False)
        self.out_proj = nn.Linear(width, width, bias=False)

    def forward(
        self, queries: torch.Tensor, keys_values: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch_size, num_queries, width = queries.shape
        shape = (batch_size, -1, self.num_heads, self.head_dim)
        query = self.q_proj(queries).view(shape).transpose(1, 2)
        key = self.k_proj(keys_values).view(shape).transpose(1, 2)
        value = self.v_proj(keys_values).view(shape).transpose(1, 2)
        attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, _ = attention_interface(
            self, query, key, value, attention_mask, is_causal=False, scaling=self.scaling, dropout=0.0
        )
        return self.out_proj(attn_output.reshape(batch_size, num_queries, width))


class VideoFirstPerceiverLayer(GradientCheckpointingLayer):
    """One resampler layer: latents attend to `[visual tokens; latents]`, then a feed-forward block."""

    def __init__(self, config: VideoFirstVideoToTextConfig):
        super().__init__()
        width = config.resampler_width
        self.media_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.latent_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.attention = VideoFirstMultiHeadAttention(config, width, config.resampler_num_attention_heads)
        self.mlp = VideoFirstVideoToTextMLP(width, config.resampler_intermediate_size or 4 * width, config)

    def forward(self, latents: torch.Tensor, media: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        normed_latents = self.latent_norm(latents)
        keys_values = torch.cat([self.media_norm(media), normed_latents], dim=1)
        latents = latents + self.attention(normed_latents, keys_values, key_mask)
        return latents + self.mlp(latents)


class VideoFirstPerceiverResampler(nn.Module):
    """Maps a variable number of visual tokens to `resampler_num_latents` tokens in the language model's width."""

    def __init__(self, config: VideoFirstVideoToTextConfig):
        super().__init__()
        width = config.resampler_width
        vision_config = config.vision_config
        self.time_embedding = None
        if config.temporal_pooling == "none":
            # Flamingo's learned time embeddings, one per tubelet step of the tower's training clips, added to the
            # visual tokens (whose own temporal positions the tower may not have learnt, e.g. a random tower's).
            steps = vision_config.num_frames // vision_config.tubelet_size[0]
            self.time_embedding = nn.Parameter(torch.zeros(1, steps, vision_config.hidden_size))
        self.input_projection = nn.Linear(vision_config.hidden_size, width)
        self.latents = nn.Parameter(torch.zeros(config.resampler_num_latents, width))
        self.layers = nn.ModuleList([VideoFirstPerceiverLayer(config) for _ in range(config.resampler_depth)])
        self.norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.output_projection = nn.Linear(width, config.text_config.hidden_size)

    def forward(
        self,
        visual_tokens: torch.Tensor,
        visual_valid: torch.BoolTensor | None = None,
        time_steps: torch.LongTensor | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """`(B, N, vision_dim)` tokens (and `(B, N)` validity) to `(B, num_latents, text_dim)` latents.

        With time embeddings (`temporal_pooling="none"`), `time_steps` `(B, N)` gives each token's tubelet step
        out of `num_steps` (`num_steps` itself for a token of no step, the class token, which gets none).
        """
        if self.time_embedding is not None:
            if time_steps is None or num_steps is None:
                raise ValueError("This resampler adds time embeddings: pass `time_steps` and `num_steps`.")
            table = F.pad(resize_temporal_positions(self.time_embedding, num_steps)[0], (0, 0, 0, 1))
            visual_tokens = visual_tokens + table[time_steps].to(visual_tokens.dtype)
        media = self.input_projection(visual_tokens.to(self.input_projection.weight.dtype))
        latents = self.latents.to(media.dtype)[None].expand(media.shape[0], -1, -1)
        key_mask = None
        if visual_valid is not None:
            # The latents themselves are always valid keys, so no row is fully masked.
            key_mask = additive_key_mask(F.pad(visual_valid, (0, latents.shape[1]), value=True), media.dtype)
        for layer in self.layers:
            latents = layer(latents, media, key_mask)
        return self.output_projection(self.norm(latents))


class VideoFirstGatedCrossAttentionLayer(GradientCheckpointingLayer):
    """Flamingo's gated xattn-dense block: the language model's hidden states attend to the visual latents.

    `h = h + tanh(attention_gate) * xattn(ln(h), latents)`, then `h = h + tanh(ffn_gate) * ffn(ln(h))`. Both
    gates start at `config.cross_attention_gate_init` (0 by default, so that a fresh layer returns `h` unchanged).
    """

    def __init__(self, config: VideoFirstVideoToTextConfig):
        super().__init__()
        width = config.text_config.hidden_size
        self.attention_norm = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.cross_attention = VideoFirstMultiHeadAttention(config, width, config.cross_attention_heads)
        self.attention_gate = nn.Parameter(torch.zeros(()))
        self.mlp = None
        if config.cross_attention_ffn:
            self.mlp = VideoFirstVideoToTextMLP(width, config.cross_attention_intermediate_size or 4 * width, config)
            self.ffn_gate = nn.Parameter(torch.zeros(()))

    def forward(self, hidden_states: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        latents = latents.to(hidden_states.dtype)
        attended = self.cross_attention(self.attention_norm(hidden_states), latents)
        hidden_states = hidden_states + torch.tanh(self.attention_gate).to(hidden_states.dtype) * attended
        if self.mlp is not None:
            hidden_states = hidden_states + torch.tanh(self.ffn_gate).to(hidden_states.dtype) * self.mlp(hidden_states)
        return hidden_states


class VisualConditioning:
    """What the wrapped decoder layers read during one forward pass: the cross-attention layers and the latents.

    A plain object (not a module) shared by [`VideoFirstForConditionalGeneration`] and its wrappers, so that the
    cross-attention weights are registered (initialised, saved, sharded) once, under the model.
    """

    def __init__(self, cross_attention_layers: nn.ModuleList):
        self.layers = cross_attention_layers
        self.latents: torch.Tensor | None = None


class VideoFirstDecoderLayerWithCrossAttention(nn.Module):
    """A decoder layer of the language model, preceded by its gated cross-attention to the visual latents.

    It takes the original layer's place in the language model's layer list and calls it with the arguments the
    language model passes (positional or keyword), so masks, positions and the KV cache work as before.
    Attribute reads it does not know (e.g. Qwen2's `attention_type`) are answered by the original layer.
    """

    def __init__(self, decoder_layer: nn.Module, conditioning: VisualConditioning, cross_attention_index: int):
        super().__init__()
        self.decoder_layer = decoder_layer
        self.conditioning = conditioning
        self.cross_attention_index = cross_attention_index

    def forward(self, *args, **kwargs):
        latents = self.conditioning.latents
        if latents is not None:
            cross_attention = self.conditioning.layers[self.cross_attention_index]
            if args:
                args = (cross_attention(args[0], latents), *args[1:])
            else:
                kwargs["hidden_states"] = cross_attention(kwargs["hidden_states"], latents)
        return self.decoder_layer(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if not modules or "decoder_layer" not in modules:
                raise
            return getattr(modules["decoder_layer"], name)


def find_decoder_layers(language_model: nn.Module, path: str | None = None) -> tuple[str, nn.ModuleList]:
    """The language model's list of decoder layers and its dotted path.

    With `path`, that submodule; otherwise the one `nn.ModuleList` whose entries are all of the model's
    `_no_split_modules` classes (its decoder layer class, e.g. `GPT2Block`, `LlamaDecoderLayer`).
    """
    if path is not None:
        try:
            layers = language_model.get_submodule(path)
        except AttributeError as error:
            raise ValueError(f"`decoder_layers_path` {path!r} names no submodule of the language model.") from error
        if not isinstance(layers, nn.ModuleList):
            raise ValueError(f"`decoder_layers_path` {path!r} is a {type(layers).__name__}, not an nn.ModuleList.")
        return path, layers
    layer_classes = set(getattr(language_model, "_no_split_modules", None) or ())
    found = [
        (name, module)
        for name, module in language_model.named_modules()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and all(type(layer).__name__ in layer_classes for layer in module)
    ]
    if len(found) != 1:
        raise ValueError(
            f"Could not identify the decoder layers of {type(language_model).__name__} (candidates: "
            f"{[name for name, _ in found]}); set `decoder_layers_path`, e.g. 'model.layers' or 'transformer.h'."
        )
    return found[0]


class VideoFirstVideoToTextPreTrainedModel(PreTrainedModel):
    config: VideoFirstVideoToTextConfig
    base_model_prefix = "videofirst_video_to_text"
    main_input_name = "input_ids"
    input_modalities = ("video", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = [
        "VideoFirstDecoderLayerWithCrossAttention",
        "VideoFirstGatedCrossAttentionLayer",
        "VideoFirstPerceiverLayer",
        "VideoFirstEncoderLayer",
    ]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        # The video tower and the language model are sub-models: transformers initialises them with their own
        # `_init_weights`, so only the new layers are seen here.
        std = self.config.initializer_range
        if isinstance(module, VideoFirstPerceiverResampler):
            init.trunc_normal_(module.latents, std=std)
            if module.time_embedding is not None:
                # Unit scale, as Flamingo's `randn`, like the LayerNormed tokens they are added to: at the weights'
                # 0.02 they are a rounding error beside the tokens and a short run does not learn to read them.
                init.normal_(module.time_embedding, std=1.0)
        elif isinstance(module, VideoFirstGatedCrossAttentionLayer):
            # Closed gates by default: the language model starts unchanged.
            init.constant_(module.attention_gate, self.config.cross_attention_gate_init)
            if module.mlp is not None:
                init.constant_(module.ffn_gate, self.config.cross_attention_gate_init)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class VideoFirstForConditionalGeneration(VideoFirstVideoToTextPreTrainedModel, GenerationMixin):
    """Video-to-text: a VideoFirst video tower, a Perceiver resampler and a causal LM with gated cross-attention.

    ```python
    model = VideoFirstForConditionalGeneration.from_vision_and_language_models(
        VideoFirstModel.from_pretrained("videofirst-checkpoint"), AutoModelForCausalLM.from_pretrained("gpt2"),
        mask_ratio=0.3)
    out = model(input_ids=ids, attention_mask=am, pixel_values_videos=videos, labels=labels)   # captioning loss
    ids = model.generate(pixel_values_videos=videos, max_new_tokens=30, num_beams=3)          # captions
    ```
    """

    def __init__(
        self,
        config: VideoFirstVideoToTextConfig,
        vision_model: VideoFirstVisionModel | None = None,
        language_model: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        self.vision_model = (
            vision_model if vision_model is not None else VideoFirstVisionModel._from_config(config.vision_config)
        )
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        self.resampler = VideoFirstPerceiverResampler(config)

        _, layers = find_decoder_layers(self.language_model, config.decoder_layers_path)
        inserted = [index for index in range(len(layers)) if index % config.cross_attention_every == 0]
        self.cross_attention_layers = nn.ModuleList(VideoFirstGatedCrossAttentionLayer(config) for _ in inserted)
        self.conditioning = VisualConditioning(self.cross_attention_layers)
        for position, index in enumerate(inserted):
            layers[index] = VideoFirstDecoderLayerWithCrossAttention(layers[index], self.conditioning, position)

        self.freeze_pretrained_parts()
        self.post_init()

    def freeze_pretrained_parts(self) -> None:
        """Freeze the video tower and the language model as the config says (by default both: only the resampler
        and the cross-attention layers train). Loading replaces parameters, so `from_pretrained` calls it again."""
        self.vision_model.requires_grad_(not self.config.freeze_vision_model)
        self.language_model.requires_grad_(not self.config.freeze_language_model)

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> "VideoFirstForConditionalGeneration":
        loaded = super().from_pretrained(*args, **kwargs)
        # `output_loading_info=True` returns (model, info).
        (loaded[0] if isinstance(loaded, tuple) else loaded).freeze_pretrained_parts()
        return loaded

    @classmethod
    def from_vision_and_language_models(
        cls,
        vision_model: VideoFirstVisionModel | VideoFirstModel,
        language_model: PreTrainedModel,
        **config_kwargs,
    ) -> "VideoFirstForConditionalGeneration":
        """Build the model around a trained video tower (or a whole dual encoder, whose video tower is used) and
        a pretrained causal language model; only the resampler and the cross-attention layers are new."""
        if isinstance(vision_model, VideoFirstModel):
            vision_model = vision_model.vision_model
        # A new composite config resets its sub-configs' attention implementation: keep the models' own.
        attn_implementation = {
            "vision_config": vision_model.config._attn_implementation,
            "text_config": language_model.config._attn_implementation,
        }
        config_kwargs.setdefault("attn_implementation", attn_implementation)
        config = VideoFirstVideoToTextConfig(
            vision_config=vision_model.config, text_config=language_model.config, **config_kwargs
        )
        return cls(config, vision_model=vision_model, language_model=language_model)

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings: nn.Module):
        self.language_model.set_output_embeddings(new_embeddings)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    def trainable_parameter_names(self) -> list[str]:
        """Names of the parameters that receive gradients (with the default freezing: resampler, cross-attention)."""
        return [name for name, parameter in self.named_parameters() if parameter.requires_grad]

    def _visual_tokens(
        self, vision_outputs: VideoFirstVisionModelOutput, video_shape: torch.Size
    ) -> tuple[torch.Tensor, torch.BoolTensor | None, torch.LongTensor | None, int]:
        """What the resampler reads: `(tokens, valid, time_steps, num_steps)` (see `config.temporal_pooling`)."""
        vision_config = self.config.vision_config
        tubelet_frames, tubelet_height, tubelet_width = vision_config.tubelet_size
        frames, height, width = video_shape[1], video_shape[3], video_shape[4]
        grid = (frames // tubelet_frames, (height // tubelet_height) * (width // tubelet_width))
        hidden_states = vision_outputs.last_hidden_state
        class_token = None
        if vision_config.pooling == "cls":
            class_token, hidden_states = hidden_states[:, :1], hidden_states[:, 1:]
        time_steps = None
        if self.config.temporal_pooling == "mean":
            tokens, valid = pool_tokens_over_time(
                hidden_states, grid, vision_outputs.token_indices, vision_outputs.token_mask
            )
        else:
            tokens, valid = hidden_states, vision_outputs.token_mask
            if vision_outputs.token_indices is None:
                steps = torch.arange(grid[0], device=tokens.device).repeat_interleave(grid[1])
                time_steps = steps[None].expand(tokens.shape[0], -1)
            else:
                time_steps = vision_outputs.token_indices // grid[1]
        if class_token is not None:
            tokens = torch.cat([tokens, class_token], dim=1)
            if valid is not None:
                valid = F.pad(valid, (0, 1), value=True)
            if time_steps is not None:
                time_steps = F.pad(time_steps, (0, 1), value=grid[0])
        return tokens, valid, time_steps, grid[0]

    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        video_frame_mask: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        Encode videos for the language model.

        Returns a `BaseModelOutputWithPooling` whose `pooler_output` is the `(batch, resampler_num_latents,
        text_hidden_size)` visual latents the cross-attention attends to, and `last_hidden_state` the video
        tower's kept tokens.

        pixel_values_videos (`torch.FloatTensor` of shape `(batch, frames, channels, height, width)`): videos.
        video_frame_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): 1 for real frames, 0 for padding.
        mask_ratio (`float`, *optional*): fraction of video tokens to drop; defaults to `config.mask_ratio`, in
            training and in evaluation alike (as the paper).
        generator (`torch.Generator`, *optional*): source of randomness for the token drop.
        """
        if mask_ratio is None:
            mask_ratio = self.config.mask_ratio
        # A frozen tower needs no graph: its activations would only cost memory.
        tower_trains = any(parameter.requires_grad for parameter in self.vision_model.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and tower_trains):
            vision_outputs = self.vision_model(
                pixel_values_videos=pixel_values_videos,
                video_frame_mask=video_frame_mask,
                mask_ratio=mask_ratio,
                generator=generator,
                **kwargs,
            )
        visual_tokens, visual_valid, time_steps, num_steps = self._visual_tokens(
            vision_outputs, pixel_values_videos.shape
        )
        latents = self.resampler(visual_tokens, visual_valid, time_steps, num_steps)
        return BaseModelOutputWithPooling(
            last_hidden_state=vision_outputs.last_hidden_state,
            pooler_output=latents,
            hidden_states=vision_outputs.hidden_states,
        )

    @contextmanager
    def conditioned_on(self, visual_latents: torch.Tensor | None) -> Iterator[None]:
        """Within this context, the language model's wrapped layers cross-attend to `visual_latents`."""
        previous = self.conditioning.latents
        self.conditioning.latents = visual_latents
        try:
            yield
        finally:
            self.conditioning.latents = previous

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_frame_mask: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        visual_latents: torch.FloatTensor | None = None,
        mask_ratio: float | None = None,
        **kwargs,
    ) -> VideoFirstVideoToTextOutput:
        r"""
        Run the language model on `input_ids`, cross-attending to the videos.

        pixel_values_videos (`torch.FloatTensor` of shape `(batch, frames, channels, height, width)`, *optional*):
            Videos; encoded by [`get_video_features`] unless `visual_latents` are given.
        video_frame_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): 1 for real frames, 0 for padding.
        labels (`torch.LongTensor` of shape `(batch, sequence_length)`, *optional*): targets for the language
            model's loss (shifted inside it); -100 marks positions without loss (prompt, padding).
        visual_latents (`torch.FloatTensor` of shape `(batch, num_latents, text_hidden_size)`, *optional*):
            Precomputed [`get_video_features`] `pooler_output` (what generation passes to every step).
        mask_ratio (`float`, *optional*): video token drop ratio; defaults to `config.mask_ratio`.

        The language model's other arguments (its key/value cache among them, `past_key_values` or, from
        transformers 5.24, `cache`) pass through `kwargs`. Without videos or latents, this is the plain language
        model.
        """
        if visual_latents is None and pixel_values_videos is not None:
            visual_latents = self.get_video_features(
                pixel_values_videos, video_frame_mask=video_frame_mask, mask_ratio=mask_ratio
            ).pooler_output
        if visual_latents is not None:
            text = input_ids if input_ids is not None else inputs_embeds
            if text is not None and text.shape[0] != visual_latents.shape[0]:
                raise ValueError(
                    f"{visual_latents.shape[0]} videos for a text batch of {text.shape[0]}: pass one video per "
                    "sequence."
                )
        with self.conditioned_on(visual_latents):
            outputs = self.language_model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                inputs_embeds=inputs_embeds,
                labels=labels,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
                **kwargs,
            )
        fields = {
            key: value for key, value in outputs.items() if key in VideoFirstVideoToTextOutput.__dataclass_fields__
        }
        return VideoFirstVideoToTextOutput(**fields, visual_latents=visual_latents)

    def _update_model_kwargs_for_generation(
        self, outputs: ModelOutput, model_kwargs: dict[str, Any], is_encoder_decoder: bool = False, **kwargs
    ) -> dict[str, Any]:
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, **kwargs
        )
        # Videos given to the first step only (they are dropped after prefill): keep their latents for the rest.
        if getattr(outputs, "visual_latents", None) is not None:
            model_kwargs["visual_latents"] = outputs.visual_latents
        return model_kwargs

    @torch.no_grad()
    def generate(
        self,
        inputs: torch.Tensor | None = None,
        *,
        pixel_values_videos: torch.FloatTensor | None = None,
        video_frame_mask: torch.Tensor | None = None,
        visual_latents: torch.FloatTensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        **kwargs,
    ):
        r"""
        [`GenerationMixin.generate`] conditioned on videos: text continues `inputs` / `input_ids` (a prompt; by
        default the language model's BOS token), with every generation option (greedy, sampling, beams, ...).

        The videos are encoded once, before generation starts, and their latents are passed to every step
        (expanded with the beams or samples, so all beams of a video see the same latents, also with masking).
        """
        if visual_latents is None and pixel_values_videos is not None:
            visual_latents = self.get_video_features(
                pixel_values_videos, video_frame_mask=video_frame_mask, mask_ratio=mask_ratio, generator=generator
            ).pooler_output
        if visual_latents is not None:
            kwargs["visual_latents"] = visual_latents
        return super().generate(inputs, **kwargs)


__all__ = [
    "VideoFirstForConditionalGeneration",
    "VideoFirstVideoToTextPreTrainedModel",
    "VideoFirstVideoToTextOutput",
    "pool_tokens_over_time",
]
