"""The paper's benchmarks from their official annotation formats, end to end through training/evaluate.py.

Each benchmark gets a fixture annotation file written with the field names and nesting of the published file, and
real clips (PyAV, 32x32) named the way its distributors name them, in one folder per benchmark. Frame times are
checked against PyAV's own timestamps.
"""

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest
import torch
from tiny_models import tiny_model, tiny_vision_config
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
from video_fixtures import write_video
from videofirst.modeling.configuration_videofirst_video_to_text import VideoFirstVideoToTextConfig
from videofirst.modeling.modeling_videofirst_video_to_text import VideoFirstForConditionalGeneration
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import VideoFirstVideoProcessor

from videofirst import export_checkpoint
from videofirst.data.captions import prepare_causal_tokenizer, train_caption_tokenizer
from videofirst.data.tokenization import train_sentencepiece_tokenizer
from videofirst.evaluation.benchmarks import BENCHMARKS, AnnotationError, load_benchmark, resolve_annotations
from videofirst.evaluation.captioning import caption_metrics, evaluate_video_question_answering, generate_captions
from videofirst.evaluation.embedding import evaluate_retrieval
from videofirst.evaluation.sets import VideoClip
from videofirst.hub.cards import render_model_card
from videofirst.hub.export import export_video_to_text
from videofirst.hub.results import eval_results, load_results

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "training" / "evaluate.py"
_spec = importlib.util.spec_from_file_location("videofirst_evaluate_script_benchmarks", SCRIPT)
evaluate_script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(evaluate_script)

WORDS = "a man woman dog cooks cuts onion the pan then runs plays guitar what did person do first red blue"


def clip(path: Path, seconds: float, fps: int = 2) -> Path:
    """A real 32x32 H.264 clip of `seconds` at `fps` (the container follows the file extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, int(seconds * fps), fps=fps, height=32, width=32)


def write_json(path: Path, data) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """`<root>/<benchmark>/` for every benchmark, laid out as its distributors ship it."""
    root = tmp_path_factory.mktemp("benchmarks")
    # MSR-VTT: MSRVTT/videos/all/videoN.mp4 beside the JSFusion CSV (video7013 was never downloaded).
    msrvtt = root / "msrvtt"
    for number in (7010, 7011, 7012):
        clip(msrvtt / f"video{number}.mp4", 3)
    write_lines(
        msrvtt / "MSRVTT_JSFUSION_test.csv",
        ["key,vid_key,video_id,sentence"]
        + [f"ret{k},msr{n},video{n},a man plays guitar {k}" for k, n in enumerate((7010, 7011, 7012, 7013))],
    )
    videos = [{"category": 1, "url": "u", "video_id": f"video{n}", "start time": 1.0, "end time": 4.0, "split": s,
               "id": n} for n, s in ((7010, "test"), (7011, "test"), (7012, "train"))]  # fmt: skip
    sentences = [{"caption": f"a dog runs {k}", "video_id": f"video{n}", "sen_id": k}
                 for k, n in enumerate((7010, 7010, 7011, 7012, 7011, 7010))]  # fmt: skip
    write_json(msrvtt / "MSRVTT_data.json", {"info": {}, "videos": videos, "sentences": sentences})

    # VATEX: trimmed clips named by videoID; the second only as its full YouTube video.
    vatex = root / "vatex"
    clip(vatex / "val" / "aaaaaaaaaaa_000000_000003.mp4", 3)
    clip(vatex / "val" / "bbbbbbbbbbb.mkv", 5)
    write_json(
        vatex / "vatex_validation_v1.0.json",
        [
            {"videoID": "aaaaaaaaaaa_000000_000003", "enCap": ["a man cooks", "the man cuts", "a pan"],
             "chCap": ["一个人", "二", "三"]},
            {"videoID": "bbbbbbbbbbb_000001_000004", "enCap": ["a dog runs", "a red dog", "the dog plays"],
             "chCap": ["一", "二", "三"]},
        ],
    )  # fmt: skip

    # YouCook2: raw_videos/validation/<recipe_type>/<id>.mp4, segments of the full video.
    youcook2 = root / "youcook2"
    clip(youcook2 / "raw_videos" / "validation" / "101" / "xHr8X2Wpmno.mp4", 8)
    clip(youcook2 / "raw_videos" / "validation" / "102" / "V53XmPeyjIU.mkv", 6)
    database = {
        "xHr8X2Wpmno": {"duration": 8.0, "subset": "validation", "recipe_type": "101", "video_url": "u",
                        "annotations": [{"segment": [1, 3], "id": 0, "sentence": "cut the onion"},
                                        {"segment": [4, 7], "id": 1, "sentence": "cook the onion in the pan"}]},
        "V53XmPeyjIU": {"duration": 6.0, "subset": "validation", "recipe_type": "102", "video_url": "u",
                        "annotations": [{"segment": [0, 2], "id": 0, "sentence": "a woman cuts"}]},
        "trainingOnly": {"duration": 6.0, "subset": "training", "recipe_type": "102", "video_url": "u",
                         "annotations": [{"segment": [0, 2], "id": 0, "sentence": "not evaluated"}]},
    }  # fmt: skip
    write_json(youcook2 / "youcookii_annotations_trainval.json", {"database": database})

    # ActivityNet Captions: v_<id>.mp4 (4 fps, 10 s) and a file named without the v_ prefix.
    activitynet = root / "activitynet"
    clip(activitynet / "v_QOlSCBRmfWY.mp4", 10, fps=4)
    clip(activitynet / "ehGHCYKzyZ8.mkv", 6)
    write_json(
        activitynet / "captions" / "val_1.json",  # as distributed: captions/ beside the videos
        {
            "v_QOlSCBRmfWY": {"duration": 10.0, "timestamps": [[0.5, 4.0], [4.0, 9.5]],
                              "sentences": ["A man plays guitar.", " Then the man runs. "]},
            "v_ehGHCYKzyZ8": {"duration": 6.0, "timestamps": [[0, 6.0]], "sentences": ["A dog runs."]},
        },
    )  # fmt: skip

    # EgoSchema: <q_uid>.mp4; three questions, the answers of two are public.
    egoschema = root / "egoschema"
    uids = ["0074f737-11cb-497d-8d07-77c3a8127391", "00b9a0de-c59e-49cb-a127-6081e2fb8c8e", "hidden-answer"]
    for uid in uids[:2]:
        clip(egoschema / "videos" / f"{uid}.mp4", 4)
    questions = [{"q_uid": uid, "google_drive_id": "x", "question": f"what did the person do first {k}",
                  **{f"option {o}": f"cuts onion {o}" for o in range(5)}} for k, uid in enumerate(uids)]  # fmt: skip
    write_json(egoschema / "questions.json", questions)
    write_json(egoschema / "subset_answers.json", {uids[0]: 3, uids[1]: 0})

    # Kinetics-400: val/<label>/<youtube_id>_<start:06d>_<end:06d>.mp4, one only as the full YouTube video.
    kinetics = root / "kinetics400"
    clip(kinetics / "val" / "playing guitar" / "ccccccccccc_000000_000003.mp4", 3)
    clip(kinetics / "val" / "cooking" / "ddddddddddd_000001_000004.mp4", 3)
    clip(kinetics / "full" / "eeeeeeeeeee.mp4", 6)
    write_lines(
        kinetics / "validate.csv",
        ["label,youtube_id,time_start,time_end,split", "playing guitar,ccccccccccc,0,3,val",
         "cooking,ddddddddddd,1,4,val", "cooking,eeeeeeeeeee,2,5,val", "running,fffffffffff,0,10,train"],
    )  # fmt: skip
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoint")
    tokenizer = train_sentencepiece_tokenizer([WORDS] * 4, folder / "tokenizer", 64)
    video_processor = VideoFirstVideoProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, num_frames=4, tubelet_frames=2
    )
    torch.manual_seed(0)
    return export_checkpoint(tiny_model(), VideoFirstProcessor(video_processor, tokenizer), folder / "export")


@pytest.fixture(scope="module")
def loaded(checkpoint):
    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    return model, AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)


@pytest.fixture
def spy(monkeypatch) -> list[dict]:
    """Records what the script asks the decoder for (clips and sampling arguments), then runs it."""
    calls = []
    original = evaluate_script.embed_video_clips

    def recording(model, video_processor, clips, **kwargs):
        calls.append({"clips": list(clips), **kwargs})
        return original(model, video_processor, clips, **kwargs)

    monkeypatch.setattr(evaluate_script, "embed_video_clips", recording)
    return calls


def run(checkpoint: Path, tmp_path: Path, *args: str):
    output = tmp_path / "results.json"
    output.unlink(missing_ok=True)
    code = evaluate_script.main(
        [str(checkpoint), "--output", str(output), "--num-workers", "0", "--no-progress", *args]
    )
    return code, (json.loads(output.read_text()) if output.exists() else None)


def pyav_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(frame.time) for frame in container.decode(video=0)]


def frame_times(processor, clip: VideoClip, call: dict) -> list[float]:
    """Times (by PyAV) of the frames the processor reads for `clip` with the script's sampling arguments."""
    options = {key: call[key] for key in ("sampling", "fps", "num_frames") if call[key] is not None}
    out = processor.video_processor(
        videos=clip.path, start=clip.start, end=clip.end, return_metadata=True, return_tensors="pt", **options
    )
    times = pyav_times(Path(clip.path))
    return [times[index] for index in out["video_metadata"][0].frames_indices]


# Readers ------------------------------------------------------------------------------------------------------


def test_msrvtt_1k_a_csv_and_full_json(root):
    data = load_benchmark("msrvtt", root / "msrvtt")
    assert data.split == "test_1k" and data.annotations.name == "MSRVTT_JSFUSION_test.csv"
    assert data.video_ids == ["video7010", "video7011", "video7012", "video7013"]
    assert data.dataset.texts == [f"a man plays guitar {k}" for k in range(4)]
    assert data.dataset.video_ids_of_texts == [0, 1, 2, 3]
    assert list(data.missing) == [3] and "video7013" in data.missing[3]
    assert data.dataset.clips[0] == VideoClip(str(root / "msrvtt" / "video7010.mp4"))  # trimmed: no window

    full = load_benchmark("msrvtt", root / "msrvtt", root / "msrvtt" / "MSRVTT_data.json", split="test")
    assert full.video_ids == ["video7010", "video7011"]  # the train video is left out
    assert full.dataset.texts == ["a dog runs 0", "a dog runs 1", "a dog runs 5", "a dog runs 2", "a dog runs 4"]
    assert full.dataset.video_ids_of_texts == [0, 0, 0, 1, 1]  # every caption of a video, grouped
    with pytest.raises(AnnotationError, match="MSRVTT_JSFUSION_test.csv"):
        load_benchmark("msrvtt", root / "msrvtt", root / "msrvtt" / "MSRVTT_data.json")


def test_vatex_captions_and_trimmed_or_full_videos(root):
    data = load_benchmark("vatex", root / "vatex")
    assert data.split == "validation"
    assert data.dataset.texts == ["a man cooks", "the man cuts", "a pan", "a dog runs", "a red dog", "the dog plays"]
    assert data.dataset.video_ids_of_texts == [0, 0, 0, 1, 1, 1]
    assert data.dataset.clips == [
        VideoClip(str(root / "vatex" / "val" / "aaaaaaaaaaa_000000_000003.mp4")),
        VideoClip(str(root / "vatex" / "val" / "bbbbbbbbbbb.mkv"), 1.0, 4.0),  # the full video, cut at the bounds
    ]
    assert not data.missing
    only = load_benchmark("vatex", root / "vatex", video_list=["bbbbbbbbbbb_000001_000004"])
    assert only.video_ids == ["bbbbbbbbbbb_000001_000004"] and len(only.dataset.texts) == 3


def test_youcook2_segments_of_the_validation_videos(root):
    data = load_benchmark("youcook2", root / "youcook2")
    raw = root / "youcook2" / "raw_videos" / "validation"
    assert data.dataset.clips == [
        VideoClip(str(raw / "101" / "xHr8X2Wpmno.mp4"), 1.0, 3.0),
        VideoClip(str(raw / "101" / "xHr8X2Wpmno.mp4"), 4.0, 7.0),
        VideoClip(str(raw / "102" / "V53XmPeyjIU.mkv"), 0.0, 2.0),
    ]
    assert data.dataset.texts == ["cut the onion", "cook the onion in the pan", "a woman cuts"]
    assert data.dataset.video_ids_of_texts == [0, 1, 2] and data.video_ids[0] == data.video_ids[1] == "xHr8X2Wpmno"


def test_activitynet_paragraphs(root):
    data = load_benchmark("activitynet", root / "activitynet")
    assert data.annotations == root / "activitynet" / "captions" / "val_1.json"  # found under the videos folder
    assert data.dataset.texts == ["A man plays guitar. Then the man runs.", "A dog runs."]
    assert data.dataset.video_ids_of_texts == [0, 1]
    assert data.dataset.clips == [
        VideoClip(str(root / "activitynet" / "v_QOlSCBRmfWY.mp4")),  # the whole video: no window
        VideoClip(str(root / "activitynet" / "ehGHCYKzyZ8.mkv")),
    ]
    with pytest.raises(FileNotFoundError, match="val_2.json"):  # the other split's file is not there
        load_benchmark("activitynet", root / "activitynet", split="val_2")


def test_egoschema_subset_and_kinetics_classes(root):
    data = load_benchmark("egoschema", root / "egoschema", root / "egoschema" / "questions.json")
    assert len(data.dataset.questions) == 2 and data.dataset.answers == [3, 0]
    assert data.dataset.options[0] == [f"cuts onion {o}" for o in range(5)]
    assert data.notes["questions_without_public_answer"] == 1
    assert Path(data.dataset.clips[0].path).name == "0074f737-11cb-497d-8d07-77c3a8127391.mp4"

    kinetics = load_benchmark("kinetics400", root / "kinetics400")
    assert kinetics.dataset.class_names == ["cooking", "playing guitar"]  # from the val rows' labels
    assert kinetics.dataset.labels == [1, 0, 0]
    assert kinetics.dataset.clips[2] == VideoClip(str(root / "kinetics400" / "full" / "eeeeeeeeeee.mp4"), 2.0, 5.0)


def test_hub_annotations_come_from_the_local_cache_only(root, tmp_path, monkeypatch):
    import huggingface_hub.constants

    snapshot = tmp_path / "datasets--someone--ActivityNet_Captions" / "snapshots" / ("a" * 40)
    write_json(snapshot / "val_1.json", json.loads((root / "activitynet" / "captions" / "val_1.json").read_text()))
    (tmp_path / "datasets--someone--ActivityNet_Captions" / "refs").mkdir()
    (tmp_path / "datasets--someone--ActivityNet_Captions" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    path = resolve_annotations("hf://datasets/someone/ActivityNet_Captions/val_1.json")
    assert path.resolve() == (snapshot / "val_1.json").resolve()
    data = load_benchmark("activitynet", root / "activitynet", "hf://datasets/someone/ActivityNet_Captions/val_1.json")
    assert len(data.dataset.texts) == 2
    with pytest.raises(FileNotFoundError, match="local Hugging Face cache"):
        resolve_annotations("hf://datasets/someone/ActivityNet_Captions/val_2.json")


# Malformed annotation files -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("benchmark", "name", "content", "field"),
    [
        ("msrvtt", "MSRVTT_JSFUSION_test.csv", "key,vid_key,video_id,caption\nret0,msr1,video1,a\n", "'sentence'"),
        ("vatex", "vatex_validation_v1.0.json", [{"videoID": "x_000000_000003", "chCap": ["一"]}], "`enCap`"),
        ("youcook2", "youcookii_annotations_trainval.json",
         {"database": {"v": {"subset": "validation", "annotations": [{"segment": [3], "sentence": "s"}]}}},
         "`segment`"),
        ("activitynet", "val_1.json", {"v_x": {"duration": 3, "timestamps": [[0, 1]], "sentences": ["a", "b"]}},
         "`timestamps`"),
        ("egoschema", "questions.json", [{"q_uid": "q", "question": "q?", "option 0": "a"}], "`option 1`"),
        ("kinetics400", "validate.csv", "label,youtube_id,time_start,time_end\ncooking,x,0,3\n", "'split'"),
        ("vatex", "vatex_validation_v1.0.json", "{not json", "not valid JSON"),
    ],
)  # fmt: skip
def test_malformed_annotations_name_the_file_and_field(checkpoint, tmp_path, capsys, benchmark, name, content, field):
    folder = tmp_path / benchmark
    path = folder / name
    if isinstance(content, str):
        write_lines(path, [content])
    else:
        write_json(path, content)
    write_json(folder / "subset_answers.json", {"q": 0})
    code, results = run(checkpoint, tmp_path, "--benchmark", benchmark, "--videos", str(folder))
    assert code == 1 and results is None
    error = capsys.readouterr().err
    assert str(path) in error and field in error


# End to end ---------------------------------------------------------------------------------------------------


def test_msrvtt_end_to_end_missing_video_and_card(checkpoint, loaded, root, tmp_path, capsys, spy):
    model, processor = loaded
    code, results = run(checkpoint, tmp_path, "--benchmark", "msrvtt", "--videos", str(root / "msrvtt"))
    assert code == 0
    assert results["counts"] == {
        "videos": 4, "videos_evaluated": 3, "videos_missing": 1, "texts": 4, "texts_evaluated": 3
    }  # fmt: skip
    [failure] = results["failed_videos"]
    assert failure["video_id"] == "video7013" and failure["missing"] and "not found under" in failure["error"]
    assert (results["dataset"], results["dataset_type"], results["split"]) == (
        "MSR-VTT",
        "friedrichor/MSR-VTT",
        "test_1k",
    )
    assert results["sampling"] == {"fps": 1.0, "num_frames": 16, "sampling": "window", "segment_frames": None}
    out = capsys.readouterr()
    assert "on 3/4 texts, 3/4 videos" in out.out and "excluded" in out.err

    # The same numbers as the library on the three videos there, with the protocol's frames.
    [call] = spy
    assert (call["sampling"], call["fps"], call["num_frames"]) == ("window", 1.0, 16)
    paths = [str(root / "msrvtt" / f"video{n}.mp4") for n in (7010, 7011, 7012)]
    batch = processor.video_processor(videos=paths, sampling="window", fps=1.0, num_frames=16, return_tensors="pt")
    texts = [f"a man plays guitar {k}" for k in range(3)]
    expected = evaluate_retrieval(model, processor.tokenizer, [batch], texts, [0, 1, 2])
    assert results["metrics"] == pytest.approx(expected, abs=1e-6)

    # The results JSON feeds the model card: its model-index names the Hub dataset and split.
    card = render_model_card(model, processor, results=tmp_path / "results.json")
    entries = card.data.eval_results
    assert {entry.dataset_type for entry in entries} == {"friedrichor/MSR-VTT"}
    assert {entry.dataset_name for entry in entries} == {"MSR-VTT"}
    assert {entry.dataset_split for entry in entries} == {"test_1k"}
    assert {entry.dataset_config for entry in entries} == {"test_1k"}
    assert any(entry.metric_type == "t2v_recall@1" for entry in entries)

    code, strict = run(checkpoint, tmp_path, "--benchmark", "msrvtt", "--videos", str(root / "msrvtt"), "--strict")
    assert code == 1 and strict is None and "video7013" in capsys.readouterr().err


def test_activitynet_reads_the_first_frames_at_1_fps(checkpoint, loaded, root, tmp_path, spy):
    _, processor = loaded
    annotations = str(root / "activitynet" / "captions" / "val_1.json")
    args = ["--benchmark", "activitynet", "--videos", str(root / "activitynet"), "--annotations", annotations]
    code, results = run(checkpoint, tmp_path, *args)
    assert code == 0 and results["counts"]["texts_evaluated"] == 2 and results["split"] == "val_1"
    call = spy[-1]
    first = call["clips"][0]
    assert first.start is None and first.end is None
    # 10 s at 4 fps: one frame per second from the start, as PyAV times them.
    assert frame_times(processor, first, call) == pytest.approx([float(t) for t in range(10)])

    code, uniform = run(checkpoint, tmp_path, *args, "--sampling", "uniform", "--num-frames", "4")
    assert code == 0 and uniform["sampling"]["sampling"] == "uniform" and uniform["sampling"]["fps"] is None
    times = frame_times(processor, first, spy[-1])
    assert len(times) == 4 and times[0] > 0.5 and times[-1] > 8.0  # spread over the whole video


def test_undecodable_video_is_listed_and_video_list_restricts(checkpoint, root, tmp_path):
    folder = tmp_path / "vatex"
    shutil.copytree(root / "vatex", folder)
    (folder / "val" / "aaaaaaaaaaa_000000_000003.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    code, results = run(checkpoint, tmp_path, "--benchmark", "vatex", "--videos", str(folder))
    assert code == 0
    [failure] = results["failed_videos"]
    assert failure["video_id"] == "aaaaaaaaaaa_000000_000003" and not failure["missing"]
    assert results["counts"] == {
        "videos": 2, "videos_evaluated": 1, "videos_missing": 0, "texts": 6, "texts_evaluated": 3
    }  # fmt: skip
    listed = write_lines(tmp_path / "ids.txt", ["bbbbbbbbbbb_000001_000004"])
    code, only = run(checkpoint, tmp_path, "--benchmark", "vatex", "--videos", str(folder), "--video-list", str(listed))
    assert code == 0 and only["failed_videos"] == [] and only["counts"]["texts"] == 3
    assert only["metrics"] == pytest.approx(results["metrics"])  # the same single video and its three captions


def test_youcook2_egoschema_kinetics_end_to_end(checkpoint, loaded, root, tmp_path, spy):
    _, processor = loaded
    code, youcook2 = run(checkpoint, tmp_path, "--benchmark", "youcook2", "--videos", str(root / "youcook2"))
    assert code == 0 and youcook2["counts"]["texts_evaluated"] == 3 and youcook2["counts"]["videos_evaluated"] == 3
    segment = spy[-1]["clips"][1]
    assert (segment.start, segment.end) == (4.0, 7.0)
    assert frame_times(processor, segment, spy[-1]) == pytest.approx([4.0, 5.0, 6.0])  # inside the segment, 1 FPS

    code, ego = run(checkpoint, tmp_path, "--benchmark", "egoschema", "--videos", str(root / "egoschema"))
    assert code == 0 and ego["task"] == "mcq" and ego["dataset_type"] == "lmms-lab/egoschema"
    assert ego["counts"]["questions_evaluated"] == 2 and ego["sampling"]["num_frames"] == 256
    assert ego["protocol"]["questions_without_public_answer"] == 1 and 0.0 <= ego["metrics"]["accuracy"] <= 1.0

    code, kinetics = run(
        checkpoint, tmp_path, "--benchmark", "kinetics400", "--videos", str(root / "kinetics400"), "--top-k", "1"
    )
    assert code == 0 and kinetics["counts"]["samples_evaluated"] == 3 and kinetics["counts"]["classes"] == 2
    assert set(kinetics["metrics"]) == {"top1_accuracy"}


@pytest.mark.slow  # a fresh interpreter plus six benchmarks: about 20 s
def test_all_benchmarks_as_a_script(checkpoint, loaded, root, tmp_path):
    model, processor = loaded
    output = tmp_path / "all.json"
    command = [sys.executable, str(SCRIPT), str(checkpoint), "--benchmark", "all", "--videos-root", str(root),
               "--output", str(output), "--num-workers", "0", "--no-progress", "--num-frames", "4"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    records = json.loads(output.read_text())
    evaluated = ["msrvtt", "vatex", "youcook2", "activitynet", "egoschema", "kinetics400"]
    assert [record["benchmark"] for record in records] == evaluated
    assert "no folder for kinetics600" in result.stderr
    assert "MSR-VTT [test_1k]: t2v_recall@1" in result.stdout and "on 3/4 texts" in result.stdout
    card = render_model_card(model, processor, results=output)
    named = {entry.dataset_type for entry in card.data.eval_results}
    assert named == {BENCHMARKS[name].dataset_type for name in evaluated}


# The video-to-text model: full-length summarisation and EgoSchema by answer likelihood ----------------------------


@pytest.fixture(scope="module")
def video_to_text_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("video_to_text")
    tokenizer = train_caption_tokenizer([WORDS] * 4 + ["question: answer:"], folder / "tokenizer", vocab_size=64)
    text_config = {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 4, "n_positions": 64}
    text_config.update(vocab_size=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = VideoFirstVideoToTextConfig(
        vision_config=tiny_vision_config(), text_config=text_config, resampler_num_latents=4,
        resampler_depth=1, resampler_num_attention_heads=4,
    )  # fmt: skip
    torch.manual_seed(0)
    model = VideoFirstForConditionalGeneration(config).eval()
    video_processor = VideoFirstVideoProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, num_frames=4, tubelet_frames=2
    )
    checkpoint = export_video_to_text(model, VideoFirstProcessor(video_processor, tokenizer), folder / "export")
    loaded = AutoModelForImageTextToText.from_pretrained(checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    return checkpoint, loaded, processor


def test_summarization_of_full_videos_and_egoschema_likelihood(video_to_text_checkpoint, root, tmp_path, spy):
    checkpoint, model, processor = video_to_text_checkpoint
    args = ["--task", "summarization", "--max-new-tokens", "3", "--num-frames", "4", "--batch-size", "1"]
    code, results = run(checkpoint, tmp_path, "--benchmark", "youcook2", "--videos", str(root / "youcook2"), *args)
    assert code == 0 and results["task"] == "summarization" and results["model"] == "video-to-text"
    # One item per full-length video (no segment window), the reference its segments' sentences in order.
    assert results["counts"] == {"videos": 2, "videos_evaluated": 2, "videos_missing": 0}
    assert [(p["video_id"], p["reference"]) for p in results["predictions"]] == [
        ("xHr8X2Wpmno", "cut the onion cook the onion in the pan"),
        ("V53XmPeyjIU", "a woman cuts"),
    ]
    assert results["sampling"] == {"fps": 1.0, "num_frames": 4, "sampling": "window", "segment_frames": None}
    # The summaries are the model's greedy generations, scored by the library's Rouge-L.
    raw = root / "youcook2" / "raw_videos" / "validation" / "101" / "xHr8X2Wpmno.mp4"
    batch = processor.video_processor(videos=str(raw), sampling="window", fps=1.0, num_frames=4, return_tensors="pt")
    prepare_causal_tokenizer(processor.tokenizer)
    [summary] = generate_captions(
        model, processor.tokenizer, batch["pixel_values_videos"], batch["video_frame_mask"], max_new_tokens=3,
        do_sample=False,
    )  # fmt: skip
    assert results["predictions"][0]["summary"] == summary
    references = [p["reference"] for p in results["predictions"]]
    expected = caption_metrics([p["summary"] for p in results["predictions"]], references)
    assert results["metrics"] == pytest.approx(expected)
    # A summarisation record reaches the card's model-index as a Hub video-text-to-text task.
    entries = eval_results(load_results(tmp_path / "results.json"), "tiny")
    assert {entry.task_type for entry in entries} == {"video-text-to-text"}
    assert "Rouge-L" in {entry.metric_name for entry in entries} <= {"Rouge-L", "CIDEr-D"}  # CIDEr-D if installed

    ego = ["--benchmark", "egoschema", "--videos", str(root / "egoschema"), "--task", "qa-likelihood"]
    code, results = run(checkpoint, tmp_path, *ego, "--num-frames", "4")
    assert code == 0 and results["task"] == "mcq" and results["counts"]["questions_evaluated"] == 2
    data = load_benchmark("egoschema", root / "egoschema")
    expected = evaluate_video_question_answering(
        model, processor.tokenizer, processor.video_processor, data.dataset, fps=1.0, num_frames=4, sampling="window"
    )
    assert results["metrics"]["accuracy"] == pytest.approx(expected["accuracy"])
    with pytest.raises(SystemExit):  # summarisation is for the captioned benchmarks only
        run(checkpoint, tmp_path, "--benchmark", "msrvtt", "--videos", str(root / "msrvtt"), "--task", "summarization")
