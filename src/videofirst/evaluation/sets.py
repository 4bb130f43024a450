"""Evaluation sets from files (what `training/evaluate.py` runs).

`load_retrieval_manifest`, `load_multiple_choice_manifest` and `load_classification_manifest` read manifests
(through the data pipeline's reader, `videofirst.data.sources.load_manifest`, keeping their task columns) into
unique `VideoClip`s plus texts, questions or labels; `embed_video_clips` decodes and embeds the clips, optionally
through an on-disk `EmbeddingCache` keyed by `checkpoint_fingerprint`, the video file and the sampling settings.

**A video that fails to decode is reported and excluded**: it gets no embedding (nothing shifts onto the next
video), it is no distractor, and the captions / questions / samples that refer to it are dropped from the
metrics (`ClipEmbeddings.rows_of`), so every remaining item is still paired with its own video.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.utils.data
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from videofirst.data.sources import TEXT_COLUMNS, load_manifest
from videofirst.evaluation.embedding import embed_videos
from videofirst.modeling.video_processing_videofirst import pad_video_batch, resolve_sampling

__all__ = [
    "ClassificationSet",
    "ClipCollator",
    "ClipDataset",
    "ClipEmbeddings",
    "EmbeddingCache",
    "MultipleChoiceSet",
    "RetrievalSet",
    "VideoClip",
    "checkpoint_fingerprint",
    "clip_loader",
    "embed_video_clips",
    "load_classification_manifest",
    "load_multiple_choice_manifest",
    "load_retrieval_manifest",
    "read_manifest_rows",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VideoClip:
    """One video of an evaluation set: a file and an optional `[start, end)` window in seconds."""

    path: str
    start: float | None = None
    end: float | None = None


@dataclass
class RetrievalSet:
    """Unique clips and their captions; `video_ids_of_texts[i]` is the clip that caption `i` describes."""

    clips: list[VideoClip]
    texts: list[str]
    video_ids_of_texts: list[int]


@dataclass
class MultipleChoiceSet:
    """EgoSchema-style questions; several questions may share a clip (`video_ids_of_questions`)."""

    clips: list[VideoClip]
    questions: list[str]
    options: list[list[str]]
    answers: list[int]
    video_ids_of_questions: list[int]


@dataclass
class ClassificationSet:
    """Labelled samples; `labels[i]` indexes `class_names`, `video_ids_of_samples[i]` indexes `clips`."""

    clips: list[VideoClip]
    labels: list[int]
    class_names: list[str]
    video_ids_of_samples: list[int]


@dataclass
class ClipEmbeddings:
    """Embeddings of the clips that decoded, and why the others did not.

    `embeddings[k]` belongs to clip `indices[k]` (ascending); `failures` maps a clip index to its error message.
    """

    embeddings: torch.Tensor
    indices: list[int]
    failures: dict[int, str]
    cache_hits: int = 0

    def rows_of(self, clip_ids: Sequence[int]) -> tuple[torch.Tensor, list[bool]]:
        """Embeddings for a per-item list of clip ids (e.g. `video_ids_of_texts`), restricted to decoded clips,
        and the per-item keep mask: items whose clip failed are dropped, never paired with another clip."""
        row = {clip: position for position, clip in enumerate(self.indices)}
        keep = [clip in row for clip in clip_ids]
        rows = torch.tensor([row[clip] for clip in clip_ids if clip in row], dtype=torch.long)
        return self.embeddings[rows], keep


def read_manifest_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of an evaluation manifest as dicts, read by the data pipeline's reader
    (`videofirst.data.sources.load_manifest`: JSONL, JSON, CSV or Parquet, UTF-8 checked, errors naming the file
    and row).

    Each row has `video` (a `video` or `file_name` column, resolved against the manifest's folder), `start` /
    `end` (seconds or None), `caption` (the row's `caption`, else its `text`; None without either) and the manifest's
    other columns as they are. CSV cells that hold JSON lists (`["a", "b"]`) are decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Manifest not found: {path}")
    table = load_manifest(path, require_captions=False, keep_columns=True)
    from_csv = path.suffix.lower() == ".csv"
    rows = []
    for number, row in enumerate(table, start=1):
        if row["error"] is None and row["modality"] != "video":
            row["error"] = f"{row['media']} is an image; evaluation sets hold videos"
        if row["error"] is not None:
            raise ValueError(f"Row {number} of {path}: {row['error']}.")
        row["video"] = row.pop("media")
        row["caption"] = next((row[column] for column in TEXT_COLUMNS if row.get(column) is not None), None)
        for column in ("modality", "offset", "size", "error"):
            del row[column]
        if from_csv:
            for key, value in row.items():
                if isinstance(value, str) and value.startswith("["):
                    with contextlib.suppress(json.JSONDecodeError):
                        row[key] = json.loads(value)
        rows.append(row)
    return rows


def _clip_ids(rows: Sequence[Mapping[str, Any]]) -> tuple[list[VideoClip], list[int]]:
    """Unique clips in first-seen order (rows with the same video and window are one clip), and each row's clip."""
    index: dict[VideoClip, int] = {}
    ids = [index.setdefault(VideoClip(row["video"], row["start"], row["end"]), len(index)) for row in rows]
    return list(index), ids


def load_retrieval_manifest(path: str | Path) -> RetrievalSet:
    """A video-text manifest (`video`, `caption` or `text`: a string or a list of strings, optional `start`/`end`).

    Rows with the same video (and window) are one video with several captions.
    """
    rows = read_manifest_rows(path)
    clips, ids = _clip_ids(rows)
    texts: list[str] = []
    video_ids: list[int] = []
    for number, (row, clip) in enumerate(zip(rows, ids, strict=True), start=1):
        captions = row["caption"]
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list) or not captions or not all(isinstance(c, str) and c for c in captions):
            raise ValueError(f"Row {number} of {path} needs a non-empty `caption` (or `text`) string or list.")
        texts.extend(captions)
        video_ids.extend([clip] * len(captions))
    return RetrievalSet(clips, texts, video_ids)


def _options_of(row: Mapping[str, Any]) -> list[str] | None:
    if "options" in row:
        return row["options"]
    # EgoSchema's own files name the candidates `option 0` ... `option 4`.
    numbered = sorted((int(match.group(1)), key) for key in row if (match := re.fullmatch(r"option[ _]?(\d+)", key)))
    return [row[key] for _, key in numbered] or None


def load_multiple_choice_manifest(path: str | Path) -> MultipleChoiceSet:
    """An EgoSchema-format manifest: `video`, `question`, `options` (a list, or `option 0` ... columns) and
    `answer` (the 0-based index of the correct option). Every question needs the same number of options."""
    rows = read_manifest_rows(path)
    clips, ids = _clip_ids(rows)
    questions, options, answers = [], [], []
    for number, row in enumerate(rows, start=1):
        question, choices, answer = row.get("question"), _options_of(row), row.get("answer")
        if not isinstance(question, str):
            raise ValueError(f"Row {number} of {path} needs a `question` string.")
        if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
            raise ValueError(f"Row {number} of {path} needs `options`: a list of at least two strings.")
        try:
            answer = int(answer)
        except (TypeError, ValueError):
            raise ValueError(f"Row {number} of {path} needs an integer `answer`, got {answer!r}.") from None
        if not 0 <= answer < len(choices):
            raise ValueError(f"Row {number} of {path}: `answer` {answer} is not an index into its options.")
        questions.append(question)
        options.append(choices)
        answers.append(answer)
    if len({len(choices) for choices in options}) != 1:
        raise ValueError(f"Every question of {path} needs the same number of options.")
    return MultipleChoiceSet(clips, questions, options, answers, ids)


def load_classification_manifest(path: str | Path, class_names: Sequence[str] | None = None) -> ClassificationSet:
    """A `video`, `label` manifest. A label is a class name, or (with `class_names`) a 0-based class index.

    Without `class_names` the classes are the sorted distinct label strings of the manifest.
    """
    rows = read_manifest_rows(path)
    clips, ids = _clip_ids(rows)
    raw = [row.get("label") for row in rows]
    if any(label is None or label == "" for label in raw):
        raise ValueError(f"Every row of {path} needs a `label`.")
    if class_names is None:
        if any(not isinstance(label, str) for label in raw):
            raise ValueError(f"{path} has integer labels; pass the class names (e.g. --class-names FILE).")
        class_names = sorted(set(raw))
    class_names = list(class_names)
    if len(set(class_names)) != len(class_names):
        raise ValueError("Class names must be unique.")
    by_name = {name: index for index, name in enumerate(class_names)}
    labels = []
    for number, label in enumerate(raw, start=1):
        if isinstance(label, str) and label in by_name:
            labels.append(by_name[label])
        elif isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
            if not 0 <= int(label) < len(class_names):
                raise ValueError(f"Row {number} of {path}: label {label} is not an index into the class names.")
            labels.append(int(label))
        else:
            raise ValueError(f"Row {number} of {path}: label {label!r} is not one of the class names.")
    return ClassificationSet(clips, labels, class_names, ids)


def checkpoint_fingerprint(checkpoint: str | Path, revision: str | None = None) -> str:
    """A string that changes whenever a checkpoint's weights, config or model code change.

    For a local folder: its resolved path and the size and modification time of its config, weight and code
    files. For a Hub id: the same over the cached snapshot folder, whose name is the commit hash.
    """
    folder = Path(checkpoint)
    if not folder.is_dir():
        from transformers.utils import cached_file

        folder = Path(cached_file(str(checkpoint), "config.json", revision=revision)).parent
    files = sorted(
        path
        for pattern in ("config.json", "*.safetensors", "*.bin", "*.index.json", "*.py")
        for path in folder.glob(pattern)
    )
    stats = [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files]
    return hashlib.sha256(json.dumps([str(folder.resolve()), stats]).encode()).hexdigest()


class EmbeddingCache:
    """Video embeddings saved on disk, keyed by checkpoint + video file + sampling settings.

    One safetensors file per (checkpoint fingerprint, settings) pair in `directory`; inside it, one tensor per
    clip, named by a hash of the clip's resolved path, size, modification time and window. A changed file or
    checkpoint therefore misses the cache instead of returning stale embeddings. Failed clips are not cached
    (they are retried next time). Writes are atomic (temporary file + rename).
    """

    def __init__(self, directory: str | Path, checkpoint: str, settings: Mapping[str, Any]):
        self.directory = Path(directory)
        self.settings = json.dumps({"checkpoint": checkpoint, "settings": dict(settings)}, sort_keys=True, default=str)
        self.path = self.directory / f"{hashlib.sha256(self.settings.encode()).hexdigest()[:32]}.safetensors"
        self._entries: dict[str, torch.Tensor] = {}
        self._dirty = False
        if self.path.is_file():
            try:
                self._entries = load_file(str(self.path))
            except Exception as error:  # a truncated or foreign file must not stop an evaluation
                logger.warning("Ignoring unreadable embedding cache %s: %s", self.path, error)

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(clip: VideoClip) -> str | None:
        """The clip's cache key, or None when its file cannot be stat'ed (it will fail to decode anyway)."""
        try:
            path = Path(clip.path).resolve()
            stat = path.stat()
        except OSError:
            return None
        identity = [str(path), stat.st_size, stat.st_mtime_ns, clip.start, clip.end]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()

    def get(self, clip: VideoClip) -> torch.Tensor | None:
        key = self.key(clip)
        return None if key is None else self._entries.get(key)

    def put(self, clip: VideoClip, embedding: torch.Tensor) -> None:
        key = self.key(clip)
        if key is not None:
            self._entries[key] = embedding.detach().float().cpu().contiguous()
            self._dirty = True

    def save(self) -> None:
        if not self._dirty:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        save_file(self._entries, str(temporary), metadata={"videofirst_cache": self.settings})
        os.replace(temporary, self.path)
        self._dirty = False


class ClipDataset(torch.utils.data.Dataset):
    """Decodes one clip per item; a clip that fails yields its error instead of a tensor (never a neighbour)."""

    def __init__(self, clips: Sequence[VideoClip], indices: Sequence[int], video_processor: Any, options: dict):
        # An ambiguous or incomplete sampling request is the caller's error: raised here, not excluded per video.
        resolve_sampling(options.get("fps"), options.get("num_frames"), options.get("sampling"))
        self.clips = clips
        self.indices = list(indices)
        self.video_processor = video_processor
        self.options = options

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, Any]:
        index = self.indices[item]
        clip = self.clips[index]
        try:
            processed = self.video_processor(
                videos=clip.path, start=clip.start, end=clip.end, return_tensors="pt", **self.options
            )
        except (ValueError, OSError, RuntimeError) as error:  # VideoDecodingError is a ValueError
            return {"index": index, "pixels": None, "error": f"{type(error).__name__}: {error}"}
        real = processed["video_frame_mask"][0].bool()
        return {"index": index, "pixels": processed["pixel_values_videos"][0][real], "error": None}


class ClipCollator:
    """Pads the decoded clips of a `ClipDataset` batch into `pixel_values_videos` / `video_frame_mask`; `indices`
    names the clips they are, `failures` maps each clip that failed to its error."""

    def __init__(self, tubelet_frames: int):
        self.tubelet_frames = tubelet_frames

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        decoded = [item for item in items if item["pixels"] is not None]
        batch: dict[str, Any] = {
            "indices": [item["index"] for item in decoded],
            "failures": {item["index"]: item["error"] for item in items if item["pixels"] is None},
        }
        if decoded:
            pixels, frame_mask = pad_video_batch([item["pixels"] for item in decoded], self.tubelet_frames)
            batch.update(pixel_values_videos=pixels, video_frame_mask=frame_mask)
        return batch


def clip_loader(
    clips: Sequence[VideoClip],
    video_processor: Any,
    options: Mapping[str, Any],
    batch_size: int,
    num_workers: int = 0,
    *,
    indices: Sequence[int] | None = None,
) -> torch.utils.data.DataLoader:
    """Batches of decoded clips (`ClipCollator`): `clips[i]` for every i of `indices` (default: all), decoded by
    `video_processor` with `options` (`fps`, `num_frames`, `sampling`) in `num_workers` workers. A clip that fails
    is listed in its batch's `failures`, never replaced by another clip."""
    return torch.utils.data.DataLoader(
        ClipDataset(clips, range(len(clips)) if indices is None else indices, video_processor, dict(options)),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=ClipCollator(int(getattr(video_processor, "tubelet_frames", 1))),
    )


def embed_video_clips(
    model: torch.nn.Module,
    video_processor: Any,
    clips: Sequence[VideoClip],
    *,
    fps: float | None = None,
    num_frames: int | None = None,
    sampling: str | None = None,
    segment_frames: int | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    cache: EmbeddingCache | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> ClipEmbeddings:
    """Decode and embed video files, reporting (not hiding) the ones that fail.

    Clips are decoded by `video_processor` (a `VideoFirstVideoProcessor`; `fps`, `num_frames`, `sampling` override
    its defaults) in a DataLoader with `num_workers` workers, and embedded whole or, with `segment_frames`, by the
    segment-aggregation baseline (`embed_videos`). A clip that fails to decode is listed in `failures` with its
    error and gets no embedding: nothing shifts onto the next clip. Clips found in `cache` are not decoded; newly
    embedded ones are added to it and the cache is saved.
    """
    chosen = (("fps", fps), ("num_frames", num_frames), ("sampling", sampling))
    options = {key: value for key, value in chosen if value is not None}
    found: dict[int, torch.Tensor] = {}
    if cache is not None:
        for index, clip in enumerate(clips):
            embedding = cache.get(clip)
            if embedding is not None:
                found[index] = embedding
    hits = len(found)
    missing = [index for index in range(len(clips)) if index not in found]
    failures: dict[int, str] = {}
    if missing:
        loader = clip_loader(clips, video_processor, options, batch_size, num_workers, indices=missing)
        for batch in tqdm(loader, desc="videos", unit="batch", disable=not progress):
            failures.update(batch["failures"])
            for index, error in batch["failures"].items():
                logger.warning("Excluding %s from the evaluation: %s", clips[index].path, error)
            if not batch["indices"]:
                continue
            embeds = embed_videos(model, [batch], segment_frames=segment_frames, device=device)
            for index, embedding in zip(batch["indices"], embeds, strict=True):
                found[index] = embedding
                if cache is not None:
                    cache.put(clips[index], embedding)
        if cache is not None:
            cache.save()
    indices = sorted(found)
    if not indices:
        first_error = next(iter(failures.values()))
        raise RuntimeError(f"None of the {len(clips)} videos could be decoded; first error: {first_error}")
    return ClipEmbeddings(torch.stack([found[index] for index in indices]), indices, failures, hits)
