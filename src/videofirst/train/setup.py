"""Everything a run needs before its first step: data on disk, a tokenizer, the processor and the model."""

from dataclasses import dataclass
from pathlib import Path

from transformers import AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from videofirst.data.sources import is_remote, source_captions, training_sources
from videofirst.data.synthetic import write_synthetic_dataset
from videofirst.data.tokenization import train_sentencepiece_tokenizer
from videofirst.modeling.configuration_videofirst import VideoFirstConfig
from videofirst.modeling.modeling_videofirst import VideoFirstModel
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import VideoFirstVideoProcessor
from videofirst.recipe import PretrainRecipe, Recipe

# Fields of the vision config that a recipe may change on a model loaded with `model.init_from`.
RUNTIME_VISION_FIELDS = ("mask_ratio", "mask_type")


@dataclass
class DataPaths:
    train_manifest: Path
    tokenizer: Path


def prepare_data(recipe: PretrainRecipe, run_dir: Path) -> DataPaths:
    """Write the synthetic dataset when the recipe asks for one (`data.synthetic.folder`) and the training manifest
    is that dataset's, still missing; train a SentencePiece tokenizer on the training captions if the recipe names
    no tokenizer. Idempotent. A missing training manifest is otherwise an error, never a synthetic dataset."""
    data = recipe.data
    train_manifest = Path(data.train_manifest)
    synthetic = data.synthetic
    if not data.train_sources and not is_remote(data.train_manifest) and not train_manifest.exists():
        folder = None if synthetic.folder is None else Path(synthetic.folder)
        if folder is None or train_manifest.resolve() != (folder / "train.jsonl").resolve():
            where = (
                "set `data.synthetic.folder` to write the synthetic demo data"
                if folder is None
                else f"the synthetic data of `data.synthetic.folder` is written to {folder / 'train.jsonl'} only"
            )
            raise FileNotFoundError(f"`data.train_manifest` {train_manifest} does not exist ({where}).")
        write_synthetic_dataset(
            folder,
            num_videos=synthetic.num_videos,
            num_events=synthetic.num_events,
            duration=synthetic.duration,
            fps=synthetic.fps,
            size=synthetic.size,
            seed=recipe.run.seed,
            test_fraction=synthetic.test_fraction,
            shape_variants_per_set=synthetic.shape_variants_per_set,
        )
    if data.tokenizer is not None:
        return DataPaths(train_manifest, Path(data.tokenizer))
    tokenizer_dir = run_dir / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").is_file():
        captions = source_captions(training_sources(data))
        train_sentencepiece_tokenizer(captions, tokenizer_dir, data.tokenizer_vocab_size)
    return DataPaths(train_manifest, tokenizer_dir)


def build_processor(
    recipe: Recipe, tokenizer: PreTrainedTokenizerBase | str | Path, tubelet_frames: int | None = None
) -> VideoFirstProcessor:
    """The processor of a run, pretraining or video-to-text: frames sampled and sized as `recipe.data` says, and
    `tokenizer` (a tokenizer, or a folder to load one from). `tubelet_frames` (the video tower's tubelet length,
    to which frame counts are padded) defaults to the recipe's `model.vision.tubelet_size` (2 when unset)."""
    data = recipe.data
    if tubelet_frames is None:
        tubelet_frames = recipe.model.vision.get("tubelet_size", [2])[0]
    if not isinstance(tokenizer, PreTrainedTokenizerBase):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    video_processor = VideoFirstVideoProcessor(
        size={"shortest_edge": data.image_size},
        crop_size={"height": data.image_size, "width": data.image_size},
        # The checkpoint's default sees the whole video; training passes the recipe's policy per call.
        num_frames=data.num_frames,
        tubelet_frames=tubelet_frames,
    )
    return VideoFirstProcessor(video_processor=video_processor, tokenizer=tokenizer)


def _normalised(value):
    return list(value) if isinstance(value, tuple) else value


def build_model(recipe: PretrainRecipe, processor: VideoFirstProcessor) -> VideoFirstModel:
    """A fresh model from the recipe's config, or `model.init_from` with the recipe's masking settings."""
    model_section = recipe.model
    if model_section.init_from is not None:
        model = AutoModel.from_pretrained(
            model_section.init_from, attn_implementation=model_section.attn_implementation
        )
        if not isinstance(model, VideoFirstModel):
            raise ValueError(f"`model.init_from` {model_section.init_from} is not a VideoFirst checkpoint.")
        vision_config = model.config.vision_config
        for name, value in model_section.vision.items():
            if name in RUNTIME_VISION_FIELDS:
                setattr(vision_config, name, value)
                setattr(model.vision_model.config, name, value)
            elif _normalised(current := getattr(vision_config, name, None)) != _normalised(value):
                raise ValueError(
                    f"`model.vision.{name}` = {value!r} differs from the checkpoint's {current!r}; "
                    f"with `model.init_from` only {RUNTIME_VISION_FIELDS} can change."
                )
        return model
    tokenizer = processor.tokenizer
    text_config = {"model_type": "bert", **model_section.text}
    text_config.setdefault("vocab_size", len(tokenizer))
    text_config.setdefault("pad_token_id", tokenizer.pad_token_id)
    vision_config = {"image_size": recipe.data.image_size, "num_frames": recipe.data.num_frames, **model_section.vision}
    config = VideoFirstConfig(
        vision_config=vision_config,
        text_config=text_config,
        projection_dim=model_section.projection_dim,
        loss_type=model_section.loss_type,
    )
    model = VideoFirstModel(config)
    model.set_attn_implementation(model_section.attn_implementation)
    return model
