"""The paper's evaluation benchmarks, read from their official annotation files.

Each `Benchmark` of `BENCHMARKS` knows its annotation files in the format their authors publish, the protocol the
paper used (split, caption handling, segment bounds, frame rate, frame count, where the frames come from), the
names its distributors give the video files, and the Hub dataset that names it in a model card's `model-index`.
`load_benchmark` turns annotations plus a folder of videos into the evaluation sets of `videofirst.evaluation.sets`
(`RetrievalSet`, `MultipleChoiceSet`, `ClassificationSet`), which `training/evaluate.py --benchmark` scores.

=============  ==========================================================================================
benchmark      annotation file (published format) and default protocol
=============  ==========================================================================================
msrvtt         `MSRVTT_JSFUSION_test.csv` (`key, vid_key, video_id, sentence`): the 1k-A test split, one
               caption per video. `MSRVTT_data.json` (`videos` / `sentences`) with `split="test"` (or
               `train`, `validate`): every caption of every video of that official split.
vatex          `vatex_validation_v1.0.json`: a list of `{videoID, enCap, chCap}`; every English caption
               (`enCap`, ten per video) is a query of its clip. `split="test"` reads the public test file.
youcook2       `youcookii_annotations_trainval.json`: `database[id] = {subset, duration, annotations:
               [{segment: [start, end], sentence}]}`; clip level: each segment of a `validation` video is
               one clip, cut from the full video at its bounds, with its sentence.
activitynet    `val_1.json` (or `val_2.json`): `{video_id: {duration, timestamps, sentences}}`; paragraph to
               video: a video's sentences joined into one query against the whole video.
egoschema      `questions.json` (`q_uid, question, option 0 ... option 4`) with `subset_answers.json`
               (`{q_uid: answer}`): the 500-question subset whose answers are public, 5-way choice.
kinetics400/   `validate.csv` / `val.csv` (`label, youtube_id, time_start, time_end, split`): zero-shot
kinetics600    classification, class names from the labels, prompt templates averaged.
=============  ==========================================================================================

Frames (the processor's `sampling`, `fps`, `num_frames`, always passed explicitly): every benchmark reads frames
at a fixed **1 FPS from the start of its clip** (`sampling="window", fps=1`), at most 16 frames (ShortViViT's input;
MSR-VTT, VATEX, YouCook2 segments and Kinetics clips are 10-30 s long) except EgoSchema, 256 frames (LongViViT's
input; the clips are 3 minutes). ActivityNet follows the paper: the **first** frames of the long video at 1 FPS,
where other work samples uniformly over the whole video (`sampling="uniform"`). Every one of these is an option.

Videos are found by the distributors' names anywhere under the folder the user names, with any extension
(`video7010.mp4`; `<youtube_id>_<start:06d>_<end:06d>.mp4`, or the full `<youtube_id>` video cut at those
bounds; `<id>.mkv` for YouCook2's `raw_videos/validation/<recipe>/`; `v_<id>.webm` or `<id>.webm`;
`<q_uid>.mp4`). A video that is not there is reported by its id and excluded with the queries that refer to it.

For the video-to-text model, `summarization_set` turns YouCook2 or ActivityNet Captions into the paper's
summarisation of full-length videos: one item per video (the whole file, `LONG_FRAMES`), its reference the video's
sentences joined in their order.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from videofirst.evaluation.sets import ClassificationSet, MultipleChoiceSet, RetrievalSet, VideoClip
from videofirst.modeling.video_processing_videofirst import resolve_sampling

__all__ = [
    "BENCHMARKS",
    "AnnotationError",
    "Benchmark",
    "BenchmarkData",
    "FrameProtocol",
    "LONG_FRAMES",
    "SummarySet",
    "VideoFolder",
    "load_benchmark",
    "resolve_annotations",
    "summarization_set",
]

logger = logging.getLogger(__name__)

# Files that sit beside videos in distributed folders and are never videos; anything else may be one (the decoder
# says whether it is), so any container the decoder reads is found whatever its extension.
_NOT_VIDEO = {".json", ".jsonl", ".csv", ".tsv", ".txt", ".md", ".pkl", ".npy", ".npz", ".zip", ".tar", ".gz"}
_NOT_VIDEO |= {".part", ".tmp", ".yaml", ".yml", ".parquet", ".log", ".html", ".py", ".sh", ".safetensors"}
# Preferred when one id has several files (ActivityNet downloads mix containers).
_SUFFIX_RANK = {suffix: rank for rank, suffix in enumerate((".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"))}
# `<youtube_id>_<start>_<end>`: VATEX's `videoID` and Kinetics' trimmed-clip file names.
_TRIMMED_ID = re.compile(r"^(?P<youtube_id>.+)_(?P<start>\d+)_(?P<end>\d+)$")


class AnnotationError(ValueError):
    """An annotation file does not have the published format; the message names the file and the field."""


@dataclass(frozen=True)
class FrameProtocol:
    """How frames are read from each clip: the processor's `sampling`, `fps` and `num_frames`."""

    sampling: str | None = "window"
    fps: float | None = 1.0
    num_frames: int | None = 16

    def processor_kwargs(self) -> dict[str, Any]:
        return {"sampling": self.sampling, "fps": self.fps, "num_frames": self.num_frames}

    def describe(self) -> str:
        sampling = resolve_sampling(self.fps, self.num_frames, self.sampling)
        if sampling == "uniform":
            return f"{self.num_frames} frames spread uniformly over the clip"
        if sampling == "fps":
            return f"frames at {self.fps:g} FPS over the whole clip" if self.fps else "every frame of the clip"
        return f"the first {self.num_frames} frames at {self.fps:g} FPS from the clip start"


@dataclass
class SummarySet:
    """Full-length videos and the reference paragraph of each (the video-to-text model's summarisation)."""

    clips: list[VideoClip]
    references: list[str]


@dataclass
class BenchmarkData:
    """One benchmark split ready to score: the evaluation set, where it came from, and the videos not found."""

    benchmark: Benchmark
    split: str
    annotations: Path
    videos: Path
    dataset: RetrievalSet | MultipleChoiceSet | ClassificationSet | SummarySet
    video_ids: list[str]  # the benchmark's id of every clip of `dataset.clips`
    missing: dict[int, str] = field(default_factory=dict)  # clip index -> why no file was found
    notes: dict[str, Any] = field(default_factory=dict)  # reader facts worth recording (e.g. questions dropped)


# (annotation file, video folder, split, options) -> (evaluation set, its clips, notes for the results JSON)
Reader = Callable[[Path, "VideoFolder", str, Mapping[str, Any]], tuple[Any, "_Clips", dict[str, Any]]]


@dataclass(frozen=True)
class Benchmark:
    """A benchmark of the registry. `splits` maps a split to the annotation file names that hold it."""

    name: str
    title: str
    task: str  # "retrieval", "mcq" or "classification" (training/evaluate.py's task names)
    splits: Mapping[str, tuple[str, ...]]
    default_split: str
    frames: FrameProtocol
    queries: str  # how the texts are formed, for the docs and the results JSON
    reader: Reader
    hub_id: str | None = None
    hub_config: str | None = None
    summaries: bool = False  # full-length videos with reference paragraphs for the video-to-text model

    @property
    def dataset_type(self) -> str:
        """What the card's `model-index` names the dataset by: the Hub id, or a slug of the name."""
        return self.hub_id or self.name


class VideoFolder:
    """The video files under a folder, indexed by file name without extension (searched recursively)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Video folder not found: {self.root}")
        self._files: dict[str, list[Path]] = {}
        for path in sorted(self.root.rglob("*")):
            if path.suffix.lower() in _NOT_VIDEO or path.name.startswith(".") or not path.is_file():
                continue
            self._files.setdefault(path.stem, []).append(path)

    def find(self, stem: str) -> Path | None:
        """The file named `stem` (any extension); known video extensions first when there are several."""
        files = self._files.get(stem)
        if not files:
            return None
        chosen = min(files, key=lambda path: (_SUFFIX_RANK.get(path.suffix.lower(), len(_SUFFIX_RANK)), str(path)))
        if len(files) > 1:
            logger.warning("Several files for video %r; using %s (others: %s)", stem, chosen, files)
        return chosen


class _Clips:
    """Collects unique clips of a reader; a video that is not in the folder gets a placeholder and a reason."""

    def __init__(self, folder: VideoFolder):
        self.folder = folder
        self.clips: list[VideoClip] = []
        self.video_ids: list[str] = []
        self.missing: dict[int, str] = {}
        self._index: dict[tuple[str, float | None, float | None], int] = {}

    def add(
        self,
        video_id: str,
        start: float | None = None,
        end: float | None = None,
        alternatives: Sequence[tuple[str, float | None, float | None]] = (),
    ) -> int:
        """Index of the clip of `video_id` cut at `[start, end)` (None: the whole file).

        When no file is named `video_id`, the first `(stem, start, end)` of `alternatives` with a file is used:
        another naming of the same video, or the full video a trimmed clip was cut from, with its bounds.
        """
        key = (video_id, start, end)
        if key in self._index:
            return self._index[key]
        index = len(self.clips)
        found = None
        for stem, window_start, window_end in [(video_id, start, end), *alternatives]:
            path = self.folder.find(stem)
            if path is not None:
                found = VideoClip(str(path), window_start, window_end)
                break
        if found is None:
            names = ", ".join(f"{stem}.*" for stem in [video_id, *(alternative[0] for alternative in alternatives)])
            self.missing[index] = f"video {video_id!r} not found under {self.folder.root} (looked for {names})"
            found = VideoClip(str(self.folder.root / f"{video_id}.mp4"), start, end)
        self.clips.append(found)
        self.video_ids.append(video_id)
        self._index[key] = index
        return index


# --------------------------------------------------------------------------------------------------------------
# Reading annotation files, with errors that name the file and the field
# --------------------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path} is not valid JSON: {error}") from error


def _read_csv(path: Path, required: Iterable[str]) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [name.strip() for name in reader.fieldnames or []]
        reader.fieldnames = columns
        rows = list(reader)
    absent = [name for name in required if name not in columns]
    if absent:
        raise AnnotationError(f"{path} has no column {', '.join(map(repr, absent))}; its header is {columns}")
    if not rows:
        raise AnnotationError(f"{path} has no rows")
    return rows


def _expect(value: Any, kind: type | tuple[type, ...], path: Path, where: str, name: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, (str, list, dict)) and not value):
        kinds = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise AnnotationError(f"{path}: {where} needs a non-empty `{name}` ({kinds}), got {value!r}")
    return value


def _strings(value: Any, path: Path, where: str, name: str) -> list[str]:
    value = _expect(value, list, path, where, name)
    if not all(isinstance(item, str) and item.strip() for item in value):
        raise AnnotationError(f"{path}: {where} `{name}` must be a list of non-empty strings, got {value!r}")
    return [item.strip() for item in value]


def _seconds(value: Any, path: Path, where: str, name: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AnnotationError(f"{path}: {where} needs a number of seconds in `{name}`, got {value!r}") from None


def _keeper(options: Mapping[str, Any]) -> Callable[[str], bool]:
    """Whether a video id is evaluated: all of them, or those of `--video-list`."""
    video_list = options.get("video_list")
    return (lambda video_id: True) if video_list is None else (lambda video_id: video_id in video_list)


def _retrieval(clips: _Clips, texts: list[str], owners: list[int], path: Path) -> RetrievalSet:
    if not texts:
        raise AnnotationError(f"{path}: no video of the requested split (or --video-list) has a caption")
    return RetrievalSet(clips.clips, texts, owners)


def _read_msrvtt(path: Path, folder: VideoFolder, split: str, options: Mapping[str, Any]):
    keep = _keeper(options)
    clips, texts, owners = _Clips(folder), [], []
    if path.suffix.lower() == ".csv":
        if split != "test_1k":
            raise AnnotationError(f"{path} (the JSFusion CSV) holds the 1k-A test split only, not split {split!r}")
        for number, row in enumerate(_read_csv(path, ("video_id", "sentence")), start=2):
            video_id = _expect(row["video_id"], str, path, f"row {number}", "video_id").strip()
            sentence = _expect((row["sentence"] or "").strip(), str, path, f"row {number}", "sentence")
            if keep(video_id):
                owners.append(clips.add(video_id))
                texts.append(sentence)
        return _retrieval(clips, texts, owners, path), clips, {}
    data = _read_json(path)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: MSR-VTT's JSON is an object with `videos` and `sentences`")
    if split == "test_1k":
        raise AnnotationError(
            f"{path}: the 1k-A test split is defined by MSRVTT_JSFUSION_test.csv; evaluate this file with "
            "--split test (or train / validate)"
        )
    videos = _expect(data.get("videos"), list, path, "the file", "videos")
    sentences = _expect(data.get("sentences"), list, path, "the file", "sentences")
    in_split = []
    for number, video in enumerate(videos):
        where = f"videos[{number}]"
        video = _expect(video, dict, path, where, "entry")
        video_id = _expect(video.get("video_id"), str, path, where, "video_id")
        if _expect(video.get("split"), str, path, where, "split") == split and keep(video_id):
            in_split.append(video_id)
    if not in_split:
        splits = sorted({str(video.get("split")) for video in videos})
        raise AnnotationError(f"{path}: no video has `split` {split!r}; the file's splits are {splits}")
    captions: dict[str, list[str]] = {video_id: [] for video_id in in_split}
    for number, sentence in enumerate(sentences):
        where = f"sentences[{number}]"
        sentence = _expect(sentence, dict, path, where, "entry")
        video_id = _expect(sentence.get("video_id"), str, path, where, "video_id")
        if video_id in captions:
            captions[video_id].append(_expect(sentence.get("caption"), str, path, where, "caption").strip())
    for video_id in in_split:
        index = clips.add(video_id)
        texts += captions[video_id]
        owners += [index] * len(captions[video_id])
    return _retrieval(clips, texts, owners, path), clips, {}


def _trimmed_alternatives(video_id: str) -> list[tuple[str, float, float]]:
    """The full YouTube video cut at a trimmed clip's bounds (`<youtube_id>_<start>_<end>`), when only the full
    video was downloaded."""
    match = _TRIMMED_ID.match(video_id)
    if match is None:
        return []
    return [(match.group("youtube_id"), float(match.group("start")), float(match.group("end")))]


def _read_vatex(path: Path, folder: VideoFolder, split: str, options: Mapping[str, Any]):
    keep = _keeper(options)
    data = _read_json(path)
    if not isinstance(data, list):
        raise AnnotationError(f"{path}: VATEX's annotation file is a JSON list of {{videoID, enCap}} entries")
    clips, texts, owners = _Clips(folder), [], []
    for number, entry in enumerate(data):
        where = f"entry {number}"
        entry = _expect(entry, dict, path, where, "entry")
        video_id = _expect(entry.get("videoID"), str, path, where, "videoID")
        captions = _strings(entry.get("enCap"), path, f"{where} ({video_id})", "enCap")
        if keep(video_id):
            index = clips.add(video_id, alternatives=_trimmed_alternatives(video_id))
            texts += captions
            owners += [index] * len(captions)
    return _retrieval(clips, texts, owners, path), clips, {}


def _read_youcook2(path: Path, folder: VideoFolder, split: str, options: Mapping[str, Any]):
    keep = _keeper(options)
    data = _read_json(path)
    database = _expect(data.get("database") if isinstance(data, dict) else None, dict, path, "the file", "database")
    clips, texts, owners = _Clips(folder), [], []
    for video_id, entry in database.items():
        where = f"database[{video_id!r}]"
        entry = _expect(entry, dict, path, where, "entry")
        if _expect(entry.get("subset"), str, path, where, "subset") != split or not keep(video_id):
            continue
        for number, annotation in enumerate(_expect(entry.get("annotations"), list, path, where, "annotations")):
            at = f"{where}.annotations[{number}]"
            annotation = _expect(annotation, dict, path, at, "annotation")
            segment = annotation.get("segment")
            if not isinstance(segment, list) or len(segment) != 2:
                raise AnnotationError(f"{path}: {at} needs a `segment` [start, end] in seconds, got {segment!r}")
            start, end = (_seconds(value, path, at, "segment") for value in segment)
            if not 0 <= start < end:
                raise AnnotationError(f"{path}: {at} `segment` {segment} is not a window (0 <= start < end)")
            sentence = _expect(annotation.get("sentence"), str, path, at, "sentence").strip()
            owners.append(clips.add(video_id, start, end))
            texts.append(sentence)
    return _retrieval(clips, texts, owners, path), clips, {}


def _read_activitynet(path: Path, folder: VideoFolder, split: str, options: Mapping[str, Any]):
    keep = _keeper(options)
    data = _read_json(path)
    if not isinstance(data, dict) or not data:
        raise AnnotationError(f"{path}: ActivityNet Captions' file is an object {{video_id: {{sentences, ...}}}}")
    clips, texts, owners = _Clips(folder), [], []
    for video_id, entry in data.items():
        where = f"video {video_id!r}"
        entry = _expect(entry, dict, path, where, "entry")
        sentences = _strings(entry.get("sentences"), path, where, "sentences")
        timestamps = _expect(entry.get("timestamps"), list, path, where, "timestamps")
        if len(timestamps) != len(sentences):
            raise AnnotationError(
                f"{path}: {where} has {len(timestamps)} `timestamps` for {len(sentences)} `sentences`"
            )
        if not keep(video_id):
            continue
        # Paragraph-to-video: the video's sentences in their order, one query for the whole video.
        texts.append(" ".join(sentences))
        other_name = video_id[2:] if video_id.startswith("v_") else f"v_{video_id}"  # files come named both ways
        owners.append(clips.add(video_id, alternatives=[(other_name, None, None)]))
    return _retrieval(clips, texts, owners, path), clips, {}


_EGOSCHEMA_OPTIONS = 5


def _read_egoschema(path: Path, folder: VideoFolder, split: str, options: Mapping[str, Any]):
    answers_path = options.get("answers") or path.with_name("subset_answers.json")
    answers_path = Path(answers_path)
    if not answers_path.is_file():
        raise FileNotFoundError(
            f"EgoSchema answers not found: {answers_path}. The public answers are those of the 500-question "
            "subset (subset_answers.json); the full set's answers are hidden (pass --answers FILE)."
        )
    answers = _read_json(answers_path)
    if not isinstance(answers, dict) or not answers:
        raise AnnotationError(f"{answers_path}: EgoSchema's answers are an object {{q_uid: answer index}}")
    questions = _read_json(path)
    if not isinstance(questions, list):
        raise AnnotationError(f"{path}: EgoSchema's questions.json is a JSON list of questions")
    keep = _keeper(options)
    clips = _Clips(folder)
    texts, choices, correct, owners, unanswered = [], [], [], [], 0
    for number, entry in enumerate(questions):
        where = f"question {number}"
        entry = _expect(entry, dict, path, where, "entry")
        q_uid = _expect(entry.get("q_uid"), str, path, where, "q_uid")
        where = f"question {q_uid!r}"
        question = _expect(entry.get("question"), str, path, where, "question").strip()
        option_texts = [
            _expect(entry.get(f"option {k}"), str, path, where, f"option {k}").strip()
            for k in range(_EGOSCHEMA_OPTIONS)
        ]
        if q_uid not in answers:
            unanswered += 1  # the hidden-answer part of the full set
            continue
        answer = answers[q_uid]
        if isinstance(answer, str) and answer.strip().isdigit():
            answer = int(answer)
        if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < _EGOSCHEMA_OPTIONS:
            raise AnnotationError(f"{answers_path}: the answer of {q_uid!r} must be an index 0-4, got {answer!r}")
        if not keep(q_uid):
            continue
        owners.append(clips.add(q_uid))
        texts.append(question)
        choices.append(option_texts)
        correct.append(answer)
    if not texts:
        raise AnnotationError(f"{path}: none of its questions has an answer in {answers_path}")
    dataset = MultipleChoiceSet(clips.clips, texts, choices, correct, owners)
    return dataset, clips, {"answers": str(answers_path), "questions_without_public_answer": unanswered}


def _read_kinetics(path: Path, folder: VideoFolder, split: str, options: Mapping[str, Any]):
    keep = _keeper(options)
    rows = _read_csv(path, ("label", "youtube_id", "time_start", "time_end", "split"))
    clips = _Clips(folder)
    samples: list[tuple[str, int]] = []
    splits = set()
    for number, row in enumerate(rows, start=2):
        where = f"row {number}"
        splits.add(row["split"])
        if row["split"] != split:
            continue
        label = _expect((row["label"] or "").strip(), str, path, where, "label")
        youtube_id = _expect((row["youtube_id"] or "").strip(), str, path, where, "youtube_id")
        start, end = (_seconds(row[name], path, where, name) for name in ("time_start", "time_end"))
        video_id = f"{youtube_id}_{int(start):06d}_{int(end):06d}"
        if keep(video_id):
            index = clips.add(video_id, alternatives=[(youtube_id, start, end)])
            samples.append((label, index))
    if not samples:
        raise AnnotationError(f"{path}: no row has `split` {split!r} (the file's splits: {sorted(splits)})")
    class_names = list(options.get("class_names") or sorted({label for label, _ in samples}))
    by_name = {name: index for index, name in enumerate(class_names)}
    unknown = sorted({label for label, _ in samples if label not in by_name})
    if unknown:
        raise AnnotationError(f"{path}: labels {unknown[:5]} are not among the {len(class_names)} class names")
    labels = [by_name[label] for label, _ in samples]
    dataset = ClassificationSet(clips.clips, labels, class_names, [index for _, index in samples])
    return dataset, clips, {}


_SHORT = FrameProtocol(sampling="window", fps=1.0, num_frames=16)
#: Summarisation of full-length videos (and EgoSchema): LongViViT's 256 frames at 1 FPS from the start.
LONG_FRAMES = FrameProtocol(sampling="window", fps=1.0, num_frames=256)

BENCHMARKS: dict[str, Benchmark] = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark(
            name="msrvtt",
            title="MSR-VTT",
            task="retrieval",
            splits={
                "test_1k": ("MSRVTT_JSFUSION_test.csv",),
                "test": ("MSRVTT_data.json", "test_videodatainfo.json"),
                "validate": ("MSRVTT_data.json",),
                "train": ("MSRVTT_data.json",),
            },
            default_split="test_1k",
            frames=_SHORT,
            queries="1k-A: the JSFusion caption of each of the 1,000 test videos; the JSON: every caption",
            reader=_read_msrvtt,
            hub_id="friedrichor/MSR-VTT",
            hub_config="test_1k",
        ),
        Benchmark(
            name="vatex",
            title="VATEX",
            task="retrieval",
            splits={
                "validation": ("vatex_validation_v1.0.json",),
                "test": ("vatex_public_test_english_v1.1.json",),
                "train": ("vatex_training_v1.0.json",),
            },
            default_split="validation",
            frames=_SHORT,
            queries="every English caption (enCap, 10 per clip) is a query of its clip",
            reader=_read_vatex,
            hub_id="HuggingFaceM4/vatex",
        ),
        Benchmark(
            name="youcook2",
            title="YouCook2",
            task="retrieval",
            splits={
                "validation": ("youcookii_annotations_trainval.json",),
                "training": ("youcookii_annotations_trainval.json",),
            },
            default_split="validation",
            frames=_SHORT,
            queries="clip level: each annotated segment is a clip (its [start, end) of the full video), one sentence",
            reader=_read_youcook2,
            hub_id="lmms-lab/YouCook2",
            summaries=True,
        ),
        Benchmark(
            name="activitynet",
            title="ActivityNet Captions",
            task="retrieval",
            splits={"val_1": ("val_1.json",), "val_2": ("val_2.json",), "train": ("train.json",)},
            default_split="val_1",
            frames=_SHORT,
            queries="paragraph to video: a video's sentences joined, against the whole video",
            reader=_read_activitynet,
            hub_id="friedrichor/ActivityNet_Captions",
            summaries=True,
        ),
        Benchmark(
            name="egoschema",
            title="EgoSchema",
            task="mcq",
            splits={"subset": ("questions.json",)},
            default_split="subset",
            frames=LONG_FRAMES,
            queries="5-way choice: `question answer` for each option, scored against the 3-minute clip",
            reader=_read_egoschema,
            hub_id="lmms-lab/egoschema",
            hub_config="Subset",
        ),
        Benchmark(
            name="kinetics400",
            title="Kinetics-400",
            task="classification",
            splits={"val": ("validate.csv", "val.csv"), "test": ("test.csv",)},
            default_split="val",
            frames=_SHORT,
            queries="class names from the labels, each averaged over the prompt templates",
            reader=_read_kinetics,
            hub_id="AlexFierro9/Kinetics400",
        ),
        Benchmark(
            name="kinetics600",
            title="Kinetics-600",
            task="classification",
            splits={"val": ("val.csv", "validate.csv")},
            default_split="val",
            frames=_SHORT,
            queries="class names from the labels, each averaged over the prompt templates",
            reader=_read_kinetics,
        ),
    )
}


# --------------------------------------------------------------------------------------------------------------
# Finding the files and loading a benchmark
# --------------------------------------------------------------------------------------------------------------


def resolve_annotations(source: str | Path) -> Path:
    """A local annotation file, or `hf://datasets/OWNER/NAME[@REVISION]/PATH` from the local Hugging Face cache.

    Hub files are read offline only (never downloaded here); fetch one once with `hf download`.
    """
    text = str(source)
    if not text.startswith("hf://datasets/"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"Annotation file not found: {path}")
        return path
    parts = text[len("hf://datasets/") :].split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"{text}: a Hub annotation file is hf://datasets/OWNER/NAME[@REVISION]/PATH")
    owner, name, filename = parts
    name, _, revision = name.partition("@")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo_id = f"{owner}/{name}"
    try:
        return Path(
            hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision or None, local_files_only=True)
        )
    except LocalEntryNotFoundError:
        raise FileNotFoundError(
            f"{text} is not in the local Hugging Face cache (annotation files are read offline only); fetch it "
            f"once with: hf download {repo_id} {filename} --repo-type dataset"
        ) from None


def _find_annotations(benchmark: Benchmark, split: str, videos: Path) -> Path:
    """The split's official file: in the videos folder or its parent, else anywhere under the videos folder."""
    names = benchmark.splits[split]
    for candidate in [place / name for name in names for place in (videos, videos.parent)]:
        if candidate.is_file():
            return candidate
    for name in names:
        found = sorted(videos.rglob(name))
        if len(found) > 1:
            logger.warning("Several %s files under %s; using %s (others: %s)", name, videos, found[0], found[1:])
        if found:
            return found[0]
    raise FileNotFoundError(
        f"No {benchmark.title} annotation file for split {split!r}: looked for {', '.join(names)} in {videos.parent} "
        f"and under {videos} (pass --annotations FILE)"
    )


def load_benchmark(
    name: str,
    videos: str | Path,
    annotations: str | Path | None = None,
    *,
    split: str | None = None,
    answers: str | Path | None = None,
    video_list: Iterable[str] | None = None,
    class_names: Sequence[str] | None = None,
) -> BenchmarkData:
    """Read a benchmark's official annotations and find its videos.

    Args:
        name: a key of `BENCHMARKS`.
        videos: the folder holding the videos (searched recursively by the distributors' file names).
        annotations: the annotation file (or `hf://datasets/...`, see `resolve_annotations`); by default the
            split's official file name in `videos`, its parent folder, or anywhere under `videos`.
        split: one of the benchmark's `splits` (default: the paper's).
        answers: EgoSchema's answers file (default: `subset_answers.json` beside the questions).
        video_list: evaluate only these video ids (e.g. another test split's list).
        class_names: classification: the class list (default: the sorted labels of the file).
    """
    if name not in BENCHMARKS:
        raise ValueError(f"Unknown benchmark {name!r}; choose from {sorted(BENCHMARKS)}")
    benchmark = BENCHMARKS[name]
    split = split or benchmark.default_split
    if split not in benchmark.splits:
        raise ValueError(f"{benchmark.title} has no split {split!r}; choose from {sorted(benchmark.splits)}")
    folder = VideoFolder(videos)
    path = (
        resolve_annotations(annotations)
        if annotations is not None
        else _find_annotations(benchmark, split, folder.root)
    )
    options = {
        "answers": answers,
        "video_list": None if video_list is None else set(video_list),
        "class_names": class_names,
    }
    dataset, clips, notes = benchmark.reader(path, folder, split, options)
    return BenchmarkData(benchmark, split, path, folder.root, dataset, clips.video_ids, clips.missing, notes)


def summarization_set(data: BenchmarkData) -> BenchmarkData:
    """The full-length summarisation task of a captioned benchmark (YouCook2, ActivityNet Captions): one item per
    video, the whole file (no segment window), its reference the video's sentences joined in their order."""
    if not data.benchmark.summaries:
        raise ValueError(f"{data.benchmark.title} has no summarisation task (YouCook2 and ActivityNet Captions do)")
    order: dict[str, int] = {}
    clips, paragraphs, missing = [], [], {}
    for text, clip_index in zip(data.dataset.texts, data.dataset.video_ids_of_texts, strict=True):
        video_id = data.video_ids[clip_index]
        if video_id not in order:
            order[video_id] = len(clips)
            clips.append(VideoClip(data.dataset.clips[clip_index].path))
            paragraphs.append([])
            if clip_index in data.missing:
                missing[order[video_id]] = data.missing[clip_index]
        paragraphs[order[video_id]].append(text)
    dataset = SummarySet(clips, [" ".join(sentences) for sentences in paragraphs])
    return BenchmarkData(
        data.benchmark, data.split, data.annotations, data.videos, dataset, list(order), missing, data.notes
    )
