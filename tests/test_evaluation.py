"""Embedding helpers, one-call evaluations on tiny fixtures, and the segment-aggregation baseline."""

import datasets
import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model
from transformers import BertTokenizer

from videofirst.data.sources import load_manifest
from videofirst.evaluation.captioning import DEFAULT_QA_PROMPT
from videofirst.evaluation.embedding import (
    embed_answer_options,
    embed_class_prompts,
    embed_texts,
    embed_videos,
    embed_videos_by_segments,
    evaluate_classification,
    evaluate_multiple_choice,
    evaluate_retrieval,
    flatten_captions,
)
from videofirst.evaluation.metrics import classification_metrics, multiple_choice_metrics, retrieval_metrics
from videofirst.evaluation.sets import (
    VideoClip,
    load_classification_manifest,
    load_multiple_choice_manifest,
    load_retrieval_manifest,
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
    # Wrapped as training leaves it (a data-parallel container, compiled): the bare model embeds.
    embeds = embed_videos(torch.compile(torch.nn.DataParallel(model)), batches)
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
    # The text of an option is "question: ... answer: ...", the text the video-to-text model scores too.
    texts = [f"question: {q} answer: {a}" for q, row in zip(questions, options) for a in row]
    assert texts[0] == f"{DEFAULT_QA_PROMPT.format(question=questions[0])} {options[0][0]}"
    expected = text_features(model, tokenizer, texts)
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


# Evaluation sets from manifests ---------------------------------------------------------------------------------


def test_evaluation_manifests_are_read_by_the_data_pipelines_reader(tmp_path):
    """Any manifest format of the training data (Parquet, a `file_name` column, a `text` column) is an evaluation
    set too, with its task columns (captions lists, options, answers, labels) and windows carried through."""
    (tmp_path / "clips").mkdir()
    rows = [
        {"file_name": "clips/a.mp4", "text": ["a red circle", "a circle"], "question": "what?", "options": ["x", "y"],
         "answer": 1, "label": "red", "start": 1.0, "end": 3.5},
        {"file_name": "clips/b.mp4", "text": ["a blue square"], "question": "who?", "options": ["u", "v"],
         "answer": 0, "label": "blue", "start": None, "end": None},
    ]  # fmt: skip
    parquet = tmp_path / "set.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    retrieval = load_retrieval_manifest(parquet)
    assert retrieval.clips == [
        VideoClip(str(tmp_path / "clips" / "a.mp4"), 1.0, 3.5),
        VideoClip(str(tmp_path / "clips" / "b.mp4")),
    ]
    assert retrieval.texts == ["a red circle", "a circle", "a blue square"]
    assert retrieval.video_ids_of_texts == [0, 0, 1]
    assert [row["media"] for row in load_manifest(parquet, require_captions=False)] == [c.path for c in retrieval.clips]
    questions = load_multiple_choice_manifest(parquet)
    assert questions.options == [["x", "y"], ["u", "v"]] and questions.answers == [1, 0]
    assert load_classification_manifest(parquet).labels == [1, 0]  # classes sorted: blue, red

    # CSV: EgoSchema's `option N` columns, JSON lists in cells, empty windows.
    csv_manifest = tmp_path / "set.csv"
    csv_manifest.write_text(
        'video,question,option 0,option 1,answer,caption,start\nclips/a.mp4,q?,no,yes,1,"[""one"", ""two""]",\n'
    )
    questions = load_multiple_choice_manifest(csv_manifest)
    assert questions.options == [["no", "yes"]] and questions.clips == [VideoClip(str(tmp_path / "clips" / "a.mp4"))]
    assert load_retrieval_manifest(csv_manifest).texts == ["one", "two"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("missing.jsonl", None, "Manifest not found"),
        ("bad.jsonl", b'{"video": "a.mp4", "caption": "x"}\n{"video": \n', r"bad.jsonl:2 is not valid JSON"),
        ("list.jsonl", b'{"video": "a.mp4", "caption": "x"}\n["a.mp4"]\n', "list.jsonl:2 must be a JSON object"),
        ("empty.jsonl", b"\n", "has no rows"),
        ("header.csv", b"video,caption\n", "has no rows"),
        ("latin1.jsonl", b'{"video": "a.mp4", "caption": "caf\xe9"}\n', "is not UTF-8: line 1"),
        ("novideo.jsonl", b'{"caption": "x"}\n', r"needs one of the columns \('video'"),
        ("nofile.jsonl", b'{"video": "", "caption": "x"}\n', "Row 1 of .* names no media file"),
        ("image.jsonl", b'{"image": "a.png", "caption": "x"}\n', "is an image"),
        ("start.jsonl", b'{"video": "a.mp4", "caption": "x", "start": "soon"}\n', "`start` is 'soon', not a number"),
        ("nocaption.jsonl", b'{"video": "a.mp4"}\n', "Row 1 of .* needs a non-empty `caption`"),
        ("reserved.jsonl", b'{"video": "a.mp4", "caption": "x", "size": 3}\n', r"columns \['size'\] are the data"),
    ],
)  # fmt: skip
def test_evaluation_manifests_fail_with_a_message(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        load_retrieval_manifest(path)


def test_task_columns_are_checked_per_task(tmp_path):
    path = tmp_path / "set.jsonl"
    path.write_text('{"video": "a.mp4", "question": "q", "options": ["a", "b"], "answer": 2, "label": ""}\n')
    with pytest.raises(ValueError, match="`answer` 2 is not an index into its options"):
        load_multiple_choice_manifest(path)
    with pytest.raises(ValueError, match="needs a `label`"):
        load_classification_manifest(path)
