"""Video-text and image-text data for training and evaluation.

A manifest (JSONL or CSV, read with `datasets`) has one row per clip: a `video` (or `image`) column with a
path relative to the manifest's folder (or absolute), a `caption` (or `text`) column, and optional `start` /
`end` seconds. Clips are decoded inside DataLoader workers by the VideoFirst video processor.

A sample that cannot be decoded is *skipped and counted*: the dataset moves on to the next row and reports
how many it skipped, so batches keep their size (which contrastive training across processes relies on)
and the training loop can stop once too large a fraction of the data is bad.
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader, Dataset

from videofirst.modeling.video_processing_videofirst import VideoDecodingError, pad_video_batch
from videofirst.recipe import DataSection

logger = logging.getLogger(__name__)

MEDIA_COLUMNS = ("video", "image")
TEXT_COLUMNS = ("caption", "text")


def load_manifest(path: str | Path) -> datasets.Dataset:
    """Read a JSONL / CSV manifest with `datasets`, resolve media paths, and check its columns."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Manifest not found: {path}")
    builder = "csv" if path.suffix == ".csv" else "json"
    rows = datasets.load_dataset(builder, data_files=str(path), split="train")
    media = [column for column in MEDIA_COLUMNS if column in rows.column_names]
    text = [column for column in TEXT_COLUMNS if column in rows.column_names]
    if len(media) != 1 or not text:
        raise ValueError(
            f"Manifest {path} needs one of the columns {MEDIA_COLUMNS} and one of {TEXT_COLUMNS}; "
            f"it has {rows.column_names}."
        )
    root = path.parent.resolve()
    media_column, text_column = media[0], text[0]

    def normalise(row: dict[str, Any]) -> dict[str, Any]:
        media_path = Path(row[media_column])
        return {
            "media": str(media_path if media_path.is_absolute() else root / media_path),
            "modality": media_column,
            "caption": row[text_column],
            "start": row.get("start"),
            "end": row.get("end"),
        }

    return rows.map(normalise, remove_columns=rows.column_names)


class MediaTextDataset(Dataset):
    """Rows of a manifest; each item is one decoded clip (or image) with its caption.

    Decoding happens in `__getitem__`, i.e. in the DataLoader workers. A row that fails to decode is
    logged and the next row is tried; the item reports how many rows it skipped.
    """

    def __init__(self, rows: datasets.Dataset, video_processor, data: DataSection, max_skips: int = 16):
        if len(rows) == 0:
            raise ValueError("The manifest has no rows.")
        self.rows = rows
        self.video_processor = video_processor
        self.data = data
        self.max_skips = min(max_skips, len(rows))

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, row: dict[str, Any]) -> torch.Tensor:
        if row["modality"] == "image":
            return self.video_processor.preprocess_images(row["media"], return_tensors="pt")["pixel_values"][0]
        processed = self.video_processor(
            videos=row["media"],
            fps=self.data.fps,
            num_frames=self.data.num_frames,
            sampling=self.data.sampling,
            start=row["start"],
            end=row["end"],
            return_tensors="pt",
        )
        real_frames = processed["video_frame_mask"][0].bool()
        return processed["pixel_values_videos"][0][real_frames]

    def __getitem__(self, index: int) -> dict[str, Any]:
        for skipped in range(self.max_skips):
            row = self.rows[(index + skipped) % len(self.rows)]
            try:
                pixels = self._load(row)
            except (VideoDecodingError, ValueError, OSError) as error:
                logger.warning("Skipping %s: %s", row["media"], error)
                continue
            return {"pixels": pixels, "modality": row["modality"], "caption": row["caption"], "skipped": skipped}
        raise RuntimeError(
            f"{self.max_skips} consecutive samples from row {index} could not be decoded; the data looks broken."
        )


class MediaTextCollator:
    """Stacks clips (padded, with a frame mask) or images, and tokenizes the captions."""

    def __init__(self, tokenizer, tubelet_frames: int, max_text_length: int):
        self.tokenizer = tokenizer
        self.tubelet_frames = tubelet_frames
        self.max_text_length = max_text_length

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
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
            "skipped": torch.tensor([sample["skipped"] for sample in samples]),
            # The strings themselves, so evaluation pairs each clip with its caption even after skips.
            "captions": [sample["caption"] for sample in samples],
        }
        pixels = [sample["pixels"] for sample in samples]
        if modalities == {"image"}:
            batch["pixel_values"] = torch.stack(pixels)
        else:
            batch["pixel_values_videos"], batch["video_frame_mask"] = pad_video_batch(pixels, self.tubelet_frames)
        return batch


def build_dataloader(
    data: DataSection, manifest: str | Path, processor, batch_size: int, shuffle: bool
) -> DataLoader:
    """A DataLoader over a manifest. Training loaders (`shuffle=True`) drop the last incomplete batch."""
    dataset = MediaTextDataset(load_manifest(manifest), processor.video_processor, data)
    if shuffle and len(dataset) < batch_size:
        raise ValueError(f"{manifest} has {len(dataset)} rows, fewer than one batch of {batch_size}.")
    collator = MediaTextCollator(processor.tokenizer, processor.video_processor.tubelet_frames, data.max_text_length)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle,
        num_workers=data.num_workers,
        collate_fn=collator,
        persistent_workers=False,
    )
