"""Publishing: export folders, model cards, pushes to a stand-in Hub, pipelines and the Inference Endpoints handler.

The real Hub is unreachable here, so pushes and downloads go to `hub_server.HubStandIn` on 127.0.0.1 (in memory,
started and stopped by the fixture). The stranger's round trip (a fresh environment with only the
export's requirements, the card's snippets as written) is in test_hub_stranger.py.
"""

import base64
import copy
import dataclasses
import importlib.util
import io
import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
import yaml
from hub_server import HubStandIn
from huggingface_hub import HfApi, ModelCard, hf_hub_download
from huggingface_hub.errors import RepositoryNotFoundError
from PIL import Image
from safetensors.torch import save_file
from tiny_models import tiny_model, tiny_processor
from transformers import BertTokenizerFast, pipeline
from video_fixtures import write_video
from videofirst.modeling.processing_videofirst import VideoFirstProcessor

from videofirst.hub.cards import ModelCardOptions, render_model_card
from videofirst.hub.cli import results_from_cli
from videofirst.hub.export import export_checkpoint
from videofirst.hub.files import register_pipelines
from videofirst.hub.push import push_to_hub
from videofirst.hub.results import BenchmarkResult, load_results
from videofirst.train.checkpointing import CheckpointError, TrainerState, write_manifest
from videofirst.train.run_export import export_run

REPO = Path(__file__).resolve().parents[1]
# The Hub's task ids (`PIPELINE_DATA` of huggingface.js packages/tasks/src/pipelines.ts): what a card's
# `pipeline_tag` and `model-index` task types may be.
HUB_TASK_IDS = {
    *("text-classification", "token-classification", "table-question-answering", "question-answering"),
    *("zero-shot-classification", "translation", "summarization", "feature-extraction", "text-generation"),
    *("text2text-generation", "fill-mask", "sentence-similarity", "text-to-speech", "text-to-audio"),
    *("automatic-speech-recognition", "audio-to-audio", "audio-classification", "audio-text-to-text"),
    *("voice-activity-detection", "depth-estimation", "image-classification", "object-detection"),
    *("image-segmentation", "text-to-image", "image-to-text", "image-to-image", "image-to-video"),
    *("unconditional-image-generation", "video-classification", "reinforcement-learning", "robotics"),
    *("tabular-classification", "tabular-regression", "tabular-to-text", "table-to-text", "multiple-choice"),
    *("text-ranking", "text-retrieval", "time-series-forecasting", "text-to-video", "image-text-to-text"),
    *("visual-question-answering", "document-question-answering", "zero-shot-image-classification", "graph-ml"),
    *("mask-generation", "zero-shot-object-detection", "text-to-3d", "image-to-3d", "image-feature-extraction"),
    *("video-text-to-text", "keypoint-detection", "visual-document-retrieval", "any-to-any", "other", "biology"),
}
TOKEN = "hf_test"
LABELS = ["a dog runs", "a cat sings", "a bird"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "cat", "runs", "the", "bird", "sings", "video"]
VOCAB += ["of", "person", "cooking", "cycling", "riding", "bike"]
RESULTS = [
    {
        "dataset": "MSR-VTT",
        "dataset_type": "msrvtt",
        "split": "test-1k",
        "metrics": {"t2v_recall@1": 0.25, "t2v_recall@5": 0.5, "t2v_median_rank": 5.5, "v2t_recall@1": 0.125},
    },
    {"dataset": "Kinetics-400", "split": "validation", "metrics": {"top1_accuracy": 0.375, "top5_accuracy": 0.75}},
    {"dataset": "EgoSchema", "metrics": {"accuracy": 0.4}},
]
CARD = ModelCardOptions(
    model_name="VideoFirst tiny test model",
    description="A tiny model for tests.",
    datasets=["me/howto-summaries"],
    base_model="openai/clip-vit-base-patch16",
    hardware="2 CPU cores",
    stages=["short stage: 16 frames", "long stage: 256 frames, 75% masking, last 4 layers"],
    language=["en"],
)


# ----------------------------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hub")


@pytest.fixture(scope="module")
def processor(work) -> VideoFirstProcessor:
    return tiny_processor(work, VOCAB)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model().eval()


@pytest.fixture(scope="module")
def video_file(work) -> Path:
    return write_video(work / "clip.mp4", 12, fps=4)  # 3 s: 3 frames at 1 fps, padded to 4


@pytest.fixture(scope="module")
def results_file(work) -> Path:
    path = work / "results.json"
    path.write_text(json.dumps(RESULTS))
    return path


@pytest.fixture(scope="module")
def exported(work, model, processor, results_file) -> Path:
    return export_checkpoint(model, processor, work / "export", card=CARD, results=results_file)


@pytest.fixture(scope="module")
def hub():
    # huggingface_hub reads HF_HUB_DISABLE_XET at import time; Xet needs servers the stand-in does not have.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        with HubStandIn(tokens={TOKEN: "tester"}) as server:
            yield server
    assert not server.unhandled, f"the client called routes the stand-in does not implement: {server.unhandled}"


@pytest.fixture(scope="module")
def handler(exported):
    spec = importlib.util.spec_from_file_location("videofirst_endpoint_handler", exported / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(exported))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(frame: np.ndarray, image_format: str = "PNG") -> str:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, format=image_format)
    return b64(buffer.getvalue())


def frames(count: int = 3, height: int = 40, width: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"training_{name}", REPO / "training" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------------------------------------
# Export folder and model card
# ----------------------------------------------------------------------------------------------------------------


def test_export_folder_holds_weights_code_card_pipelines_and_handler(exported):
    for name in (
        "model.safetensors",
        "config.json",
        "processor_config.json",
        "tokenizer.json",
        "configuration_videofirst.py",
        "modeling_videofirst.py",
        "masking_videofirst.py",
        "processing_videofirst.py",
        "video_processing_videofirst.py",
        "pipeline_videofirst.py",
        "handler.py",
        "requirements.txt",
        "README.md",
    ):
        assert (exported / name).is_file(), name
    config = json.loads((exported / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_videofirst.VideoFirstModel"
    assert set(config["custom_pipelines"]) == {
        "zero-shot-video-classification",
        "video-classification",  # the card's pipeline tag
        "text-to-video-retrieval",
    }
    assert all(task["pt"] == ["AutoModel"] for task in config["custom_pipelines"].values())
    requirements = (exported / "requirements.txt").read_text()
    assert "decord" in requirements and "transformers" in requirements
    assert "videofirst\n" not in requirements


def test_card_metadata_parses_and_carries_the_evaluation_results(exported):
    card = ModelCard.load(exported / "README.md")
    data = card.data
    assert data.library_name == "transformers" and data.license == "apache-2.0"
    assert data.pipeline_tag == "video-classification" and data.language == ["en"]
    assert data.datasets == ["me/howto-summaries"] and data.base_model == "openai/clip-vit-base-patch16"
    assert {"videofirst", "custom_code", "arxiv:2312.07395"} <= set(data.tags)
    expected = {(record["dataset"], key): value for record in RESULTS for key, value in record["metrics"].items()}
    found = {(result.dataset_name, result.metric_type): result.metric_value for result in data.eval_results}
    assert found == expected  # fractions, videofirst.evaluation.metrics' names
    by_metric = {result.metric_type: result for result in data.eval_results}
    assert by_metric["t2v_recall@1"].task_type == "text-retrieval"
    assert by_metric["t2v_recall@1"].dataset_type == "msrvtt" and by_metric["t2v_recall@1"].dataset_split == "test-1k"
    assert by_metric["top1_accuracy"].task_type == "video-classification"
    assert by_metric["accuracy"].task_type == "multiple-choice"
    # Only ids of the Hub's task list, each evaluation exactly once.
    assert data.pipeline_tag in HUB_TASK_IDS
    assert {result.task_type for result in data.eval_results} <= HUB_TASK_IDS
    assert len(found) == len(data.eval_results)
    assert by_metric["accuracy"].dataset_type == "egoschema"
    assert data.model_name == "VideoFirst tiny test model"

    body = card.text
    for fact in (
        "2x8x8",
        "`joint`",
        "Token masking",
        "4 frames spread uniformly over the whole video",
        "2 CPU cores",
        "long stage: 256",
    ):
        assert fact in body, fact
    assert "| Text-to-video R@1 | 25.0% |" in body and "| Text-to-video median rank | 5.5 |" in body
    assert "AutoModel.from_pretrained(repo, trust_remote_code=True)" in body
    assert 'pipeline("zero-shot-video-classification", model=repo, trust_remote_code=True)' in body
    assert "EndpointHandler" in body and "Papalampidi, Pinelopi" in body and "## Limitations" in body


def test_card_escapes_user_text(model, processor):
    hostile = 'evil: "x"\n---\nlicense: mit\n{{ 7*7 }} <script>alert(1)</script> | cell ```'
    options = ModelCardOptions(
        model_name=hostile,
        description=hostile,
        hardware=hostile,
        training_data="```python\nimport os\n",
        stages=[hostile],
        limitations=[hostile],
        tags=["ok", hostile],
    )
    results = [BenchmarkResult(dataset=hostile, split=hostile, metrics={"accuracy": 0.5})]
    card = render_model_card(model, processor, options=options, results=results)
    reparsed = ModelCard(str(card))
    assert reparsed.data.license == "apache-2.0"
    assert reparsed.data.model_name == hostile and hostile in reparsed.data.tags
    assert reparsed.data.eval_results[0].dataset_name == hostile
    assert "evil" not in reparsed.data.to_dict()
    body = reparsed.text
    assert "<script>" not in body and "\\<script\\>" in body
    assert "{{ 7\\*7 }}" in body  # the template engine never evaluates user text
    assert body.count("```") % 2 == 0  # user text opens no code block
    assert "\n---\nlicense: mit" not in body

    with pytest.raises(ValueError, match="repo_id"):
        render_model_card(model, processor, options=ModelCardOptions(repo_id='me/x"); import os; ("'))


def test_results_are_read_in_every_documented_form(tmp_path):
    assert [r.task for r in load_results(RESULTS)] == ["retrieval", "classification", "multiple_choice"]
    by_name = load_results({"msrvtt": {"t2v_recall@1": 0.3}, "ego": {"accuracy": 0.5, "step": 3}})
    assert [(r.dataset, r.metrics) for r in by_name] == [("msrvtt", {"t2v_recall@1": 0.3}), ("ego", {"accuracy": 0.5})]
    flat = tmp_path / "kinetics.json"
    flat.write_text(json.dumps({"top1_accuracy": 0.5, "top5_accuracy": 0.9}))
    lines = tmp_path / "more.jsonl"
    lines.write_text("\n".join(json.dumps(record) for record in RESULTS[:2]) + "\n")
    loaded = load_results([flat, lines])
    assert [r.dataset for r in loaded] == ["kinetics", "MSR-VTT", "Kinetics-400"]
    # training/evaluate.py's output: the task is named "mcq", the dataset comes from the manifest.
    evaluate_record = {
        "task": "mcq",
        "checkpoint": "runs/x/export",
        "manifest": "data/egoschema_subset.jsonl",
        "metrics": {"accuracy": 0.6},
        "counts": {"questions": 5},
        "failed_videos": [],
    }
    (tmp_path / "eval_mcq.json").write_text(json.dumps(evaluate_record))
    [ego] = load_results(tmp_path / "eval_mcq.json")
    assert (ego.dataset, ego.task, ego.metrics) == ("egoschema_subset", "multiple_choice", {"accuracy": 0.6})
    [named] = results_from_cli([f"EgoSchema (subset)={tmp_path / 'eval_mcq.json'}"])
    assert (named.dataset, named.dataset_type) == ("EgoSchema (subset)", "egoschema-subset")
    with pytest.raises(ValueError, match="no numeric metrics"):
        load_results({"dataset": "x", "metrics": {"note": "n/a"}})
    with pytest.raises(ValueError, match="cannot tell the task"):
        load_results({"dataset": "x", "metrics": {"bleu": 0.2}})


# ----------------------------------------------------------------------------------------------------------------
# Push to the stand-in Hub
# ----------------------------------------------------------------------------------------------------------------


def test_push_private_repo_then_repush_an_updated_checkpoint(hub, exported, model, processor, tmp_path):
    api = HfApi(endpoint=hub.url, token=TOKEN)
    first = tmp_path / "first"
    export_checkpoint(model, processor, first, card=CARD, results=RESULTS)
    (first / "notes.txt").write_text("scratch file that the next push removes\n")
    (first / "__pycache__").mkdir()
    (first / "__pycache__" / "pipeline_videofirst.cpython-311.pyc").write_bytes(b"bytecode")
    (first / ".DS_Store").write_bytes(b"debris")
    info = push_to_hub(first, "tester/private-model", private=True, endpoint=hub.url, token=TOKEN, commit_message="v1")
    assert api.model_info("tester/private-model").private is True
    pushed = set(api.list_repo_files("tester/private-model"))
    assert "notes.txt" in pushed and not any("__pycache__" in name or "DS_Store" in name for name in pushed)
    assert 'repo = "tester/private-model"' in (first / "README.md").read_text()  # the folder holds what was pushed
    assert hub.repos["tester/private-model"].commits[info.oid].title == "v1"
    card = hub.file("tester/private-model", "README.md").decode()
    assert 'repo = "tester/private-model"' in card and "your-username" not in card
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.url, token=False).model_info("tester/private-model")

    updated = copy.deepcopy(model)
    with torch.no_grad():
        updated.video_projection.weight.add_(0.5)
    second = tmp_path / "second"
    export_checkpoint(updated, processor, second, card=CARD, results=RESULTS)
    uploads_before = sum(method == "PUT" for method, _ in hub.requests)
    commits_before = sum(path.endswith("/commit/main") for _, path in hub.requests)
    info2 = push_to_hub(second, "tester/private-model", endpoint=hub.url, token=TOKEN, commit_message="v2")
    assert info2.oid != info.oid
    assert sum(method == "PUT" for method, _ in hub.requests) == uploads_before + 1  # only the new weights
    assert sum(path.endswith("/commit/main") for _, path in hub.requests) == commits_before + 1
    files = set(api.list_repo_files("tester/private-model"))
    assert "notes.txt" not in files and {"model.safetensors", "handler.py", ".gitattributes"} <= files
    assert hub.file("tester/private-model", "model.safetensors") == (second / "model.safetensors").read_bytes()
    assert hub.file("tester/private-model", "config.json") == (second / "config.json").read_bytes()
    assert hub.repos["tester/private-model"].resolve("main").files["model.safetensors"].lfs

    # A revision is a branch created on demand; the default branch keeps its checkpoint.
    push_to_hub(first, "tester/private-model", revision="experiment", endpoint=hub.url, token=TOKEN)
    branches = {ref.name for ref in api.list_repo_refs("tester/private-model").branches}
    assert branches == {"main", "experiment"}
    assert (
        hub.file("tester/private-model", "model.safetensors", "experiment")
        == (first / "model.safetensors").read_bytes()
    )
    assert hub.file("tester/private-model", "model.safetensors") == (second / "model.safetensors").read_bytes()


# ----------------------------------------------------------------------------------------------------------------
# Pipelines
# ----------------------------------------------------------------------------------------------------------------


def test_pipelines_score_like_the_model(model, processor, video_file, work):
    register_pipelines()
    classifier = pipeline("zero-shot-video-classification", model=model, processor=processor)
    rows = classifier(str(video_file), candidate_labels=LABELS, hypothesis_template="a video of {}.")
    assert sorted(row["label"] for row in rows) == sorted(LABELS)
    assert [row["score"] for row in rows] == sorted((row["score"] for row in rows), reverse=True)
    assert sum(row["score"] for row in rows) == pytest.approx(1.0)
    inputs = processor(videos=[str(video_file)], text=[f"a video of {label}." for label in LABELS], return_tensors="pt")
    with torch.no_grad():
        probabilities = model(**inputs).logits_per_video.softmax(-1)[0]
    assert {row["label"]: row["score"] for row in rows} == pytest.approx(dict(zip(LABELS, probabilities.tolist())))
    # Several videos (as decoded frames too), top_k, labels with braces.
    batch = classifier([str(video_file), frames(4, 32, 32)], candidate_labels=["{x}", "a {} b"], top_k=1)
    assert len(batch) == 2 and all(len(rows) == 1 for rows in batch)
    with pytest.raises(ValueError, match="hypothesis_template"):
        classifier(str(video_file), candidate_labels=LABELS, hypothesis_template="no placeholder")
    with pytest.raises(ValueError, match="candidate_labels"):
        classifier(str(video_file), candidate_labels=[])

    other = write_video(work / "ranked.mp4", 8, fps=4, height=48, width=96)
    ranker = pipeline("text-to-video-retrieval", model=model, processor=processor)
    ranking = ranker(LABELS[:2], videos=[str(video_file), str(other), frames(4, 32, 32)], top_k=3)
    videos = processor.video_processor([str(video_file), str(other), frames(4, 32, 32)], return_tensors="pt")
    texts = processor.tokenizer(LABELS[:2], padding=True, return_tensors="pt")
    with torch.no_grad():
        video_embeds = model.get_video_features(**videos).pooler_output
        text_embeds = model.get_text_features(texts["input_ids"], texts["attention_mask"]).pooler_output
    similarity = text_embeds @ video_embeds.t()
    for query, rows in enumerate(ranking):
        assert [row["video_index"] for row in rows] == similarity[query].argsort(descending=True).tolist()
        assert [row["similarity"] for row in rows] == pytest.approx(
            similarity[query].sort(descending=True).values.tolist(), abs=1e-5
        )


def test_pipelines_batch_lists_of_videos_and_queries(model, processor, video_file):
    register_pipelines()
    classifier = pipeline("zero-shot-video-classification", model=model, processor=processor)
    # Decoded clips of 2, 6 and 4 frames: a batch pads them to one length, the frame mask hides the padding.
    videos = [frames(2, 32, 32, seed=1), frames(6, 32, 32, seed=2), str(video_file)]
    alone = [classifier(video, candidate_labels=LABELS) for video in videos]
    for batch_size in (2, 3):
        batched = classifier(videos, candidate_labels=LABELS, batch_size=batch_size)
        assert len(batched) == len(videos)
        for rows, expected in zip(batched, alone):
            assert [row["label"] for row in rows] == [row["label"] for row in expected]
            assert [row["score"] for row in rows] == pytest.approx([row["score"] for row in expected], abs=1e-6)
    assert all(list(row)[:2] == ["score", "label"] for rows in alone for row in rows)  # the built-in order

    ranker = pipeline("text-to-video-retrieval", model=model, processor=processor)
    queries = ["a dog", "a cat sings", "the bird runs"]  # different lengths: padded in a batch
    alone = [ranker(query, videos=videos) for query in queries]
    batched = ranker(queries, videos=videos, batch_size=2)
    for rows, expected in zip(batched, alone):
        assert [row["video_index"] for row in rows] == [row["video_index"] for row in expected]
        assert [row["score"] for row in rows] == pytest.approx([row["score"] for row in expected], abs=1e-6)
    assert all(list(row)[:2] == ["score", "video_index"] for rows in alone for row in rows)


def test_model_pipelines_and_handler_share_one_scoring_rule(model, processor, handler, video_file):
    inputs = processor(videos=[str(video_file)], text=LABELS, return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
        similarity, logits, probabilities = model.score_candidates(outputs.video_embeds, outputs.text_embeds)
    torch.testing.assert_close(logits, outputs.logits_per_video, rtol=0, atol=1e-5)
    torch.testing.assert_close(similarity, outputs.video_embeds @ outputs.text_embeds.t(), rtol=0, atol=1e-6)
    torch.testing.assert_close(probabilities, outputs.logits_per_video.softmax(-1), rtol=0, atol=1e-6)
    response = handler({"inputs": b64(video_file.read_bytes()), "parameters": {"candidate_labels": LABELS}})
    scores = {row["label"]: row["score"] for row in response["results"][0]["scores"]}
    assert scores == pytest.approx(dict(zip(LABELS, probabilities[0].tolist())), abs=1e-6)

    # A sigmoid-loss model scores each pair on its own: the pipeline follows, without code of its own.
    sigmoid = tiny_model()
    sigmoid.config.loss_type = "sigmoid"
    sigmoid.logit_bias = torch.nn.Parameter(torch.tensor(-1.0))
    sigmoid.eval()
    with torch.no_grad():
        outputs = sigmoid(**inputs)
        _, logits, probabilities = sigmoid.score_candidates(outputs.video_embeds, outputs.text_embeds)
    torch.testing.assert_close(probabilities, outputs.logits_per_video.sigmoid(), rtol=0, atol=1e-6)
    register_pipelines()
    classifier = pipeline("zero-shot-video-classification", model=sigmoid, processor=processor)
    rows = classifier(str(video_file), candidate_labels=LABELS, hypothesis_template="{}")
    assert {row["label"]: row["score"] for row in rows} == pytest.approx(dict(zip(LABELS, probabilities[0].tolist())))


def test_card_pipeline_tag_builds_the_shipped_classifier(exported, video_file):
    tag = ModelCard.load(exported / "README.md").data.pipeline_tag
    classifier = pipeline(tag, model=str(exported), trust_remote_code=True)
    assert type(classifier).__name__ == "VideoFirstZeroShotVideoClassificationPipeline"
    assert type(classifier).__module__.startswith("transformers_modules")
    rows = classifier(str(video_file), candidate_labels=LABELS)
    assert sorted(row["label"] for row in rows) == sorted(LABELS)


def test_plain_save_pretrained_ships_the_code(model, processor, tmp_path):
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_videofirst.VideoFirstConfig",
        "AutoModel": "modeling_videofirst.VideoFirstModel",
    }
    processor_config = json.loads((tmp_path / "model" / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_videofirst.VideoFirstProcessor"
    for name in ("modeling_videofirst.py", "configuration_videofirst.py", "masking_videofirst.py"):
        assert (tmp_path / "model" / name).is_file(), name
    for name in ("processing_videofirst.py", "video_processing_videofirst.py"):
        assert (tmp_path / "model" / name).is_file(), name
    model.vision_model.save_pretrained(tmp_path / "vision")
    vision_config = json.loads((tmp_path / "vision" / "config.json").read_text())
    assert vision_config["auto_map"]["AutoModel"] == "modeling_videofirst.VideoFirstVisionModel"
    # With `videofirst` installed the folder still loads without remote code (the registered classes).
    from transformers import AutoModel

    from videofirst import VideoFirstModel

    assert type(AutoModel.from_pretrained(tmp_path / "model")) is VideoFirstModel


# ----------------------------------------------------------------------------------------------------------------
# Inference Endpoints handler
# ----------------------------------------------------------------------------------------------------------------


def test_handler_scores_and_embeds_a_batch(handler, model, processor, video_file):
    video = b64(video_file.read_bytes())
    request = {
        "inputs": [video, {"frames": [png(frame) for frame in frames(4, 32, 32)]}, f"data:video/mp4;base64,{video}"],
        "parameters": {"candidate_labels": LABELS, "hypothesis_template": "a video of {}.", "return_embeddings": True},
    }
    response = handler(request)
    assert "error" not in response, response
    assert json.loads(json.dumps(response)) == response  # plain JSON
    first, from_frames, third = response["results"]
    assert first["num_frames"] == 4 and from_frames["num_frames"] == 4
    assert [row["label"] for row in first["scores"]] == [row["label"] for row in third["scores"]]
    assert sum(row["score"] for row in first["scores"]) == pytest.approx(1.0)
    assert len(response["text_embeddings"]) == len(LABELS) and len(first["embedding"]) == 16
    # Same embedding as the model on the same processed input, batched or alone.
    pixels = processor.video_processor([str(video_file)], return_tensors="pt")
    with torch.no_grad():
        expected = model.get_video_features(**pixels).pooler_output[0]
    assert torch.allclose(torch.tensor(first["embedding"]), expected, atol=1e-5)
    alone = handler({"inputs": video, "parameters": {"return_embeddings": True}})
    assert torch.allclose(torch.tensor(alone["results"][0]["embedding"]), expected, atol=1e-5)
    assert "scores" not in alone["results"][0]
    only_texts = handler({"parameters": {"texts": LABELS}})
    assert set(only_texts) == {"text_embeddings"} and len(only_texts["text_embeddings"]) == 3
    assert handler({"inputs": video_file.read_bytes()})["results"][0]["num_frames"] == 4  # binary request body


def _bad_requests(video: str, image: str) -> list[tuple[object, str]]:
    gif = io.BytesIO()
    Image.fromarray(frames(1, 8, 8)[0]).save(gif, format="GIF")
    return [
        (None, "must be a JSON object"),
        ([video], "must be a JSON object"),
        ("text", "must be a JSON object"),
        ({"inputs": video, "extra": 1}, "unknown request fields"),
        ({"inputs": video, "parameters": [1]}, "'parameters' must be an object"),
        ({"inputs": video, "parameters": {"model_path": "/etc"}}, "unknown parameters"),
        ({}, "nothing to do"),
        ({"inputs": []}, "nothing to do"),
        ({"inputs": "/etc/passwd"}, "not valid base64"),
        ({"inputs": str(REPO / "tests" / "data" / "cockatoo.mp4")}, "not valid base64"),
        ({"inputs": "https://example.com/video.mp4"}, "URLs are never fetched"),
        ({"inputs": "file:///etc/passwd"}, "URLs are never fetched"),
        ({"inputs": "@@@@"}, "not valid base64"),
        ({"inputs": ""}, "is empty"),
        ({"inputs": 42}, "must be a base64-encoded video"),
        ({"inputs": {"path": "/etc/passwd"}}, "got fields ['path']"),
        ({"inputs": b64(b"not a video at all " * 10)}, "inputs[0]: cannot decode video"),
        ({"inputs": b64(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)}, "inputs[0]: cannot decode video"),
        ({"inputs": [video, b64(b"garbage" * 20)]}, "inputs[1]: cannot decode video"),
        ({"inputs": [video] * 9}, "too many videos"),
        ({"inputs": {"frames": []}}, "non-empty list"),
        ({"inputs": {"frames": "abc"}}, "non-empty list"),
        ({"inputs": {"frames": [image] * 257}}, "257 frames"),
        ({"inputs": {"frames": [1, 2]}}, "must be a base64-encoded PNG or JPEG"),
        ({"inputs": {"frames": [b64(b"not an image")]}}, "not a readable PNG or JPEG"),
        ({"inputs": {"frames": [b64(gif.getvalue())]}}, "unsupported image format GIF"),
        ({"inputs": {"frames": [image, png(frames(1, 16, 16)[0])]}}, "same size"),
        ({"inputs": video, "parameters": {"candidate_labels": []}}, "non-empty list of strings"),
        ({"inputs": video, "parameters": {"candidate_labels": ["ok", ""]}}, "candidate_labels[1]"),
        ({"inputs": video, "parameters": {"candidate_labels": ["ok", 3]}}, "candidate_labels[1]"),
        ({"inputs": video, "parameters": {"candidate_labels": ["x"] * 65}}, "too many texts"),
        ({"inputs": video, "parameters": {"candidate_labels": ["x" * 1001]}}, "1001 characters"),
        ({"inputs": video, "parameters": {"candidate_labels": ["a"], "texts": ["b"]}}, "not both"),
        ({"inputs": video, "parameters": {"texts": ["a"], "hypothesis_template": "no slot"}}, "hypothesis_template"),
        ({"inputs": video, "parameters": {"texts": ["a"], "hypothesis_template": "{}" * 101}}, "hypothesis_template"),
        ({"inputs": video, "parameters": {"texts": ["a"], "hypothesis_template": 3}}, "hypothesis_template"),
        ({"inputs": video, "parameters": {"fps": 0}}, "'fps'"),
        ({"inputs": video, "parameters": {"fps": "fast"}}, "'fps'"),
        ({"inputs": video, "parameters": {"fps": True}}, "'fps'"),
        ({"inputs": video, "parameters": {"fps": 1000}}, "'fps'"),
        ({"inputs": video, "parameters": {"num_frames": 0}}, "'num_frames'"),
        ({"inputs": video, "parameters": {"num_frames": 10**6}}, "'num_frames'"),
        ({"inputs": video, "parameters": {"num_frames": 2.5}}, "'num_frames'"),
        ({"inputs": video, "parameters": {"return_embeddings": "yes"}}, "'return_embeddings'"),
    ]


def test_handler_refuses_every_bad_request_with_an_error_object(handler, video_file):
    video = b64(video_file.read_bytes())
    image = png(frames(1, 32, 32)[0])
    for request, message in _bad_requests(video, image):
        response = handler(request)
        assert set(response) == {"error"}, (request if not isinstance(request, dict) else list(request), response)
        assert isinstance(response["error"], str) and message in response["error"], (message, response)
        assert "Traceback" not in response["error"]


def test_handler_bounds_payload_sizes_and_never_reads_paths(handler, video_file, tmp_path, monkeypatch):
    video_bytes = video_file.read_bytes()
    video = b64(video_bytes)
    limits = handler.limits
    monkeypatch.setattr(handler, "limits", dataclasses.replace(limits, max_video_bytes=len(video_bytes) - 1))
    assert "larger than" in handler({"inputs": video})["error"]
    assert "bytes (at most" in handler({"inputs": video_bytes})["error"]
    monkeypatch.setattr(handler, "limits", dataclasses.replace(limits, max_request_bytes=len(video_bytes) * 2))
    assert "too large" in handler({"inputs": [video] * 3})["error"]
    monkeypatch.setattr(handler, "limits", dataclasses.replace(limits, max_frame_pixels=100))
    assert "more than 100 pixels" in handler({"inputs": {"frames": [png(frames(1, 11, 11)[0])]}})["error"]
    monkeypatch.setattr(handler, "limits", limits)
    # "abcd" is valid base64 and the name of a real video file in the working directory: it is decoded, not opened.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "abcd").write_bytes(video_bytes)
    assert "cannot decode video '<3 bytes>'" in handler({"inputs": "abcd"})["error"]


def test_handler_refuses_labels_that_are_not_unicode(handler, video_file):
    video = b64(video_file.read_bytes())
    # "\ud800" is valid JSON; json.loads gives a str with a lone surrogate that no tokenizer can encode.
    for parameters, message in (
        ({"candidate_labels": json.loads('["ok", "bad \\ud800"]')}, "candidate_labels[1] contains an unpaired"),
        ({"texts": json.loads('["\\udfff"]')}, "candidate_labels[0] contains an unpaired"),
        ({"texts": ["a"], "hypothesis_template": json.loads('"{} \\ud83d"')}, "'hypothesis_template' contains"),
    ):
        response = handler({"inputs": video, "parameters": parameters})
        assert set(response) == {"error"} and message in response["error"], response


def test_handler_refuses_oversize_base64_before_reading_it(handler, monkeypatch):
    module_globals = type(handler).__call__.__globals__  # handler.py is loaded from the export, not imported
    calls = []

    class Watched:
        """Stands in for the handler's regular expressions and records each use."""

        def __init__(self, pattern):
            self.pattern = pattern

        def __getattr__(self, name):
            calls.append((self.pattern.pattern, name))
            return getattr(self.pattern, name)

    for name in ("_WHITESPACE", "_DATA_URL", "_URL"):
        monkeypatch.setitem(module_globals, name, Watched(module_globals[name]))
    limit = handler.limits.max_video_bytes
    oversize = "A" * (2 * limit)  # valid base64 characters, twice the limit once decoded
    assert "larger than" in handler({"inputs": oversize})["error"]
    assert "larger than" in handler({"inputs": [" \n" * limit + "A" * limit]})["error"]
    assert calls == []


def test_handler_hides_internal_failures(handler, video_file, monkeypatch):
    def broken(**kwargs):
        raise RuntimeError("secret detail /srv/weights")

    monkeypatch.setattr(handler.model, "get_video_features", broken)
    response = handler({"inputs": b64(video_file.read_bytes())})
    assert response == {"error": "internal error while processing the request (RuntimeError)"}


# ----------------------------------------------------------------------------------------------------------------
# From a training run or checkpoint, with the scripts
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(work):
    """A run folder as `training/pretrain.py` leaves it: recipe.yaml, metrics.jsonl, export/, checkpoints/."""
    from videofirst.adaptation import apply_adaptation
    from videofirst.recipe import load_recipe
    from videofirst.train.setup import build_model, build_processor

    run = work / "run"
    tokenizer_dir = work / "tokenizer"
    BertTokenizerFast(vocab=str(work / "vocab.txt")).save_pretrained(tokenizer_dir)
    overrides = {
        "run.output_dir": run,
        "data.tokenizer": tokenizer_dir,
        "data.num_frames": 4,
        "data.image_size": 32,
        "model.vision.num_hidden_layers": 2,
        "model.vision.hidden_size": 32,
        "model.vision.intermediate_size": 64,
        "model.text.num_hidden_layers": 1,
        "model.text.hidden_size": 32,
        "model.text.intermediate_size": 64,
        "model.projection_dim": 16,
        "adaptation.method": "last_layers",
        "adaptation.trainable_last_layers": 1,
        "optim.max_steps": 2,
    }
    recipe = load_recipe(REPO / "training" / "configs" / "demo.yaml", [f"{k}={v}" for k, v in overrides.items()])
    run.mkdir()
    (run / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    records = [
        {"step": 1, "loss": 2.0, "videos_per_second": 10.0, "peak_memory_gb": 0.25},
        {"step": 2, "eval/t2v_recall@1": 0.5, "eval/v2t_recall@1": 0.25, "eval/chance_recall@1": 0.125},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    torch.manual_seed(1)
    processor = build_processor(recipe, tokenizer_dir)
    trained = build_model(recipe, processor)
    apply_adaptation(trained, recipe.adaptation, train_images=False)
    checkpoint = run / "checkpoints" / "step_00000002"
    checkpoint.mkdir(parents=True)
    save_file(trained.state_dict(), str(checkpoint / "model.safetensors"))
    (checkpoint / "trainer_state.json").write_text(json.dumps(dataclasses.asdict(TrainerState(step=2))))
    write_manifest(checkpoint)
    export_checkpoint(trained, processor, run / "export", card=False)
    return run, trained


def test_export_from_a_training_checkpoint_rebuilds_the_model(run_dir, work, video_file):
    run, trained = run_dir
    folder = export_run(run / "checkpoints" / "step_00000002", work / "from_checkpoint")
    exported = json.loads((folder / "config.json").read_text())
    assert exported["vision_config"]["num_hidden_layers"] == 2 and "custom_pipelines" in exported
    from videofirst import VideoFirstModel

    loaded = VideoFirstModel.from_pretrained(folder).eval()
    pixels = torch.randn(1, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.get_video_features(pixel_values_videos=pixels).pooler_output,
            trained.eval().get_video_features(pixel_values_videos=pixels).pooler_output,
            rtol=0,
            atol=1e-6,
        )
    card = ModelCard.load(folder / "README.md")
    assert "last 1 video encoder layer (`last_layers`)" in card.text and "| Optimizer steps | 2 |" in card.text
    assert card.data.eval_results is None  # a mid-run checkpoint is not credited with the run's final evaluation


def test_export_refuses_a_damaged_training_checkpoint(run_dir, work):
    run, _ = run_dir
    damaged = work / "damaged_run"
    shutil.copytree(run, damaged)
    weights = damaged / "checkpoints" / "step_00000002" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit pattern in the last tensor's bytes: loads fine, wrong weights
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the checksum"):
        export_run(damaged / "checkpoints" / "step_00000002", work / "from_damaged")
    shutil.rmtree(damaged / "export")
    with pytest.raises(FileNotFoundError, match="nor a valid checkpoint .damaged:"):
        export_run(damaged, work / "from_damaged_run")


def test_export_and_push_scripts(run_dir, hub, results_file, work, capsys):
    run, _ = run_dir
    export_script, push_script = load_script("export"), load_script("push")
    out = work / "script_export"
    argv = [str(run), str(out), "--results", str(results_file), "--hardware", "a laptop", "--repo-id", "tester/run"]
    assert export_script.main(argv) == 0
    card = ModelCard.load(out / "README.md")
    datasets = {result.dataset_name for result in card.data.eval_results}
    assert datasets == {"MSR-VTT", "Kinetics-400", "EgoSchema", "Held-out set of the training run (test.jsonl)"}
    assert "chance_recall@1" not in {result.metric_type for result in card.data.eval_results}
    assert "| Hardware | a laptop |" in card.text and "| Peak memory per process | 0.25 GiB |" in card.text
    assert export_script.main(argv) == 2 and "not empty" in capsys.readouterr().err
    assert export_script.main([*argv, "--overwrite"]) == 0

    # push.py exports a run folder on the way, then pushes it.
    args = ["--repo-id", "tester/from-run", "--endpoint", hub.url, "--token", TOKEN, "--commit-message", "run"]
    assert push_script.main([str(run), *args, "--private"]) == 0
    assert "Pushed" in capsys.readouterr().out
    api = HfApi(endpoint=hub.url, token=TOKEN)
    assert api.model_info("tester/from-run").private is True
    readme = hf_hub_download("tester/from-run", "README.md", endpoint=hub.url, token=TOKEN, cache_dir=work / "cache")
    assert 'repo = "tester/from-run"' in Path(readme).read_text()
    assert push_script.main([str(out), *args]) == 0  # an exported folder is pushed as it is
    assert push_script.main([str(work / "missing"), *args]) == 2
