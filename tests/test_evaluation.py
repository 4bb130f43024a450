"""Embedding helpers, one-call evaluations on tiny fixtures, and the segment-aggregation baseline."""

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model
from transformers import BertTokenizer

from videofirst.evaluation.zero_shot import (
    classification_metrics,
    embed_answer_options,
    embed_class_prompts,
    embed_texts,
    embed_videos,
    embed_videos_by_segments,
    evaluate_classification,
    evaluate_multiple_choice,
    evaluate_retrieval,
    flatten_captions,
    multiple_choice_metrics,
    retrieval_metrics,
)

WORDS = (
    "a video of the person red blue green yellow circle square triangle then what did do first cook cut open "
    "close is cooking cutting running jumping dog cat ball"
).split()


@pytest.fixture(scope="module")
def model():
    return tiny_model().eval()


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {token: index for index, token in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    return BertTokenizer(vocab=vocab)


def videos(batch_size: int, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch_size, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def text_features(model, tokenizer, texts: list[str]) -> torch.Tensor:
    encoded = tokenizer(text=texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.get_text_features(
            input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]
        ).pooler_output


def video_features(model, pixel_values_videos, video_frame_mask=None) -> torch.Tensor:
    with torch.no_grad():
        return model.get_video_features(
            pixel_values_videos=pixel_values_videos, video_frame_mask=video_frame_mask
        ).pooler_output


class Wrapper(torch.nn.Module):
    """Stands in for DDP / accelerate's wrapper: the model is `.module`."""

    def __init__(self, module):
        super().__init__()
        self.module = module


def test_embed_texts_is_batched_normalised_and_restores_train_mode(model, tokenizer):
    texts = ["a red circle", "a blue square then a green triangle", "what did the person do first", "a dog"]
    model.train()
    embeds = embed_texts(model, tokenizer, texts, batch_size=3)
    assert model.training, "the caller's train mode must be restored"
    model.eval()
    assert embeds.shape == (4, 16) and embeds.dtype == torch.float32 and not embeds.requires_grad
    assert torch.allclose(embeds.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(embeds, embed_texts(model, tokenizer, texts, batch_size=1, device="cpu"), atol=1e-5)
    assert torch.allclose(embeds, text_features(model, tokenizer, texts), atol=1e-5)
    with pytest.raises(TypeError, match="single string"):
        embed_texts(model, tokenizer, "a dog")


def test_embed_videos_takes_tensors_and_processor_batches(model):
    clips = videos(3, 4)
    mask = torch.ones(3, 4, dtype=torch.long)
    mask[1, 2:] = 0
    batches = [{"pixel_values_videos": clips[:2], "video_frame_mask": mask[:2], "input_ids": None}, clips[2:]]
    embeds = embed_videos(Wrapper(model), batches)
    assert embeds.shape == (3, 16) and not model.training
    expected = torch.cat([video_features(model, clips[:2], mask[:2]), video_features(model, clips[2:])])
    assert torch.allclose(embeds, expected, atol=1e-5)


def test_segments_of_one_full_segment_equal_the_whole_video(model):
    clips = videos(2, 4)
    assert torch.allclose(
        embed_videos_by_segments(model, clips, segment_frames=4), video_features(model, clips), atol=1e-5
    )


def test_segments_are_averaged_by_real_frames_and_respect_the_mask(model):
    clips = videos(2, 8, seed=1)
    # Video 0: 8 real frames -> two full segments. Video 1: real frames 0, 2..6 (6 frames; frames 1 and 7 are
    # padding) -> a full segment (0, 2, 3, 4) and a 2-frame tail (5, 6) padded to 4 frames.
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 1] = mask[1, 7] = 0
    embeds = embed_videos_by_segments(model, clips, mask, segment_frames=4)

    full = video_features(model, torch.stack([clips[0, :4], clips[0, 4:], clips[1, [0, 2, 3, 4]]]))
    tail = torch.cat([clips[1, 5:7], torch.zeros(2, 3, 32, 32)])[None]
    tail = video_features(model, tail, torch.tensor([[1, 1, 0, 0]]))
    expected = torch.stack([full[0] + full[1], 4 * full[2] + 2 * tail[0]])
    assert torch.allclose(embeds, F.normalize(expected, dim=-1), atol=1e-5)

    # Padding content is never seen, and segment batching does not change the result.
    garbage = clips.clone()
    garbage[1, [1, 7]] = 1e3
    assert torch.allclose(embed_videos_by_segments(model, garbage, mask, 4, batch_size=1), embeds, atol=1e-5)
    # The same baseline as an evaluation mode of embed_videos.
    batches = [{"pixel_values_videos": clips, "video_frame_mask": mask}]
    assert torch.allclose(embed_videos(model, batches, segment_frames=4), embeds, atol=1e-5)


def test_segments_for_models_without_frame_masks():
    # TubeViT kernels take no frame mask: a partial tail is padded by repeating its last real frame instead.
    kernels = [{"kernel_size": [2, 8, 8], "stride": [2, 8, 8]}, {"kernel_size": [4, 16, 16], "stride": [2, 16, 16]}]
    try:
        model = tiny_model(tubevit_kernels=kernels).eval()
    except TypeError:
        pytest.skip("this model version has no TubeViT kernels")
    clips = videos(1, 6, seed=5)
    embeds = embed_videos_by_segments(model, clips, segment_frames=4)
    segments = torch.stack([clips[0, :4], torch.cat([clips[0, 4:], clips[0, 5:].expand(2, -1, -1, -1)])])
    full, tail = video_features(model, segments)
    assert torch.allclose(embeds, F.normalize(4 * full + 2 * tail, dim=-1)[None], atol=1e-5)
    # An all-ones frame mask is dropped before the model, which would refuse it.
    batches = [{"pixel_values_videos": clips[:, :4], "video_frame_mask": torch.ones(1, 4)}]
    assert torch.allclose(embed_videos(model, batches), video_features(model, clips[:, :4]), atol=1e-5)


def test_segment_errors(model):
    with pytest.raises(ValueError, match="multiple of the tubelet length 2"):
        embed_videos_by_segments(model, videos(1, 4), segment_frames=3)
    with pytest.raises(ValueError, match="no real frame"):
        embed_videos_by_segments(model, videos(2, 4), torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]]), 4)


def test_retrieval_with_several_captions_per_video(model, tokenizer):
    clips = videos(3, 4, seed=2)
    texts, video_ids = flatten_captions([["a red circle", "a red circle then a dog"], "a cat", ["a ball", "a dog"]])
    assert video_ids == [0, 0, 1, 2, 2]
    metrics = evaluate_retrieval(model, tokenizer, [clips[:2], clips[2:]], texts, video_ids, text_batch_size=2)
    similarity = text_features(model, tokenizer, texts) @ video_features(model, clips).t()
    assert metrics == pytest.approx(retrieval_metrics(similarity, video_ids), abs=1e-6)


def test_multiple_choice_on_a_tiny_egoschema_fixture(model, tokenizer):
    clips = videos(2, 4, seed=3)
    questions = ["what did the person do first", "what is the dog doing"]
    options = [["cook", "cut", "open", "close", "run"], ["running", "jumping", "cooking", "cutting", "open"]]
    option_embeds = embed_answer_options(model, tokenizer, questions, options)
    assert option_embeds.shape == (2, 5, 16)
    # The text of an option is "question answer".
    expected = text_features(model, tokenizer, [f"{q} {a}" for q, row in zip(questions, options) for a in row])
    assert torch.allclose(option_embeds.reshape(10, 16), expected, atol=1e-5)

    scores = torch.einsum("qd,qod->qo", video_features(model, clips), expected.reshape(2, 5, 16))
    best, worst = scores.argmax(dim=1).tolist(), scores.argmin(dim=1).tolist()
    assert evaluate_multiple_choice(model, tokenizer, [clips], questions, options, best) == {"accuracy": 1.0}
    assert evaluate_multiple_choice(model, tokenizer, [clips], questions, options, worst) == {"accuracy": 0.0}
    mixed = [best[0], worst[1]]
    assert multiple_choice_metrics(scores, mixed) == {"accuracy": 0.5}
    # Two questions about one video: the video is embedded once and indexed per question.
    shared_scores = torch.einsum("d,qod->qo", video_features(model, clips[:1])[0], expected.reshape(2, 5, 16))
    shared = evaluate_multiple_choice(
        model,
        tokenizer,
        [clips[:1]],
        questions,
        options,
        shared_scores.argmax(1).tolist(),
        video_ids_of_questions=[0, 0],
    )
    assert shared == {"accuracy": 1.0}
    with pytest.raises(ValueError, match="same, non-zero number of options"):
        embed_answer_options(model, tokenizer, questions, [options[0], options[1][:4]])


def test_zero_shot_classification_with_prompt_templates(model, tokenizer):
    clips = videos(4, 4, seed=4)
    class_names = ["cooking", "cutting", "running"]
    templates = ["a video of {}", "a person {}"]
    class_embeds = embed_class_prompts(model, tokenizer, class_names, templates)
    prompts = text_features(model, tokenizer, [t.format(c) for c in class_names for t in templates])
    assert torch.allclose(class_embeds, F.normalize(prompts.reshape(3, 2, 16).mean(dim=1), dim=-1), atol=1e-5)

    scores = video_features(model, clips) @ class_embeds.t()
    best, worst = scores.argmax(dim=1).tolist(), scores.argmin(dim=1).tolist()
    kwargs = {"templates": templates, "top_k": (1, 2, 5)}
    assert evaluate_classification(model, tokenizer, [clips], best, class_names, **kwargs) == pytest.approx(
        {"top1_accuracy": 1.0, "top2_accuracy": 1.0, "top5_accuracy": 1.0}
    )
    assert evaluate_classification(model, tokenizer, [clips], worst, class_names, **kwargs) == pytest.approx(
        {"top1_accuracy": 0.0, "top2_accuracy": 0.0, "top5_accuracy": 1.0}
    )
    assert classification_metrics(scores, best, (1,)) == {"top1_accuracy": 1.0}
    with pytest.raises(ValueError, match="contain"):
        embed_class_prompts(model, tokenizer, class_names, ["no placeholder"])
