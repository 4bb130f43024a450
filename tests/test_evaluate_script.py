"""training/evaluate.py end to end on a tiny exported checkpoint: the three tasks, the segment baseline, the
embedding cache, videos that fail to decode, and bad input."""

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import tiny_model
from transformers import AutoModel, AutoProcessor
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import VideoFirstVideoProcessor

from videofirst import export_checkpoint
from videofirst.data.synthetic import write_synthetic_dataset
from videofirst.data.tokenization import train_sentencepiece_tokenizer
from videofirst.evaluation import sets
from videofirst.evaluation.embedding import evaluate_classification, evaluate_multiple_choice, evaluate_retrieval

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "training" / "evaluate.py"

# Named apart from the `evaluate` library, which the file's own name would shadow.
_spec = importlib.util.spec_from_file_location("videofirst_evaluate_script", SCRIPT)
evaluate_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_script)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dataset(root, num_videos=6, num_events=2, duration=4.0, fps=1.0, size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def rows(data) -> list[dict]:
    return [json.loads(line) for line in (data / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, rows) -> Path:
    root = tmp_path_factory.mktemp("checkpoint")
    words = "a video of the person what happened first then red blue green square circle cutting running"
    tokenizer = train_sentencepiece_tokenizer([row["caption"] for row in rows] + [words], root / "tokenizer", 64)
    video_processor = VideoFirstVideoProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        fps=1.0,
        num_frames=4,
        sampling="window",
        tubelet_frames=2,
    )
    torch.manual_seed(0)
    return export_checkpoint(tiny_model(), VideoFirstProcessor(video_processor, tokenizer), root / "export")


@pytest.fixture(scope="module")
def loaded(checkpoint):
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    return model, AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def run(checkpoint: Path, tmp_path: Path, *args: str) -> tuple[int, dict | None]:
    output = tmp_path / "results.json"
    output.unlink(missing_ok=True)
    code = evaluate_script.main(
        [str(checkpoint), "--output", str(output), "--num-workers", "0", "--no-progress", *args]
    )
    return code, (json.loads(output.read_text()) if output.exists() else None)


def videos_of(processor, paths: list[str]) -> list[dict]:
    return [processor.video_processor(videos=paths, return_tensors="pt")]


def assert_metrics_close(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], abs=1e-6), key


# Tasks --------------------------------------------------------------------------------------------------------


def test_retrieval_groups_captions_by_video(checkpoint, loaded, data, rows, tmp_path):
    model, processor = loaded
    # Every video twice (one row with a list of two captions, one with a third caption), paths relative.
    manifest = [{"video": row["video"], "caption": [row["caption"], f"then {row['caption']}"]} for row in rows]
    manifest += [{"video": row["video"], "text": f"a video of {row['caption']}"} for row in rows]
    code, results = run(
        checkpoint, tmp_path, "--task", "retrieval", "--manifest", str(write_jsonl(data / "multi.jsonl", manifest))
    )
    assert code == 0
    assert results["counts"] == {"videos": 6, "videos_evaluated": 6, "texts": 18, "texts_evaluated": 18}
    assert results["failed_videos"] == [] and results["embeddings_cache"] is None
    assert results["sampling"] == {"fps": 1.0, "num_frames": 4, "sampling": "window", "segment_frames": None}
    assert results["arguments"]["task"] == "retrieval" and results["arguments"]["manifest"].endswith("multi.jsonl")

    texts = [caption for row in manifest[:6] for caption in row["caption"]] + [row["text"] for row in manifest[6:]]
    ids = [index for index in range(6) for _ in range(2)] + list(range(6))
    paths = [str(data / row["video"]) for row in rows]
    expected = evaluate_retrieval(model, processor.tokenizer, videos_of(processor, paths), texts, ids)
    assert_metrics_close(results["metrics"], expected)


def test_segment_baseline_matches_the_library(checkpoint, loaded, data, rows, tmp_path):
    model, processor = loaded
    code, results = run(
        checkpoint, tmp_path, "--task", "retrieval", "--manifest", str(data / "manifest.jsonl"),
        "--segment-frames", "2", "--recall-at", "1", "2",
    )  # fmt: skip
    assert code == 0 and results["sampling"]["segment_frames"] == 2
    paths = [str(data / row["video"]) for row in rows]
    expected = evaluate_retrieval(
        model, processor.tokenizer, videos_of(processor, paths), [row["caption"] for row in rows], list(range(6)),
        recall_at=(1, 2), segment_frames=2,
    )  # fmt: skip
    assert_metrics_close(results["metrics"], expected)


def test_multiple_choice_from_egoschema_style_csv(checkpoint, loaded, data, rows, tmp_path):
    model, processor = loaded
    manifest = data / "egoschema.csv"
    questions = []
    for index, row in enumerate(rows):
        for question in ("what happened first", "what happened then"):  # two questions share each video
            options = [other["caption"] for other in rows[:5]]
            questions.append({"video": row["video"], "question": question, "answer": index % 5, "options": options})
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["video", "question", "answer", *[f"option {k}" for k in range(5)]])
        writer.writerows([q["video"], q["question"], q["answer"], *q["options"]] for q in questions)
    code, results = run(checkpoint, tmp_path, "--task", "mcq", "--manifest", str(manifest))
    assert code == 0
    assert results["counts"] == {"videos": 6, "videos_evaluated": 6, "questions": 12, "questions_evaluated": 12}
    paths = [str(data / row["video"]) for row in rows]
    expected = evaluate_multiple_choice(
        model, processor.tokenizer, videos_of(processor, paths), [q["question"] for q in questions],
        [q["options"] for q in questions], [q["answer"] for q in questions],
        video_ids_of_questions=[index // 2 for index in range(12)],
    )  # fmt: skip
    assert_metrics_close(results["metrics"], expected)


def test_classification_with_class_file_and_templates(checkpoint, loaded, data, rows, tmp_path):
    model, processor = loaded
    names = ["red", "blue", "green"]
    labelled = [{"video": row["video"], "label": index % 3} for index, row in enumerate(rows)]
    manifest = write_jsonl(data / "classes.jsonl", labelled)
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    args = ["--task", "classification", "--manifest", str(manifest), "--class-names", str(tmp_path / "classes.txt")]
    code, results = run(
        checkpoint, tmp_path, *args, "--template", "a video of {}.", "--template", "{}", "--top-k", "1", "2"
    )
    assert code == 0 and results["counts"]["classes"] == 3 and results["counts"]["samples_evaluated"] == 6
    paths = [str(data / row["video"]) for row in rows]
    expected = evaluate_classification(
        model, processor.tokenizer, videos_of(processor, paths), [index % 3 for index in range(6)], names,
        templates=("a video of {}.", "{}"), top_k=(1, 2),
    )  # fmt: skip
    assert_metrics_close(results["metrics"], expected)

    # Class names straight from the manifest's label strings (sorted) give the same scores.
    by_name = write_jsonl(data / "named.jsonl", [{"video": r["video"], "label": names[r["label"]]} for r in labelled])
    code, named = run(
        checkpoint,
        tmp_path,
        "--task",
        "classification",
        "--manifest",
        str(by_name),
        "--template",
        "a video of {}.",
        "--template",
        "{}",
        "--top-k",
        "1",
        "2",
    )
    assert code == 0 and named["counts"]["classes"] == 3
    assert_metrics_close(named["metrics"], expected)


# The embedding cache ------------------------------------------------------------------------------------------


def test_embedding_cache_is_reused_and_keyed(checkpoint, data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    args = ["--task", "retrieval", "--manifest", str(data / "manifest.jsonl"), "--embeddings-cache", str(cache)]
    code, first = run(checkpoint, tmp_path, *args)
    assert code == 0 and first["embeddings_cache"]["hits"] == 0 and first["embeddings_cache"]["embedded"] == 6

    def no_decoding(self, item):
        raise AssertionError("a cached video was decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(sets.ClipDataset, "__getitem__", no_decoding)
        code, second = run(checkpoint, tmp_path, *args)
    assert code == 0 and second["embeddings_cache"] == {**first["embeddings_cache"], "hits": 6, "embedded": 0}
    assert second["metrics"] == first["metrics"]

    # Other sampling settings are another cache file; a re-encoded video file misses on its own.
    code, other = run(checkpoint, tmp_path, *args, "--num-frames", "2")
    assert code == 0 and other["embeddings_cache"]["hits"] == 0
    assert other["embeddings_cache"]["file"] != first["embeddings_cache"]["file"]
    video = data / "videos" / "00003.mp4"
    video.write_bytes(video.read_bytes())  # same content, new modification time
    code, touched = run(checkpoint, tmp_path, *args)
    assert code == 0 and touched["embeddings_cache"]["hits"] == 5 and touched["embeddings_cache"]["embedded"] == 1
    assert touched["metrics"] == pytest.approx(first["metrics"])


# Videos that fail to decode -------------------------------------------------------------------------------------


def test_undecodable_videos_are_reported_and_excluded(checkpoint, data, rows, tmp_path, capsys):
    (tmp_path / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    manifest = [{"video": str(data / row["video"]), "caption": row["caption"]} for row in rows]
    good = write_jsonl(tmp_path / "good.jsonl", manifest)
    manifest.insert(2, {"video": str(tmp_path / "broken.mp4"), "caption": "a broken video"})
    manifest.insert(4, {"video": str(tmp_path / "missing.mp4"), "caption": "a missing video"})
    mixed = write_jsonl(tmp_path / "mixed.jsonl", manifest)

    code, results = run(checkpoint, tmp_path, "--task", "retrieval", "--manifest", str(mixed))
    assert code == 0
    assert [failure["video"] for failure in results["failed_videos"]] == [
        str(tmp_path / "broken.mp4"),
        str(tmp_path / "missing.mp4"),
    ]
    assert "not found" in results["failed_videos"][1]["error"]
    assert results["counts"] == {"videos": 8, "videos_evaluated": 6, "texts": 8, "texts_evaluated": 6}
    assert "excluded" in capsys.readouterr().err
    # Exactly the evaluation of the good videos: no caption was paired with a neighbouring video.
    code, clean = run(checkpoint, tmp_path, "--task", "retrieval", "--manifest", str(good))
    assert results["metrics"] == pytest.approx(clean["metrics"])

    code, strict = run(checkpoint, tmp_path, "--task", "retrieval", "--manifest", str(mixed), "--strict")
    assert code == 1 and strict is None and "--strict" in capsys.readouterr().err


# Bad input ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "rows_of", "extra", "message"),
    [
        ("retrieval", lambda v: [{"video": v}], [], "caption"),
        ("retrieval", lambda v: [{"caption": "a red square"}], [], "video"),
        ("mcq", lambda v: [{"video": v, "question": "q", "options": ["a", "b"], "answer": 2}], [], "answer"),
        ("mcq", lambda v: [{"video": v, "question": "q", "options": ["a", "b"], "answer": 0},
                           {"video": v, "question": "q", "options": ["a", "b", "c"], "answer": 0}], [], "same number"),
        ("classification", lambda v: [{"video": v, "label": 1}], [], "class names"),
        ("classification", lambda v: [{"video": v, "label": "red"}], ["--segment-frames", "3"], "multiple"),
        ("retrieval", lambda v: [{"video": "missing.mp4", "caption": "a red square"}], [], "could be decoded"),
    ],
)  # fmt: skip
def test_bad_input_fails_with_a_message(checkpoint, data, rows, tmp_path, capsys, task, rows_of, extra, message):
    manifest = write_jsonl(tmp_path / "bad.jsonl", rows_of(str(data / rows[0]["video"])))
    code, results = run(checkpoint, tmp_path, "--task", task, "--manifest", str(manifest), *extra)
    assert code == 1 and results is None
    assert message in capsys.readouterr().err


def test_bad_arguments_and_missing_files(checkpoint, data, tmp_path, capsys):
    code, _ = run(checkpoint, tmp_path, "--task", "retrieval", "--manifest", str(tmp_path / "nope.jsonl"))
    assert code == 1 and "Manifest not found" in capsys.readouterr().err
    code, _ = run(
        tmp_path / "no-checkpoint", tmp_path, "--task", "retrieval", "--manifest", str(data / "manifest.jsonl")
    )
    assert code == 1
    for args in (["--task", "captioning"], ["--task", "classification", "--template", "no slot"]):
        with pytest.raises(SystemExit) as exit_info:
            run(checkpoint, tmp_path, *args, "--manifest", str(data / "manifest.jsonl"))
        assert exit_info.value.code == 2


def test_runs_as_a_script(checkpoint, data, tmp_path):
    output = tmp_path / "script.json"
    command = [sys.executable, str(SCRIPT), str(checkpoint), "--task", "retrieval", "--manifest",
               str(data / "manifest.jsonl"), "--output", str(output), "--num-workers", "1"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "t2v_recall@1" in result.stdout and json.loads(output.read_text())["counts"]["videos_evaluated"] == 6
