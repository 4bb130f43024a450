"""The VideoFirst model family: shapes, masking, attention variants, equivalences, saving and errors."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_config, tiny_model, tiny_vision_config
from transformers import AutoConfig, AutoModel
from videofirst.modeling.modeling_videofirst import AttentionLayout, GeluLinear, VideoFirstMLP

from videofirst import (
    VideoFirstConfig,
    VideoFirstModel,
    VideoFirstVisionConfig,
    VideoFirstVisionModel,
    export_checkpoint,
)

ATTENTION_TYPES = ["joint", "factorized", "frame"]
# TubeViT kernels for 32 px clips: fine tubes on every other pair of frames, coarse ones overlapping in time.
TUBE_KERNELS = [
    {"kernel_size": [2, 8, 8], "stride": [4, 8, 8]},
    {"kernel_size": [4, 16, 16], "stride": [2, 16, 16]},
]


def videos(batch_size: int = 2, frames: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, frames, 3, size, size, generator=torch.Generator().manual_seed(seed))


def randomize_positions(model, seed: int = 0):
    """Fills every position table (spatial, temporal, TubeViT tubes') with noise.

    A fresh model's temporal tables are zero (time starts neutral), so an equality test on a fresh model cannot
    tell whether temporal positions are added, added to the right tokens, or dropped.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("position_embedding"):
                parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator))
    return model


def text_inputs(batch_size: int = 2, length: int = 7) -> dict:
    input_ids = torch.randint(1, 128, (batch_size, length), generator=torch.Generator().manual_seed(1))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -2:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("batch_size", [1, 3])
def test_output_shapes_and_dtypes(attention_type, batch_size):
    model = tiny_model(attention_type=attention_type).eval()
    out = model(pixel_values_videos=videos(batch_size), **text_inputs(batch_size), return_loss=True)
    assert out.video_embeds.shape == (batch_size, 16) and out.video_embeds.dtype == torch.float32
    assert out.text_embeds.shape == (batch_size, 16)
    assert out.logits_per_video.shape == (batch_size, batch_size)
    assert torch.allclose(out.logits_per_text, out.logits_per_video.t())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    # 2 tubelet steps x 4 x 4 spatial tokens, unmasked in eval.
    assert out.vision_model_output.last_hidden_state.shape == (batch_size, 32, 32)
    assert torch.allclose(out.video_embeds.norm(dim=-1), torch.ones(batch_size))

    images = torch.randn(batch_size, 3, 32, 32)
    image_embeds = model.get_image_features(pixel_values=images).pooler_output
    assert image_embeds.shape == (batch_size, 16)
    text_embeds = model.get_text_features(**text_inputs(batch_size)).pooler_output
    assert torch.allclose(text_embeds, out.text_embeds)
    image_out = model(pixel_values=images, **text_inputs(batch_size))
    assert torch.allclose(image_out.video_embeds, image_embeds)


def test_bfloat16_forward():
    model = tiny_model().to(torch.bfloat16).eval()
    embeds = model.get_video_features(pixel_values_videos=videos().to(torch.bfloat16)).pooler_output
    assert embeds.dtype == torch.bfloat16 and torch.isfinite(embeds.float()).all()


@pytest.mark.parametrize("mask_ratio", [0.25, 0.5, 0.75])
def test_random_masking_keeps_exact_count_and_differs_per_sample(mask_ratio):
    model = tiny_model(mask_ratio=mask_ratio).train()
    out = model.vision_model(pixel_values_videos=videos(4))
    kept = round((1 - mask_ratio) * 32)
    assert out.token_indices.shape == (4, kept) and out.last_hidden_state.shape == (4, kept, 32)
    assert out.token_mask is None
    for row in out.token_indices:
        assert row.unique().numel() == kept
    assert len({tuple(row.tolist()) for row in out.token_indices}) > 1


def test_tube_masking_drops_the_same_positions_in_every_time_step():
    model = tiny_model(mask_ratio=0.5, mask_type="tube", num_frames=8).train()
    out = model.vision_model(pixel_values_videos=videos(3, frames=8))
    steps, spatial = 4, 16
    assert out.token_indices.shape == (3, steps * 8)
    for row in out.token_indices:
        per_step = row.view(steps, -1)
        spatial_positions = per_step % spatial
        assert (spatial_positions == spatial_positions[0]).all()
        assert (per_step // spatial == torch.arange(steps)[:, None]).all()


def test_masking_only_in_training_unless_asked():
    model = tiny_model(mask_ratio=0.75)
    model.eval()
    assert model.vision_model(pixel_values_videos=videos()).token_indices is None
    assert model.vision_model(pixel_values_videos=videos(), mask_ratio=0.5).token_indices.shape[1] == 16
    model.train()
    assert model.vision_model(pixel_values_videos=videos()).token_indices.shape[1] == 8
    assert model.vision_model(pixel_values_videos=videos(), mask_ratio=0.0).token_indices is None
    # Images are not masked by default, even in training.
    assert model.vision_model(pixel_values=torch.randn(2, 3, 32, 32)).token_indices is None


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_masked_sample_does_not_depend_on_its_batch(attention_type):
    """A sample keeps the same tubelets and embeds the same whether masked alone or in a batch."""
    model = randomize_positions(tiny_model(attention_type=attention_type, mask_ratio=0.5).eval())
    out = model.vision_model(pixel_values_videos=videos(3), mask_ratio=0.5, generator=torch.Generator().manual_seed(3))
    # The same seed draws the same noise row for the first sample, so it keeps the same tubelets alone.
    first = model.vision_model(
        pixel_values_videos=videos(3)[0:1], mask_ratio=0.5, generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(first.token_indices[0], out.token_indices[0])
    assert torch.allclose(first.pooler_output[0], out.pooler_output[0], atol=1e-5)


def encoder_on_kept_tokens(vision_model, video: torch.Tensor, kept: torch.Tensor, mask_type: str) -> torch.Tensor:
    """The pooled output of running the encoder, unmasked, on exactly the tokens at `kept` (1-D positions in the
    flattened grid) of one video, built without the masked path: the dense embedding of every tubelet (positions
    added to the whole grid), then a plain gather; no token selection, no packing, no masked pooling.

    Tube masking keeps the same spatial positions in every step, so the kept tokens form a dense
    `(steps, kept per step)` grid that frame and factorized attention take by a reshape. Random masking under
    frame attention is run frame by frame (frames do not interact), under joint attention as one sequence.
    """
    embeddings, config = vision_model.embeddings, vision_model.config
    with torch.no_grad():
        tokens, (steps, rows, cols) = embeddings.embed_video(video)
        tokens = tokens[:, kept]
        if mask_type == "tube" or config.attention_type == "joint":
            hidden = vision_model.encoder(tokens, AttentionLayout(grid=(steps, len(kept) // steps)))
        else:
            assert config.attention_type == "frame"
            step_of = kept // (rows * cols)
            hidden = torch.cat(
                [
                    vision_model.encoder(
                        tokens[:, step_of == step], AttentionLayout(grid=(1, int((step_of == step).sum())))
                    )
                    for step in step_of.unique()
                ],
                dim=1,
            )
        return vision_model.post_layernorm(hidden).mean(dim=1)[0]


@pytest.mark.parametrize(
    "attention_type,mask_type",
    [("joint", "random"), ("joint", "tube"), ("frame", "random"), ("frame", "tube"), ("factorized", "tube")],
)
def test_masked_forward_equals_forward_on_the_kept_tokens(attention_type, mask_type):
    """Dropping tokens equals running the encoder on exactly the kept tubelets, built independently."""
    model = randomize_positions(tiny_model(attention_type=attention_type, mask_type=mask_type, num_frames=8).eval())
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            if attention_type == "factorized":
                layer.temporal_gate.fill_(0.5)  # open: the temporal branch takes part
    inputs = videos(3, frames=8)
    out = model.vision_model(pixel_values_videos=inputs, mask_ratio=0.5, generator=torch.Generator().manual_seed(3))
    assert out.token_indices.shape == (3, 32) and out.token_mask is None
    for sample in range(3):
        kept = out.token_indices[sample]
        assert kept.unique().numel() == 32 and (kept.diff() > 0).all()
        reference = encoder_on_kept_tokens(model.vision_model, inputs[sample : sample + 1], kept, mask_type)
        torch.testing.assert_close(out.pooler_output[sample], reference, atol=1e-5, rtol=1e-5)


def test_static_video_matches_its_frame():
    """Duplicated keys leave softmax attention unchanged: a repeated frame embeds like the frame itself."""
    model = tiny_model(attention_type="joint").eval()
    embeddings = model.vision_model.embeddings
    with torch.no_grad():
        # Make the image kernel the time-sum of the tubelet kernel, so a static tubelet embeds like its patch.
        embeddings.patch_embedding.weight.copy_(embeddings.tubelet_embedding.weight.sum(dim=2))
        embeddings.patch_embedding.bias.copy_(embeddings.tubelet_embedding.bias)
    assert torch.count_nonzero(embeddings.temporal_position_embedding) == 0
    frame = torch.randn(2, 3, 32, 32)
    static_video = frame[:, None].expand(-1, 6, -1, -1, -1)
    video_embeds = model.get_video_features(pixel_values_videos=static_video).pooler_output
    image_embeds = model.get_image_features(pixel_values=frame).pooler_output
    assert torch.allclose(video_embeds, image_embeds, atol=1e-5)

    one_frame_model = tiny_model(attention_type="joint", tubelet_size=[1, 8, 8]).eval()
    single = one_frame_model.get_video_features(pixel_values_videos=frame[:, None]).pooler_output
    repeated = one_frame_model.get_video_features(pixel_values_videos=static_video).pooler_output
    assert torch.allclose(single, repeated, atol=1e-5)


@pytest.mark.parametrize("mask_ratio", [0.0, 0.5])
def test_factorized_with_closed_gate_equals_frame_level(mask_ratio):
    factorized = randomize_positions(tiny_model(attention_type="factorized").eval())
    frame = tiny_model(attention_type="frame").eval()
    missing, unexpected = frame.load_state_dict(factorized.state_dict(), strict=False)
    assert not missing and all("temporal" in key for key in unexpected)
    for layer in factorized.vision_model.encoder.layers:
        assert layer.temporal_gate.item() == 0.0
        assert torch.equal(layer.temporal_attn.q_proj.weight, layer.self_attn.q_proj.weight)
    inputs = videos(3)
    a = factorized.vision_model(
        pixel_values_videos=inputs, mask_ratio=mask_ratio, generator=torch.Generator().manual_seed(0)
    )
    b = frame.vision_model(
        pixel_values_videos=inputs, mask_ratio=mask_ratio, generator=torch.Generator().manual_seed(0)
    )
    assert torch.allclose(a.pooler_output, b.pooler_output, atol=1e-6)
    with torch.no_grad():
        for layer in factorized.vision_model.encoder.layers:
            layer.temporal_gate.fill_(0.5)
    c = factorized.vision_model(
        pixel_values_videos=inputs, mask_ratio=mask_ratio, generator=torch.Generator().manual_seed(0)
    )
    assert not torch.allclose(c.pooler_output, b.pooler_output, atol=1e-4)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_padded_frames_change_nothing(attention_type, pooling):
    model = randomize_positions(tiny_model(attention_type=attention_type, pooling=pooling).eval())
    short = videos(1, frames=4, seed=5)
    padded = torch.cat([short, torch.randn(1, 4, 3, 32, 32)], dim=1)
    other = videos(1, frames=8, seed=6)
    batch = torch.cat([padded, other])
    frame_mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8])
    alone = model.get_video_features(pixel_values_videos=short).pooler_output
    batched = model.get_video_features(pixel_values_videos=batch, video_frame_mask=frame_mask).pooler_output
    assert torch.allclose(alone[0], batched[0], atol=1e-5)
    # With masking, padded tokens are never kept.
    out = model.vision_model(pixel_values_videos=batch, video_frame_mask=frame_mask, mask_ratio=0.5)
    kept_short = out.token_indices[0][out.token_mask[0]]
    assert kept_short.numel() == 16 and kept_short.max() < 32
    assert out.token_mask[1].sum() == 32


@pytest.mark.parametrize("variant", [{}, {"tubevit_kernels": TUBE_KERNELS}], ids=["tubelets", "tubevit"])
def test_padded_video_keeps_its_temporal_positions(variant):
    """Temporal positions are stretched to each video's own length, not to the padded batch length: a short video
    padded next to a longer one embeds as it does alone."""
    model = randomize_positions(tiny_model(num_frames=8, **variant).eval())
    short = videos(1, frames=8, seed=5)
    batch = torch.cat([torch.cat([short, videos(1, frames=8, seed=7)], dim=1), videos(1, frames=16, seed=6)])
    frame_mask = torch.tensor([[1] * 8 + [0] * 8, [1] * 16])
    with torch.no_grad():
        alone = model.get_video_features(pixel_values_videos=short).pooler_output
        batched = model.get_video_features(pixel_values_videos=batch, video_frame_mask=frame_mask).pooler_output
    torch.testing.assert_close(batched[0], alone[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_eager_and_sdpa_agree(attention_type):
    model = randomize_positions(tiny_model(attention_type=attention_type, pooling="attention").eval())
    inputs = torch.cat([videos(1), videos(1, seed=2)])
    frame_mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    results = {}
    for implementation in ["eager", "sdpa"]:
        model.set_attn_implementation(implementation)
        assert model.vision_model.config._attn_implementation == implementation
        results[implementation] = model.vision_model(
            pixel_values_videos=inputs,
            video_frame_mask=frame_mask,
            mask_ratio=0.5,
            generator=torch.Generator().manual_seed(0),
        ).pooler_output
    assert torch.allclose(results["eager"], results["sdpa"], atol=1e-5)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_gradient_checkpointing_gives_same_loss_and_gradients(attention_type):
    torch.manual_seed(0)
    model = randomize_positions(tiny_model(attention_type=attention_type, mask_ratio=0.5).train())
    inputs = {"pixel_values_videos": videos(3), **text_inputs(3), "return_loss": True}

    def loss_and_grads():
        model.zero_grad()
        loss = model(**inputs, mask_ratio=0.5).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    torch.manual_seed(1)
    loss_plain, grads_plain = loss_and_grads()
    model.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in model.vision_model.encoder.layers)
    torch.manual_seed(1)
    loss_ckpt, grads_ckpt = loss_and_grads()
    assert torch.allclose(loss_plain, loss_ckpt)
    assert grads_plain.keys() == grads_ckpt.keys()
    for name in grads_plain:
        assert torch.allclose(grads_plain[name], grads_ckpt[name], atol=1e-6), name


@pytest.mark.parametrize("checkpointing", [False, True])
def test_every_parameter_gets_a_gradient(checkpointing):
    """Every parameter but the image-only 2D patch kernel learns from a video batch (with activation checkpointing
    too): nothing else would leave DDP with a parameter that got no gradient."""
    model = tiny_model(attention_type="factorized").train()
    if checkpointing:
        model.activation_checkpointing_enable()
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            layer.temporal_gate.fill_(0.1)  # a closed gate blocks the temporal branch's gradient
    model(pixel_values_videos=videos(), **text_inputs(), return_loss=True).loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert no_grad == ["vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.patch_embedding.bias"]


def test_longer_and_larger_inputs_interpolate_positions():
    """Trained for 4 frames (2 tubelet steps) of 32 px (4 x 4 patches); longer and larger videos stretch the
    tables: linearly in time, bicubically in space."""
    model = randomize_positions(tiny_model().eval())
    embeddings = model.vision_model.embeddings
    temporal_table, spatial_table = embeddings.temporal_position_embedding, embeddings.spatial_position_embedding
    with torch.no_grad():
        # At the trained size: the tables themselves.
        assert torch.equal(embeddings.temporal_positions(2), temporal_table)
        assert torch.equal(embeddings.spatial_positions(4, 4), spatial_table)
        # 2 steps stretched to 4 (half-pixel centres): source positions -0.25 (clamped to 0), 0.25, 0.75, 1.25
        # (clamped to 1).
        first, second = temporal_table[0]
        expected_temporal = torch.stack([first, 0.75 * first + 0.25 * second, 0.25 * first + 0.75 * second, second])
        torch.testing.assert_close(embeddings.temporal_positions(4)[0], expected_temporal)
        # 4 x 4 to 6 x 6: torch's own bicubic interpolation of the table seen as a (dim, 4, 4) image.
        image = spatial_table.reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
        resized = F.interpolate(image, size=(6, 6), mode="bicubic", align_corners=False)
        expected_spatial = resized.permute(0, 2, 3, 1).reshape(36, -1)
        torch.testing.assert_close(embeddings.spatial_positions(6, 6)[0], expected_spatial)
        # An 8-frame 48 px video gets exactly these: its tokens are the convolution plus the stretched tables.
        long_video = videos(1, frames=8, size=48)
        tokens, grid = embeddings.embed_video(long_video)
        kernel = embeddings.tubelet_embedding
        conv = F.conv3d(long_video.transpose(1, 2), kernel.weight, kernel.bias, stride=kernel.stride)
        expected = conv.flatten(3).permute(0, 2, 3, 1) + expected_spatial + expected_temporal[:, None]
        assert grid == (4, 6, 6)
        torch.testing.assert_close(tokens, expected.reshape(1, 4 * 36, -1), atol=1e-5, rtol=1e-5)
        out = model.vision_model(pixel_values_videos=videos(1, frames=16, size=48))
    assert out.last_hidden_state.shape == (1, 8 * 36, 32)


@pytest.mark.parametrize(
    "variant",
    [{"attention_type": name} for name in ATTENTION_TYPES] + [{"tubevit_kernels": TUBE_KERNELS}],
    ids=[*ATTENTION_TYPES, "tubevit"],
)
@pytest.mark.parametrize("mask_ratio", [0.0, 0.5])
def test_temporal_positions_reach_the_output(variant, mask_ratio):
    """Giving every time step step 0's temporal position (what dropping them would do) changes the embedding, on
    the dense and the masked path."""
    model = randomize_positions(tiny_model(num_frames=8, **variant).eval())

    def embed() -> torch.Tensor:
        with torch.no_grad():
            return model.vision_model(
                pixel_values_videos=videos(2, frames=8),
                mask_ratio=mask_ratio,
                generator=torch.Generator().manual_seed(0),
            ).pooler_output

    before = embed()
    tables = [p for name, p in model.named_parameters() if name.endswith("temporal_position_embedding")]
    assert tables and all(table.shape[1] > 1 for table in tables)
    with torch.no_grad():
        for table in tables:
            table.copy_(table[:, :1].expand_as(table))
    assert not torch.allclose(before, embed(), atol=1e-3)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
@pytest.mark.parametrize("temporal_positions", [False, True])
def test_frame_order_is_seen_only_through_temporal_positions(attention_type, temporal_positions):
    """Shuffling a video's tubelet steps (whole pairs of frames, so every tubelet keeps its pixels) changes its
    embedding when the temporal positions are non-zero, under every attention type; without them (the zero table
    a model starts with) the tower is blind to order: per-frame and per-position attention and mean pooling are
    permutation-invariant, and so is joint attention."""
    model = tiny_model(attention_type=attention_type, num_frames=8).eval()
    embeddings = model.vision_model.embeddings
    if temporal_positions:
        randomize_positions(model)
    else:
        assert torch.count_nonzero(embeddings.temporal_position_embedding) == 0
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            if attention_type == "factorized":
                layer.temporal_gate.fill_(0.5)
        video = videos(2, frames=8)
        shuffled = video.reshape(2, 4, 2, 3, 32, 32)[:, [2, 0, 3, 1]].reshape(2, 8, 3, 32, 32)
        original = model.get_video_features(pixel_values_videos=video).pooler_output
        permuted = model.get_video_features(pixel_values_videos=shuffled).pooler_output
    if temporal_positions:
        assert not torch.allclose(original, permuted, atol=1e-3)
    else:
        torch.testing.assert_close(original, permuted, atol=1e-6, rtol=0)


@pytest.mark.parametrize("masked", [False, True])
def test_tubelet_matmul_equals_the_convolution(masked):
    """The tubelet kernel runs as one matmul over the (kept) tubelets' pixels: it must give the Conv3d's tokens
    plus their positions, and the same gradients for the pixels, the kernel and both position tables."""
    embeddings = randomize_positions(tiny_model(num_frames=8)).vision_model.embeddings
    kernel = embeddings.tubelet_embedding
    video = videos(2, frames=8).requires_grad_()
    indices = torch.tensor([[0, 5, 17, 63], [3, 4, 40, 41]]) if masked else None
    tokens, grid = embeddings.embed_video(video, indices)
    conv = F.conv3d(video.transpose(1, 2), kernel.weight, kernel.bias, stride=kernel.stride)  # (B, dim, 4, 4, 4)
    reference = conv.flatten(3).permute(0, 2, 3, 1)  # (B, steps, rows * cols, dim)
    reference = (
        reference + embeddings.spatial_position_embedding[:, None] + embeddings.temporal_position_embedding[0][:, None]
    )
    reference = reference.reshape(2, 64, -1)
    if masked:
        reference = reference.gather(1, indices[:, :, None].expand(-1, -1, reference.shape[-1]))
    assert grid == (4, 4, 4) and tokens.shape == reference.shape
    torch.testing.assert_close(tokens, reference, atol=1e-5, rtol=1e-5)
    upstream = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(1))
    inputs = (
        video,
        kernel.weight,
        kernel.bias,
        embeddings.spatial_position_embedding,
        embeddings.temporal_position_embedding,
    )
    ours = torch.autograd.grad(tokens, inputs, upstream)
    expected = torch.autograd.grad(reference, inputs, upstream)
    for name, got, want in zip(("pixels", "weight", "bias", "spatial", "temporal"), ours, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_linear_equals_linear_after_gelu(approximate):
    """The MLP's recomputing GELU + linear (it stores only its input) has the values and gradients of
    `nn.Linear(GELU(x))`, in fp32 and (gradcheck) fp64."""
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(8, 3)
    hidden = torch.randn(2, 5, 8, generator=generator, requires_grad=True)
    ours = GeluLinear.apply(hidden, linear.weight, linear.bias, approximate)
    reference = linear(F.gelu(hidden, approximate=approximate))
    torch.testing.assert_close(ours, reference)
    upstream = torch.randn(ours.shape, generator=generator)
    inputs = (hidden, linear.weight, linear.bias)
    for got, want in zip(torch.autograd.grad(ours, inputs, upstream), torch.autograd.grad(reference, inputs, upstream)):
        torch.testing.assert_close(got, want)
    double = tuple(torch.randn(*shape, dtype=torch.double, requires_grad=True) for shape in ((2, 5, 8), (3, 8), (3,)))
    assert torch.autograd.gradcheck(lambda h, w, b: GeluLinear.apply(h, w, b, approximate), double)


def test_gelu_linear_under_autocast_matches_autograd():
    hidden, weight, bias = torch.randn(4, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True), torch.randn(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = GeluLinear.apply(hidden * 1, weight, bias, "none")
        plain = F.linear(F.gelu(hidden * 1), weight, bias)
    assert ours.dtype == plain.dtype == torch.bfloat16
    expected = torch.autograd.grad(plain.float().sum(), (hidden, weight))
    for got, want in zip(torch.autograd.grad(ours.float().sum(), (hidden, weight)), expected):
        torch.testing.assert_close(got, want)


def test_mlp_trains_through_gelu_linear():
    """With gradients on, the tower's MLP takes the GeluLinear path and matches `fc2(GELU(fc1(x)))`."""
    mlp = VideoFirstMLP(VideoFirstVisionConfig(**tiny_vision_config()))
    hidden = torch.randn(2, 6, 32, generator=torch.Generator().manual_seed(0))
    out = mlp(hidden)
    assert "GeluLinear" in type(out.grad_fn).__name__
    reference = mlp.fc2(F.gelu(mlp.fc1(hidden)))
    torch.testing.assert_close(out, reference)
    parameters = list(mlp.parameters())
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    ours, expected = (
        torch.autograd.grad(out, parameters, upstream),
        torch.autograd.grad(reference, parameters, upstream),
    )
    for got, want in zip(ours, expected):
        torch.testing.assert_close(got, want)


def test_sigmoid_loss_and_logit_bias():
    config = tiny_config()
    config.loss_type = "sigmoid"
    model = VideoFirstModel(config).eval()
    assert model.logit_bias is not None and model.logit_bias.item() == pytest.approx(-10.0)
    out = model(pixel_values_videos=videos(), **text_inputs(), return_loss=True)
    logits = out.logits_per_text
    targets = 2 * torch.eye(2) - 1
    expected = -torch.nn.functional.logsigmoid(targets * logits).sum() / 2
    assert torch.allclose(out.loss, expected)
    assert tiny_model().logit_bias is None


def test_contrastive_loss_matches_reference():
    model = tiny_model().eval()
    out = model(pixel_values_videos=videos(3), **text_inputs(3), return_loss=True)
    logits = out.logits_per_text
    log_probs_text = logits.log_softmax(dim=1).diagonal()
    log_probs_video = logits.t().log_softmax(dim=1).diagonal()
    expected = -(log_probs_text.mean() + log_probs_video.mean()) / 2
    assert torch.allclose(out.loss, expected, atol=1e-6)
    scale = model.logit_scale.exp()
    assert torch.allclose(logits, scale * out.text_embeds @ out.video_embeds.t(), atol=1e-5)


@pytest.mark.parametrize("attention_type", ATTENTION_TYPES)
def test_output_flags_and_return_dict_are_honoured(attention_type):
    model = tiny_model(attention_type=attention_type).eval()
    model.set_attn_implementation("eager")
    inputs = {"pixel_values_videos": videos(), **text_inputs()}
    out = model(**inputs, output_attentions=True, output_hidden_states=True)
    vision, text = out.vision_model_output, out.text_model_output
    # The input of the first layer, then every layer's output (before the final LayerNorm, as CLIP).
    assert len(vision.hidden_states) == 3 and vision.hidden_states[0].shape == (2, 32, 32)
    assert torch.allclose(model.vision_model.post_layernorm(vision.hidden_states[-1]), vision.last_hidden_state)
    # One attention map per layer: over all 32 tokens (joint) or per frame over its 16 (factorized, frame).
    expected = (2, 4, 32, 32) if attention_type == "joint" else (4, 4, 16, 16)
    assert len(vision.attentions) == 2 and vision.attentions[0].shape == expected
    assert torch.allclose(vision.attentions[0].sum(-1), torch.ones(expected[:-1]))
    assert len(text.hidden_states) == 2 and len(text.attentions) == 1
    plain = model(**inputs)
    assert plain.vision_model_output.hidden_states is None and plain.vision_model_output.attentions is None

    as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], plain.logits_per_video)
    features = model.get_video_features(pixel_values_videos=videos(), output_hidden_states=True)
    assert len(features.hidden_states) == 3 and features.pooler_output.shape == (2, 16)
    assert isinstance(model.get_video_features(pixel_values_videos=videos(), return_dict=False), tuple)
    text_features = model.get_text_features(**text_inputs(), output_attentions=True, return_dict=False)
    assert isinstance(text_features, tuple) and torch.equal(text_features[1], plain.text_embeds)
    image_features = model.get_image_features(pixel_values=torch.randn(2, 3, 32, 32), output_attentions=True)
    assert len(image_features.attentions) == 2
    vision_only = model.vision_model(pixel_values_videos=videos(), return_dict=False)
    assert isinstance(vision_only, tuple) and torch.equal(vision_only[0], plain.vision_model_output.last_hidden_state)


def test_unknown_keyword_arguments_are_errors():
    """A misspelt argument (`video_frame_mak`) must not run silently without it."""
    model = tiny_model().eval()
    mask = torch.ones(2, 4)
    calls = {
        "forward": lambda **kw: model(pixel_values_videos=videos(), **text_inputs(), **kw),
        "get_video_features": lambda **kw: model.get_video_features(pixel_values_videos=videos(), **kw),
        "get_image_features": lambda **kw: model.get_image_features(pixel_values=torch.randn(2, 3, 32, 32), **kw),
        "get_text_features": lambda **kw: model.get_text_features(**text_inputs(), **kw),
        "VideoFirstVisionModel.forward": lambda **kw: model.vision_model(pixel_values_videos=videos(), **kw),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match="video_frame_mak"):
            call(video_frame_mak=mask)
        print(name, "rejects a misspelt argument")


def test_init_weights_with_a_configuration_class_from_another_module():
    """Remote code imports the configuration and modeling files as separate modules: the config the model gets is
    not an instance of the modeling file's `VideoFirstConfig`, and initialisation must not depend on that."""
    import importlib.util

    import videofirst.modeling.configuration_videofirst as configuration

    spec = importlib.util.spec_from_file_location("separate_configuration_copy", configuration.__file__)
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    config = copy.VideoFirstConfig(**{**tiny_config().to_dict(), "loss_type": "sigmoid"})
    assert not isinstance(config, VideoFirstConfig)
    model = VideoFirstModel(config)
    assert model.logit_bias.item() == config.logit_bias_init_value
    std = model.vision_model.embeddings.spatial_position_embedding.std().item()
    assert 0.01 < std < 0.03  # initializer_range 0.02, read from the vision config


def test_vision_model_loads_the_tower_of_a_full_checkpoint(tmp_path):
    model = tiny_model(attention_type="factorized", pooling="attention").eval()
    model.save_pretrained(tmp_path / "full")
    tower, info = VideoFirstVisionModel.from_pretrained(tmp_path / "full", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    expected = model.vision_model.state_dict()
    assert tower.state_dict().keys() == expected.keys()
    for name, tensor in tower.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert torch.equal(
        tower.eval()(pixel_values_videos=videos()).pooler_output,
        model.vision_model(pixel_values_videos=videos()).pooler_output,
    )
    # The tower saved on its own reloads with nothing missing or left over either.
    tower.save_pretrained(tmp_path / "tower")
    _, info = VideoFirstVisionModel.from_pretrained(tmp_path / "tower", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


def test_save_and_load_round_trip(tmp_path):
    model = tiny_model(attention_type="factorized", pooling="attention").eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, VideoFirstModel)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), VideoFirstConfig)
    inputs = videos()
    assert torch.equal(
        model.get_video_features(pixel_values_videos=inputs).pooler_output,
        loaded.get_video_features(pixel_values_videos=inputs).pooler_output,
    )
    assert loaded.config.vision_config.attention_type == "factorized"


def test_remote_code_load_without_the_package(tmp_path):
    model = tiny_model(attention_type="joint", pooling="cls", pre_layernorm=True, mask_ratio=0.75).eval()
    checkpoint = export_checkpoint(model, None, tmp_path / "checkpoint")
    assert (checkpoint / "modeling_videofirst.py").exists() and (checkpoint / "masking_videofirst.py").exists()
    inputs = videos()
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.modules["videofirst"] = None  # make the installed package unimportable
        from transformers import AutoModel
        from transformers import AutoConfig
        model = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        # Paths that initialise weights: a fresh model, and a checkpoint with a new parameter to initialise.
        config = AutoConfig.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        AutoModel.from_config(config, trust_remote_code=True)
        sigmoid = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True, loss_type="sigmoid")
        assert sigmoid.logit_bias.item() == -10.0
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        torch.save(model.get_video_features(pixel_values_videos=inputs).pooler_output, {str(tmp_path / "out.pt")!r})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env={**os.environ}, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = model.get_video_features(pixel_values_videos=inputs).pooler_output
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"mask_ratio": -0.1}, "mask_ratio"),
        ({"num_frames": 5}, "num_frames"),
        ({"image_size": 36}, "image_size"),
        ({"tubelet_size": [2, 16, 16], "image_size": 40, "patch_size": 8}, "image_size"),
        ({"attention_type": "divided"}, "attention_type"),
        ({"mask_type": "block"}, "mask_type"),
        ({"pooling": "max"}, "pooling"),
        ({"num_attention_heads": 5}, "num_attention_heads"),
        ({"pooling": "cls", "attention_type": "frame"}, "pooling"),
    ],
)
def test_invalid_vision_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        VideoFirstVisionConfig(**tiny_vision_config(**overrides))


@pytest.mark.parametrize(
    "overrides, field", [({"text_pooling": "max"}, "text_pooling"), ({"loss_type": "mse"}, "loss_type")]
)
def test_invalid_dual_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        VideoFirstConfig(vision_config=tiny_vision_config(), **overrides)


def test_bad_inputs_get_clear_errors():
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="rank 4"):
        model.get_video_features(pixel_values_videos=torch.randn(4, 3, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        model.get_video_features(pixel_values_videos=torch.randn(1, 4, 32, 32, 3))
    with pytest.raises(ValueError, match="multiple of the tubelet"):
        model.get_video_features(pixel_values_videos=torch.randn(1, 3, 3, 32, 32))
    with pytest.raises(ValueError, match="not divisible"):
        model.get_video_features(pixel_values_videos=torch.randn(1, 4, 3, 30, 32))
    with pytest.raises(ValueError, match="video_frame_mask"):
        model.get_video_features(pixel_values_videos=videos(), video_frame_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="mask_ratio"):
        model.get_video_features(pixel_values_videos=videos(), mask_ratio=1.5)
    with pytest.raises(ValueError, match="exactly one"):
        model.vision_model()
