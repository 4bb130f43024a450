"""Contrastive pretraining with accelerate: the loop behind `accelerate launch training/pretrain.py`.

Each concern lives in its own module (recipe, data, losses, optimization, checkpointing, run_logging,
adaptation, evaluation, and `training_loop` for the run setup and bookkeeping shared with the video-to-text
loop); this file wires them into one short loop.

Randomness that affects training (token masking, dropout) is reseeded from `(seed, step, micro-batch,
process)` before every forward pass, and the data order from `(seed, epoch)`, so a run resumed from a
checkpoint replays exactly what the uninterrupted run would have done.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn

from videofirst.adaptation import apply_adaptation, merge_adaptation
from videofirst.data.loading import build_dataloader
from videofirst.data.sources import training_sources
from videofirst.evaluation.embedding import embed_texts, embed_videos
from videofirst.evaluation.metrics import retrieval_metrics
from videofirst.hub.export import export_checkpoint
from videofirst.modeling.modeling_videofirst import VideoFirstModel
from videofirst.recipe import PretrainRecipe
from videofirst.train.distributed import compile_towers, enable_fsdp2_on_cpu, exportable_model, shard_model
from videofirst.train.loop import NonFiniteLossError, TrainingRun, check_finite, cycle_batches, reseed
from videofirst.train.losses import contrastive_loss, sigmoid_loss
from videofirst.train.optimization import build_optimizer, build_scheduler
from videofirst.train.setup import build_model, build_processor, prepare_data

__all__ = ["ContrastiveObjective", "NonFiniteLossError", "PretrainResult", "pretrain"]


@dataclass
class PretrainResult:
    run_dir: Path
    export_dir: Path | None
    final_step: int
    metrics: dict[str, float]
    bad_samples: int


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
            reseed(self.seed, step, slot, process)
            with self.accelerator.autocast():
                video_embeds, text_embeds, kept = _embed_pair(self.model, batch)
                loss = self.loss(video_embeds, text_embeds)
            check_finite(loss, self.accelerator)
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
                reseed(self.seed, step, slot * 1_000 + index, process)
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
        check_finite(loss, self.accelerator)
        # autograd.grad leaves .grad untouched, so DDP only sees the replayed backward passes below.
        video_grad, text_grad, *temperature_grads = torch.autograd.grad(
            weight * loss, [video_embeds, text_embeds, *temperature]
        )
        offset = 0
        for index, chunk in enumerate(chunks):
            rows = chunk["input_ids"].shape[0]
            reseed(self.seed, step, slot * 1_000 + index, process)
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


def pretrain(recipe: PretrainRecipe) -> PretrainResult:
    optim = recipe.optim
    # No dispatching: every process reads its own batches (streamed sources carry caption lists). DDP looks for
    # unused parameters only when images co-train (`distributed.ddp_kwargs`).
    run = TrainingRun(recipe, dispatch_batches=False)
    accelerator, run_dir = run.accelerator, run.run_dir
    enable_fsdp2_on_cpu(accelerator)  # an FSDP2 config on CPU processes, which accelerate would run as DDP

    with accelerator.main_process_first():
        data_paths = prepare_data(recipe, run_dir)
    processor = build_processor(recipe, data_paths.tokenizer)
    model = build_model(recipe, processor)
    adaptation = apply_adaptation(model, recipe.adaptation, train_images=recipe.data.image_manifest is not None)
    if optim.activation_checkpointing:
        model.activation_checkpointing_enable()
    accelerator.print(adaptation.describe())
    if optim.compile:
        compile_towers(model, optim.compile_backend)
    model = shard_model(model, accelerator)  # FSDP2 only; before the optimizer, which holds the shards

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
    state = run.start(scheduler, project="videofirst")

    logger = run.logger
    objective = ContrastiveObjective(model, accelerator, recipe)
    accumulation = optim.gradient_accumulation_steps
    images = cycle_batches(image_loader, accelerator, state.step * accumulation) if image_loader is not None else None
    metrics: dict[str, float] = {}
    model.train()
    for batch, slot in run.micro_batches(train_loader, desc="pretrain"):
        with run.accumulate(model):
            loss, kept = objective(batch, state.step, slot)
            image_batch = next(images) if images is not None else None
            if image_batch is not None and image_batch["captions"]:  # empty: no image decoded on some process
                image_loss, _ = objective(image_batch, state.step, slot + 500, recipe.data.image_loss_weight)
                loss = loss + recipe.data.image_loss_weight * image_loss
            run.optimizer_step(model, optimizer)
        loss_value = run.end_micro_batch(batch, loss, videos=batch["input_ids"].shape[0], tokens=kept)
        if loss_value is None:  # gradients still accumulate
            continue
        if run.due(recipe.run.log_every):
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
        if run.eval_due():
            metrics = _evaluate(model, accelerator, recipe, eval_loader, processor, logger, state.step)
        if run.due(recipe.checkpoint.save_every):
            run.checkpoints.save(state)

    if recipe.data.eval_manifest and run.eval_due(at_end=True):
        metrics = _evaluate(model, accelerator, recipe, eval_loader, processor, logger, state.step)
    trained = exportable_model(model, accelerator)  # every process: FSDP2 gathers its shards
    # LoRA weights are folded in, so the export is an ordinary checkpoint; its card carries the run's record and
    # its last held-out evaluation.
    export_dir = run.finish(
        lambda folder: export_checkpoint(merge_adaptation(trained), processor, folder, run_dir=run_dir)
    )
    return PretrainResult(run_dir, export_dir, state.step, metrics, state.bad_samples)


def _evaluate(model, accelerator, recipe, eval_loader, processor, logger, step) -> dict[str, float]:
    """Text-to-video and video-to-text retrieval on the held-out manifest, on the main process."""
    metrics: dict[str, float] = {}
    evaluated = exportable_model(model, accelerator)  # every process: FSDP2 gathers an unsharded copy
    if accelerator.is_main_process:
        captions: list[str] = []

        def video_batches():
            for index, batch in enumerate(eval_loader):
                if recipe.eval.max_videos is not None and index * recipe.eval.batch_size >= recipe.eval.max_videos:
                    return
                if batch["captions"]:  # empty when every clip of the batch failed to decode
                    captions.extend(batch["captions"])
                    yield batch

        video_embeds = embed_videos(evaluated, video_batches(), device=accelerator.device)
        text_embeds = embed_texts(evaluated, processor.tokenizer, captions, recipe.eval.batch_size)
        metrics = retrieval_metrics(text_embeds @ video_embeds.t(), list(range(len(captions))))
        metrics["chance_recall@1"] = 1.0 / len(captions)
        logger.log({f"eval/{key}": value for key, value in metrics.items()}, step)
    accelerator.wait_for_everyone()
    model.train()
    return metrics
