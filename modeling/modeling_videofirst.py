"""PyTorch VideoFirst: a video-first dual encoder (Papalampidi et al., CVPR 2024, arXiv 2312.07395).

A ViT embeds videos as 3D tubelets (images as 2D patches), optionally drops a fraction of the video tokens,
and attends over the rest jointly in space and time (or factorised, or per frame). A transformers text
encoder embeds captions. Both are projected to one space and trained contrastively.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, PreTrainedModel
from transformers.models.auto.modeling_auto import AutoModel
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_videofirst import VideoFirstConfig, VideoFirstVisionConfig, tube_grid
from .masking_videofirst import TokenGroups, TokenSelection, select_tokens


@dataclass
class VideoFirstVisionModelOutput(BaseModelOutputWithPooling):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, kept_tokens, hidden_size)`):
        Final hidden states of the tokens that were kept (a leading class token first, when configured).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        Pooled representation, before the projection.
    token_indices (`torch.LongTensor` of shape `(batch_size, kept_tokens)`, *optional*):
        Position of each kept token in the flattened `(time, height, width)` tubelet grid (with
        `tubevit_kernels`: in the concatenation of the kernels' tokens); `None` when every token was kept.
    token_mask (`torch.BoolTensor` of shape `(batch_size, kept_tokens)`, *optional*):
        False for the right padding of samples that kept fewer tokens; `None` when there is none.
    """

    token_indices: torch.LongTensor | None = None
    token_mask: torch.BoolTensor | None = None


@dataclass
class VideoFirstOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `return_loss=True`):
        Contrastive (or sigmoid) loss over the local batch.
    logits_per_video (`torch.FloatTensor` of shape `(video_batch_size, text_batch_size)`):
        Scaled similarities of every video (or image, when images were passed) to every text.
    logits_per_text (`torch.FloatTensor` of shape `(text_batch_size, video_batch_size)`):
        The transpose of `logits_per_video`.
    video_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
        L2-normalised video (or image) embeddings.
    text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
        L2-normalised text embeddings.
    """

    loss: torch.FloatTensor | None = None
    logits_per_video: torch.FloatTensor | None = None
    logits_per_text: torch.FloatTensor | None = None
    video_embeds: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: VideoFirstVisionModelOutput | None = None

    def to_tuple(self) -> tuple:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP: the i-th text matches the i-th video."""
    labels = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    text_loss = F.cross_entropy(logits_per_text, labels)
    video_loss = F.cross_entropy(logits_per_text.t(), labels)
    return (text_loss + video_loss) / 2.0


def sigmoid_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """SigLIP's pairwise loss: every (text, video) pair is a binary match / no-match decision."""
    targets = 2 * torch.eye(logits_per_text.shape[0], device=logits_per_text.device) - 1
    return -F.logsigmoid(targets * logits_per_text).sum() / logits_per_text.shape[0]


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def additive_key_mask(key_valid: torch.BoolTensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """`(batch, keys)` validity to the `(batch, 1, 1, keys)` additive mask every attention backend takes."""
    if key_valid is None:
        return None
    mask = torch.zeros(key_valid.shape, dtype=dtype, device=key_valid.device)
    mask = mask.masked_fill(~key_valid, torch.finfo(dtype).min)
    return mask[:, None, None, :]


def resize_spatial_positions(table: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """`(1, h * w, dim)` positions of a `grid = (h, w)` table, bicubically resized to `size`."""
    if tuple(grid) == tuple(size):
        return table
    image = table.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=size, mode="bicubic", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], -1)


def resize_temporal_positions(table: torch.Tensor, num_steps: int) -> torch.Tensor:
    """`(1, steps, dim)` positions linearly stretched (or shrunk) to `num_steps`."""
    if num_steps == table.shape[1]:
        return table
    stretched = F.interpolate(table.transpose(1, 2), size=num_steps, mode="linear", align_corners=False)
    return stretched.transpose(1, 2)


def add_positions(tokens: torch.Tensor, *tables: torch.Tensor) -> torch.Tensor:
    """`tokens + tables[0] + tables[1] + ...`, in place when the dtypes agree.

    In place because the tokens come straight from a matmul, whose backward does not need its output, and an
    out-of-place add would allocate one more token-sized tensor per table. Under autocast (bf16 tokens, fp32
    tables) the sum is promoted out of place, as a plain `+` would.
    """
    for table in tables:
        # `promote_types`, not `result_type`: dtypes only, so `torch.compile(fullgraph=True)` traces it.
        in_place = torch.promote_types(tokens.dtype, table.dtype) == tokens.dtype
        tokens = tokens.add_(table) if in_place else tokens + table
    return tokens


class VideoFirstTubeEmbedding(nn.Module):
    """One kernel of TubeViT-style tokenisation: a strided Conv3d (from an offset) with its own positions.

    Its tokens get factorised learned positions like the tubelet path: a spatial table for its token grid at
    `image_size` and a temporal table for its steps at `num_frames`, interpolated for other input sizes.
    """

    def __init__(self, config: VideoFirstVisionConfig, kernel: dict):
        super().__init__()
        self.kernel = kernel
        self.projection = nn.Conv3d(
            config.num_channels, config.hidden_size, kernel_size=kernel["kernel_size"], stride=kernel["stride"]
        )
        steps, height, width = tube_grid(kernel, config.num_frames, config.image_size, config.image_size)
        self.position_grid = (height, width)
        self.spatial_position_embedding = nn.Parameter(torch.zeros(1, height * width, config.hidden_size))
        self.temporal_position_embedding = nn.Parameter(torch.zeros(1, steps, config.hidden_size))

    def forward(self, videos: torch.Tensor) -> torch.Tensor:
        """`(B, C, T, H, W)` to `(B, tokens, dim)`, time-major within the kernel."""
        offset_t, offset_h, offset_w = self.kernel["offset"]
        tokens = self.projection(videos[:, :, offset_t:, offset_h:, offset_w:])
        batch_size, dim, steps, height, width = tokens.shape
        tokens = tokens.flatten(3).permute(0, 2, 3, 1)  # (B, T', H'W', dim)
        spatial = resize_spatial_positions(self.spatial_position_embedding, self.position_grid, (height, width))
        tokens = tokens + spatial[:, None]
        tokens = tokens + resize_temporal_positions(self.temporal_position_embedding, steps)[:, :, None]
        return tokens.reshape(batch_size, -1, dim)


class VideoFirstEmbeddings(nn.Module):
    """Tubelet embedding for videos, patch embedding for images, and learned space / time positions.

    Positions are factorised: one spatial table for the patch grid of `image_size`, one temporal table for
    the `num_frames // t` tubelet steps of training. Inputs of other sizes interpolate them: bicubic in space
    (as ViTs do for new resolutions) and linear in time, so a model trained on 16 frames runs on 256 with its
    learned temporal ordering stretched over the longer clip.

    With `tubevit_kernels`, videos are tokenised by several [`VideoFirstTubeEmbedding`]s instead (their tokens
    concatenated in kernel order) and there is no tubelet kernel or shared temporal table.
    """

    def __init__(self, config: VideoFirstVisionConfig):
        super().__init__()
        self.config = config
        hidden_size = config.hidden_size
        if config.tubevit_kernels is None:
            self.tubelet_embedding = nn.Conv3d(
                config.num_channels, hidden_size, kernel_size=config.tubelet_size, stride=config.tubelet_size
            )
            num_temporal_positions = config.num_frames // config.tubelet_size[0]
            self.temporal_position_embedding = nn.Parameter(torch.zeros(1, num_temporal_positions, hidden_size))
        else:
            self.tubes = nn.ModuleList(VideoFirstTubeEmbedding(config, kernel) for kernel in config.tubevit_kernels)
        self.patch_embedding = nn.Conv2d(
            config.num_channels, hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )
        patches_per_side = config.image_size // config.patch_size
        self.spatial_position_embedding = nn.Parameter(torch.zeros(1, patches_per_side**2, hidden_size))
        if config.pooling == "cls":
            self.class_embedding = nn.Parameter(torch.zeros(hidden_size))
            self.class_position_embedding = nn.Parameter(torch.zeros(hidden_size))

    def spatial_positions(self, height: int, width: int) -> torch.Tensor:
        """`(1, height * width, dim)` spatial embeddings for a token grid of that size."""
        side = self.config.image_size // self.config.patch_size
        return resize_spatial_positions(self.spatial_position_embedding, (side, side), (height, width))

    def temporal_positions(self, num_steps: int) -> torch.Tensor:
        """`(1, num_steps, dim)` temporal embeddings for that many tubelet steps."""
        return resize_temporal_positions(self.temporal_position_embedding, num_steps)

    def video_grid(self, frames: int, height: int, width: int) -> tuple[int, int, int]:
        """Tubelets along (time, height, width) of a `frames x height x width` video (tubelet path)."""
        tubelet_frames, tubelet_height, tubelet_width = self.config.tubelet_size
        return frames // tubelet_frames, height // tubelet_height, width // tubelet_width

    def embed_video(
        self, pixel_values_videos: torch.Tensor, token_indices: torch.LongTensor | None = None
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """`(B, T, C, H, W)` frames to `(B, T' * H' * W', dim)` tokens (time-major) and the grid `(T', H', W')`.

        With `token_indices` `(B, K)` (positions in the flattened grid) only those tubelets are embedded, giving
        `(B, K, dim)`: a masked step never embeds the dropped tubelets, nor back-propagates through them into the
        kernel. The tubelet kernel (a Conv3d whose stride is its size) is applied as one matmul over the tubelets'
        pixels, which is also faster than the convolution on CPU; its module's `forward` is not called.

        TubeViT tokens lie on no common grid: the grid is then `(1, 1, tokens)`.
        """
        if self.config.tubevit_kernels is not None:
            videos = pixel_values_videos.to(self.tubes[0].projection.weight.dtype).transpose(1, 2)
            tokens = torch.cat([tube(videos) for tube in self.tubes], dim=1)
            if token_indices is not None:
                tokens = tokens.gather(1, token_indices[:, :, None].expand(-1, -1, tokens.shape[-1]))
            return tokens, (1, 1, tokens.shape[1])
        kernel = self.tubelet_embedding
        batch_size, frames, channels, height, width = pixel_values_videos.shape
        tubelet_frames, tubelet_height, tubelet_width = self.config.tubelet_size
        steps, rows, cols = self.video_grid(frames, height, width)
        videos = pixel_values_videos.to(kernel.weight.dtype).reshape(
            batch_size, steps, tubelet_frames, channels, rows, tubelet_height, cols, tubelet_width
        )
        spatial = self.spatial_positions(rows, cols)[0]  # (rows * cols, dim)
        temporal = self.temporal_positions(steps)[0]  # (steps, dim)
        weight = kernel.weight.reshape(kernel.out_channels, -1)  # (dim, C * t * h * w)
        if token_indices is None:
            # One row per tubelet, its pixels in the kernel's (C, t, h, w) order.
            patches = videos.permute(0, 1, 4, 6, 3, 2, 5, 7).reshape(batch_size, steps * rows * cols, -1)
            tokens = F.linear(patches, weight, kernel.bias).view(batch_size, steps, rows * cols, -1)
            tokens = add_positions(tokens, spatial, temporal[:, None])
            return tokens.view(batch_size, steps * rows * cols, -1), (steps, rows, cols)
        step, position = token_indices // (rows * cols), token_indices % (rows * cols)
        batch = torch.arange(batch_size, device=token_indices.device)[:, None]
        # Advanced indices on dims 0, 1, 4, 6 (split by slices) lead the result: (B, K, t, C, h, w).
        patches = videos[batch, step, :, :, position // cols, :, position % cols, :]
        patches = patches.transpose(2, 3).reshape(batch_size, token_indices.shape[1], -1)
        tokens = F.linear(patches, weight, kernel.bias)
        return add_positions(tokens, self.kept_positions(spatial, temporal, token_indices)), (steps, rows, cols)

    @staticmethod
    def kept_positions(spatial: torch.Tensor, temporal: torch.Tensor, token_indices: torch.LongTensor) -> torch.Tensor:
        """`(B, K, dim)` position embeddings of the kept tokens `token_indices` of a `(steps, rows * cols)` grid.

        Deterministic backward by construction. The positions of the whole grid (no batch dimension: small) are
        gathered per sample from a batch-expanded view. A sample keeps each grid position at most once (its
        padding repeats position 0 but gets an exactly zero gradient), so the gather's backward adds at most one
        nonzero gradient into each (sample, position), which is exact in any order, and the sum over samples is a
        dense reduction. Indexing the tables with all samples' positions at once (`spatial[position]`) instead
        accumulates many samples' gradients into one row, which parallel CPU threads (and CUDA atomics) do in no
        fixed order: the tables' gradients then differ between identical runs.
        """
        grid = (temporal[:, None] + spatial[None]).flatten(0, 1)  # (steps * rows * cols, dim)
        batch_size, dim = token_indices.shape[0], grid.shape[-1]
        return grid.expand(batch_size, -1, -1).gather(1, token_indices[:, :, None].expand(-1, -1, dim))

    def tube_token_valid(self, frame_valid: torch.BoolTensor, height: int, width: int) -> torch.BoolTensor:
        """`(B, T)` real-frame flags to `(B, tokens)` flags of the TubeViT tokens that see only real frames.

        A tube that reaches into padding would mix it into its token, so it is dropped; the tokens left are
        exactly those of the unpadded video.
        """
        flags = []
        for tube in self.tubes:
            kernel = tube.kernel
            _, grid_height, grid_width = tube_grid(kernel, frame_valid.shape[1], height, width)
            windows = frame_valid[:, kernel["offset"][0] :].unfold(1, kernel["kernel_size"][0], kernel["stride"][0])
            step_valid = windows.all(dim=-1)  # (B, steps)
            flags.append(step_valid[:, :, None].expand(-1, -1, grid_height * grid_width).flatten(1))
        token_valid = torch.cat(flags, dim=1)
        if not bool(token_valid.any(dim=1).all()):
            raise ValueError(
                "With `tubevit_kernels`, every video needs enough real frames (`video_frame_mask`) for at least one "
                "tube to lie entirely within them."
            )
        return token_valid

    def embed_image(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """`(B, C, H, W)` images to `(B, H' * W', dim)` tokens: a one-step video without temporal embedding."""
        weight = self.patch_embedding.weight
        tokens = self.patch_embedding(pixel_values.to(weight.dtype))
        _, _, height, width = tokens.shape
        tokens = tokens.flatten(2).transpose(1, 2) + self.spatial_positions(height, width)
        return tokens, (1, height, width)

    def class_token(self, batch_size: int) -> torch.Tensor:
        token = self.class_embedding + self.class_position_embedding
        return token.expand(batch_size, 1, -1)


class VideoFirstAttention(nn.Module):
    """Multi-head self-attention over whatever token sequence it is given (a clip, a frame, a time line)."""

    def __init__(self, config: VideoFirstVisionConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = self.embed_dim // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = config.attention_dropout
        self.is_causal = False
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=config.qkv_bias)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=config.qkv_bias)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim, bias=config.qkv_bias)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def forward(
        self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The attended tokens and, on the eager path, the attention weights `(batch, heads, tokens, tokens)`."""
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, self.num_heads, self.head_dim)
        query = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        key = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        value = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            is_causal=False,
            scaling=self.scaling,
            dropout=self.dropout if self.training else 0.0,
        )
        return self.out_proj(attn_output.reshape(*input_shape, self.embed_dim)), attn_weights


# Activations whose derivative `GeluLinear` computes itself: `hidden_act` to F.gelu's `approximate`.
GELU_APPROXIMATIONS = {"gelu": "none", "gelu_pytorch_tanh": "tanh"}


class GeluLinear(torch.autograd.Function):
    """`linear(gelu(hidden), weight, bias)` that keeps only `hidden` for the backward pass.

    Autograd would keep both the GELU's input and its output (the input of `linear`): two tensors of the MLP's
    width, half of what a transformer layer stores per token. Here the output is recomputed in the backward pass
    (one elementwise op), which cuts a layer's activation memory by a quarter at no measurable cost in speed.
    Under autocast the forward's matmul dtype is reused in the backward.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, approximate: str):
        output = F.linear(F.gelu(hidden, approximate=approximate), weight, bias)
        ctx.approximate = approximate
        ctx.compute_dtype = output.dtype
        ctx.has_bias = bias is not None
        ctx.save_for_backward(hidden, weight)
        return output

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        hidden, weight = ctx.saved_tensors
        dtype = ctx.compute_dtype
        grad_output = grad_output.to(dtype)
        flat_grad = grad_output.reshape(-1, grad_output.shape[-1])
        grad_weight = grad_bias = grad_hidden = None
        if ctx.needs_input_grad[1]:
            activated = F.gelu(hidden, approximate=ctx.approximate).to(dtype)
            grad_weight = flat_grad.t() @ activated.reshape(-1, activated.shape[-1])
            del activated
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = flat_grad.sum(dim=0)
        if ctx.needs_input_grad[0]:
            grad_activated = (grad_output @ weight.to(dtype)).to(hidden.dtype)
            grad_hidden = torch.ops.aten.gelu_backward(grad_activated, hidden, approximate=ctx.approximate)
        return grad_hidden, grad_weight, grad_bias, None


class VideoFirstMLP(nn.Module):
    def __init__(self, config: VideoFirstVisionConfig):
        super().__init__()
        self.activation_fn = ACT2FN[config.hidden_act]
        self.gelu_approximation = GELU_APPROXIMATIONS.get(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.fc1(hidden_states)
        # Other activations, wrapped layers (LoRA, quantisation) and steps without gradients take the plain path.
        if self.gelu_approximation is not None and type(self.fc2) is nn.Linear and torch.is_grad_enabled():
            return GeluLinear.apply(hidden_states, self.fc2.weight, self.fc2.bias, self.gelu_approximation)
        return self.fc2(self.activation_fn(hidden_states))


class VideoFirstZeroInitLinear(nn.Linear):
    """A linear layer that `_init_weights` starts at zero (an adapter's output projection)."""


class VideoFirstAdapter(nn.Module):
    """A bottleneck MLP adapter (Houlsby et al., 2019) with a skip connection: `h + up(act(down(h)))`.

    `up` starts at zero, so an added adapter leaves the model's outputs unchanged.
    """

    def __init__(self, config: VideoFirstVisionConfig):
        super().__init__()
        self.down = nn.Linear(config.hidden_size, config.adapter_bottleneck)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.up = VideoFirstZeroInitLinear(config.adapter_bottleneck, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.up(self.activation_fn(self.down(hidden_states)))


@dataclass
class AttentionLayout:
    """How the tokens of one forward pass attend: computed once, shared by every layer.

    `joint_mask` is the additive key mask of joint attention (None: attend to all). `spatial` and `temporal`
    pack tokens by frame and by spatial position; None means the tokens fill the whole `grid` in order, so
    a reshape does the packing.
    """

    grid: tuple[int, int]
    joint_mask: torch.Tensor | None = None
    spatial: TokenGroups | None = None
    spatial_mask: torch.Tensor | None = None
    temporal: TokenGroups | None = None
    temporal_mask: torch.Tensor | None = None


class VideoFirstEncoderLayer(GradientCheckpointingLayer):
    """A pre-norm ViT block whose attention is joint, per frame, or per frame followed by gated per-position
    temporal attention (`h = h + tanh(alpha) * temporal(h)`, alpha starting at 0 so the block starts as the
    image ViT's)."""

    def __init__(self, config: VideoFirstVisionConfig):
        super().__init__()
        self.attention_type = config.attention_type
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = VideoFirstAttention(config)
        if self.attention_type == "factorized":
            self.temporal_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
            self.temporal_attn = VideoFirstAttention(config)
            self.temporal_gate = nn.Parameter(torch.zeros(()))
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VideoFirstMLP(config)
        # Parameter-efficient adaptation: an adapter on the feed-forward output, before the residual sum.
        self.adapter = VideoFirstAdapter(config) if config.adapter_bottleneck is not None else None

    def _spatial_attention(self, hidden_states: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        if layout.spatial is None:
            batch_size, length, dim = hidden_states.shape
            per_frame = hidden_states.reshape(-1, layout.grid[1], dim)
            return self.self_attn(per_frame)[0].reshape(batch_size, length, dim)
        packed = self.self_attn(layout.spatial.pack(hidden_states), layout.spatial_mask)[0]
        return layout.spatial.unpack(packed, hidden_states)

    def _temporal_attention(self, hidden_states: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        if layout.temporal is None:
            batch_size, length, dim = hidden_states.shape
            steps, spatial = layout.grid
            per_position = hidden_states.reshape(batch_size, steps, spatial, dim).transpose(1, 2)
            attended = self.temporal_attn(per_position.reshape(-1, steps, dim))[0]
            attended = attended.reshape(batch_size, spatial, steps, dim).transpose(1, 2)
            return attended.reshape(batch_size, length, dim)
        packed = self.temporal_attn(layout.temporal.pack(hidden_states), layout.temporal_mask)[0]
        return layout.temporal.unpack(packed, hidden_states)

    def forward(self, hidden_states: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        normed = self.layer_norm1(hidden_states)
        if self.attention_type == "joint":
            hidden_states = hidden_states + self.self_attn(normed, layout.joint_mask)[0]
        else:
            hidden_states = hidden_states + self._spatial_attention(normed, layout)
        if self.attention_type == "factorized":
            temporal = self._temporal_attention(self.temporal_layer_norm(hidden_states), layout)
            hidden_states = hidden_states + torch.tanh(self.temporal_gate) * temporal
        feed_forward = self.mlp(self.layer_norm2(hidden_states))
        if self.adapter is not None:
            feed_forward = self.adapter(feed_forward)
        return hidden_states + feed_forward


class VideoFirstEncoder(nn.Module):
    def __init__(self, config: VideoFirstVisionConfig):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList([VideoFirstEncoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        # Hidden states and attention weights are recorded by hooks (`_can_record_outputs`), not returned here.
        for layer in self.layers:
            hidden_states = layer(hidden_states, layout)
        return hidden_states


class VideoFirstAttentionPoolingHead(nn.Module):
    """A learned probe attends over the tokens (SigLIP's pooling head), followed by a residual MLP."""

    def __init__(self, config: VideoFirstVisionConfig):
        super().__init__()
        self.probe = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.attention = VideoFirstPoolingAttention(config)
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VideoFirstMLP(config)

    def forward(self, hidden_states: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        probe = self.probe.expand(hidden_states.shape[0], -1, -1)
        pooled = self.attention(probe, hidden_states, key_mask)[0]
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled[:, 0]


class VideoFirstPoolingAttention(VideoFirstAttention):
    """Cross-attention from the pooling probe to the tokens."""

    def forward(
        self, query_states: torch.Tensor, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size = hidden_states.shape[0]
        query = self.q_proj(query_states).view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
        key = self.k_proj(hidden_states).view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
        value = self.v_proj(hidden_states).view(batch_size, -1, self.num_heads, self.head_dim).transpose(1, 2)
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self, query, key, value, attention_mask, is_causal=False, scaling=self.scaling, dropout=0.0
        )
        return self.out_proj(attn_output.reshape(batch_size, -1, self.embed_dim)), attn_weights


class VideoFirstPreTrainedModel(PreTrainedModel):
    config: VideoFirstConfig
    base_model_prefix = "videofirst"
    main_input_name = "pixel_values_videos"
    input_modalities = ("video", "image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["VideoFirstEncoderLayer"]
    _supports_sdpa = True
    # Not declared: flash attention takes no additive float masks, and the masks here are per-key float masks
    # (`additive_key_mask`) over packed per-frame / per-position groups; flex attention would need a BlockMask
    # per layout. Neither has been checked against eager, so only SDPA and eager are offered.
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = True
    _can_record_outputs = {
        # Per layer: its output, after the input of the first layer (as CLIP records them).
        "hidden_states": VideoFirstEncoderLayer,
        # Per layer: the joint (or, factorized and frame-level, the spatial) self-attention weights, eager only.
        "attentions": OutputRecorder(VideoFirstAttention, index=1, layer_name="self_attn"),
    }

    def save_pretrained(self, save_directory, *args, **kwargs):
        """`PreTrainedModel.save_pretrained`, refusing a model that holds unmerged adapter layers.

        Layers injected by `peft` (LoRA: `videofirst.apply_adaptation(method="lora")`) rename the weights they wrap
        (`q_proj.base_layer.weight`, `q_proj.lora_A...`): such a checkpoint would reload with those weights missing
        and the LoRA ones unexpected, i.e. a randomly initialised model. Merge them first. Adapters added through
        transformers' own `add_adapter` are saved as a peft adapter folder by transformers, as usual.
        """
        wrapped = [
            name
            for name, module in self.named_modules()
            if isinstance(getattr(module, "base_layer", None), nn.Module) and hasattr(module, "merge")
        ]
        if wrapped and not getattr(self, "_hf_peft_config_loaded", False):
            raise ValueError(
                f"{type(self).__name__} holds {len(wrapped)} unmerged adapter layer(s) (e.g. `{wrapped[0]}`); its "
                "checkpoint would not reload. Merge them into the weights first with "
                "`videofirst.merge_adaptation(model)` (or peft's `merge_and_unload()`), then save."
            )
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module):
        # The dual config holds the vision settings in `vision_config`. No class check: remote code loads the
        # configuration and modeling files as separate modules, so the config's class need not be ours.
        std = getattr(self.config, "vision_config", self.config).initializer_range
        if isinstance(module, VideoFirstEmbeddings):
            init.trunc_normal_(module.spatial_position_embedding, std=std)
            if hasattr(module, "temporal_position_embedding"):
                # Time starts neutral: a fresh (or inflated) model sees a static video like its frame.
                init.zeros_(module.temporal_position_embedding)
            if hasattr(module, "class_embedding"):
                init.trunc_normal_(module.class_embedding, std=std)
                init.zeros_(module.class_position_embedding)
        elif isinstance(module, VideoFirstTubeEmbedding):
            init.trunc_normal_(module.spatial_position_embedding, std=std)
            init.zeros_(module.temporal_position_embedding)
        elif isinstance(module, VideoFirstZeroInitLinear):
            init.zeros_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, VideoFirstAttentionPoolingHead):
            init.trunc_normal_(module.probe, std=std)
        elif isinstance(module, VideoFirstEncoderLayer) and module.attention_type == "factorized":
            # The temporal block starts as a copy of the spatial one (children are initialised first).
            for temporal, spatial in zip(module.temporal_attn.parameters(), module.self_attn.parameters()):
                init.copy_(temporal, spatial)
            init.copy_(module.temporal_layer_norm.weight, module.layer_norm1.weight)
            init.copy_(module.temporal_layer_norm.bias, module.layer_norm1.bias)
            init.zeros_(module.temporal_gate)
        elif isinstance(module, VideoFirstModel):
            init.constant_(module.logit_scale, module.config.logit_scale_init_value)
            if module.logit_bias is not None:
                init.constant_(module.logit_bias, module.config.logit_bias_init_value)
        elif isinstance(module, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


# What `**kwargs` of the forward methods may hold: the output flags (`return_dict` is taken by the decorators).
OUTPUT_FLAGS = frozenset({"output_attentions", "output_hidden_states"})


def check_no_unexpected_kwargs(method: str, kwargs: dict) -> None:
    """Raise on keyword arguments `method` would otherwise ignore (a typo such as `video_frame_mak=`)."""
    unexpected = sorted(set(kwargs) - OUTPUT_FLAGS)
    if unexpected:
        raise TypeError(
            f"{method}() got unexpected keyword argument(s) {unexpected}; besides its named arguments it takes "
            f"{sorted(OUTPUT_FLAGS | {'return_dict'})}."
        )


class VideoFirstVisionModel(VideoFirstPreTrainedModel):
    """The video tower: tubelets (or image patches), optional token dropping, a ViT encoder and pooling.

    `from_pretrained` also takes a full [`VideoFirstModel`] checkpoint and loads its video tower: the weights of
    `vision_model.*` there are this model's (`base_model_prefix`), as `CLIPVisionModel` loads a CLIP checkpoint.
    """

    config: VideoFirstVisionConfig
    # A full checkpoint stores this tower under `vision_model.`; loading strips that prefix. The rest of a full
    # checkpoint (text tower, projections, temperature) is not part of this model.
    base_model_prefix = "vision_model"
    _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^(video|text)_projection\.", r"^logit_(scale|bias)$"]
    input_modalities = ("video", "image")

    def __init__(self, config: VideoFirstVisionConfig):
        super().__init__(config)
        self.embeddings = VideoFirstEmbeddings(config)
        self.pre_layernorm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.pre_layernorm else None
        )
        self.encoder = VideoFirstEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.head = VideoFirstAttentionPoolingHead(config) if config.pooling == "attention" else None
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        if self.config.tubevit_kernels is not None:
            return self.embeddings.tubes
        return self.embeddings.tubelet_embedding

    def _check_tubevit_video(self, pixel_values_videos: torch.Tensor) -> None:
        frames, height, width = pixel_values_videos.shape[1], *pixel_values_videos.shape[-2:]
        for kernel in self.config.tubevit_kernels:
            if min(tube_grid(kernel, frames, height, width)) < 1:
                raise ValueError(
                    f"A video of {frames} frames of {height}x{width} is too small for the TubeViT kernel {kernel}."
                )

    def _check_video(self, pixel_values_videos: torch.Tensor, video_frame_mask: torch.Tensor | None) -> None:
        config = self.config
        tubelet_frames, tubelet_height, tubelet_width = config.tubelet_size
        if pixel_values_videos.ndim != 5:
            raise ValueError(
                "`pixel_values_videos` must have shape (batch, frames, channels, height, width), got a tensor "
                f"of rank {pixel_values_videos.ndim} with shape {tuple(pixel_values_videos.shape)}."
            )
        _, frames, channels, height, width = pixel_values_videos.shape
        if channels != config.num_channels:
            raise ValueError(
                f"`pixel_values_videos` has {channels} channels in dimension 2, expected {config.num_channels} "
                "(layout: batch, frames, channels, height, width)."
            )
        if config.tubevit_kernels is not None:
            self._check_tubevit_video(pixel_values_videos)
        elif frames == 0 or frames % tubelet_frames != 0:
            raise ValueError(
                f"`pixel_values_videos` has {frames} frames; the count must be a positive multiple of the tubelet "
                f"length {tubelet_frames} (the processor pads videos to it)."
            )
        elif height % tubelet_height != 0 or width % tubelet_width != 0:
            raise ValueError(
                f"Frame size {height}x{width} is not divisible by the tubelet size {tubelet_height}x{tubelet_width}."
            )
        if video_frame_mask is not None and tuple(video_frame_mask.shape) != tuple(pixel_values_videos.shape[:2]):
            raise ValueError(
                f"`video_frame_mask` must have shape (batch, frames) = {tuple(pixel_values_videos.shape[:2])}, "
                f"got {tuple(video_frame_mask.shape)}."
            )

    def _check_image(self, pixel_values: torch.Tensor) -> None:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.config.num_channels:
            raise ValueError(
                f"`pixel_values` must have shape (batch, {self.config.num_channels}, height, width), got "
                f"{tuple(pixel_values.shape)}."
            )
        height, width = pixel_values.shape[-2:]
        if height % self.config.patch_size != 0 or width % self.config.patch_size != 0:
            raise ValueError(
                f"Image size {height}x{width} is not divisible by the patch size {self.config.patch_size}."
            )

    def _layout(
        self, selection: TokenSelection | None, grid: tuple[int, int], batch_size: int, dtype: torch.dtype
    ) -> AttentionLayout:
        layout = AttentionLayout(grid=grid)
        key_valid = None if selection is None or selection.all_valid else selection.valid
        if self.config.attention_type == "joint":
            if key_valid is not None and self.config.pooling == "cls":
                key_valid = F.pad(key_valid, (1, 0), value=True)
            layout.joint_mask = additive_key_mask(key_valid, dtype)
            return layout
        if selection is None:
            return layout
        steps, spatial = grid
        layout.spatial = TokenGroups(selection.indices // spatial, steps, key_valid)
        layout.spatial_mask = additive_key_mask(layout.spatial.key_valid, dtype)
        if self.config.attention_type == "factorized":
            layout.temporal = TokenGroups(selection.indices % spatial, spatial, key_valid)
            layout.temporal_mask = additive_key_mask(layout.temporal.key_valid, dtype)
        return layout

    def _embed_and_select(
        self,
        pixel_values_videos: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        video_frame_mask: torch.Tensor | None,
        mask_ratio: float,
        generator: torch.Generator | None,
    ) -> tuple[torch.Tensor, tuple[int, int], TokenSelection | None]:
        """The tokens the encoder sees, their `(time, space)` grid and which grid positions they are.

        On the tubelet path the kept tokens are chosen first and only they are embedded; TubeViT tokens and image
        patches are embedded first and then gathered.
        """
        if pixel_values_videos is None:
            tokens, (steps, height, width) = self.embeddings.embed_image(pixel_values)
            grid = (steps, height * width)
            selection = select_tokens(
                grid, tokens.shape[0], mask_ratio, self.config.mask_type, None, tokens.device, generator
            )
            if selection is not None:
                tokens = tokens.gather(1, selection.indices[:, :, None].expand(-1, -1, tokens.shape[-1]))
            return tokens, grid, selection

        batch_size, frames = pixel_values_videos.shape[:2]
        if self.config.tubevit_kernels is not None:
            tokens, (steps, height, width) = self.embeddings.embed_video(pixel_values_videos)
        else:
            tokens = None
            steps, height, width = self.embeddings.video_grid(frames, *pixel_values_videos.shape[-2:])
        grid = (steps, height * width)
        token_valid = None
        if video_frame_mask is not None:
            if self.config.tubevit_kernels is not None:
                frame_size = pixel_values_videos.shape[-2:]
                token_valid = self.embeddings.tube_token_valid(video_frame_mask.bool(), *frame_size)
            else:
                step_valid = video_frame_mask.bool().reshape(batch_size, steps, -1).any(dim=-1)
                token_valid = step_valid[:, :, None].expand(-1, -1, grid[1]).reshape(batch_size, -1)
        selection = select_tokens(
            grid, batch_size, mask_ratio, self.config.mask_type, token_valid, pixel_values_videos.device, generator
        )
        indices = None if selection is None else selection.indices
        if tokens is None:
            tokens, _ = self.embeddings.embed_video(pixel_values_videos, indices)
        elif indices is not None:
            tokens = tokens.gather(1, indices[:, :, None].expand(-1, -1, tokens.shape[-1]))
        return tokens, grid, selection

    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values_videos: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        video_frame_mask: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VideoFirstVisionModelOutput | tuple:
        r"""
        pixel_values_videos (`torch.FloatTensor` of shape `(batch, frames, channels, height, width)`):
            Videos; `frames` must be a multiple of the tubelet length.
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`):
            Images, embedded with the 2D patch kernel. Pass either videos or images.
        video_frame_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*):
            1 for real frames, 0 for padding. Tubelets with no real frame are dropped before the encoder:
            nothing attends to them and they are not pooled. With `tubevit_kernels`, every tube that reaches
            a padded frame is dropped.
        mask_ratio (`float`, *optional*):
            Fraction of tokens to drop. Defaults to `config.mask_ratio` for videos in training mode and to 0
            otherwise (evaluation, images).
        generator (`torch.Generator`, *optional*): source of randomness for the token drop.
        output_hidden_states, output_attentions, return_dict: as for every transformers model. The hidden states
            are those of the kept tokens (`token_indices`) before the final LayerNorm; the attention weights are
            each layer's joint (factorized and frame-level: per-frame spatial) self-attention, eager attention only.
        """
        check_no_unexpected_kwargs(f"{type(self).__name__}.forward", kwargs)
        if (pixel_values_videos is None) == (pixel_values is None):
            raise ValueError("Pass exactly one of `pixel_values_videos` (videos) and `pixel_values` (images).")
        if pixel_values_videos is not None:
            self._check_video(pixel_values_videos, video_frame_mask)
            if mask_ratio is None:
                mask_ratio = self.config.mask_ratio if self.training else 0.0
        else:
            self._check_image(pixel_values)
            mask_ratio = mask_ratio or 0.0
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"`mask_ratio` must be in [0, 1), got {mask_ratio}.")
        tokens, grid, selection = self._embed_and_select(
            pixel_values_videos, pixel_values, video_frame_mask, float(mask_ratio), generator
        )
        batch_size = tokens.shape[0]
        if self.config.pooling == "cls":
            tokens = torch.cat([self.embeddings.class_token(batch_size).to(tokens.dtype), tokens], dim=1)
        if self.pre_layernorm is not None:
            tokens = self.pre_layernorm(tokens)

        layout = self._layout(selection, grid, batch_size, tokens.dtype)
        hidden_states = self.post_layernorm(self.encoder(tokens, layout))

        token_mask = None if selection is None or selection.all_valid else selection.valid
        if self.config.pooling == "cls":
            pooled = hidden_states[:, 0]
        elif self.config.pooling == "attention":
            pooled = self.head(hidden_states, additive_key_mask(token_mask, hidden_states.dtype))
        elif token_mask is None:
            pooled = hidden_states.mean(dim=1)
        else:
            weights = token_mask.to(hidden_states.dtype)[:, :, None]
            pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1)

        return VideoFirstVisionModelOutput(
            last_hidden_state=hidden_states,
            pooler_output=pooled,
            token_indices=None if selection is None else selection.indices,
            token_mask=token_mask,
        )


def text_model_from_config(text_config) -> PreTrainedModel:
    """The text encoder for `text_config`: its `AutoModel` class, else the transformers class named after the config.

    Some dual encoders' text towers (SigLIP's `SiglipTextModel`) have no `AutoModel` entry.
    """
    try:
        return AutoModel.from_config(text_config)
    except ValueError:
        model_class = getattr(transformers, type(text_config).__name__.removesuffix("Config") + "Model", None)
        if model_class is None:
            raise
        return model_class._from_config(text_config)


class VideoFirstModel(VideoFirstPreTrainedModel):
    """Video tower, text tower, projections into one space and a learnable temperature."""

    config: VideoFirstConfig

    def __init__(self, config: VideoFirstConfig):
        super().__init__(config)
        self.vision_model = VideoFirstVisionModel._from_config(config.vision_config)
        self.text_model = text_model_from_config(config.text_config)
        if config.text_pooling != "pooler" and getattr(self.text_model, "pooler", None) is not None:
            # Mean or first-token pooling never uses BERT-style poolers; unused weights would break DDP.
            self.text_model.pooler = None
        self.video_projection = nn.Linear(
            config.vision_config.hidden_size, config.projection_dim, bias=config.projection_bias
        )
        self.text_projection = nn.Linear(
            config.text_config.hidden_size, config.projection_dim, bias=config.projection_bias
        )
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init_value))
        self.logit_bias = (
            nn.Parameter(torch.tensor(config.logit_bias_init_value)) if config.loss_type == "sigmoid" else None
        )
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.text_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.text_model.set_input_embeddings(value)

    def scaled_logit_scale(self) -> torch.Tensor:
        """The temperature multiplier, `exp(logit_scale)` clamped to `max_logit_scale` as in CLIP."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    @can_return_tuple
    def get_video_features(
        self,
        pixel_values_videos: torch.Tensor,
        video_frame_mask: torch.Tensor | None = None,
        mask_ratio: float | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VideoFirstVisionModelOutput | tuple:
        r"""Embed videos: the video tower's output with `pooler_output` replaced by the L2-normalised projected
        embedding `(batch, projection_dim)` (as CLIP's `get_image_features`, plus the normalisation)."""
        check_no_unexpected_kwargs(f"{type(self).__name__}.get_video_features", kwargs)
        vision_outputs = self.vision_model(
            pixel_values_videos=pixel_values_videos,
            video_frame_mask=video_frame_mask,
            mask_ratio=mask_ratio,
            generator=generator,
            return_dict=True,
            **kwargs,
        )
        vision_outputs.pooler_output = self._vision_embeds(vision_outputs)
        return vision_outputs

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, mask_ratio: float | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> VideoFirstVisionModelOutput | tuple:
        r"""Embed images through the 2D patch path; `pooler_output` is the normalised projected embedding."""
        check_no_unexpected_kwargs(f"{type(self).__name__}.get_image_features", kwargs)
        vision_outputs = self.vision_model(pixel_values=pixel_values, mask_ratio=mask_ratio, return_dict=True, **kwargs)
        vision_outputs.pooler_output = self._vision_embeds(vision_outputs)
        return vision_outputs

    def _vision_embeds(self, vision_outputs: VideoFirstVisionModelOutput) -> torch.Tensor:
        return F.normalize(self.video_projection(vision_outputs.pooler_output), dim=-1)

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling | tuple:
        r"""Embed texts: the text tower's last hidden state, hidden states and attentions, and as `pooler_output`
        the L2-normalised projected embedding `(batch, projection_dim)`."""
        check_no_unexpected_kwargs(f"{type(self).__name__}.get_text_features", kwargs)
        # Only what the caller gave: not every text tower takes `token_type_ids` / `position_ids`.
        optional = {"token_type_ids": token_type_ids, "position_ids": position_ids}
        text_kwargs = {name: value for name, value in optional.items() if value is not None}
        text_outputs = self.text_model(
            input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **text_kwargs, **kwargs
        )
        hidden_states = text_outputs.last_hidden_state
        if self.config.text_pooling == "pooler":
            pooled = text_outputs.pooler_output
        elif self.config.text_pooling == "first":
            pooled = hidden_states[:, 0]
        elif attention_mask is None:
            pooled = hidden_states.mean(dim=1)
        else:
            weights = attention_mask.to(hidden_states.dtype)[:, :, None]
            pooled = (hidden_states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        # A new output rather than an assignment: a tower without a pooler returned `pooler_output=None`, which
        # `ModelOutput` leaves out of its keys (and tuples).
        return BaseModelOutputWithPooling(
            last_hidden_state=hidden_states,
            pooler_output=F.normalize(self.text_projection(pooled), dim=-1),
            hidden_states=text_outputs.hidden_states,
            attentions=text_outputs.attentions,
        )

    @can_return_tuple
    def forward(
        self,
        pixel_values_videos: torch.Tensor | None = None,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        video_frame_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        return_loss: bool | None = None,
        mask_ratio: float | None = None,
        token_type_ids: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VideoFirstOutput | tuple:
        r"""
        Scores every video (or image) against every text of the batch.

        pixel_values_videos (`torch.FloatTensor` of shape `(batch, frames, channels, height, width)`): videos.
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`): images instead of videos.
        video_frame_mask (`torch.Tensor` of shape `(batch, frames)`, *optional*): 1 for real frames.
        return_loss (`bool`, *optional*): also return the loss of `config.loss_type` over this batch. The
            training scripts use `videofirst.train.losses`, which gathers embeddings across processes.
        mask_ratio (`float`, *optional*): token drop ratio for the videos (see [`VideoFirstVisionModel`]).
        generator (`torch.Generator`, *optional*): source of randomness for the token drop.
        output_hidden_states, output_attentions, return_dict: as for every transformers model; both towers'
            hidden states and attentions are in `vision_model_output` and `text_model_output`.
        """
        check_no_unexpected_kwargs(f"{type(self).__name__}.forward", kwargs)
        if input_ids is None:
            raise ValueError("`input_ids` are required; use `get_video_features` to embed videos alone.")
        if pixel_values_videos is not None:
            vision_outputs = self.vision_model(
                pixel_values_videos=pixel_values_videos,
                video_frame_mask=video_frame_mask,
                mask_ratio=mask_ratio,
                generator=generator,
                return_dict=True,
                **kwargs,
            )
        else:
            vision_outputs = self.vision_model(
                pixel_values=pixel_values, mask_ratio=mask_ratio, return_dict=True, **kwargs
            )
        video_embeds = self._vision_embeds(vision_outputs)
        text_outputs = self.get_text_features(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            position_ids=position_ids,
            return_dict=True,
            **kwargs,
        )
        text_embeds = text_outputs.pooler_output

        logits_per_text = self.scaled_logit_scale() * text_embeds @ video_embeds.t()
        if self.logit_bias is not None:
            logits_per_text = logits_per_text + self.logit_bias
        loss = None
        if return_loss:
            loss_fn = sigmoid_loss if self.config.loss_type == "sigmoid" else contrastive_loss
            loss = loss_fn(logits_per_text)

        return VideoFirstOutput(
            loss=loss,
            logits_per_video=logits_per_text.t(),
            logits_per_text=logits_per_text,
            video_embeds=video_embeds,
            text_embeds=text_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )

    def score_candidates(
        self, query_embeds: torch.Tensor, candidate_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        r"""Scores each query against each candidate as the model was trained to: the one scoring rule of the
        zero-shot pipeline (a video against its labels), the retrieval pipeline (a text against videos) and the
        endpoint handler.

        Args:
            query_embeds (`torch.Tensor` of shape `(num_queries, projection_dim)`): L2-normalised embeddings
                (`pooler_output` of `get_video_features` or `get_text_features`).
            candidate_embeds (`torch.Tensor` of shape `(num_candidates, projection_dim)`): L2-normalised embeddings
                of the other modality.

        Returns:
            `(similarity, logits, probabilities)`, each `(num_queries, num_candidates)` and float32: the cosine
            similarity; the logits `exp(logit_scale) * similarity (+ logit_bias)` that `forward` returns as
            `logits_per_video` / `logits_per_text`; and the probabilities, a softmax over the candidates for the
            contrastive loss, an independent sigmoid per pair for the sigmoid loss.
        """
        similarity = query_embeds.float() @ candidate_embeds.to(query_embeds.device).float().t()
        logits = self.scaled_logit_scale().float() * similarity
        if self.logit_bias is not None:
            logits = logits + self.logit_bias.float()
        probabilities = logits.sigmoid() if self.config.loss_type == "sigmoid" else logits.softmax(dim=-1)
        return similarity, logits, probabilities


__all__ = ["VideoFirstPreTrainedModel", "VideoFirstVisionModel", "VideoFirstModel"]
