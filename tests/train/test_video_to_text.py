"""Video-to-text: the frozen VideoFirst encoder feeding a frozen causal language model (tiny models from configs)."""

import copy
import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from tiny_models import tiny_vision_config
from tiny_runs import tiny_run_and_data
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast
from videofirst.modeling.configuration_videofirst_video_to_text import VideoFirstVideoToTextConfig
from videofirst.modeling.modeling_videofirst import VideoFirstVisionModel
from videofirst.modeling.modeling_videofirst_video_to_text import (
    VideoFirstForConditionalGeneration,
    pool_tokens_over_time,
)
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import VideoFirstVideoProcessor

import videofirst
import videofirst.metrics
import videofirst.train.video_to_text as video_to_text
from videofirst.data.captions import encode_captions, prepare_causal_tokenizer, train_caption_tokenizer
from videofirst.data.loading import MediaTextCollator, build_dataloader
from videofirst.data.shards import TarShardWriter
from videofirst.data.synthetic import COLOURS, SHAPES, sample_videos, write_synthetic_dataset
from videofirst.evaluation.captioning import (
    answer_log_likelihoods,
    caption_metrics,
    captioning_loss,
    cider_available,
    generate_captions,
    sequence_log_likelihoods,
)
from videofirst.evaluation.event_order import (
    event_order_option_scores,
    event_order_questions,
    event_phrase,
    event_sequence_metrics,
    parse_event_caption,
)
from videofirst.evaluation.metrics import multiple_choice_metrics
from videofirst.hub.cards import ModelCardOptions
from videofirst.hub.export import export_checkpoint
from videofirst.train.setup import build_processor

LANGUAGE_MODELS = {
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64},
    "llama": {
        "model_type": "llama",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    },
    "qwen2": {
        "model_type": "qwen2",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 64,
    },
}
SPECIAL_IDS = {"vocab_size": 64, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
NEW_LAYERS = ("resampler.", "cross_attention_layers.")
DEMO = Path(__file__).resolve().parents[2] / "training" / "configs" / "video_to_text_demo.yaml"
CAPTIONS = [
    "a red circle, then a blue square",
    "a blue square, then a green triangle",
    "a green triangle, then a red circle",
    "a yellow cross moves, then a red circle sits",
]


def text_config(family: str) -> dict:
    return {**LANGUAGE_MODELS[family], **SPECIAL_IDS}


def tiny_model(family: str = "gpt2", **overrides) -> VideoFirstForConditionalGeneration:
    settings = {"resampler_num_latents": 8, "resampler_depth": 2, "resampler_num_attention_heads": 4, **overrides}
    config = VideoFirstVideoToTextConfig(
        vision_config=tiny_vision_config(), text_config=text_config(family), **settings
    )
    return VideoFirstForConditionalGeneration(config)


def open_gates(model: VideoFirstForConditionalGeneration, value: float = 0.5) -> None:
    with torch.no_grad():
        for layer in model.cross_attention_layers:
            layer.attention_gate.fill_(value)
            layer.ffn_gate.fill_(value)


def videos(batch: int = 2, frames: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def token_ids(batch: int = 2, length: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randint(3, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def caption_tokenizer(tmp_path_factory):
    corpus = CAPTIONS * 4 + ["question: what came first? answer:"]
    return train_caption_tokenizer(corpus, tmp_path_factory.mktemp("tokenizer"), vocab_size=64)


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE trained on the captions (GPT-2's own files cannot be downloaded here)."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(CAPTIONS + ["question: answer:"], trainer)
    return prepare_causal_tokenizer(PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>"))


# The model -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])
def test_closed_gates_leave_the_language_model_unchanged(family):
    torch.manual_seed(0)
    language_model = AutoModelForCausalLM.from_config(
        VideoFirstVideoToTextConfig(text_config=text_config(family)).text_config
    )
    reference = copy.deepcopy(language_model).eval()
    vision = VideoFirstVisionModel(VideoFirstVideoToTextConfig(vision_config=tiny_vision_config()).vision_config)
    model = VideoFirstForConditionalGeneration.from_vision_and_language_models(
        vision, language_model, resampler_num_latents=8, resampler_depth=1, resampler_num_attention_heads=4
    ).eval()
    # Wrapping the decoder layers neither re-initialises nor renames anything but the wrapper level.
    wrapped = {key.replace(".decoder_layer.", "."): value for key, value in model.language_model.state_dict().items()}
    assert wrapped.keys() == reference.state_dict().keys()
    assert all(torch.equal(wrapped[key], value) for key, value in reference.state_dict().items())

    ids, attention_mask = token_ids(), torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]])
    out = model(input_ids=ids, attention_mask=attention_mask, pixel_values_videos=videos())
    assert torch.equal(out.logits, reference(input_ids=ids, attention_mask=attention_mask).logits)
    assert out.visual_latents.shape == (2, 8, 32)
    generated = model.generate(input_ids=ids, pixel_values_videos=videos(), max_new_tokens=4, do_sample=False)
    assert torch.equal(generated, reference.generate(input_ids=ids, max_new_tokens=4, do_sample=False))

    open_gates(model)
    opened = model(input_ids=ids, attention_mask=attention_mask, pixel_values_videos=videos()).logits
    other_videos = model(input_ids=ids, attention_mask=attention_mask, pixel_values_videos=videos(seed=1)).logits
    assert not torch.allclose(opened, out.logits) and not torch.allclose(opened, other_videos)
    # Outside the model's forward pass the language model stays the plain one.
    assert torch.equal(model.language_model(input_ids=ids, attention_mask=attention_mask).logits, out.logits)


def test_only_the_resampler_and_cross_attention_train():
    model = tiny_model("llama").train()
    ids = token_ids()
    trainable = set(model.trainable_parameter_names())
    assert trainable and all(name.startswith(NEW_LAYERS) for name in trainable)
    assert {name for name, _ in model.named_parameters() if name.startswith(NEW_LAYERS)} == trainable

    model(input_ids=ids, pixel_values_videos=videos(), labels=ids).loss.backward()
    for name, parameter in model.named_parameters():
        assert (parameter.grad is not None) == (name in trainable), name
    # Closed gates: only the gates move at first (tanh'(0) = 1), as in Flamingo.
    gates = {name for name in trainable if name.endswith("_gate")}
    assert all(model.get_parameter(name).grad.abs().sum() > 0 for name in gates)
    assert all(model.get_parameter(name).grad.abs().sum() == 0 for name in trainable - gates)

    model.zero_grad()
    open_gates(model)
    model(input_ids=ids, pixel_values_videos=videos(), labels=ids).loss.backward()
    for name in trainable:
        assert model.get_parameter(name).grad.abs().sum() > 0, name


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = tiny_model("llama").train()
    open_gates(model)
    ids = token_ids()

    def gradients() -> dict[str, torch.Tensor]:
        model.zero_grad()
        model(input_ids=ids, pixel_values_videos=videos(), labels=ids, mask_ratio=0.0).loss.backward()
        return {name: parameter.grad.clone() for name, parameter in model.named_parameters() if parameter.requires_grad}

    plain = gradients()
    model.activation_checkpointing_enable()
    checkpointed = gradients()
    assert all(torch.allclose(plain[name], checkpointed[name], atol=1e-6) for name in plain)


def test_pooling_over_time_with_and_without_masking():
    hidden = torch.randn(2, 3 * 4, 5)  # T=3 steps, S=4 positions
    pooled, valid = pool_tokens_over_time(hidden, (3, 4))
    assert valid is None and torch.allclose(pooled, hidden.reshape(2, 3, 4, 5).mean(dim=1))
    # Sample 0 keeps positions {0, 5, 9} (spatial 0, 1, 1); sample 1 keeps {2, 6} and one padding slot.
    indices = torch.tensor([[0, 5, 9], [2, 6, 0]])
    mask = torch.tensor([[True, True, True], [True, True, False]])
    kept = torch.randn(2, 3, 5)
    pooled, valid = pool_tokens_over_time(kept, (3, 4), indices, mask)
    assert torch.allclose(pooled[0, 0], kept[0, 0]) and torch.allclose(pooled[0, 1], kept[0, 1:].mean(dim=0))
    assert torch.allclose(pooled[1, 2], kept[1, :2].mean(dim=0))
    assert valid.tolist() == [[True, True, False, False], [False, False, True, False]]
    assert torch.equal(pooled[0, 2], torch.zeros(5))  # no kept token: zeros, masked out of the resampler


def test_time_embeddings_make_the_latents_follow_the_order():
    # Truth from the mean's algebra: a tower without temporal positions (a random one starts so) and joint attention
    # maps clips whose tubelet steps are swapped to the same tokens, swapped; their mean over time is the same.
    # Keeping every step with its time embedding (Flamingo; `temporal_pooling="none"`) tells the two apart.
    clip = videos(batch=1, frames=4)
    swapped = clip[:, [2, 3, 0, 1]]  # 2 tubelet steps of 2 frames, in the other order
    latents = {}
    for pooling in ("mean", "none"):
        torch.manual_seed(0)
        model = tiny_model(temporal_pooling=pooling).eval()
        assert not model.vision_model.embeddings.temporal_position_embedding.any()
        latents[pooling] = [
            model.get_video_features(pixels, mask_ratio=0.0).pooler_output for pixels in (clip, swapped)
        ]
    assert torch.allclose(*latents["mean"], atol=1e-5)  # the paper's pooling: blind to the order
    ordered, reordered = latents["none"]
    assert ((ordered - reordered).norm() / ordered.norm()).item() > 5e-3
    # Unit-scale time embeddings (Flamingo's randn), not the weights' 0.02: beside LayerNormed tokens these count.
    assert 0.5 < model.resampler.time_embedding.std().item() < 2.0
    assert tiny_model().resampler.time_embedding is None


def test_time_steps_of_kept_tokens_and_class_token():
    config = VideoFirstVideoToTextConfig(
        vision_config=tiny_vision_config(pooling="cls"),
        text_config=text_config("gpt2"),
        temporal_pooling="none",
        resampler_num_latents=8,
        resampler_num_attention_heads=4,
    )
    model = VideoFirstForConditionalGeneration(config).eval()
    pixels = videos(frames=8)  # 4 steps: the table of the tower's 2 steps (num_frames 4) is interpolated
    outputs = model.vision_model(pixel_values_videos=pixels, mask_ratio=0.3, generator=torch.Generator().manual_seed(1))
    tokens, valid, time_steps, num_steps = model._visual_tokens(outputs, pixels.shape)
    spatial = (32 // 8) ** 2
    assert num_steps == 4 and tokens.shape[1] == outputs.token_indices.shape[1] + 1  # kept tokens, class token
    assert torch.equal(time_steps[:, :-1], outputs.token_indices // spatial)  # brute force: grid index // S
    assert (time_steps[:, -1] == num_steps).all()  # the class token: the zero row, no time embedding
    assert model.get_video_features(pixels).pooler_output.shape == (2, 8, 32)
    with pytest.raises(ValueError, match="time_steps"):
        model.resampler(tokens)


def test_token_masking_in_training_and_inference():
    model = tiny_model(mask_ratio=0.3).eval()
    frame_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    first = model.get_video_features(videos(), video_frame_mask=frame_mask).pooler_output
    second = model.get_video_features(videos(), video_frame_mask=frame_mask).pooler_output
    assert not torch.equal(first, second)  # masking stays on at inference (the paper masks 30% there too)
    seeded = [
        model.get_video_features(videos(), generator=torch.Generator().manual_seed(3)).pooler_output for _ in range(2)
    ]
    assert torch.equal(*seeded)
    unmasked = [model.get_video_features(videos(), mask_ratio=0.0).pooler_output for _ in range(2)]
    assert torch.equal(*unmasked) and unmasked[0].shape == (2, 8, 32)
    # The number of visual tokens the language model sees does not depend on the number of frames.
    assert model.get_video_features(videos(frames=8)).pooler_output.shape == (2, 8, 32)


def test_generate_with_the_usual_options():
    torch.manual_seed(0)
    model = tiny_model("qwen2").eval()
    open_gates(model, 1.0)
    inputs = {"input_ids": token_ids(length=3), "pixel_values_videos": videos()}
    greedy = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert greedy.shape == (2, 9) and torch.equal(greedy[:, :3], inputs["input_ids"])
    assert torch.equal(greedy, model.generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=False))
    latents = model.get_video_features(inputs["pixel_values_videos"]).pooler_output
    assert torch.equal(greedy, model.generate(input_ids=inputs["input_ids"], visual_latents=latents, max_new_tokens=6))
    beams = model.generate(**inputs, max_new_tokens=5, num_beams=3, num_return_sequences=2, do_sample=False)
    assert beams.shape[0] == 4
    torch.manual_seed(1)
    sampled = model.generate(**inputs, max_new_tokens=5, do_sample=True, top_k=10, temperature=0.8)
    assert sampled.shape == (2, 8)
    from_bos = model.generate(pixel_values_videos=videos(), max_new_tokens=3, do_sample=False)
    assert from_bos[:, 0].tolist() == [1, 1]
    with pytest.raises(ValueError, match="one video per sequence"):
        model(input_ids=token_ids(batch=3), pixel_values_videos=videos())


def test_save_load_and_remote_code(tmp_path, caption_tokenizer):
    model = tiny_model("gpt2").eval()  # GPT-2 ties its output layer to its input embeddings
    open_gates(model)
    video_processor = VideoFirstVideoProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, num_frames=4, tubelet_frames=2
    )
    processor = VideoFirstProcessor(video_processor=video_processor, tokenizer=caption_tokenizer)
    checkpoint = export_checkpoint(model, processor, tmp_path / "export", card=ModelCardOptions(repo_id="me/v2t"))
    assert videofirst.export_video_to_text is export_checkpoint  # the former name of this export
    assert (checkpoint / "modeling_videofirst_video_to_text.py").is_file()
    assert json.loads((checkpoint / "config.json").read_text())["auto_map"]["AutoModelForImageTextToText"]
    # The video-to-text card and files, not the dual encoder's: no scoring pipelines or endpoint handler.
    card = ModelCard.load(checkpoint / "README.md")
    assert card.data.pipeline_tag == "video-text-to-text" and "AutoModelForImageTextToText" in card.text
    total = sum(parameter.numel() for parameter in model.parameters())  # shared (tied) weights once
    trained = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    assert f"{total:,}), of which " in card.text and f"{trained:,}) trained" in card.text
    assert (checkpoint / "requirements.txt").is_file()
    assert not (checkpoint / "handler.py").exists() and not (checkpoint / "pipeline_videofirst.py").exists()
    assert "custom_pipelines" not in json.loads((checkpoint / "config.json").read_text())

    loaded = VideoFirstForConditionalGeneration.from_pretrained(checkpoint).eval()
    assert loaded.trainable_parameter_names() == model.trainable_parameter_names()
    assert loaded.language_model.lm_head.weight is loaded.language_model.transformer.wte.weight
    ids, pixels = token_ids(), videos()
    expected = model(input_ids=ids, pixel_values_videos=pixels).logits
    assert torch.equal(loaded(input_ids=ids, pixel_values_videos=pixels).logits, expected)

    torch.save({"ids": ids, "pixels": pixels, "expected": expected}, tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.modules["videofirst"] = None  # make the installed package unimportable
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained({str(checkpoint)!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        processor = AutoProcessor.from_pretrained({str(checkpoint)!r}, trust_remote_code=True)
        io = torch.load({str(tmp_path / "io.pt")!r})
        assert torch.equal(model(input_ids=io["ids"], pixel_values_videos=io["pixels"]).logits, io["expected"])
        out = model.generate(pixel_values_videos=io["pixels"], max_new_tokens=3, do_sample=False)
        print(type(processor).__name__, processor.tokenizer.bos_token, tuple(out.shape))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, env={**os.environ}, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-4:] == ["VideoFirstProcessor", "[CLS]", "(2,", "4)"]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"resampler_num_attention_heads": 5}, "resampler_num_attention_heads"),
        ({"cross_attention_num_heads": 3}, "cross_attention_num_heads"),
        ({"cross_attention_every": 0}, "cross_attention_every"),
        ({"resampler_depth": 0}, "resampler_depth"),
        ({"temporal_pooling": "max"}, "temporal_pooling"),
        ({"vision_config": tiny_vision_config(tubevit_kernels=[{"kernel_size": [2, 8, 8]}])}, "tubevit_kernels"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    settings = {"vision_config": tiny_vision_config(), "text_config": text_config("gpt2"), **overrides}
    with pytest.raises(ValueError, match=field):
        VideoFirstVideoToTextConfig(**settings)


def test_decoder_layers_are_found_or_named():
    assert len(tiny_model("gpt2", cross_attention_every=2).cross_attention_layers) == 1
    with pytest.raises(ValueError, match="decoder_layers_path"):
        tiny_model("gpt2", decoder_layers_path="transformer.wte")
    assert len(tiny_model("llama", decoder_layers_path="model.layers").cross_attention_layers) == 2


# Text: tokenization, likelihood QA, metrics ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sentencepiece", "byte_level"])
def test_captions_are_labelled_after_the_prompt(kind, caption_tokenizer):
    tokenizer = caption_tokenizer if kind == "sentencepiece" else byte_level_tokenizer()
    encoded = encode_captions(tokenizer, ["a red circle", "a blue square, then a green triangle"], "question:")
    for ids, labels, mask in zip(encoded["input_ids"], encoded["labels"], encoded["attention_mask"]):
        labelled = ids[labels != -100]
        assert ids[0] == tokenizer.bos_token_id and labels[0] == -100
        assert labelled[-1] == tokenizer.eos_token_id and torch.equal(labels[labels != -100], labelled)
        assert tokenizer.decode(labelled[:-1]).strip() in ("a red circle", "a blue square, then a green triangle")
        prompt = ids[1 : int((labels != -100).nonzero()[0])]
        assert tokenizer.decode(prompt).strip() == "question:"
        assert mask.sum() == (ids != tokenizer.pad_token_id).sum() or tokenizer.pad_token_id == tokenizer.eos_token_id
    assert encode_captions(tokenizer, ["a red circle"], max_length=3)["input_ids"].shape == (1, 3)


def test_answer_scorer_picks_the_most_likely_answer(caption_tokenizer):
    torch.manual_seed(0)
    tokenizer = caption_tokenizer
    family = {**text_config("llama"), "vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id}
    config = VideoFirstVideoToTextConfig(
        vision_config=tiny_vision_config(),
        text_config=family,
        resampler_num_latents=4,
        resampler_depth=1,
        resampler_num_attention_heads=4,
    )
    model = VideoFirstForConditionalGeneration(config).eval()
    open_gates(model)
    questions = ["what came first?", "what came last?"]
    options = [["a red circle", "a blue square", "a green triangle"]] * 2
    pixels = videos()

    # Against a brute-force scoring of every (question, option) sequence on its own.
    for reduction in ("sum", "mean"):
        scores = answer_log_likelihoods(
            model, tokenizer, questions, options, pixel_values_videos=pixels, reduction=reduction, mask_ratio=0.0
        )
        for q, question in enumerate(questions):
            latents = model.get_video_features(pixels[q : q + 1], mask_ratio=0.0).pooler_output
            for k, option in enumerate(options[q]):
                text = encode_captions(tokenizer, [option], f"question: {question} answer:", add_eos=False)
                labels = text.pop("labels")
                logits = model(**text, visual_latents=latents).logits
                expected = sequence_log_likelihoods(logits, labels, reduction)[0]
                assert torch.allclose(scores[q, k], expected, atol=1e-5), (reduction, q, k)

    # A constructed case: an output layer biased towards the tokens of option 1 makes it the most likely answer.
    favoured = tokenizer("a blue square", add_special_tokens=False)["input_ids"]
    head = nn.Linear(32, len(tokenizer), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[favoured] = 5.0
    model.language_model.lm_head = head
    for reduction in ("sum", "mean"):
        scores = answer_log_likelihoods(
            model, tokenizer, questions, options, pixel_values_videos=pixels, reduction=reduction
        )
        assert scores.argmax(dim=1).tolist() == [1, 1]
        assert multiple_choice_metrics(scores, [1, 1])["accuracy"] == 1.0
    # A uniform language model: the summed likelihood prefers the shortest answer, the mean ties all of them.
    with torch.no_grad():
        head.bias.zero_()
    sums = answer_log_likelihoods(
        model, tokenizer, ["q"], [["a red circle", "a red"]], pixel_values_videos=pixels[:1], reduction="sum"
    )
    means = answer_log_likelihoods(model, tokenizer, ["q"], [["a red circle", "a red"]], pixel_values_videos=pixels[:1])
    assert sums.argmax().item() == 1 and torch.allclose(means[0, 0], means[0, 1])


def test_caption_metrics_offline():
    metric = videofirst.metrics.load("video_captioning")
    result = metric.compute(
        predictions=["a red circle", "a red circle"],
        references=[["a red circle", "a square"], ["a red square circle"]],
        cider=False,
    )
    # Rouge-L F of the second: LCS 3 of 3 predicted and 4 reference words; the first matches exactly.
    assert result == {"rougeL": pytest.approx((1.0 + 2 * 0.75 / 1.75) / 2)}
    assert caption_metrics(["a blue square"], ["a red circle"], cider=False)["rougeL"] == pytest.approx(1 / 3)
    if cider_available():
        captions = [
            "a red circle then a blue square",
            "a blue square then a green triangle",
            "a green triangle then a red circle",
        ]
        references = [[caption] for caption in captions]
        # CIDEr-D of the COCO code: 10 for a perfect corpus (its x10 scale), 0 for no shared n-gram.
        assert caption_metrics(captions, references)["cider"] == pytest.approx(10.0)
        assert 0.0 < caption_metrics(captions[1:] + captions[:1], references)["cider"] < 10.0
        assert caption_metrics(["a dog", "the cat sits", "nothing here"], references)["cider"] == 0.0


# The training loop -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("v2t-data")
    write_synthetic_dataset(
        root, num_videos=16, num_events=2, duration=4.0, fps=1.0, size=32, seed=0, test_fraction=0.25
    )
    return root


def tiny_recipe(data: Path, run_dir: Path, **extra) -> video_to_text.VideoToTextRecipe:
    values = {
        **tiny_run_and_data(data, run_dir),
        "model.language_model.n_layer": 2,
        "model.language_model.n_embd": 32,
        "model.language_model.n_head": 4,
        "model.language_model_text_steps": 5,
        "model.resampler_num_latents": 4,
        "model.resampler_depth": 1,
        "model.resampler_num_attention_heads": 4,
        "model.gate_init": 0.0,  # closed at the start, so that the test sees them open
        "model.prompt": "'caption:'",
        "optim.batch_size": 4,
        "optim.max_steps": 6,
        "optim.learning_rate": 3.0e-3,
        "optim.warmup_steps": 1,
        "checkpoint.save_every": 3,
        "eval.batch_size": 4,
        "eval.max_new_tokens": 6,
    }
    values.update(extra)
    overrides = [f"{key}={value}" for key, value in values.items()]
    return video_to_text.load_video_to_text_recipe(DEMO, overrides)


class Interrupted(RuntimeError):
    pass


def test_training_loop_logs_exports_and_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    full = video_to_text.train_video_to_text(tiny_recipe(tiny_data, tmp_path / "full"))
    log = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    steps = [record for record in log if "loss" in record]
    assert len(steps) == 6 and all(math.isfinite(record["loss"]) for record in steps)
    assert steps[-1]["xattn_gate"] > steps[0]["xattn_gate"] > 0  # the gates open
    assert log[-1]["step"] == 6 and "eval/rougeL" in log[-1]
    assert {"rougeL", "loss", "exact_match"} <= full.metrics.keys() and len(full.samples) == 4
    # Synthetic order-of-events references: the events are read back too.
    assert {"event_sequence_accuracy", "event_position_accuracy", "event_set_accuracy"} <= full.metrics.keys()
    assert (full.export_dir / "config.json").is_file() and (full.export_dir / "tokenizer.json").is_file()

    # Interrupted at step 5 (the last checkpoint is step 3), then resumed: the same final weights.
    summary = video_to_text._gate_summary

    def crash_at_step_5(model):
        crash_at_step_5.calls += 1
        if crash_at_step_5.calls == 5:
            raise Interrupted
        return summary(model)

    crash_at_step_5.calls = 0
    monkeypatch.setattr(video_to_text, "_gate_summary", crash_at_step_5)
    with pytest.raises(Interrupted):
        video_to_text.train_video_to_text(tiny_recipe(tiny_data, tmp_path / "resumed"))
    monkeypatch.setattr(video_to_text, "_gate_summary", summary)
    resumed = video_to_text.train_video_to_text(
        tiny_recipe(tiny_data, tmp_path / "resumed", **{"checkpoint.resume": True})
    )
    assert resumed.final_step == 6
    expected = load_file(str(full.export_dir / "model.safetensors"))
    actual = load_file(str(resumed.export_dir / "model.safetensors"))
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert AutoTokenizer.from_pretrained(resumed.export_dir).bos_token == "[CLS]"


def test_training_reads_the_recipes_sources(tiny_data, tmp_path, monkeypatch):
    """`data.train_sources` (here a weighted mix naming tar shards) is what video-to-text trains on, read like
    pretraining's data: every training batch holds the shards' captions, never `data.train_manifest`'s."""
    rows = [json.loads(line) for line in (tiny_data / "train.jsonl").read_text().splitlines()]
    (tmp_path / "shards").mkdir()
    writer = TarShardWriter(tmp_path / "shards" / "shard-000000.tar")
    for index, row in enumerate(rows):
        meta = {"caption": f"shard {row['caption']}", "start": row["start"], "end": row["end"]}
        writer.add(f"{index:06d}", {"mp4": (tiny_data / row["video"]).read_bytes(), "json": json.dumps(meta).encode()})
    writer.close()
    seen: list[str] = []
    collate = MediaTextCollator.__call__

    def recording(self, samples):
        seen.extend(sample["caption"] for sample in samples)
        return collate(self, samples)

    monkeypatch.setattr(MediaTextCollator, "__call__", recording)
    recipe = tiny_recipe(
        tiny_data,
        tmp_path / "run",
        **{
            "data.train_manifest": tiny_data / "test.jsonl",  # present, but the sources take precedence
            "data.train_sources": f"[{{source: {tmp_path / 'shards'}, weight: 1}}]",
            "data.eval_manifest": "null",
            "optim.max_steps": 2,
            "model.language_model_text_steps": 1,
        },
    )
    assert video_to_text.train_video_to_text(recipe).final_step == 2
    assert len(seen) >= 8 and all(caption.startswith("shard ") for caption in seen), seen


def test_a_few_steps_on_synthetic_data_lower_the_loss(tiny_data, caption_tokenizer):
    torch.manual_seed(0)
    recipe = tiny_recipe(tiny_data, tiny_data / "unused")
    family = {**text_config("gpt2"), "vocab_size": len(caption_tokenizer)}
    config = VideoFirstVideoToTextConfig(
        vision_config=tiny_vision_config(num_hidden_layers=1),
        text_config=family,
        resampler_num_latents=4,
        resampler_depth=1,
        resampler_num_attention_heads=4,
        mask_ratio=0.3,
    )
    model = VideoFirstForConditionalGeneration(config).train()
    processor = build_processor(recipe, caption_tokenizer, tubelet_frames=model.config.vision_config.tubelet_size[0])
    batch = next(iter(build_dataloader(recipe.data, recipe.data.train_manifest, processor, 8, shuffle=False)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        loss = captioning_loss(model, batch, caption_tokenizer, "caption:")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.2 and max(losses[-3:]) < min(losses[:3]), losses


def test_generated_captions_decode(caption_tokenizer):
    family = {**text_config("gpt2"), "vocab_size": len(caption_tokenizer)}
    config = VideoFirstVideoToTextConfig(
        vision_config=tiny_vision_config(),
        text_config=family,
        resampler_num_latents=4,
        resampler_depth=1,
        resampler_num_attention_heads=4,
    )
    captions = generate_captions(
        VideoFirstForConditionalGeneration(config), caption_tokenizer, videos(), prompt="caption:", max_new_tokens=5
    )
    assert len(captions) == 2 and all(isinstance(caption, str) for caption in captions)


# Reading the events back (synthetic order-of-events captions) ------------------------------------------------------


def test_event_parser_reads_back_the_generators_events():
    # Truth from the data generator: every caption it writes parses to the events it drew.
    for video in sample_videos(60, 4, 8.0, seed=3):
        assert parse_event_caption(video.caption) == [(event.colour, event.shape) for event in video.events]
    assert parse_event_caption("a red circle, then a blue blob, then") == [("red", "circle"), None]


def test_event_sequence_metrics_count_order_position_and_set():
    references = ["a red circle, then a blue square, then a green cross"] * 3
    predictions = [
        "a red circle, then a blue square, then a green cross",  # exact
        "a blue square, then a red circle, then a green cross",  # same events, two swapped
        "a red circle, then a red circle",  # one right position, an event missing
    ]
    assert event_sequence_metrics(predictions, references) == {
        "event_sequence_accuracy": pytest.approx(1 / 3),
        "event_position_accuracy": pytest.approx((3 + 1 + 1) / 9),
        "event_set_accuracy": pytest.approx(2 / 3),
        "colour_position_accuracy": pytest.approx((3 + 1 + 1) / 9),
        "colour_sequence_accuracy": pytest.approx(1 / 3),
    }
    # The colour alone counts for the colour accuracies.
    shapes_wrong = event_sequence_metrics(["a red cross, then a blue cross, then a green circle"], references[:1])
    assert shapes_wrong["colour_position_accuracy"] == 1.0 and shapes_wrong["event_position_accuracy"] == 0.0
    assert shapes_wrong["colour_sequence_accuracy"] == 1.0 and shapes_wrong["event_sequence_accuracy"] == 0.0
    # An extra event breaks the exact sequences but no position.
    extra = event_sequence_metrics([references[0] + ", then a red circle"], references[:1])
    assert extra["event_sequence_accuracy"] == 0.0 and extra["event_position_accuracy"] == 1.0
    assert extra["colour_sequence_accuracy"] == 0.0
    with pytest.raises(ValueError, match="not an order-of-events caption"):
        event_sequence_metrics(["a red circle"], ["a dog runs"])


def test_order_questions_ask_for_the_event_at_the_position():
    rows = [
        {"video": f"{video.index}.mp4", "events": [dataclasses.asdict(event) for event in video.events]}
        for video in sample_videos(12, 3, 6.0, seed=0)
    ]
    questions = event_order_questions(rows, position=2, num_options=5, seed=1)
    answers = set()
    for row, question in zip(rows, questions):
        events = [event_phrase((event["colour"], event["shape"])) for event in row["events"]]
        assert question["question"] == "what happened second?" and len(set(question["options"])) == 5
        assert question["options"][question["answer"]] == events[1]
        assert set(events) <= set(question["options"])  # the video's other events are distractors
        answers.add(question["answer"])
    assert len(answers) > 1  # the answer's place is shuffled


def test_order_question_scores_marginalise_the_events_before(caption_tokenizer):
    torch.manual_seed(0)
    model = tiny_model(resampler_num_latents=4)
    open_gates(model)
    latents = model.get_video_features(videos(2)).pooler_output
    options = [["a red circle", "a blue square"], ["a green cross", "a red circle"]]
    scores = event_order_option_scores(model, caption_tokenizer, options, 2, latents)
    # Brute force: log sum over every other first event of P("first, then option" | video), one text at a time.
    palette = [(colour, shape) for colour in COLOURS for shape in SHAPES]
    for row, choices in enumerate(options):
        for column, choice in enumerate(choices):
            (answer,) = parse_event_caption(choice)
            log_probs = []
            for first in palette:
                if first == answer:
                    continue
                text = encode_captions(caption_tokenizer, [f"{event_phrase(first)}, then {choice}"], add_eos=False)
                labels = text.pop("labels")
                logits = model(**text, visual_latents=latents[row : row + 1]).logits
                log_probs.append(sequence_log_likelihoods(logits, labels, reduction="sum"))
            expected = torch.logsumexp(torch.cat(log_probs), 0).item()
            assert scores[row, column].item() == pytest.approx(expected, abs=1e-4)
    # The language model alone scores an option the same whatever the video.
    alone = event_order_option_scores(model, caption_tokenizer, [options[0], options[0]], 2, None)
    assert torch.equal(alone[0], alone[1])


def test_gate_learning_rate_and_initialisation(tmp_path):
    recipe = video_to_text.load_video_to_text_recipe(DEMO, ["optim.learning_rate=0.002"])
    model = tiny_model(cross_attention_gate_init=0.25)
    assert all(layer.attention_gate.item() == 0.25 for layer in model.cross_attention_layers)
    assert tiny_model().cross_attention_layers[0].attention_gate.item() == 0.0  # Flamingo's closed gates by default
    optimizer = video_to_text.build_video_to_text_optimizer(model, recipe.optim, 10.0)
    gates = {id(p) for layer in model.cross_attention_layers for n, p in layer.named_parameters() if "gate" in n}
    grouped = [id(p) for group in optimizer.param_groups for p in group["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)  # each once
    for group in optimizer.param_groups:
        in_group = {id(p) for p in group["params"]}
        assert in_group <= gates or not in_group & gates
        assert group["lr"] == pytest.approx(0.02 if in_group <= gates else 0.002)
    with pytest.raises(ValueError, match="gate_learning_rate_multiplier"):
        video_to_text.build_video_to_text_optimizer(model, recipe.optim, 0.0)


@pytest.mark.slow
def test_video_to_text_benchmark_smoke(tmp_path):
    script = Path(__file__).resolve().parents[2] / "training" / "benchmarks" / "video_to_text.py"
    command = [sys.executable, str(script), "--quick", "--out", str(tmp_path / "out"), "--work", str(tmp_path)]
    subprocess.run(command + ["--seeds", "0", "--sweep-seeds"], check=True, timeout=1800)
    rows = (tmp_path / "out" / "video_to_text.csv").read_text().splitlines()
    assert rows[0].startswith("condition,setting,seed") and len(rows) == 5  # header + the four conditions
    table = (tmp_path / "out" / "video_to_text.md").read_text()
    for condition in (
        "gates closed",
        "random tower",
        "contrastive encoder",
        "contrastive encoder, mean over time (the paper)",
    ):
        assert f"| {condition} | 1 |" in table
