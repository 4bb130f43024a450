"""Video-to-text training with accelerate: the loop behind `accelerate launch training/train_video_to_text.py`.

The paper's second step: a frozen VideoFirst video tower and a frozen causal language model, joined by a new
Perceiver resampler and gated cross-attention layers that alone train, with the autoregressive captioning loss
(captioning or summarisation, from a video-text manifest).

It reuses the contrastive loop's pieces: the data pipeline (`videofirst.data.loading`, whose batches carry the caption
strings, tokenized here for the language model by `videofirst.data.captions.encode_captions`), the run setup and
bookkeeping of `videofirst.train.loop` (crash-safe checkpoints and resume, the JSONL / tracker log, the stop
conditions), AdamW and the warmup-cosine schedule (`videofirst.train.optimization`) and the recipe loader
(`videofirst.recipe.load_recipe`). Token masking is reseeded from `(seed, step, stream, process)` (the streams of
`videofirst.train.determinism.reseed`) and the data order from `(seed, epoch)` as in pretraining, so a resumed run
continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from videofirst.data.captions import encode_captions, prepare_causal_tokenizer
from videofirst.data.loading import build_dataloader
from videofirst.data.sources import source_captions, training_sources
from videofirst.evaluation.captioning import (
    DEFAULT_QA_PROMPT,
    caption_metrics,
    captioning_loss,
    evaluate_video_question_answering,
    generate_captions,
)
from videofirst.evaluation.event_order import event_sequence_metrics, is_event_caption
from videofirst.evaluation.sets import load_multiple_choice_manifest
from videofirst.hub.export import export_checkpoint
from videofirst.modeling.configuration_videofirst import VideoFirstVisionConfig
from videofirst.modeling.modeling_videofirst import VideoFirstModel, VideoFirstVisionModel
from videofirst.modeling.modeling_videofirst_video_to_text import VideoFirstForConditionalGeneration
from videofirst.recipe import (
    CheckpointSection,
    DataSection,
    EvalSection,
    OptimSection,
    Recipe,
    RunSection,
    load_recipe,
)
from videofirst.train.determinism import EVALUATION_STREAM, reseed
from videofirst.train.loop import TrainingRun, check_finite
from videofirst.train.optimization import build_optimizer, build_scheduler
from videofirst.train.setup import build_processor, prepare_data

__all__ = [
    "VideoToTextEvalSection",
    "VideoToTextModelSection",
    "VideoToTextRecipe",
    "VideoToTextResult",
    "build_language_model",
    "build_video_to_text_model",
    "build_video_to_text_optimizer",
    "load_video_to_text_recipe",
    "train_video_to_text",
]


# --------------------------------------------------------------------------------------------------------------
# Recipe
# --------------------------------------------------------------------------------------------------------------


@dataclass
class VideoToTextModelSection:
    # A VideoFirstForConditionalGeneration checkpoint to continue from; the fields below then only set `mask_ratio`.
    init_from: str | None = None
    # The frozen video tower: a VideoFirst checkpoint (dual encoder or vision model, e.g. `runs/demo/export`), or,
    # when None, a randomly initialised tower built from `vision` (for smoke tests: it has learnt nothing).
    vision_from: str | None = None
    vision: dict[str, Any] = field(default_factory=dict)
    # The frozen language model: any AutoModelForCausalLM checkpoint (its tokenizer is used unless
    # `data.tokenizer` names one), or, when None, a causal LM built from `language_model` (default GPT-2 layout).
    language_model_from: str | None = None
    language_model: dict[str, Any] = field(default_factory=dict)
    # A language model built from config knows no language, and a frozen random one is no model of the paper's
    # setting: with N > 0 it is first trained for N steps on the training captions alone (text only, before being
    # frozen). Only for `language_model_from=None`.
    language_model_text_steps: int = 0
    # Fraction of video tokens dropped in training and at inference (the paper: 0.3).
    mask_ratio: float = 0.3
    # What the resampler reads from the video tower (`VideoFirstVideoToTextConfig.temporal_pooling`): "mean", the
    # tokens averaged over time (the paper; blind to the order of events), or "none", every token with a learned
    # embedding of its time step (Flamingo).
    temporal_pooling: str = "mean"
    resampler_num_latents: int = 64
    resampler_depth: int = 6
    resampler_num_attention_heads: int = 8
    cross_attention_every: int = 1
    cross_attention_ffn: bool = True
    # Initial value of the tanh gates' parameters: 0 (Flamingo) starts the model as the language model alone.
    gate_init: float = 0.0
    # Learning rate of the gate parameters relative to `optim.learning_rate`. A gate at 0 passes no gradient to the
    # cross-attention weights, and AdamW moves it by about one learning rate per step: at the base rate the gates
    # open too slowly for a short run (training/benchmarks/video_to_text.py measures it).
    gate_learning_rate_multiplier: float = 1.0
    # Text before every caption (e.g. "summary:"); generation starts from it.
    prompt: str = ""
    attn_implementation: str = "sdpa"


@dataclass
class VideoToTextEvalSection(EvalSection):
    # Beside `every`, `batch_size` and `max_videos` (as in pretraining): how the captions are generated.
    max_new_tokens: int = 32
    num_beams: int = 1
    # An EgoSchema-format manifest (video, question, options, answer) for zero-shot QA by answer likelihood.
    qa_manifest: str | None = None
    qa_prompt: str = DEFAULT_QA_PROMPT


@dataclass
class VideoToTextRecipe(Recipe):
    run: RunSection = field(default_factory=lambda: RunSection(output_dir="runs/video_to_text"))
    data: DataSection = field(default_factory=DataSection)
    model: VideoToTextModelSection = field(default_factory=VideoToTextModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    eval: VideoToTextEvalSection = field(default_factory=VideoToTextEvalSection)


def load_video_to_text_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> VideoToTextRecipe:
    """Read a video-to-text recipe (YAML with `base:` includes, as `videofirst.recipe`) and `key=value` overrides."""
    recipe = load_recipe(path, overrides, recipe_class=VideoToTextRecipe)
    if recipe.data.image_manifest is not None:
        raise ValueError("`data.image_manifest` is not used by video-to-text training; remove it.")
    if recipe.optim.contrastive_micro_batches != 1:
        raise ValueError("`optim.contrastive_micro_batches` applies to contrastive training only; leave it at 1.")
    return recipe


# --------------------------------------------------------------------------------------------------------------
# Model, tokenizer, processor
# --------------------------------------------------------------------------------------------------------------


def _vision_tower(model_section: VideoToTextModelSection, data: DataSection) -> VideoFirstVisionModel:
    if model_section.vision_from is None:
        config = VideoFirstVisionConfig(image_size=data.image_size, num_frames=data.num_frames, **model_section.vision)
        return VideoFirstVisionModel(config)
    loaded = AutoModel.from_pretrained(model_section.vision_from)
    if isinstance(loaded, VideoFirstModel):
        return loaded.vision_model
    if isinstance(loaded, VideoFirstVisionModel):
        return loaded
    raise ValueError(f"`model.vision_from` {model_section.vision_from} is not a VideoFirst checkpoint.")


def _language_model(model_section: VideoToTextModelSection, tokenizer):
    if model_section.language_model_from is not None:
        return AutoModelForCausalLM.from_pretrained(model_section.language_model_from)
    settings = {"model_type": "gpt2", **model_section.language_model}
    settings.setdefault("vocab_size", len(tokenizer))
    for name in ("bos", "eos", "pad"):
        settings.setdefault(f"{name}_token_id", getattr(tokenizer, f"{name}_token_id"))
    model_type = settings.pop("model_type")
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **settings))


def train_language_model_on_text(
    language_model,
    tokenizer,
    texts: list[str],
    steps: int,
    *,
    batch_size: int = 32,
    learning_rate: float = 1e-3,
    max_length: int | None = None,
    seed: int = 0,
) -> list[float]:
    """Train a causal language model on `texts` alone for `steps` AdamW steps (a small stand-in for the pretrained
    language model of the paper when none is available, e.g. the demo's). Returns the loss of every step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(language_model.parameters(), lr=learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / max(1, steps))
    language_model.train()
    losses = []
    for _ in range(steps):
        rows = torch.randint(len(texts), (batch_size,), generator=generator).tolist()
        encoded = encode_captions(tokenizer, [texts[row] for row in rows], max_length=max_length)
        loss = language_model(**encoded).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    language_model.eval()
    return losses


def build_language_model(recipe: VideoToTextRecipe, tokenizer, captions: list[str] | None, text_warmup: bool = True):
    """The recipe's causal language model: `model.language_model_from`, or one built from `model.language_model`
    and, with `text_warmup`, trained on `captions` alone for `model.language_model_text_steps`."""
    section = recipe.model
    language_model = _language_model(section, tokenizer)
    if text_warmup and section.language_model_text_steps > 0 and section.language_model_from is None:
        if not captions:
            raise ValueError("`model.language_model_text_steps` needs the training captions.")
        train_language_model_on_text(
            language_model,
            tokenizer,
            captions,
            section.language_model_text_steps,
            batch_size=recipe.optim.batch_size,
            learning_rate=recipe.optim.learning_rate,
            max_length=recipe.data.max_text_length,
            seed=recipe.run.seed,
        )
    return language_model


def build_video_to_text_model(
    recipe: VideoToTextRecipe,
    tokenizer,
    captions: list[str] | None = None,
    text_warmup: bool = True,
    *,
    language_model=None,
    vision_model: VideoFirstVisionModel | None = None,
) -> VideoFirstForConditionalGeneration:
    """The model a recipe describes: `model.init_from`, or a video tower and a language model joined by a new
    resampler and new cross-attention layers (the only trainable parts). `captions` feed
    `model.language_model_text_steps` for a language model built from config (skipped with `text_warmup=False`,
    e.g. when a checkpoint will replace the weights). `language_model` / `vision_model`: already built ones to use
    instead of those the recipe names (a benchmark reuses them across runs); they become part of the model."""
    section = recipe.model
    if section.init_from is not None:
        model = VideoFirstForConditionalGeneration.from_pretrained(section.init_from)
        model.config.mask_ratio = section.mask_ratio
    else:
        if language_model is None:
            language_model = build_language_model(recipe, tokenizer, captions, text_warmup)
        model = VideoFirstForConditionalGeneration.from_vision_and_language_models(
            vision_model if vision_model is not None else _vision_tower(section, recipe.data),
            language_model,
            mask_ratio=section.mask_ratio,
            temporal_pooling=section.temporal_pooling,
            resampler_num_latents=section.resampler_num_latents,
            resampler_depth=section.resampler_depth,
            resampler_num_attention_heads=section.resampler_num_attention_heads,
            cross_attention_every=section.cross_attention_every,
            cross_attention_ffn=section.cross_attention_ffn,
            cross_attention_gate_init=section.gate_init,
        )
    model.set_attn_implementation(section.attn_implementation)
    vocabulary = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > vocabulary:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the language model only {vocabulary}.")
    return model


def build_video_to_text_optimizer(
    model: VideoFirstForConditionalGeneration, optim: OptimSection, gate_learning_rate_multiplier: float = 1.0
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters (`videofirst.train.optimization.build_optimizer`), with the cross-attention
    gates in a group of their own at `gate_learning_rate_multiplier` times the learning rate (the schedule scales
    every group alike)."""
    if gate_learning_rate_multiplier <= 0:
        raise ValueError(f"`model.gate_learning_rate_multiplier` must be > 0, got {gate_learning_rate_multiplier}.")
    optimizer = build_optimizer(model, optim)
    if gate_learning_rate_multiplier == 1.0:
        return optimizer
    gates = {
        id(parameter)
        for layer in model.cross_attention_layers
        for name, parameter in layer.named_parameters(recurse=False)
        if name.endswith("_gate") and parameter.requires_grad
    }
    for group in optimizer.param_groups:
        group["params"] = [parameter for parameter in group["params"] if id(parameter) not in gates]
    gate_parameters = [parameter for parameter in model.parameters() if id(parameter) in gates]
    optimizer.param_groups = [group for group in optimizer.param_groups if group["params"]]
    optimizer.add_param_group(
        {"params": gate_parameters, "weight_decay": 0.0, "lr": optim.learning_rate * gate_learning_rate_multiplier}
    )
    return optimizer


def _tokenizer_source(recipe: VideoToTextRecipe) -> str | None:
    """Where the tokenizer comes from; None: train one on the captions (`videofirst.train.setup.prepare_data`)."""
    if recipe.data.tokenizer is not None:
        return recipe.data.tokenizer
    for source in (recipe.model.init_from, recipe.model.language_model_from):
        if source is not None:
            return source
    return None


# --------------------------------------------------------------------------------------------------------------
# Loop
# --------------------------------------------------------------------------------------------------------------


@dataclass
class VideoToTextResult:
    run_dir: Path
    export_dir: Path | None
    final_step: int
    metrics: dict[str, float]
    bad_samples: int
    samples: list[dict[str, str]] = field(default_factory=list)


def train_video_to_text(recipe: VideoToTextRecipe) -> VideoToTextResult:
    optim = recipe.optim
    run = TrainingRun(recipe)
    accelerator, run_dir = run.accelerator, run.run_dir

    source = _tokenizer_source(recipe)
    data_recipe = dataclasses.replace(recipe, data=dataclasses.replace(recipe.data, tokenizer=source))
    with accelerator.main_process_first():
        # Writes the synthetic data when asked to, and trains a SentencePiece tokenizer when there is no source.
        data_paths = prepare_data(data_recipe, run_dir)
    tokenizer = prepare_causal_tokenizer(AutoTokenizer.from_pretrained(data_paths.tokenizer))
    set_seed(recipe.run.seed)  # the new layers (and a language model built from config) start the same on resume
    # On resume the checkpoint holds the language model: its text-only warm-up need not run again.
    resuming = run.checkpoint_to_resume() is not None
    captions = source_captions(training_sources(recipe.data))
    model = build_video_to_text_model(recipe, tokenizer, captions, text_warmup=not resuming)
    processor = build_processor(recipe, tokenizer, tubelet_frames=model.config.vision_config.tubelet_size[0])
    if optim.activation_checkpointing:
        model.activation_checkpointing_enable()
    trainable, total = model.num_parameters(only_trainable=True), model.num_parameters()
    accelerator.print(
        f"video-to-text: {trainable:,} of {total:,} parameters train ({100 * trainable / total:.2f}%): "
        "the resampler and the cross-attention layers"
    )

    optimizer = build_video_to_text_optimizer(model, optim, recipe.model.gate_learning_rate_multiplier)
    scheduler = build_scheduler(optimizer, optim)
    train_loader = build_dataloader(
        recipe.data, training_sources(recipe.data), processor, optim.batch_size, shuffle=True
    )
    eval_loader = None
    if recipe.data.eval_manifest is not None:
        eval_loader = build_dataloader(
            recipe.data, recipe.data.eval_manifest, processor, recipe.eval.batch_size, shuffle=False
        )
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    state = run.start(scheduler, project="videofirst-video-to-text")

    evaluator = _Evaluator(recipe, accelerator, processor, eval_loader, run.logger)
    prompt, max_length = recipe.model.prompt or None, recipe.data.max_text_length
    metrics: dict[str, float] = {}
    model.train()
    for batch, slot in run.micro_batches(train_loader, desc="video-to-text"):
        with run.accumulate(model):
            reseed(recipe.run.seed, state.step, slot, accelerator.process_index)  # the micro-batch's seed stream
            with accelerator.autocast():
                loss = captioning_loss(model, batch, tokenizer, prompt, max_length)
            check_finite(loss, accelerator)
            accelerator.backward(loss)
            # Clip the synced gradients, step the optimizer (accelerate skips it while gradients accumulate), clear.
            if accelerator.sync_gradients and optim.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        run.count_micro_batch(batch, videos=len(batch["captions"]))
        if not accelerator.sync_gradients:  # gradients still accumulate
            continue
        scheduler.step()
        loss_value = accelerator.reduce(loss.detach(), "mean").item()  # averaged over processes
        run.complete_step(loss_value)
        if run.due(recipe.run.log_every):
            rates = run.logger.throughput()
            rates.pop("tokens_per_second")
            gates = _gate_summary(accelerator.unwrap_model(model))
            record = {"loss": loss_value, "learning_rate": scheduler.get_last_lr()[0], **gates}
            run.logger.log({**record, "bad_samples": state.bad_samples, **rates}, state.step)
        if run.eval_due():
            metrics = evaluator(model, state.step)
        if run.due(recipe.checkpoint.save_every):
            run.checkpoints.save(state)

    if run.eval_due(at_end=True):
        metrics = evaluator(model, state.step)
    export_dir = run.finish(lambda folder: export_checkpoint(accelerator.unwrap_model(model), processor, folder))
    return VideoToTextResult(run_dir, export_dir, state.step, metrics, state.bad_samples, evaluator.samples)


def _gate_summary(model: VideoFirstForConditionalGeneration) -> dict[str, float]:
    """Mean |tanh(gate)| of the cross-attention layers: how far the language model has opened to the video."""
    layers = list(model.cross_attention_layers)
    summary = {"xattn_gate": sum(torch.tanh(layer.attention_gate).abs().item() for layer in layers) / len(layers)}
    if layers[0].mlp is not None:
        summary["xattn_ffn_gate"] = sum(torch.tanh(layer.ffn_gate).abs().item() for layer in layers) / len(layers)
    return summary


class _Evaluator:
    """Held-out captioning loss, generated captions scored with Rouge-L (and CIDEr; on synthetic order-of-events
    captions also the event-sequence metrics of `videofirst.evaluation.event_order`), and optional zero-shot QA; on
    the main process."""

    def __init__(self, recipe: VideoToTextRecipe, accelerator: Accelerator, processor, eval_loader, logger):
        self.recipe = recipe
        self.accelerator = accelerator
        self.processor = processor
        self.eval_loader = eval_loader
        self.logger = logger
        self.samples: list[dict[str, str]] = []
        self.questions = None
        if recipe.eval.qa_manifest is not None:
            self.questions = load_multiple_choice_manifest(recipe.eval.qa_manifest)

    def __call__(self, model, step: int) -> dict[str, float]:
        metrics: dict[str, float] = {}
        if self.accelerator.is_main_process and (self.eval_loader is not None or self.questions is not None):
            unwrapped = self.accelerator.unwrap_model(model)
            # Inference masking is random: evaluate every time with the same stream.
            reseed(self.recipe.run.seed, step, EVALUATION_STREAM, 0)
            if self.eval_loader is not None:
                metrics.update(self._captioning(unwrapped))
            if self.questions is not None:
                qa = evaluate_video_question_answering(
                    unwrapped,
                    self.processor.tokenizer,
                    self.processor.video_processor,
                    self.questions,
                    batch_size=self.recipe.eval.batch_size,
                    prompt_template=self.recipe.eval.qa_prompt,
                )
                metrics.update({f"qa_{key}": value for key, value in qa.items()})
            self.logger.log({f"eval/{key}": value for key, value in metrics.items()}, step)
        self.accelerator.wait_for_everyone()
        model.train()
        return metrics

    def _captioning(self, model: VideoFirstForConditionalGeneration) -> dict[str, float]:
        recipe, tokenizer = self.recipe, self.processor.tokenizer
        prompt = recipe.model.prompt or None
        device = self.accelerator.device
        predictions, references, losses, weights = [], [], [], []
        model.eval()
        for index, batch in enumerate(self.eval_loader):
            if recipe.eval.max_videos is not None and index * recipe.eval.batch_size >= recipe.eval.max_videos:
                break
            if not batch["captions"]:  # every clip of the batch failed to decode
                continue
            videos = batch["pixel_values_videos"].to(device)
            frame_mask = batch["video_frame_mask"].to(device)
            with torch.no_grad():
                loss = captioning_loss(
                    model,
                    {"pixel_values_videos": videos, "video_frame_mask": frame_mask, "captions": batch["captions"]},
                    tokenizer,
                    prompt,
                    recipe.data.max_text_length,
                )
            losses.append(loss.item())
            weights.append(len(batch["captions"]))
            predictions += generate_captions(
                model,
                tokenizer,
                videos,
                frame_mask,
                prompt=prompt,
                max_new_tokens=recipe.eval.max_new_tokens,
                num_beams=recipe.eval.num_beams,
                do_sample=False,
            )
            references += batch["captions"]
        metrics = caption_metrics(predictions, references)
        if all(is_event_caption(reference) for reference in references):
            # Synthetic order-of-events captions: also score the events and their order.
            metrics.update(event_sequence_metrics(predictions, references))
        metrics["loss"] = sum(loss * weight for loss, weight in zip(losses, weights)) / sum(weights)
        exact = sum(_normalized(p) == _normalized(r) for p, r in zip(predictions, references))
        metrics["exact_match"] = exact / len(predictions)
        self.samples = [{"reference": r, "generated": p} for p, r in zip(predictions, references)]
        samples_path = Path(recipe.run.output_dir) / "samples.jsonl"
        samples_path.write_text("".join(json.dumps(sample) + "\n" for sample in self.samples))
        return metrics


def _normalized(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())
