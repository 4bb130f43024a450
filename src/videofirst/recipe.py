"""Training recipes: one typed dataclass per concern, loaded from YAML with `key=value` overrides.

A recipe file mirrors the dataclasses below (sections `run`, `data`, `model`, `adaptation`, `optim`,
`checkpoint`, `eval`); anything left out keeps its default. A top-level `base: other.yaml` (relative to the
file) starts from another recipe and overrides it key by key. Overrides use dotted paths, e.g.
`optim.max_steps=50 model.vision.mask_ratio=0.5`, and values are parsed as YAML scalars.

`load_recipe` builds any recipe dataclass the same way: `PretrainRecipe` by default, or another `Recipe` made of
these sections (e.g. `videofirst.train.video_to_text.VideoToTextRecipe`) with `recipe_class=`. `parse_recipe_args` is
the command line the training scripts share (`--config`, `--resume` and overrides).
"""

import argparse
import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

import yaml
from transformers import CONFIG_MAPPING

from videofirst.adaptation import AdaptationConfig
from videofirst.modeling.configuration_videofirst import VideoFirstVisionConfig
from videofirst.modeling.video_processing_videofirst import SAMPLING_MODES


@dataclass
class RunSection:
    output_dir: str = "runs/demo"
    seed: int = 0
    log_every: int = 5
    # Trackers beside the always-on JSONL log: "auto" uses TensorBoard when it is installed.
    trackers: str = "auto"
    # Deterministic algorithms (`videofirst.train.determinism`): None is on for CPU runs, off on GPUs (faster kernels).
    deterministic: bool | None = None


@dataclass
class SyntheticDataSection:
    """The synthetic order-of-events dataset (`videofirst.data.synthetic`), written to `folder` (train.jsonl,
    test.jsonl, videos/) when `data.train_manifest` is missing there; with `folder` None a missing manifest is an
    error."""

    folder: str | None = None
    num_videos: int = 0
    num_events: int = 3
    duration: float = 12.0
    fps: float = 1.0
    size: int = 32
    test_fraction: float = 0.25
    # More videos per group with the colours of its first in the same order but other shapes (captions that differ
    # only in shape words): 0 keeps the groups to the order distractors.
    shape_variants_per_set: int = 0


@dataclass
class DataSection:
    train_manifest: str = "runs/demo/data/train.jsonl"
    eval_manifest: str | None = "runs/demo/data/test.jsonl"
    # Image-text pairs trained beside the videos (the paper's short stage); None trains on videos only.
    image_manifest: str | None = None
    image_loss_weight: float = 0.5
    synthetic: SyntheticDataSection = field(default_factory=SyntheticDataSection)
    tokenizer: str | None = None
    # Vocabulary of the SentencePiece tokenizer trained on the captions when `tokenizer` is None.
    tokenizer_vocab_size: int = 64
    max_text_length: int = 32
    num_frames: int = 16
    fps: float = 1.0
    # Training frame sampling: "window" (the paper's: the first `num_frames` frames at `fps` from the clip start),
    # "uniform" (`num_frames` spread over the clip) or "fps" (the whole clip at `fps`). Exported checkpoints
    # default to `num_frames` uniform over the whole video instead (see `setup.build_processor`).
    sampling: str = "window"
    image_size: int = 224
    num_workers: int = 0
    # The run stops once more than this fraction of the samples read so far failed to decode ...
    max_bad_fraction: float = 0.05
    # ... checked once at least this many samples were read (one bad clip among the first few stops nothing).
    bad_fraction_min_samples: int = 100
    # Training data as a weighted mix, e.g. [{source: data/clips_shards, weight: 3}, {source: img.jsonl, weight: 1}]:
    # each batch comes from one source, chosen by weight, deterministic by seed and epoch. Empty: `train_manifest`.
    # Any manifest field also takes a folder, tar shards or a Hub dataset id (see videofirst.data.sources).
    train_sources: list[dict[str, Any]] = field(default_factory=list)
    # Read tar shards front to back with `datasets` streaming instead of indexing them (remote shards always are).
    streaming: bool = False
    # Streaming shuffle buffer, in samples; it holds encoded samples (a few MiB per prepared long clip) per worker.
    shuffle_buffer: int = 100
    # "auto": PyAV when installed (converts only the sampled frames, faster on long videos), else decord.
    decode_backend: str = "auto"
    # Opt-in fast decoding: move sample times to keyframes at most this many seconds away (None: exact times).
    keyframe_snap: float | None = None

    def sampling_options(self) -> dict[str, Any]:
        """The processor's sampling arguments for `sampling` (each mode takes only its own)."""
        return {
            "fps": None if self.sampling == "uniform" else self.fps,
            "num_frames": None if self.sampling == "fps" else self.num_frames,
            "sampling": self.sampling,
        }


@dataclass
class ModelSection:
    # A VideoFirst checkpoint to start from (e.g. the short stage for the long stage); None builds from config.
    init_from: str | None = None
    vision: dict[str, Any] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)
    projection_dim: int = 512
    loss_type: str = "contrastive"
    attn_implementation: str = "sdpa"


@dataclass
class OptimSection:
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    # >1 splits each batch into this many micro-batches whose features are cached, so that the whole
    # batch is still one contrastive batch (gradient caching); activations are kept for one micro-batch only.
    contrastive_micro_batches: int = 1
    max_steps: int = 100
    learning_rate: float = 5e-4
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    warmup_steps: int = 10
    min_learning_rate_ratio: float = 0.0
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"
    activation_checkpointing: bool = False
    # torch.compile the two towers (shapes that change, e.g. kept-token counts, become dynamic after one
    # recompile); `compile_backend` as torch.compile takes it.
    compile: bool = False
    compile_backend: str = "inductor"


@dataclass
class CheckpointSection:
    save_every: int = 50
    keep_last: int = 2
    resume: bool = False
    # Start afresh in a run folder that holds another run, deleting its checkpoints, log and export first.
    overwrite: bool = False


@dataclass
class EvalSection:
    # Evaluate every N optimizer steps (0: only at the end) on `data.eval_manifest`.
    every: int = 0
    batch_size: int = 16
    max_videos: int | None = None


class Recipe:
    """Base of the recipe dataclasses (`PretrainRecipe`, `videofirst.train.video_to_text.VideoToTextRecipe`). Beside
    their own sections they have `run`, `data`, `optim`, `checkpoint` and `eval`, which the shared training
    bookkeeping reads (`videofirst.train.loop.TrainingRun`)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PretrainRecipe(Recipe):
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    adaptation: AdaptationConfig = field(default_factory=AdaptationConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: EvalSection = field(default_factory=EvalSection)


def _positive(value: Any) -> bool:
    return value > 0


def _non_negative(value: Any) -> bool:
    return value >= 0


def _fraction(value: Any) -> bool:
    return 0.0 <= value <= 1.0


def _below_one(value: Any) -> bool:
    return 0.0 <= value < 1.0


# Values a field may take, per section (subclasses inherit their base's rules): checked when the recipe is built,
# so that nothing fails later inside torch, accelerate or the data loader, and the error names the recipe key.
_RULES: dict[type, dict[str, tuple[Any, str]]] = {
    RunSection: {
        "seed": (lambda value: 0 <= value < 2**32, "in [0, 2**32)"),
        "log_every": (_positive, "at least 1"),
    },
    SyntheticDataSection: {
        "num_videos": (_non_negative, ">= 0"),
        "num_events": (_positive, "at least 1"),
        "duration": (_positive, "> 0"),
        "fps": (_positive, "> 0"),
        "size": (lambda value: value >= 16 and value % 2 == 0, "an even number >= 16"),
        "test_fraction": (_below_one, "in [0, 1)"),
    },
    DataSection: {
        "image_loss_weight": (_non_negative, ">= 0"),
        "tokenizer_vocab_size": (_positive, "at least 1"),
        "max_text_length": (_positive, "at least 1"),
        "num_frames": (_positive, "at least 1"),
        "fps": (_positive, "> 0"),
        "sampling": (lambda value: value in SAMPLING_MODES, " or ".join(map(repr, SAMPLING_MODES))),
        "image_size": (_positive, "at least 1"),
        "num_workers": (_non_negative, ">= 0"),
        "max_bad_fraction": (_fraction, "in [0, 1]"),
        "bad_fraction_min_samples": (_non_negative, ">= 0"),
        "shuffle_buffer": (_positive, "at least 1"),
        "decode_backend": (lambda value: value in ("auto", "pyav", "decord"), "'auto', 'pyav' or 'decord'"),
        "keyframe_snap": (lambda value: value is None or value >= 0, "null or >= 0"),
    },
    ModelSection: {"projection_dim": (_positive, "at least 1")},
    OptimSection: {
        "batch_size": (_positive, "at least 1"),
        "gradient_accumulation_steps": (_positive, "at least 1"),
        "contrastive_micro_batches": (_positive, "at least 1"),
        "max_steps": (_positive, "at least 1"),
        "learning_rate": (lambda value: 0 < value < float("inf"), "> 0"),
        "weight_decay": (_non_negative, ">= 0"),
        "beta1": (_below_one, "in [0, 1)"),
        "beta2": (_below_one, "in [0, 1)"),
        "eps": (_positive, "> 0"),
        "warmup_steps": (_non_negative, ">= 0"),
        "min_learning_rate_ratio": (_fraction, "in [0, 1]"),
        "max_grad_norm": (_non_negative, ">= 0 (0: no clipping)"),
        "mixed_precision": (lambda value: value in ("no", "fp16", "bf16", "fp8"), "'no', 'fp16', 'bf16' or 'fp8'"),
    },
    CheckpointSection: {
        "save_every": (_positive, "at least 1"),
        "keep_last": (_positive, "at least 1"),
    },
    EvalSection: {
        "every": (_non_negative, ">= 0 (0: only at the end)"),
        "batch_size": (_positive, "at least 1"),
        "max_videos": (lambda value: value is None or value >= 1, "null or at least 1"),
    },
}


def _check_values(section: Any, path: str) -> None:
    for cls in type(section).__mro__:
        for name, (allowed, description) in _RULES.get(cls, {}).items():
            value = getattr(section, name)
            if not allowed(value):
                key = f"{path}.{name}" if path else name
                raise ValueError(f"Recipe key `{key}` must be {description}, got {value!r}.")


def _check_model(model: ModelSection) -> None:
    """`model.vision` / `model.text` hold config fields: unknown names and values the config refuses are errors
    that name the recipe key (transformers' configs would keep a typo as an attribute and save it)."""
    text_type = model.text.get("model_type", "bert")
    if text_type not in CONFIG_MAPPING:
        raise ValueError(f"Recipe key `model.text.model_type`: unknown transformers model type {text_type!r}.")
    for key, values, config_class in (
        ("model.vision", model.vision, VideoFirstVisionConfig),
        ("model.text", model.text, CONFIG_MAPPING[text_type]),
    ):
        defaults = config_class()
        unknown = sorted(name for name in values if name != "model_type" and not hasattr(defaults, name))
        if unknown:
            raise ValueError(f"Unknown key(s) {unknown} in `{key}`: not fields of {config_class.__name__}.")
        if model.init_from is None:
            try:
                config_class(**{name: value for name, value in values.items() if name != "model_type"})
            except (TypeError, ValueError) as error:
                raise ValueError(f"Recipe section `{key}`: {error}") from error


def _check_recipe(recipe: Any) -> None:
    """Checks across sections, once the whole recipe is built."""
    checkpoint, data = getattr(recipe, "checkpoint", None), getattr(recipe, "data", None)
    if isinstance(checkpoint, CheckpointSection) and checkpoint.resume and checkpoint.overwrite:
        raise ValueError("`checkpoint.resume` (--resume) and `checkpoint.overwrite` (--overwrite) exclude each other.")
    if isinstance(data, DataSection) and data.synthetic.folder is not None and data.synthetic.num_videos < 1:
        raise ValueError("Recipe key `data.synthetic.num_videos` must be at least 1 with `data.synthetic.folder` set.")
    if isinstance(getattr(recipe, "model", None), ModelSection):
        _check_model(recipe.model)


def _build(cls: type, values: dict[str, Any], path: str) -> Any:
    """Instantiate dataclass `cls` from a mapping, recursing into nested sections and rejecting unknown keys."""
    if not isinstance(values, dict):
        raise ValueError(f"Recipe section `{path or 'root'}` must be a mapping, got {type(values).__name__}.")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        where = f"section `{path}`" if path else "the recipe"
        raise ValueError(f"Unknown key(s) {unknown} in {where}; allowed: {sorted(known)}.")
    kwargs = {}
    for name, value in values.items():
        default = getattr(cls(), name)
        key = f"{path}.{name}" if path else name
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, key)
        else:
            kwargs[name] = _coerce(value, default, key)
    try:
        section = cls(**kwargs)
    except ValueError as error:  # a section's own checks (e.g. `adaptation`) do not know where it sits
        raise ValueError(f"Recipe section `{path or 'root'}`: {error}") from error
    _check_values(section, path)
    return section


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _coerce(value: Any, default: Any, key: str) -> Any:
    """Check a scalar against the type of its default (ints may stand for floats)."""
    if default is None or value is None or isinstance(default, dict):
        return value
    if isinstance(default, tuple) and isinstance(value, list):
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"Recipe key `{key}` must be true or false, got {value!r}.")
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, float) and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
    if not isinstance(value, type(default)):
        raise ValueError(f"Recipe key `{key}` must be of type {type(default).__name__}, got {value!r}.")
    return value


def _set_dotted(tree: dict[str, Any], dotted_key: str, value: Any) -> None:
    node = tree
    *parents, leaf = dotted_key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ValueError(f"Override `{dotted_key}`: `{part}` is not a section.")
    node[leaf] = value


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = (
            _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def _read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"Recipe file not found: {path}")
    if path.resolve() in seen:
        raise ValueError(f"Recipe {path} includes itself through `base`.")
    tree = yaml.safe_load(path.read_text()) or {}
    base = tree.pop("base", None)
    if base is None:
        return tree
    return _merge(_read_tree(path.parent / base, (*seen, path.resolve())), tree)


RecipeT = TypeVar("RecipeT")


@overload
def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> PretrainRecipe: ...


@overload
def load_recipe(
    path: str | Path | None = None, overrides: list[str] | None = None, *, recipe_class: type[RecipeT]
) -> RecipeT: ...


def load_recipe(
    path: str | Path | None = None, overrides: list[str] | None = None, *, recipe_class: type[Any] = PretrainRecipe
) -> Any:
    """Read a recipe YAML (or the defaults when `path` is None), apply `key=value` overrides, and build
    `recipe_class` from it (any recipe dataclass; default `PretrainRecipe`): unknown keys and wrong types are
    errors that name the key."""
    tree = _read_tree(Path(path)) if path is not None else {}
    for override in overrides or []:
        if "=" not in override:
            raise ValueError(f"Override {override!r} must look like `section.key=value`.")
        key, raw_value = override.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw_value))
    recipe = _build(recipe_class, tree, "")
    _check_recipe(recipe)
    return recipe


def parse_recipe_args(
    argv: list[str] | None, *, description: str | None, default_config: str | Path
) -> tuple[Path, list[str]]:
    """Parse a training script's command line, ``[--config FILE] [--resume | --overwrite] [section.key=value ...]``
    in any order (`argv` None: ``sys.argv[1:]``), into the recipe path (`default_config` when not given) and the
    overrides for `load_recipe`; ``--resume`` adds ``checkpoint.resume=true``, ``--overwrite``
    ``checkpoint.overwrite=true``. `description` is the ``--help`` text."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path(default_config), help="recipe YAML (default: the demo)")
    parser.add_argument("--resume", action="store_true", help="continue from the run's latest valid checkpoint")
    parser.add_argument(
        "--overwrite", action="store_true", help="start afresh in a run folder holding another run (deletes it)"
    )
    parser.add_argument("overrides", nargs="*", help="recipe overrides such as optim.max_steps=10")
    args = parser.parse_intermixed_args(argv)
    flags = [f"checkpoint.{name}=true" for name in ("resume", "overwrite") if getattr(args, name)]
    return args.config, list(args.overrides) + flags
