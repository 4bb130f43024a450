"""Batches of video-text and image-text data: decoding samples, datasets, mixing, streams, the collator and
the training dataloader. Sources and manifests are read by `videofirst.data.sources`.

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
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from videofirst.data.shards import read_range
from videofirst.data.sources import SourceSpec, is_remote, load_source, parse_sources, stream_source
from videofirst.modeling.video_processing_videofirst import VideoDecodingError, pad_video_batch
from videofirst.recipe import DataSection

logger = logging.getLogger(__name__)

# What reading or decoding one sample may raise (allocation failures included): a bad sample, never a crash.
_BAD_SAMPLE_ERRORS = (VideoDecodingError, ValueError, OSError, EOFError, RuntimeError, MemoryError)


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
# Streams
# ----------------------------------------------------------------------------------------------------------------


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
