"""Video-text and image-text data for training and evaluation.

Sources
-------
A *source* is named by one string, read with the `datasets` library:

* a manifest, ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet``: one row per clip with a ``video`` or ``image``
  column (or ``file_name``, modality from the extension) holding a path relative to the manifest's folder (or
  absolute), a ``caption`` or ``text`` column, and optional ``start`` / ``end`` seconds;
* a folder holding ``metadata.jsonl`` / ``.csv`` / ``.parquet`` (the layout of `datasets`' folder builders:
  ``file_name`` plus caption columns), read like a manifest;
* WebDataset-style tar shards (`videofirst.data.shards`: ``mp4`` or an image plus ``txt`` / ``json``): a folder of
  ``.tar`` files (searched recursively), one ``.tar``, a glob (``data/shard-*.tar``) or a brace pattern
  (``shard-{000000..000099}.tar``); ``hf://``, ``https://`` and other fsspec URLs are streamed;
* a Hub dataset id (``owner/name``): the snapshot in the local cache is used when there is one (offline-first),
  otherwise it is downloaded; then it is read as a folder or as shards.

Local sources are map-style (`load_source`): tar shards are indexed once (member byte ranges) and each sample
is read with one seek, so shuffling is global, and resuming skips batches without decoding them. With
``data.streaming`` (always for remote shards) sources are read front to back as `datasets.IterableDataset`s
(`stream_source`); see `build_dataloader` for what that means for shuffling, several processes and resuming.

Mixing
------
Several sources with weights (``[{"source": ..., "weight": ...}, ...]``, recipe field ``data.train_sources``)
mix at the *batch* level: every batch comes from one source, so image-text and video-text batches alternate
without mixing modalities inside a batch (the model takes either ``pixel_values`` or ``pixel_values_videos``).
Map-style mixes follow a schedule that depends only on the seed and the epoch (`MixedMediaTextDataset`), so a
resumed run replays exactly. Streaming mixes interleave samples (`datasets.interleave_datasets`), so their
sources must share a modality.

Bad samples
-----------
A sample that cannot be read or decoded (any decoding error in a DataLoader worker, memory errors included) is
*dropped and counted once*: it never reaches a batch, no other sample takes its place (so no sample appears twice
in an epoch), and the batch reports the number of samples it lost in its ``skipped`` count. Map-style batches
therefore shrink by their bad samples; streams fill their batches with the next good samples (each failure is
counted in the following good sample). With several processes, `equalize_batch` trims every process's batch to
the smallest one (a warning names the good samples left out of that step), and a micro-batch with no decodable
sample on some process is skipped by every process, so all processes always train on batches of one size. The
training loop stops once more than ``data.max_bad_fraction`` of the samples read were bad, checked from
``data.bad_fraction_min_samples`` samples on (so one early bad clip cannot stop a run). Damaged tar shards and
shard samples without media count the same way.

Captions must be non-empty strings. A manifest row whose caption is missing, null, empty, whitespace-only or not
a string (a number), or a manifest that is not UTF-8, is refused when the manifest is loaded, with the file and
row named; a tar-shard sample with such a caption (or a non-UTF-8 ``txt``) is a bad sample, counted as above.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from videofirst.data.shards import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    caption_problem,
    expand_braces,
    index_tar_shard,
    iter_tar_samples,
    read_range,
)
from videofirst.modeling.video_processing_videofirst import VideoDecodingError, pad_video_batch
from videofirst.recipe import DataSection

logger = logging.getLogger(__name__)

MEDIA_COLUMNS = ("video", "image", "file_name")
TEXT_COLUMNS = ("caption", "text")
MANIFEST_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet", "metadata.json")
ROW_COLUMNS = ("media", "modality", "caption", "start", "end", "offset", "size", "error")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
# What reading or decoding one sample may raise (allocation failures included): a bad sample, never a crash.
_BAD_SAMPLE_ERRORS = (VideoDecodingError, ValueError, OSError, EOFError, RuntimeError, MemoryError)


# ----------------------------------------------------------------------------------------------------------------
# Source specs
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    source: str
    weight: float = 1.0


def parse_sources(spec: str | os.PathLike | dict | Sequence[str | os.PathLike | dict]) -> list[SourceSpec]:
    """One source string, a ``{"source": ..., "weight": ...}`` mapping, or a list of either, as `SourceSpec`s."""
    items = [spec] if isinstance(spec, (str, os.PathLike, dict)) else list(spec)
    if not items:
        raise ValueError("No data source given.")
    specs = []
    for item in items:
        if isinstance(item, dict):
            unknown = set(item) - {"source", "weight"}
            if unknown or "source" not in item:
                raise ValueError(f"A mixed source is {{source: ..., weight: ...}}; got {item!r}.")
            weight = item.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise ValueError(f"Source weight must be a positive number, got {weight!r} for {item['source']}.")
            specs.append(SourceSpec(os.fspath(item["source"]), float(weight)))
        else:
            specs.append(SourceSpec(os.fspath(item)))
    return specs


def is_remote(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


@dataclass(frozen=True)
class ResolvedSource:
    kind: str  # "manifest" (a table file) or "shards"
    locations: tuple[str, ...]  # the table file, or the shard paths / URLs


def resolve_source(source: str) -> ResolvedSource:
    """What a source string names (see the module docstring)."""
    source = source.removeprefix("file://")
    if is_remote(source):
        return ResolvedSource("shards", tuple(_expand_remote(source)))
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return ResolvedSource("manifest", (str(path),))
        if path.suffix.lower() == ".tar":
            return ResolvedSource("shards", (str(path),))
        raise ValueError(f"{source} is neither a manifest ({', '.join(MANIFEST_SUFFIXES)}) nor a .tar shard.")
    if path.is_dir():
        for name in METADATA_FILES:
            if (path / name).is_file():
                return ResolvedSource("manifest", (str(path / name),))
        shards = sorted(str(shard) for shard in path.rglob("*.tar"))
        if shards:
            return ResolvedSource("shards", tuple(shards))
        raise FileNotFoundError(f"{source} holds neither a metadata file ({', '.join(METADATA_FILES)}) nor tar shards.")
    if any(char in source for char in "*?[{"):
        shards = sorted({match for name in expand_braces(source) for match in glob.glob(name)})
        if not shards:
            raise FileNotFoundError(f"No shards match {source}.")
        return ResolvedSource("shards", tuple(shards))
    if _HUB_ID.match(source):
        return resolve_source(str(_hub_snapshot(source)))
    raise FileNotFoundError(f"Data source not found: {source}")


def _expand_remote(url: str) -> list[str]:
    urls = expand_braces(url)
    if not any(char in url for char in "*?["):
        return urls
    import fsspec

    expanded = []
    for pattern in urls:
        fs, _, paths = fsspec.get_fs_token_paths(pattern)
        protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
        expanded.extend(f"{protocol}://{path}" for path in sorted(paths))
    if not expanded:
        raise FileNotFoundError(f"No shards match {url}.")
    return expanded


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of a Hub dataset repo: the cached one if any (no network), else a download."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(
                f"Dataset {repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set."
            ) from None
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset"))
    except Exception as err:
        raise FileNotFoundError(f"Dataset {repo_id} is not cached locally and could not be downloaded: {err}") from err


# ----------------------------------------------------------------------------------------------------------------
# Map-style sources
# ----------------------------------------------------------------------------------------------------------------


def _modality_of(path: str) -> str | None:
    extension = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if extension in VIDEO_EXTENSIONS:
        return "video"
    if extension in IMAGE_EXTENSIONS:
        return "image"
    return None


def load_manifest(path: str | Path) -> datasets.Dataset:
    """Read a manifest (or a folder's metadata file) with `datasets`, resolve media paths, and check columns.

    Rows follow the pipeline's schema: ``media`` (absolute path), ``modality``, ``caption``, ``start``, ``end``,
    and ``offset`` / ``size`` / ``error`` (None here; used by tar shards).
    """
    path = Path(path)
    if path.is_dir():
        return load_source(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"Manifest not found: {path}")
    builder = MANIFEST_SUFFIXES.get(path.suffix.lower(), "json")
    try:
        rows = datasets.load_dataset(builder, data_files=str(path), split="train")
        # The JSON reader keeps invalid UTF-8 in string columns (it would fail later, in a worker): check now.
        rows.data.table.validate(full=True)
    except Exception as error:  # the CSV reader fails, wrapped in a DatasetGenerationError
        if _caused_by(error, UnicodeDecodeError) or "UTF8" in str(error):
            raise ValueError(_not_utf8(path)) from error
        raise
    media = [column for column in MEDIA_COLUMNS if column in rows.column_names]
    text = [column for column in TEXT_COLUMNS if column in rows.column_names]
    if len(media) != 1 or not text:
        raise ValueError(
            f"Manifest {path} needs one of the columns {MEDIA_COLUMNS} and one of {TEXT_COLUMNS}; "
            f"it has {rows.column_names}."
        )
    root = path.parent.resolve()
    media_column, text_column = media[0], text[0]
    _check_captions(path, rows[text_column], text_column)

    def normalise(row: dict[str, Any]) -> dict[str, Any]:
        name = row[media_column]
        modality = media_column if media_column != "file_name" else _modality_of(str(name or ""))
        media_path = None if not name else Path(name)
        error = None
        if media_path is None:
            error = "the row names no media file"
        elif modality is None:
            error = f"cannot tell video from image by the extension of {name}"
        return {
            "media": None if media_path is None else str(media_path if media_path.is_absolute() else root / media_path),
            "modality": modality or "video",
            "caption": row[text_column],
            "start": row.get("start"),
            "end": row.get("end"),
            "offset": None,
            "size": None,
            "error": error,
        }

    return rows.map(normalise, remove_columns=rows.column_names)


def _check_captions(path: Path, captions: Sequence[Any], column: str) -> None:
    """Refuse a manifest whose captions are not all non-empty strings, naming the rows (counted from 1)."""
    problems = []
    for number, caption in enumerate(captions, start=1):
        problem = caption_problem(caption)
        if problem is not None:
            problems.append(f"row {number} ({problem})")
    if problems:
        shown = ", ".join(problems[:10]) + (f" and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ValueError(f"{path}: every `{column}` must be a non-empty string; {shown}.")


def _caused_by(error: BaseException | None, kind: type[BaseException]) -> bool:
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


def _not_utf8(path: Path) -> str:
    """Where a text manifest stops being UTF-8."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                return (
                    f"{path} is not UTF-8: line {number}, byte {error.start + 1} ({line[: error.end + 20]!r}); "
                    "save the manifest as UTF-8."
                )
    return f"{path} is not UTF-8; save the manifest as UTF-8."


def load_shards(paths: Sequence[str]) -> datasets.Dataset:
    """Index local tar shards into rows (one per sample, with the media member's byte range)."""
    rows: list[dict] = []
    for path in paths:
        shard_rows, error = index_tar_shard(path)
        if error is not None:
            # The damaged part cannot be counted sample by sample; one bad row stands for it.
            logger.warning("%s", error)
            shard_rows.append({**_error_row(path, error), "key": None})
        rows.extend(shard_rows)
    if not rows:
        raise ValueError(f"The shards {list(paths)[:3]}... hold no samples.")
    # The sample key names a bad sample in warnings (``shard.tar#key``).
    return datasets.Dataset.from_list([{column: row[column] for column in (*ROW_COLUMNS, "key")} for row in rows])


def _error_row(media: str, error: str) -> dict:
    return {"media": media, "modality": "video", "caption": "", "start": None, "end": None, "offset": None,
            "size": None, "error": error}  # fmt: skip


def load_source(source: str) -> datasets.Dataset:
    """The rows of a local source (manifest, folder, tar shards or cached Hub dataset), map-style."""
    resolved = resolve_source(source)
    if resolved.kind == "manifest":
        return load_manifest(resolved.locations[0])
    if any(is_remote(location) for location in resolved.locations):
        raise ValueError(f"{source} is remote; read it with streaming (data.streaming=true).")
    return load_shards(resolved.locations)


def source_captions(spec, limit: int | None = None) -> list[str]:
    """Captions of one source or a mix (e.g. to train a tokenizer), in source order."""
    captions: list[str] = []
    for item in parse_sources(spec):
        resolved = resolve_source(item.source)
        if any(is_remote(location) for location in resolved.locations):
            rows = (row for url in resolved.locations for row in iter_tar_samples(url))
            captions.extend(row["caption"] for row in rows if row["caption"] and not row["error"])
        else:
            captions.extend(caption for caption in load_source(item.source)["caption"] if caption)
        if limit is not None and len(captions) >= limit:
            return captions[:limit]
    return captions


# ----------------------------------------------------------------------------------------------------------------
# Decoding one sample
# ----------------------------------------------------------------------------------------------------------------


def load_media(row: dict[str, Any], video_processor, data: DataSection) -> torch.Tensor:
    """Pixels of one row: a video ``(T, C, H, W)`` (real frames only) or an image ``(C, H, W)``."""
    if row.get("error"):
        raise ValueError(row["error"])
    media = row["media"]
    if row.get("data") is not None:
        media = row["data"]
    elif row.get("offset") is not None:
        media = read_range(media, int(row["offset"]), int(row["size"]))
    if row["modality"] == "image":
        return video_processor.preprocess_images(media, return_tensors="pt")["pixel_values"][0]
    processed = video_processor(
        videos=media,
        **data.sampling_options(),  # the recipe's training policy, named explicitly
        start=row.get("start"),
        end=row.get("end"),
        decode_backend=data.decode_backend,  # "auto": the decoder picks PyAV when installed
        keyframe_snap=data.keyframe_snap,
        return_tensors="pt",
    )
    real_frames = processed["video_frame_mask"][0].bool()
    return processed["pixel_values_videos"][0][real_frames]


def _describe(row: dict[str, Any]) -> str:
    key = row.get("key")
    return f"{row['media']}#{key}" if key else str(row["media"])


def _source_modality(rows: datasets.Dataset) -> str:
    """The one modality of a source's readable rows (rows with an ``error`` never reach a batch)."""
    import pyarrow.compute as pc

    columns = [column for column in ("modality", "error") if column in rows.column_names]
    table = rows.select_columns(columns).with_format("arrow")[:]
    readable = table["modality"]
    if "error" in columns:
        readable = readable.filter(pc.is_null(table["error"]))
    modalities = sorted(set(readable.to_pylist())) or ["video"]
    if len(modalities) != 1:
        raise ValueError(f"A source mixes modalities {modalities}; keep images and videos apart.")
    return modalities[0]


class MediaTextDataset(Dataset):
    """Rows of one source; each item is one decoded clip (or image) with its caption.

    Decoding happens in `__getitem__`, i.e. in the DataLoader workers. A row that fails to decode is logged and
    its item carries no pixels and ``skipped=1``: the collator drops it from the batch (nothing takes its place).
    """

    def __init__(self, rows: datasets.Dataset, video_processor, data: DataSection):
        if len(rows) == 0:
            raise ValueError("The source has no rows.")
        self.rows = rows
        self.video_processor = video_processor
        self.data = data
        self.modality = _source_modality(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, row: dict[str, Any]) -> torch.Tensor:
        return load_media(row, self.video_processor, self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = self.rows[index]
        try:
            pixels = self._load(row)
        except _BAD_SAMPLE_ERRORS as error:
            logger.warning("Skipping %s: %s: %s", _describe(row), type(error).__name__, error)
            return {"pixels": None, "modality": row["modality"], "caption": row["caption"], "skipped": 1}
        return {"pixels": pixels, "modality": row["modality"], "caption": row["caption"], "skipped": 0}


class MixedMediaTextDataset(Dataset):
    """Batches drawn from several sources by weight; every batch comes from a single source.

    An epoch has as many batches as one pass over all sources would (``sum(len // batch_size)``); source ``i``
    gets ``round(weight_i / sum(weights) * batches)`` of them (largest remainders), in an order shuffled from
    ``(seed, epoch)``. Each source is read as an endless sequence of random permutations seeded by ``(seed,
    source, round)`` and continues where the previous epoch stopped, so every row is seen before any repeats.
    Item ``i`` is slot ``i % batch_size`` of batch ``i // batch_size``: iterate it in order (no sampler
    shuffling) with that batch size. Everything is a function of ``(seed, epoch, index)``, so skipping the
    batches of an interrupted epoch replays exactly, in any number of DataLoader workers or processes.
    """

    def __init__(
        self,
        sources: Sequence[MediaTextDataset],
        weights: Sequence[float],
        batch_size: int,
        seed: int,
        batches_per_epoch: int | None = None,
    ):
        if len(sources) != len(weights) or not sources:
            raise ValueError("One weight per source is needed.")
        self.sources = list(sources)
        self.batch_size = batch_size
        self.seed = int(seed) % 2**62
        self.batches_per_epoch = batches_per_epoch or sum(len(source) // batch_size for source in sources)
        if self.batches_per_epoch < 1:
            raise ValueError(f"The sources hold fewer samples than one batch of {batch_size}.")
        self.counts = _apportion(weights, self.batches_per_epoch)
        self.epoch = 0
        self._plan: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (epoch, source per batch, its rank)
        self._permutations: dict[tuple[int, int], torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size

    def _generator(self, *key: int) -> torch.Generator:
        value = self.seed
        for part in key:
            value = (value * 1_000_003 + part + 1) % 2**62
        return torch.Generator().manual_seed(value)

    def batch_sources(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The source of every batch of `epoch`, and how many earlier batches of the epoch share its source."""
        if self._plan is None or self._plan[0] != epoch:
            plan = torch.repeat_interleave(torch.arange(len(self.sources)), torch.tensor(self.counts))
            plan = plan[torch.randperm(len(plan), generator=self._generator(0, epoch))]
            rank = torch.zeros_like(plan)
            for source in range(len(self.sources)):
                chosen = plan == source
                rank[chosen] = torch.arange(int(chosen.sum()))
            self._plan = (epoch, plan, rank)
        return self._plan[1], self._plan[2]

    def _permutation(self, source: int, round_: int) -> torch.Tensor:
        key = (source, round_)
        if key not in self._permutations:
            if len(self._permutations) >= 2 * len(self.sources):
                self._permutations.clear()
            generator = self._generator(1, source, round_)
            self._permutations[key] = torch.randperm(len(self.sources[source]), generator=generator)
        return self._permutations[key]

    def __getitem__(self, index: int) -> dict[str, Any]:
        batch, slot = divmod(int(index), self.batch_size)
        plan, rank = self.batch_sources(self.epoch)
        source = int(plan[batch])
        # Position in the source's endless stream: every earlier epoch took counts[source] batches from it.
        position = (self.epoch * self.counts[source] + int(rank[batch])) * self.batch_size + slot
        round_, offset = divmod(position, len(self.sources[source]))
        return self.sources[source][int(self._permutation(source, round_)[offset])]


def _apportion(weights: Sequence[float], total: int) -> list[int]:
    """Integer shares of `total` proportional to `weights` (largest remainders, ties to the earlier source)."""
    weight_sum = float(sum(weights))
    exact = [weight / weight_sum * total for weight in weights]
    counts = [int(value) for value in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


# ----------------------------------------------------------------------------------------------------------------
# Streaming sources
# ----------------------------------------------------------------------------------------------------------------


def _stream_rows(shards: list[str]) -> Iterator[dict]:
    for url in shards:
        for row in iter_tar_samples(url):
            yield {column: row.get(column) for column in (*ROW_COLUMNS, "data", "key")}


def stream_source(source: str) -> datasets.IterableDataset:
    """Raw rows of a source as a `datasets.IterableDataset`, one data shard per tar shard (local sources that
    are not tar shards become iterable with up to 64 shards)."""
    resolved = resolve_source(source)
    if resolved.kind == "shards":
        return datasets.IterableDataset.from_generator(_stream_rows, gen_kwargs={"shards": list(resolved.locations)})
    rows = load_manifest(resolved.locations[0])
    rows = rows.add_column("data", [None] * len(rows)).add_column("key", [None] * len(rows))
    return rows.to_iterable_dataset(num_shards=min(64, len(rows)))


class _DecodeAndCount:
    """The decoding step of a stream (`datasets` map function): failures are dropped by the following filter
    and counted in the next good sample's ``skipped`` (one copy per DataLoader worker)."""

    def __init__(self, video_processor, data: DataSection):
        self.video_processor = video_processor
        self.data = data
        self.pending = 0

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        try:
            pixels = load_media(row, self.video_processor, self.data)
        except _BAD_SAMPLE_ERRORS as error:
            logger.warning("Skipping %s: %s: %s", _describe(row), type(error).__name__, error)
            self.pending += 1
            return {"pixels": None, "modality": row["modality"], "caption": row["caption"], "skipped": 0}
        skipped, self.pending = self.pending, 0
        return {"pixels": pixels, "modality": row["modality"], "caption": row["caption"], "skipped": skipped}


def build_stream(
    specs: Sequence[SourceSpec], video_processor, data: DataSection, seed: int, shuffle: bool
) -> datasets.IterableDataset:
    """The decoded stream of one source or a sample-level weighted mix of several (same modality)."""
    streams = [stream_source(spec.source) for spec in specs]
    if shuffle:
        # Endless: processes reading different shards never run out at different times (no epoch end to
        # disagree on); the shuffle buffer keeps mixing across passes.
        streams = [stream.repeat(None) for stream in streams]
    if len(streams) > 1:
        total = sum(spec.weight for spec in specs)
        stream = datasets.interleave_datasets(
            streams,
            probabilities=[spec.weight / total for spec in specs] if shuffle else None,
            seed=seed % 2**32,
            stopping_strategy="all_exhausted",
        )
    else:
        stream = streams[0]
    if shuffle:
        stream = stream.shuffle(seed=seed % 2**32, buffer_size=data.shuffle_buffer)
    decoded = stream.map(_DecodeAndCount(video_processor, data), remove_columns=["data", "key", "error"])
    return decoded.filter(_was_decoded)


def _was_decoded(row: dict[str, Any]) -> bool:  # a module-level function: picklable for spawned workers
    return row["pixels"] is not None


# ----------------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------------


class MediaTextCollator:
    """Stacks clips (padded, with a frame mask) or images, and tokenizes the captions. Samples that failed to
    decode (no pixels) are dropped; ``skipped`` (shape ``(1,)``, so that accelerate can concatenate batches)
    counts the bad samples the batch stands for."""

    def __init__(self, tokenizer, tubelet_frames: int, max_text_length: int):
        self.tokenizer = tokenizer
        self.tubelet_frames = tubelet_frames
        self.max_text_length = max_text_length

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        skipped = torch.tensor([sum(int(sample["skipped"]) for sample in samples)])
        samples = [sample for sample in samples if sample["pixels"] is not None]
        if not samples:  # every sample failed: an empty batch that the loops skip (see `equalize_batch`)
            empty = torch.zeros(0, 0, dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty, "skipped": skipped, "captions": []}
        modalities = {sample["modality"] for sample in samples}
        if len(modalities) != 1:
            raise ValueError(f"A batch mixes modalities {sorted(modalities)}; keep video and image sources apart.")
        text = self.tokenizer(
            [sample["caption"] for sample in samples],
            padding=True,
            truncation=True,
            max_length=self.max_text_length,
            return_tensors="pt",
        )
        batch = {
            "input_ids": text["input_ids"],
            "attention_mask": text["attention_mask"],
            "skipped": skipped,
            # The strings themselves, so evaluation pairs each clip with its caption even after skips.
            "captions": [sample["caption"] for sample in samples],
        }
        pixels = [sample["pixels"] for sample in samples]
        if modalities == {"image"}:
            batch["pixel_values"] = torch.stack(pixels)
        else:
            batch["pixel_values_videos"], batch["video_frame_mask"] = pad_video_batch(pixels, self.tubelet_frames)
        return batch


def equalize_batch(batch: dict[str, Any], accelerator) -> dict[str, Any]:
    """`batch` trimmed to the smallest batch size over all processes (one tiny all-gather), so every process
    trains on as many samples as the others after dropping bad ones. Trimmed samples are good samples left out
    of this step (named in a warning); they are not counted as bad. A batch left empty is skipped by the
    caller on every process (its ``skipped`` count still counts)."""
    size = len(batch["captions"])
    if accelerator.num_processes == 1:
        return batch
    smallest = int(accelerator.gather(torch.tensor([size], device=accelerator.device)).min())
    if smallest == size:
        return batch
    logger.warning(
        "Process %d: %d decodable samples of this batch left out (%s) so that every process trains on %d "
        "(another process dropped more bad samples).",
        accelerator.process_index, size - smallest, batch["captions"][smallest:], smallest,
    )  # fmt: skip
    if smallest == 0:  # nothing to keep: the empty batch of `MediaTextCollator`
        empty = torch.zeros(0, 0, dtype=torch.long, device=batch["input_ids"].device)
        return {"input_ids": empty, "attention_mask": empty, "skipped": batch["skipped"], "captions": []}
    trimmed = {}
    for key, value in batch.items():
        if key != "skipped" and (torch.is_tensor(value) or isinstance(value, list)):
            value = value[:smallest]  # every per-sample tensor (dim 0) and the caption list
        trimmed[key] = value
    return trimmed


def training_sources(data: DataSection) -> str | list[dict[str, Any]]:
    """The recipe's training data: the ``train_sources`` mix when given, else ``train_manifest``."""
    return list(data.train_sources) if data.train_sources else data.train_manifest


def build_dataloader(
    data: DataSection,
    manifest: str | Path | Sequence[str | dict],
    processor,
    batch_size: int,
    shuffle: bool,
    *,
    seed: int | None = None,
) -> DataLoader:
    """A DataLoader over one source or a weighted mix (`manifest`: a source string, or a list of sources /
    ``{"source", "weight"}`` mappings). Training loaders (`shuffle=True`) drop incomplete batches.

    Map-style (local sources): one source shuffles like any map-style dataset (accelerate's seedable sampler);
    a mix is a `MixedMediaTextDataset` seeded by `seed` (default ``torch.initial_seed()``, i.e. the seed of
    ``accelerate.utils.set_seed``). Both shard over processes with accelerate's batch samplers, re-seed per
    epoch through ``set_epoch``, and skip batches on resume without decoding them.

    Streaming (``data.streaming``, or remote shards) returns a loader over a `datasets.IterableDataset`, with
    these limits: shuffling is a shard-order shuffle plus a ``data.shuffle_buffer`` sample buffer; a training
    stream is endless (its epoch never ends, reshuffled only through the buffer); resuming replays the
    stream and decodes the skipped batches again (exact, but it costs the decoding time); several processes
    need ``DataLoaderConfiguration(dispatch_batches=False)`` in the Accelerator and at least as many shards as
    processes (accelerate then gives each process its own shards; with fewer shards every process reads all
    of them and keeps its share of the batches); samples that fail at the very end of a finite (evaluation)
    stream are not counted; and `len()` of the loader is undefined.
    """
    specs = parse_sources(manifest)
    seed = torch.initial_seed() if seed is None else int(seed)
    video_processor = processor.video_processor
    collator = MediaTextCollator(processor.tokenizer, video_processor.tubelet_frames, data.max_text_length)
    loader_options = dict(num_workers=data.num_workers, collate_fn=collator, persistent_workers=False)
    if data.streaming or any(is_remote(spec.source) for spec in specs):
        stream = build_stream(specs, video_processor, data, seed, shuffle)
        return DataLoader(stream, batch_size=batch_size, drop_last=shuffle, **loader_options)
    sources = [MediaTextDataset(load_source(spec.source), video_processor, data) for spec in specs]
    if len(sources) == 1:
        dataset = sources[0]
        if shuffle and len(dataset) < batch_size:
            raise ValueError(f"{specs[0].source} has {len(dataset)} rows, fewer than one batch of {batch_size}.")
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=shuffle, **loader_options)
    if not shuffle:
        modalities = {source.modality for source in sources}
        if len(modalities) > 1:
            raise ValueError("An evaluation loader reads its sources in order, so they must share a modality.")
        return DataLoader(ConcatDataset(sources), batch_size=batch_size, shuffle=False, **loader_options)
    mixed = MixedMediaTextDataset(sources, [spec.weight for spec in specs], batch_size, seed)
    return DataLoader(mixed, batch_size=batch_size, shuffle=False, drop_last=True, **loader_options)
