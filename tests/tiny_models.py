"""Tiny VideoFirst configurations shared by the tests (CPU, milliseconds per forward)."""

from pathlib import Path

from transformers import BertTokenizerFast

from videofirst import VideoFirstConfig, VideoFirstModel, VideoFirstProcessor, VideoFirstVideoProcessor

TINY_TEXT_CONFIG = {
    "model_type": "bert",
    "vocab_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 64,
}


def tiny_vision_config(**overrides) -> dict:
    config = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
        "num_frames": 4,
        "tubelet_size": [2, 8, 8],
    }
    config.update(overrides)
    return config


def tiny_config(text_overrides: dict | None = None, **vision_overrides) -> VideoFirstConfig:
    return VideoFirstConfig(
        vision_config=tiny_vision_config(**vision_overrides),
        text_config={**TINY_TEXT_CONFIG, **(text_overrides or {})},
        projection_dim=16,
    )


def tiny_model(**vision_overrides) -> VideoFirstModel:
    return VideoFirstModel(tiny_config(**vision_overrides))


def tiny_processor(folder: Path, vocab: list[str]) -> VideoFirstProcessor:
    """A processor for 32 px, 4-frame clips with a WordPiece tokenizer over `vocab` (written to `folder`)."""
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    video_processor = VideoFirstVideoProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, num_frames=4
    )
    return VideoFirstProcessor(
        video_processor=video_processor, tokenizer=BertTokenizerFast(vocab=str(folder / "vocab.txt"))
    )
