"""Parameter-efficient adaptation (last layers, adapters, LoRA, temporal blocks) and TubeViT tokenisation."""

from dataclasses import dataclass

import pytest
import torch
from tiny_models import tiny_model, tiny_vision_config
from transformers import AutoModel
from videofirst.modeling.configuration_videofirst import tube_grid

from videofirst import VideoFirstModel, VideoFirstVisionConfig, export_checkpoint
from videofirst.adaptation import AdaptationConfig, apply_adaptation, merge_adaptation

VIDEO_EMBEDDING = (
    "vision_model.embeddings.tubelet_embedding.weight",
    "vision_model.embeddings.tubelet_embedding.bias",
    "vision_model.embeddings.temporal_position_embedding",
)
TEMPERATURE = ("logit_scale",)
LAST_LAYER_PREFIXES = (
    "vision_model.encoder.layers.2.",
    "vision_model.post_layernorm.",
    "vision_model.head.",
    "video_projection.",
)


def videos(batch_size: int = 2, frames: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def text_inputs(batch_size: int = 2) -> dict:
    input_ids = torch.randint(1, 128, (batch_size, 7), generator=torch.Generator().manual_seed(1))
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def expected_trainable(method: str, name: str) -> bool:
    """The intended trainable set of each method on a 3-layer model, written out independently."""
    if name in VIDEO_EMBEDDING + TEMPERATURE:
        return True
    if name.startswith(("text_model.", "text_projection.")):
        return method == "full"
    if name.startswith("vision_model.embeddings.patch_embedding."):
        return False  # image-only, and no images in these recipes
    return {
        "full": True,
        "last_layers": name.startswith(
            (
                "vision_model.encoder.layers.2.",
                "vision_model.post_layernorm.",
                "vision_model.head.",
                "video_projection.",
            )
        ),
        "adapters": ".adapter." in name,
        "lora": ".lora_A." in name or ".lora_B." in name,
        "temporal": any(part in name for part in ("temporal_attn", "temporal_layer_norm", "temporal_gate")),
    }[method]


METHODS = {
    "full": {},
    "last_layers": {"trainable_last_layers": 1},
    "adapters": {"adapter_bottleneck": 8},
    "lora": {"lora_rank": 4, "lora_alpha": 8.0},
    "temporal": {},
}


def adapted_model(method: str) -> VideoFirstModel:
    attention_type = "factorized" if method == "temporal" else "joint"
    model = tiny_model(attention_type=attention_type, pooling="attention", num_hidden_layers=3)
    if method == "temporal":
        with torch.no_grad():  # an open gate, so the temporal blocks get non-zero gradients
            for layer in model.vision_model.encoder.layers:
                layer.temporal_gate.fill_(0.2)
    return model


@pytest.mark.parametrize("method", list(METHODS))
def test_adaptation_is_a_no_op_at_start_and_trains_only_its_parameters(method):
    if method == "lora":
        pytest.importorskip("peft")
    model = adapted_model(method).eval()
    inputs = {"pixel_values_videos": videos(), **text_inputs()}
    before = model(**inputs)
    summary = apply_adaptation(model, method=method, **METHODS[method])
    after = model(**inputs)
    # Exact: new adapters and LoRA updates start at zero.
    assert torch.equal(before.video_embeds, after.video_embeds)
    assert torch.equal(before.text_embeds, after.text_embeds)

    names = [name for name, _ in model.named_parameters()]
    intended = {name for name in names if expected_trainable(method, name)}
    assert set(summary.trainable_names) == intended
    assert summary.trainable_parameters == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary.total_parameters == sum(p.numel() for p in model.parameters())
    assert method in summary.describe() and f"{summary.trainable_parameters:,}" in summary.describe()

    model.train()
    model(**inputs, return_loss=True, mask_ratio=0.5).loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == intended
    nonzero = {name for name, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    # The input side of an adapter (and LoRA's A) gets zero gradient while its zero-initialised output is zero.
    assert nonzero == {name for name in intended if ".lora_A." not in name and ".adapter.down." not in name}


def test_last_layers_without_patch_embedding_keeps_lower_layers_out_of_the_graph():
    model = tiny_model(num_hidden_layers=3).train()
    summary = apply_adaptation(model, method="last_layers", trainable_last_layers=1, train_patch_embedding=False)
    assert not any(name.startswith("vision_model.embeddings.") for name in summary.trainable_names)
    model.activation_checkpointing_enable()
    model(pixel_values_videos=videos(), **text_inputs(), return_loss=True).loss.backward()
    with_grad = {name for name, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(summary.trainable_names)
    assert all(
        not name.startswith(("vision_model.encoder.layers.0.", "vision_model.encoder.layers.1.")) for name in with_grad
    )


def test_full_with_images_trains_the_patch_kernel_and_text():
    model = tiny_model()
    summary = apply_adaptation(model, method="full", train_images=True)
    assert summary.trainable_parameters == summary.total_parameters
    summary = apply_adaptation(model, method="full", freeze_text=True)
    assert not any(name.startswith("text_model.") for name in summary.trainable_names)


def test_a_recipe_section_configures_it():
    @dataclass
    class RecipeSection:  # the shape of the training recipe's `adaptation` section
        method: str = "last_layers"
        trainable_last_layers: int = 1
        freeze_text: bool = True
        adapter_bottleneck: int = 64
        lora_rank: int = 8
        lora_alpha: float = 16.0

    model = tiny_model()
    summary = apply_adaptation(model, RecipeSection(), train_images=False)
    assert summary.method == "last_layers"
    assert "vision_model.encoder.layers.1.mlp.fc1.weight" in summary.trainable_names
    assert "vision_model.encoder.layers.0.mlp.fc1.weight" not in summary.trainable_names
    summary = apply_adaptation(model, {"method": "adapters"}, adapter_bottleneck=4)
    assert model.config.vision_config.adapter_bottleneck == 4
    with pytest.raises(ValueError, match="lora_rnk"):
        apply_adaptation(model, method="lora", lora_rnk=4)
    with pytest.raises(ValueError, match="method"):
        AdaptationConfig(method="prompt")
    with pytest.raises(ValueError, match="factorized"):
        apply_adaptation(model, method="temporal")
    with pytest.raises(ValueError, match="trainable_last_layers"):
        apply_adaptation(model, method="last_layers", trainable_last_layers=5)
    with pytest.raises(ValueError, match="width 4"):
        apply_adaptation(model, method="adapters", adapter_bottleneck=8)


def test_adapters_are_saved_and_reloaded(tmp_path):
    model = tiny_model()
    apply_adaptation(model, method="adapters", adapter_bottleneck=8)
    with torch.no_grad():
        for layer in model.vision_model.encoder.layers:
            layer.adapter.up.weight.normal_(std=0.1)
    model.eval().save_pretrained(tmp_path)
    loaded, info = AutoModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    loaded.eval()
    assert loaded.config.vision_config.adapter_bottleneck == 8
    torch.testing.assert_close(
        loaded.get_video_features(pixel_values_videos=videos()).pooler_output,
        model.get_video_features(pixel_values_videos=videos()).pooler_output,
    )
    # A model built with adapters starts as the same model without them.
    with_adapters = tiny_model(adapter_bottleneck=8).eval()
    plain = tiny_model().eval()
    plain.load_state_dict(with_adapters.state_dict(), strict=False)
    torch.testing.assert_close(
        with_adapters.get_video_features(pixel_values_videos=videos()).pooler_output,
        plain.get_video_features(pixel_values_videos=videos()).pooler_output,
    )


def test_lora_merges_into_an_ordinary_checkpoint(tmp_path):
    pytest.importorskip("peft")
    model = tiny_model(attention_type="factorized")
    summary = apply_adaptation(model, method="lora", lora_rank=4, lora_targets=["q_proj", "v_proj", "fc2"])
    lora_modules = {name.split(".lora_")[0] for name in summary.trainable_names if ".lora_" in name}
    assert len(lora_modules) == 2 * 5  # q, v of spatial and temporal attention, fc2; two layers
    with torch.no_grad():  # as if trained
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(std=0.1)
    model.eval()
    inputs = videos()
    adapted = model.get_video_features(pixel_values_videos=inputs).pooler_output
    merge_adaptation(model)
    assert not any("lora" in key or "base_layer" in key for key in model.state_dict())
    torch.testing.assert_close(model.get_video_features(pixel_values_videos=inputs).pooler_output, adapted)

    checkpoint = export_checkpoint(model, None, tmp_path / "merged")
    loaded, info = AutoModel.from_pretrained(checkpoint, output_loading_info=True)
    assert isinstance(loaded, VideoFirstModel)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    torch.testing.assert_close(loaded.eval().get_video_features(pixel_values_videos=inputs).pooler_output, adapted)


def test_unmerged_lora_refuses_to_save(tmp_path):
    """An unmerged LoRA checkpoint would reload as random weights; saving it is an error that says to merge."""
    pytest.importorskip("peft")
    model = tiny_model()
    apply_adaptation(model, method="lora", lora_rank=4)
    with pytest.raises(ValueError, match="merge_adaptation"):
        model.save_pretrained(tmp_path / "direct")
    with pytest.raises(ValueError, match="unmerged adapter layer"):
        export_checkpoint(model, None, tmp_path / "export")
    assert not (tmp_path / "direct" / "model.safetensors").exists()
    assert not (tmp_path / "export" / "model.safetensors").exists()
    merge_adaptation(model).save_pretrained(tmp_path / "merged")
    _, info = AutoModel.from_pretrained(tmp_path / "merged", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info


# Multi-resolution (TubeViT-style) patchification.

TUBE_KERNELS = [
    {"kernel_size": [2, 8, 8], "stride": [4, 8, 8]},  # fine, on every other pair of frames
    {"kernel_size": [4, 16, 16], "stride": [2, 16, 16]},  # coarse, overlapping in time
    {"kernel_size": [4, 8, 8], "stride": [4, 16, 16], "offset": [0, 8, 8]},  # long and thin, offset
]


@pytest.mark.parametrize("frames, size", [(4, 32), (8, 32), (8, 48)])
def test_tubevit_token_count(frames, size):
    model = tiny_model(tubevit_kernels=TUBE_KERNELS).eval()
    out = model.vision_model(pixel_values_videos=torch.randn(2, frames, 3, size, size))
    config = model.config.vision_config
    expected = sum(
        steps * height * width
        for steps, height, width in (tube_grid(kernel, frames, size, size) for kernel in config.tubevit_kernels)
    )
    assert out.last_hidden_state.shape == (2, expected, 32)
    if (frames, size) == (4, 32):
        assert expected == 1 * 16 + 1 * 4 + 1 * 4
    # Random masking keeps the exact share of the concatenated tokens.
    masked = model.vision_model(pixel_values_videos=torch.randn(2, frames, 3, size, size), mask_ratio=0.5)
    assert masked.last_hidden_state.shape[1] == round(expected / 2)
    # Images keep the patch path.
    assert model.vision_model(pixel_values=torch.randn(2, 3, 32, 32)).last_hidden_state.shape[1] == 16


def test_tubevit_padded_frames_change_nothing():
    """Tubes that reach a padded frame are dropped, which leaves exactly the unpadded video's tokens."""
    model = tiny_model(tubevit_kernels=TUBE_KERNELS, pooling="attention").eval()
    short, other = videos(1, frames=4, seed=5), videos(1, frames=8, seed=6)
    batch = torch.cat([torch.cat([short, videos(1, frames=4, seed=7)], dim=1), other])
    frame_mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0], [1] * 8])
    batched = model.get_video_features(pixel_values_videos=batch, video_frame_mask=frame_mask).pooler_output
    alone = torch.cat([model.get_video_features(pixel_values_videos=video).pooler_output for video in (short, other)])
    torch.testing.assert_close(batched, alone, atol=1e-6, rtol=0)
    out = model.vision_model(pixel_values_videos=batch, video_frame_mask=frame_mask, mask_ratio=0.5)
    assert out.token_mask.sum(dim=1).tolist() == [12, 26]  # half of 16 + 4 + 4 and of 32 + 12 + 8


def test_tubevit_trains():
    torch.manual_seed(0)
    model = tiny_model(tubevit_kernels=TUBE_KERNELS, mask_ratio=0.5).train()
    summary = apply_adaptation(model, method="last_layers", trainable_last_layers=1)
    assert {f"vision_model.embeddings.tubes.{i}.projection.weight" for i in range(3)} <= set(summary.trainable_names)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = {"pixel_values_videos": videos(4, frames=8), **text_inputs(4), "return_loss": True}
    losses = []
    for step in range(8):
        loss = model(**inputs, mask_ratio=0.5 if step < 7 else 0.0).loss
        optimizer.zero_grad()
        loss.backward()
        if step == 0:
            for index in range(3):
                tube = model.vision_model.embeddings.tubes[index]
                assert tube.projection.weight.grad.abs().sum() > 0
                assert tube.temporal_position_embedding.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_tubevit_configuration_errors():
    with pytest.raises(ValueError, match="attention_type"):
        VideoFirstVisionConfig(**tiny_vision_config(tubevit_kernels=TUBE_KERNELS, attention_type="factorized"))
    with pytest.raises(ValueError, match="mask_type"):
        VideoFirstVisionConfig(**tiny_vision_config(tubevit_kernels=TUBE_KERNELS, mask_type="tube"))
    with pytest.raises(ValueError, match="does not fit"):
        VideoFirstVisionConfig(**tiny_vision_config(tubevit_kernels=[{"kernel_size": [8, 8, 8]}]))
    with pytest.raises(ValueError, match="tubevit_kernels"):
        VideoFirstVisionConfig(**tiny_vision_config(tubevit_kernels=[{"kernel": [2, 8, 8]}]))
    with pytest.raises(ValueError, match="adapter_bottleneck"):
        VideoFirstVisionConfig(**tiny_vision_config(adapter_bottleneck=0))
    model = tiny_model(tubevit_kernels=TUBE_KERNELS)
    with pytest.raises(ValueError, match="video_frame_mask"):  # no tube fits in one real frame
        model.get_video_features(pixel_values_videos=videos(), video_frame_mask=torch.tensor([[1, 0, 0, 0]] * 2))
    with pytest.raises(ValueError, match="too small"):
        model.get_video_features(pixel_values_videos=videos(frames=2))
    # The documented default mix, for ViT-B/16 at 16 frames: 392 + 98 + 49 tokens.
    default = VideoFirstVisionConfig(tubevit_kernels="default")
    grids = [tube_grid(kernel, 16, 224, 224) for kernel in default.tubevit_kernels]
    assert grids == [(2, 14, 14), (2, 7, 7), (1, 7, 7)]
