"""Contrastive pretraining with accelerate: the loop behind `accelerate launch training/pretrain.py`.

Each concern lives in its own module (recipe, data, losses, optimization, checkpointing, run_logging,
adaptation, evaluation, and `videofirst.train.loop` for the run setup and bookkeeping shared with the
video-to-text loop); this file wires them into one short loop that reads top to bottom: forward, backward, clip,
optimizer step, scheduler step, log, evaluate, save.

Randomness that affects training (token masking, dropout) is reseeded from `(seed, step, stream, process)`
before every forward pass (the streams are named in `videofirst.train.determinism.reseed`), and the data order
from `(seed, epoch)`, so a run resumed from a checkpoint replays exactly what the uninterrupted run would have
done.
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
from videofirst.train.determinism import chunk_stream, image_stream, reseed
from videofirst.train.distributed import compile_towers, enable_fsdp2_on_cpu, exportable_model, shard_model
from videofirst.train.loop import NonFiniteLossError, TrainingRun, check_finite, cycle_batches
from videofirst.train.losses import gathered_contrastive_loss, gathered_sigmoid_loss
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
    """The contrastive loss of a batch over the global (all-process) batch: InfoNCE or SigLIP's sigmoid loss, as the
    model's `config.loss_type` says (decided once, here), with gradient caching over
    `optim.contrastive_micro_batches` chunks when that is above 1."""

    def __init__(self, model: nn.Module, accelerator: Accelerator, recipe: PretrainRecipe):
        self.model = model
        self.accelerator = accelerator
        self.unwrapped: VideoFirstModel = accelerator.unwrap_model(model)
        self.loss_type = self.unwrapped.config.loss_type  # "contrastive" or "sigmoid" (the config checks it)
        self.micro_batches = recipe.optim.contrastive_micro_batches
        self.gradient_caching = self.micro_batches > 1
        self.seed = recipe.run.seed

    def loss(self, video_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        scale = self.unwrapped.scaled_logit_scale()
        if self.loss_type == "sigmoid":
            return gathered_sigmoid_loss(video_embeds, text_embeds, scale, self.unwrapped.logit_bias)
        return gathered_contrastive_loss(video_embeds, text_embeds, scale)

    def __call__(self, batch: dict[str, torch.Tensor], step: int, stream: int) -> tuple[torch.Tensor, int]:
        """The forward pass on seed stream `stream` (`reseed`): the batch's loss, checked to be finite on every
        process, and the number of video tokens kept. The caller runs the backward pass."""
        reseed(self.seed, step, stream, self.accelerator.process_index)
        with self.accelerator.autocast():
            video_embeds, text_embeds, kept = _embed_pair(self.model, batch)
            loss = self.loss(video_embeds, text_embeds)
        check_finite(loss, self.accelerator)
        return loss, kept

    def backward_in_chunks(
        self, batch: dict[str, torch.Tensor], step: int, stream: int, weight: float = 1.0
    ) -> tuple[torch.Tensor, int]:
        """Gradient caching, forward and backward pass together: embed all chunks without a graph, differentiate
        `weight` times the loss with respect to the embeddings (and the temperature), then replay each chunk with a
        graph and push those gradients through it. Only one chunk's activations are alive at a time. Returns the
        (unweighted, detached) loss and the number of video tokens kept."""
        process = self.accelerator.process_index
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
                reseed(self.seed, step, chunk_stream(stream, index), process)
                with self.accelerator.autocast():
                    video, text, chunk_kept = _embed_pair(self.model, chunk)
                video_parts.append(video)
                text_parts.append(text)
                kept += chunk_kept
        video_embeds = torch.cat(video_parts).detach().requires_grad_()
        text_embeds = torch.cat(text_parts).detach().requires_grad_()
        # The learnable temperature: the scale, and with the sigmoid loss its bias.
        temperature = [self.unwrapped.logit_scale]
        if self.loss_type == "sigmoid":
            temperature.append(self.unwrapped.logit_bias)
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
            reseed(self.seed, step, chunk_stream(stream, index), process)
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
    image_weight = recipe.data.image_loss_weight
    metrics: dict[str, float] = {}
    model.train()
    for batch, slot in run.micro_batches(train_loader, desc="pretrain"):
        with run.accumulate(model):
            # Forward and backward pass of the video-text batch (under gradient caching, chunk by chunk).
            if objective.gradient_caching:
                loss, kept = objective.backward_in_chunks(batch, state.step, slot)
            else:
                loss, kept = objective(batch, state.step, slot)
                accelerator.backward(loss)
            # With images co-training: an image-text batch beside it, its loss weighted, on a seed stream of its own.
            image_batch = next(images) if images is not None else None
            if image_batch is not None and image_batch["captions"]:  # empty: no image decoded on some process
                if objective.gradient_caching:
                    image_loss, _ = objective.backward_in_chunks(
                        image_batch, state.step, image_stream(slot), image_weight
                    )
                else:
                    image_loss, _ = objective(image_batch, state.step, image_stream(slot))
                    accelerator.backward(image_weight * image_loss)
                loss = loss.detach() + image_weight * image_loss.detach()
            # Clip the synced gradients, step the optimizer (accelerate skips it while gradients accumulate), clear.
            if accelerator.sync_gradients and optim.max_grad_norm > 0:
                accelerator.clip_grad_norm_(model.parameters(), optim.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        run.count_micro_batch(batch, videos=batch["input_ids"].shape[0], tokens=kept)
        if not accelerator.sync_gradients:  # gradients still accumulate
            continue
        scheduler.step()
        loss_value = accelerator.reduce(loss.detach(), "mean").item()  # averaged over processes
        run.complete_step(loss_value)
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
