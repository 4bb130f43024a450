"""Which parameters train: the paper's image-to-video and short-to-long adaptation recipes, applied in place.

```python
from videofirst.adaptation import apply_adaptation, merge_adaptation
summary = apply_adaptation(model, method="last_layers", trainable_last_layers=4, freeze_text=True)
print(summary.describe())      # ViT-B + BERT-medium: "last_layers: 29,932,801 of 128,749,569 parameters train (23.25%)"
...                            # train
merge_adaptation(model)        # LoRA folded back into the weights: an ordinary checkpoint again
```

Methods (`AdaptationConfig.method`):

* `"full"`: every parameter of the video tower and the projections (stage 1a, ShortViViT).
* `"last_layers"`: the last `trainable_last_layers` encoder layers, the final norm, the pooling head and the video
  projection (stage 1b, LongViViT: 4 layers, text frozen).
* `"adapters"`: bottleneck MLP adapters after every feed-forward block (added to the model and its config,
  zero-initialised so the model is unchanged at the start).
* `"lora"`: LoRA (through `peft`) on the attention and feed-forward projections of every encoder layer;
  [`merge_adaptation`] folds it back into the weights. Until then the model refuses `save_pretrained` (and so
  `export_checkpoint` and `push_to_hub`): the LoRA layers rename the weights they wrap, so such a checkpoint
  would reload with those weights missing. Training checkpoints (accelerate's `save_state`) keep the LoRA
  layers for resuming; the run's export is merged.
* `"temporal"`: the temporal attention blocks, their norms and gates of a `attention_type="factorized"` model.

In every method the video-specific input embedding, i.e. the 3D tubelet kernel (or the TubeViT kernels) and
the temporal position embeddings, trains too (`train_patch_embedding`, as in the paper), and so does the
temperature (`logit_scale`, and `logit_bias` with the sigmoid loss): one or two scalars. The text tower and
its projection are frozen unless `freeze_text=False` (the default for `"full"` only). The 2D patch kernel is
used by images alone, so it trains only with `method="full"` and `train_images=True` (a parameter that gets no
gradient would also trip up DistributedDataParallel).

Memory: gradients reach the tubelet kernel through every layer, so with a trainable patch embedding the frozen
layers still keep their activations. For the memory savings of the paper's long stage use
`method="last_layers", train_patch_embedding=False`: nothing below the first trained layer then needs a graph.
"""

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from videofirst.modeling.modeling_videofirst import VideoFirstAdapter, VideoFirstModel

ADAPTATION_METHODS = ("full", "last_layers", "adapters", "lora", "temporal")
# Leaf names of the attention (spatial and, if factorized, temporal) and feed-forward projections of a layer.
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
VIDEO_EMBEDDING_PREFIXES = (
    "vision_model.embeddings.tubelet_embedding.",
    "vision_model.embeddings.temporal_position_embedding",
    "vision_model.embeddings.tubes.",
)
TEMPERATURE_NAMES = ("logit_scale", "logit_bias")
TEXT_PREFIXES = ("text_model.", "text_projection.")


@dataclass
class AdaptationConfig:
    """Options of [`apply_adaptation`]; a recipe's `adaptation` section maps onto these fields."""

    method: str = "full"
    trainable_last_layers: int = 4
    # None: frozen for every method but "full".
    freeze_text: bool | None = None
    adapter_bottleneck: int = 64
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] | list[str] = DEFAULT_LORA_TARGETS
    train_patch_embedding: bool = True
    train_images: bool = False

    def __post_init__(self):
        if self.method not in ADAPTATION_METHODS:
            raise ValueError(f"`method` must be one of {ADAPTATION_METHODS}, got {self.method!r}.")
        if self.trainable_last_layers < 1:
            raise ValueError(f"`trainable_last_layers` must be at least 1, got {self.trainable_last_layers}.")
        if self.adapter_bottleneck < 1:
            raise ValueError(f"`adapter_bottleneck` must be positive, got {self.adapter_bottleneck}.")
        if self.lora_rank < 1:
            raise ValueError(f"`lora_rank` must be positive, got {self.lora_rank}.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"`lora_dropout` must be in [0, 1), got {self.lora_dropout}.")
        self.lora_targets = tuple(self.lora_targets)
        if not self.lora_targets or any(not re.fullmatch(r"\w+", name) for name in self.lora_targets):
            raise ValueError(
                f"`lora_targets` must be module names such as {DEFAULT_LORA_TARGETS}, got {self.lora_targets}."
            )
        if self.freeze_text is None:
            self.freeze_text = self.method != "full"


@dataclass
class AdaptationSummary:
    """What [`apply_adaptation`] left trainable."""

    method: str
    trainable_parameters: int
    total_parameters: int
    trainable_names: list[str] = field(default_factory=list)

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_parameters / max(1, self.total_parameters)

    def describe(self) -> str:
        return (
            f"{self.method}: {self.trainable_parameters:,} of {self.total_parameters:,} parameters train "
            f"({100 * self.trainable_fraction:.2f}%)"
        )

    __str__ = describe


def _resolve(config: Any, options: dict[str, Any]) -> AdaptationConfig:
    """An `AdaptationConfig` from a config-like object (dataclass, mapping or None) plus keyword overrides."""
    if config is None:
        values = {}
    elif isinstance(config, Mapping):
        values = dict(config)
    elif dataclasses.is_dataclass(config):
        values = dataclasses.asdict(config)
    else:
        raise TypeError(f"Expected an adaptation config (dataclass or mapping), got {type(config).__name__}.")
    values.update(options)
    known = {item.name for item in dataclasses.fields(AdaptationConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown adaptation option(s) {unknown}; known: {sorted(known)}.")
    return AdaptationConfig(**values)


def add_adapters(model: VideoFirstModel, bottleneck: int) -> None:
    """Give every encoder layer a zero-initialised adapter of width `bottleneck` (recorded in the config)."""
    vision_config = model.config.vision_config
    existing = vision_config.adapter_bottleneck
    if existing is not None:
        if existing != bottleneck:
            raise ValueError(
                f"The model already has adapters of width {existing}; got `adapter_bottleneck={bottleneck}`."
            )
        return
    vision_config.adapter_bottleneck = bottleneck
    vision_config.validate_architecture()
    for layer in model.vision_model.encoder.layers:
        reference = layer.mlp.fc2.weight
        adapter = VideoFirstAdapter(vision_config).to(device=reference.device, dtype=reference.dtype)
        adapter.apply(model.vision_model._init_weights)
        layer.adapter = adapter


def _lora_pattern(targets: tuple[str, ...]) -> str:
    return rf"vision_model\.encoder\.layers\.\d+\.(?:\w+\.)*(?:{'|'.join(targets)})"


def _has_lora(model: nn.Module) -> bool:
    return any(".lora_" in name for name, _ in model.named_parameters())


def add_lora(model: VideoFirstModel, rank: int, alpha: float, dropout: float, targets: tuple[str, ...]) -> None:
    """Inject LoRA layers into the encoder layers' projections named in `targets`, in place (via `peft`)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:  # an optional dependency: the `train` extra
        raise ImportError("LoRA adaptation needs `peft` (pip install 'videofirst[train]').") from error

    config = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=_lora_pattern(targets), bias="none"
    )
    inject_adapter_in_model(config, model)


def merge_adaptation(model: nn.Module) -> nn.Module:
    """Fold LoRA updates into the weights they adapt and remove the LoRA layers, in place; returns `model`.

    The result has the plain parameter names again, so `save_pretrained` / `export_checkpoint` write an
    ordinary checkpoint that reloads with no missing or unexpected keys (before merging they refuse to save).
    Adapters are part of the architecture (`adapter_bottleneck`) and stay.
    """
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # without peft there can be no LoRA layers
        return model
    tuned = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in tuned:
        module.merge()
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, module.get_base_layer())
    return model


def _trainable_predicate(model: VideoFirstModel, config: AdaptationConfig):
    num_layers = model.config.vision_config.num_hidden_layers
    first_trained = max(0, num_layers - config.trainable_last_layers)
    last_layer_prefixes = tuple(f"vision_model.encoder.layers.{index}." for index in range(first_trained, num_layers))
    top_prefixes = ("vision_model.post_layernorm.", "vision_model.head.", "video_projection.")

    def trainable(name: str) -> bool:
        if name in TEMPERATURE_NAMES:
            return True
        if name.startswith(TEXT_PREFIXES):
            return not config.freeze_text
        if name.startswith("vision_model.embeddings.patch_embedding."):
            return config.method == "full" and config.train_images
        if name.startswith(VIDEO_EMBEDDING_PREFIXES):
            return config.method == "full" or config.train_patch_embedding
        if config.method == "full":
            return True
        if config.method == "last_layers":
            return name.startswith(last_layer_prefixes + top_prefixes)
        if config.method == "adapters":
            return ".adapter." in name
        if config.method == "lora":
            return ".lora_" in name
        return any(part in name for part in (".temporal_attn.", ".temporal_layer_norm.", ".temporal_gate"))

    return trainable


def apply_adaptation(model: VideoFirstModel, config: Any = None, /, **options) -> AdaptationSummary:
    """Set which parameters of `model` train (adding adapters or LoRA layers first), in place.

    Args:
        model: a [`VideoFirstModel`] (not yet wrapped by DDP / accelerate).
        config: an [`AdaptationConfig`], a recipe section with the same field names, or a mapping.
        options: [`AdaptationConfig`] fields overriding `config`, e.g. `method="lora", lora_rank=16`.

    Returns:
        An [`AdaptationSummary`] with the trainable and total parameter counts (including added ones).
    """
    settings = _resolve(config, options)
    vision_config = model.config.vision_config
    if settings.method == "temporal" and vision_config.attention_type != "factorized":
        raise ValueError(
            "`method='temporal'` trains the temporal blocks of a factorized model; the model has "
            f"`attention_type={vision_config.attention_type!r}`."
        )
    if settings.method == "last_layers" and settings.trainable_last_layers > vision_config.num_hidden_layers:
        raise ValueError(
            f"`trainable_last_layers` ({settings.trainable_last_layers}) exceeds the video tower's "
            f"{vision_config.num_hidden_layers} layers."
        )
    if settings.method == "adapters":
        add_adapters(model, settings.adapter_bottleneck)
    elif settings.method == "lora" and not _has_lora(model):
        add_lora(model, settings.lora_rank, settings.lora_alpha, settings.lora_dropout, settings.lora_targets)

    trainable = _trainable_predicate(model, settings)
    names = []
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(trainable(name))
        if parameter.requires_grad:
            names.append(name)
    return AdaptationSummary(settings.method, model.num_parameters(only_trainable=True), model.num_parameters(), names)


__all__ = [
    "ADAPTATION_METHODS",
    "AdaptationConfig",
    "AdaptationSummary",
    "add_adapters",
    "add_lora",
    "apply_adaptation",
    "merge_adaptation",
]
