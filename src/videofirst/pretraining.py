"""Contrastive pretraining with accelerate: the loop behind `accelerate launch training/pretrain.py`.

Each concern lives in its own module (recipe, data, losses, optimization, checkpointing, run_logging,
adaptation, evaluation); this file wires them into one short loop.

Randomness that affects training (token masking, dropout) is reseeded from `(seed, step, micro-batch,
process)` before every forward pass, and the data order from `(seed, epoch)`, so a run resumed from a
checkpoint replays exactly what the uninterrupted run would have done.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, set_seed
from torch import nn
from tqdm.auto import tqdm

from videofirst.adaptation import apply_adaptation, merge_adaptation
from videofirst.checkpointing import CheckpointManager, TrainerState
from videofirst.data import build_dataloader, training_sources
from videofirst.evaluation import embed_texts, embed_videos, retrieval_metrics
from videofirst.export import export_checkpoint
from videofirst.losses import contrastive_loss, sigmoid_loss
from videofirst.modeling.modeling_videofirst import VideoFirstModel
from videofirst.optimization import build_optimizer, build_scheduler
from videofirst.recipe import PretrainRecipe
from videofirst.run_logging import RunLogger, tracker_names
from videofirst.setup import build_model, build_processor, prepare_data


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped after saving the state from before that step."""


@dataclass
class PretrainResult:
    run_dir: Path
    export_dir: Path | None
    final_step: int
    metrics: dict[str, float]
    bad_samples: int


def _reseed(seed: int, step: int, micro_batch: int, process: int) -> None:
    # One fixed stream per (step, micro-batch, process): resuming needs no RNG state beyond the step.
    torch.manual_seed(((seed * 1_000_003 + step) * 1_009 + micro_batch) * 257 + process)


def _embed_pair(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Video (or image) and text embeddings of a batch, and the number of video tokens the tower kept."""
    outputs = model(
        pixel_values_videos=batch.get("pixel_values_videos"),
        video_frame_mask=batch.get("video_frame_mask"),
        pixel_values=batch.get("pixel_values"),
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
    )
    vision = outputs.vision_model_output
    kept = vision.token_mask.sum() if vision.token_mask is not None else vision.last_hidden_state[:, :, 0].numel()
    return outputs.video_embeds, outputs.text_embeds, int(kept)


class ContrastiveObjective:
    """The loss of one batch, gathered over processes, optionally through cached micro-batch features."""

    def __init__(self, model: nn.Module, accelerator: Accelerator, recipe: PretrainRecipe):
        self.model = model
        self.accelerator = accelerator
        self.unwrapped: VideoFirstModel = accelerator.unwrap_model(model)
        self.micro_batches = recipe.optim.contrastive_micro_batches
        self.seed = recipe.run.seed

    def loss(self, video_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        scale = self.unwrapped.scaled_logit_scale()
        if self.unwrapped.logit_bias is not None:
            return sigmoid_loss(video_embeds, text_embeds, scale, self.unwrapped.logit_bias)
        return contrastive_loss(video_embeds, text_embeds, scale)

    def __call__(
        self, batch: dict[str, torch.Tensor], step: int, slot: int, weight: float = 1.0
    ) -> tuple[torch.Tensor, int]:
        """Backpropagate `weight` times the batch's loss; returns the (unweighted, detached) loss and the number
        of video tokens kept."""
        process = self.accelerator.process_index
        if self.micro_batches == 1:
            _reseed(self.seed, step, slot, process)
            with self.accelerator.autocast():
                video_embeds, text_embeds, kept = _embed_pair(self.model, batch)
                loss = self.loss(video_embeds, text_embeds)
            _check_finite(loss, self.accelerator)
            self.accelerator.backward(weight * loss)
            return loss.detach(), kept
        return self._cached(batch, step, slot, process, weight)

    def _cached(
        self, batch: dict[str, torch.Tensor], step: int, slot: int, process: int, weight: float
    ) -> tuple[torch.Tensor, int]:
        """Gradient caching: embed all micro-batches without a graph, differentiate the loss with respect to
        the embeddings (and the temperature), then replay each micro-batch with a graph and push those
        gradients through it. Only one micro-batch's activations are alive at a time."""
        size = batch["input_ids"].shape[0]
        bounds = [round(i * size / self.micro_batches) for i in range(self.micro_batches + 1)]
        chunks = [
            {key: value[start:end] for key, value in batch.items() if torch.is_tensor(value) and value.ndim > 0}
            for start, end in zip(bounds[:-1], bounds[1:])
            if end > start
        ]
        video_parts, text_parts, kept = [], [], 0
        with torch.no_grad():
            for index, chunk in enumerate(chunks):
                _reseed(self.seed, step, slot * 1_000 + index, process)
                with self.accelerator.autocast():
                    video, text, chunk_kept = _embed_pair(self.model, chunk)
                video_parts.append(video)
                text_parts.append(text)
                kept += chunk_kept
        video_embeds = torch.cat(video_parts).detach().requires_grad_()
        text_embeds = torch.cat(text_parts).detach().requires_grad_()
        temperature = [p for p in (self.unwrapped.logit_scale, self.unwrapped.logit_bias) if p is not None]
        with self.accelerator.autocast():
            loss = self.loss(video_embeds, text_embeds)
        _check_finite(loss, self.accelerator)
        # autograd.grad leaves .grad untouched, so DDP only sees the replayed backward passes below.
        video_grad, text_grad, *temperature_grads = torch.autograd.grad(
            weight * loss, [video_embeds, text_embeds, *temperature]
        )
        offset = 0
        for index, chunk in enumerate(chunks):
            rows = chunk["input_ids"].shape[0]
            _reseed(self.seed, step, slot * 1_000 + index, process)
            last = index == len(chunks) - 1
            with self.accelerator.autocast():
                video, text, _ = _embed_pair(self.model, chunk)
            surrogate = (video * video_grad[offset : offset + rows]).sum()
            surrogate = surrogate + (text * text_grad[offset : offset + rows]).sum()
            if last:
                surrogate = surrogate + sum((p * g).sum() for p, g in zip(temperature, temperature_grads))
            offset += rows
            if last:
                self.accelerator.backward(surrogate)
            else:
                with self.accelerator.no_sync(self.model):
                    self.accelerator.backward(surrogate)
        return loss.detach(), kept


def _check_finite(loss: torch.Tensor, accelerator: Accelerator) -> None:
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if accelerator.gather(finite).min() < 1:
        raise NonFiniteLossError(f"The loss became {loss.item()} (NaN or infinite).")


def _batches_from(loader, accelerator: Accelerator, epoch: int, skip: int):
    """The loader's batches for `epoch`, after the first `skip` ones (already consumed before a resume)."""
    loader.set_epoch(epoch)
    return accelerator.skip_first_batches(loader, skip) if skip else loader


def _cycle(loader, accelerator: Accelerator, start_batch: int):
    """Endless image batches, starting at global batch index `start_batch` (so resuming continues the stream)."""
    epoch, skip = divmod(start_batch, len(loader))
    while True:
        loader.set_epoch(epoch)
        yield from (accelerator.skip_first_batches(loader, skip) if skip else loader)
        epoch, skip = epoch + 1, 0


def pretrain(recipe: PretrainRecipe) -> PretrainResult:
    run_dir = Path(recipe.run.output_dir)
    optim = recipe.optim
    accelerator = Accelerator(
        mixed_precision=optim.mixed_precision,
        gradient_accumulation_steps=optim.gradient_accumulation_steps,
        log_with=tracker_names(recipe.run.trackers) or None,
        project_config=ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "logs")),
        # No dispatching: every process reads its own batches (streamed sources carry caption lists).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, dispatch_batches=False),
    )
    set_seed(recipe.run.seed)
    run_dir.mkdir(parents=True, exist_ok=True)

    with accelerator.main_process_first():
        data_paths = prepare_data(recipe, run_dir)
    processor = build_processor(recipe, data_paths.tokenizer)
    model = build_model(recipe, processor)
    adaptation = apply_adaptation(model, recipe.adaptation, train_images=recipe.data.image_manifest is not None)
    if optim.activation_checkpointing:
        model.activation_checkpointing_enable()
    accelerator.print(adaptation.describe())

    optimizer = build_optimizer(model, optim)
    scheduler = build_scheduler(optimizer, optim)
    seed = recipe.run.seed
    train_loader = build_dataloader(
        recipe.data, training_sources(recipe.data), processor, optim.batch_size, shuffle=True, seed=seed
    )
    loaders = [train_loader]
    if recipe.data.image_manifest is not None:
        image_loader = build_dataloader(
            recipe.data, recipe.data.image_manifest, processor, optim.batch_size, shuffle=True, seed=seed
        )
        if not hasattr(image_loader.dataset, "__len__"):
            raise ValueError("`data.image_manifest` must be a local (map-style) source: it is cycled by epochs.")
        loaders.append(image_loader)
    eval_loader = None
    if recipe.data.eval_manifest is not None:
        eval_loader = build_dataloader(
            recipe.data, recipe.data.eval_manifest, processor, recipe.eval.batch_size, shuffle=False, seed=seed
        )
    model, optimizer, *loaders = accelerator.prepare(model, optimizer, *loaders)
    train_loader, image_loader = loaders[0], (loaders[1] if len(loaders) > 1 else None)
    # Not prepared: accelerate would step it once per process; it steps once per optimizer step here.
    accelerator.register_for_checkpointing(scheduler)

    checkpoints = CheckpointManager(run_dir / "checkpoints", accelerator, recipe.checkpoint.keep_last)
    state = TrainerState()
    latest = checkpoints.latest() if recipe.checkpoint.resume else None
    if latest is not None:
        state = checkpoints.load(latest)
        accelerator.print(f"Resumed from {latest} at step {state.step}.")
    if accelerator.is_main_process:
        recipe_path = run_dir / "recipe.yaml"
        recipe_path.write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    accelerator.init_trackers("videofirst", config=_flat(recipe.to_dict()))

    logger = RunLogger(accelerator, run_dir)
    objective = ContrastiveObjective(model, accelerator, recipe)
    accumulation = optim.gradient_accumulation_steps
    images = _cycle(image_loader, accelerator, state.step * accumulation) if image_loader is not None else None
    progress = tqdm(total=optim.max_steps, initial=state.step, disable=not accelerator.is_main_process, desc="pretrain")
    metrics: dict[str, float] = {}
    model.train()
    slot = 0
    while state.step < optim.max_steps:
        for batch in _batches_from(train_loader, accelerator, state.epoch, state.batches_in_epoch):
            with accelerator.accumulate(model):
                try:
                    loss, kept = objective(batch, state.step, slot)
                    if images is not None:
                        image_batch = next(images)
                        image_loss, _ = objective(image_batch, state.step, slot + 500, recipe.data.image_loss_weight)
                        loss = loss + recipe.data.image_loss_weight * image_loss
                except NonFiniteLossError as error:
                    saved = checkpoints.save(state)
                    raise NonFiniteLossError(
                        f"{error} Stopped at step {state.step}; the state from before this step is in {saved}."
                    ) from error
                if accelerator.sync_gradients and optim.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            state.batches_in_epoch += 1
            skipped = int(accelerator.reduce(batch["skipped"].to(accelerator.device).sum(), "sum"))
            videos = int(accelerator.reduce(torch.tensor(batch["input_ids"].shape[0], device=accelerator.device)))
            state.bad_samples += skipped
            state.samples_seen += videos
            logger.count(videos, int(accelerator.reduce(torch.tensor(kept, device=accelerator.device))))
            _check_bad_fraction(state, recipe.data.max_bad_fraction)
            slot += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            slot = 0
            progress.update(1)
            loss_value = accelerator.reduce(loss, "mean").item()
            progress.set_postfix(loss=f"{loss_value:.4f}")
            if state.step % recipe.run.log_every == 0 or state.step == optim.max_steps:
                logger.log(
                    {
                        "loss": loss_value,
                        "learning_rate": scheduler.get_last_lr()[0],
                        "logit_scale": accelerator.unwrap_model(model).scaled_logit_scale().item(),
                        "bad_samples": state.bad_samples,
                        **logger.throughput(),
                    },
                    state.step,
                )
            if recipe.eval.every and state.step % recipe.eval.every == 0:
                metrics = _evaluate(model, accelerator, recipe, eval_loader, processor, logger, state.step)
            if state.step % recipe.checkpoint.save_every == 0 or state.step == optim.max_steps:
                checkpoints.save(state)
            if state.step >= optim.max_steps:
                break
        else:
            state.epoch += 1
            state.batches_in_epoch = 0
    progress.close()

    if recipe.data.eval_manifest and (not recipe.eval.every or state.step % recipe.eval.every != 0):
        metrics = _evaluate(model, accelerator, recipe, eval_loader, processor, logger, state.step)
    export_dir = None
    if accelerator.is_main_process:
        # LoRA weights are folded in, so the export is an ordinary checkpoint.
        export_dir = export_checkpoint(merge_adaptation(accelerator.unwrap_model(model)), processor, run_dir / "export")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return PretrainResult(run_dir, export_dir, state.step, metrics, state.bad_samples)


def _check_bad_fraction(state: TrainerState, limit: float) -> None:
    total = state.samples_seen + state.bad_samples
    if total and state.bad_samples / total > limit:
        raise RuntimeError(
            f"{state.bad_samples} of {total} samples could not be decoded ({state.bad_samples / total:.1%}), "
            f"more than `data.max_bad_fraction` = {limit:.1%}. Check the data (see the warnings above)."
        )


def _evaluate(model, accelerator, recipe, eval_loader, processor, logger, step) -> dict[str, float]:
    """Text-to-video and video-to-text retrieval on the held-out manifest, on the main process."""
    metrics: dict[str, float] = {}
    if accelerator.is_main_process:
        captions: list[str] = []

        def video_batches():
            for index, batch in enumerate(eval_loader):
                if recipe.eval.max_videos is not None and index * recipe.eval.batch_size >= recipe.eval.max_videos:
                    return
                captions.extend(batch["captions"])
                yield batch

        unwrapped = accelerator.unwrap_model(model)
        video_embeds = embed_videos(unwrapped, video_batches(), device=accelerator.device)
        text_embeds = embed_texts(unwrapped, processor.tokenizer, captions, recipe.eval.batch_size)
        metrics = retrieval_metrics(text_embeds @ video_embeds.t(), list(range(len(captions))))
        metrics["chance_recall@1"] = 1.0 / len(captions)
        logger.log({f"eval/{key}": value for key, value in metrics.items()}, step)
    accelerator.wait_for_everyone()
    model.train()
    return metrics


def _flat(tree: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """Nested recipe to the flat scalar mapping trackers accept."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flat(value, name + "."))
        elif isinstance(value, (int, float, str, bool)) and not (isinstance(value, float) and math.isnan(value)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat
