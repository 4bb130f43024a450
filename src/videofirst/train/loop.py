"""What the training loops share: run setup, resumable iteration, stop conditions and bookkeeping.

`videofirst.train.pretraining` (contrastive) and `videofirst.train.video_to_text` (captioning) are two short loops on
the same skeleton; each concern they share lives here, once:

- `TrainingRun`: the accelerator (mixed precision, gradient accumulation, trackers, seedable sampler), the run
  folder (its lock and identity, `videofirst.train.run_folder`), crash-safe verified checkpoints and resume
  (`videofirst.train.checkpointing`), the recipe copy, the trackers and the JSONL metrics log
  (`videofirst.train.run_logging`), the progress bar, where the run stands (`TrainerState`) and the atomic export;
- `reseed`: randomness that affects training (token masking, dropout) comes from `(seed, step, micro-batch,
  process)`, and the data order from `(seed, epoch)` (`batches_from`, `cycle_batches`), so a run resumed from a
  checkpoint replays exactly what the uninterrupted run would have done;
- `check_finite` / `NonFiniteLossError` and `check_bad_fraction`: the conditions that stop a run;
- `flat_config`: a nested recipe as the flat mapping trackers accept.

A loop built on it reads:

    run = TrainingRun(recipe)                        # accelerator, seed, run folder
    ...                                              # model, optimizer, scheduler, loaders; accelerator.prepare
    state = run.start(scheduler, project="name")     # resume, recipe.yaml, trackers, metrics log
    for batch, slot in run.micro_batches(train_loader, desc="name"):
        with run.accumulate(model):
            reseed(recipe.run.seed, state.step, slot, run.accelerator.process_index)
            loss = ...                               # forward pass
            check_finite(loss, run.accelerator)
            run.accelerator.backward(loss)
            run.optimizer_step(model, optimizer)
        loss_value = run.end_micro_batch(batch, loss, videos=...)
        if loss_value is None:                       # gradients still accumulate
            continue
        ...                                          # log when run.due(...), evaluate when run.eval_due()
        if run.due(recipe.checkpoint.save_every):
            run.checkpoints.save(state)
    export_dir = run.finish(export)                  # export(folder) writes the model; renamed when complete
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import ProjectConfiguration, broadcast_object_list, set_seed
from torch import nn
from tqdm.auto import tqdm

from videofirst.data.loading import equalize_batch
from videofirst.recipe import Recipe
from videofirst.train.checkpointing import CheckpointError, CheckpointManager, TrainerState
from videofirst.train.determinism import configure_determinism
from videofirst.train.distributed import ddp_kwargs
from videofirst.train.run_folder import RunFolder, RunFolderError, exit_with_launcher, flat_config
from videofirst.train.run_logging import RunLogger, tracker_names

__all__ = [
    "CheckpointError",
    "NonFiniteLossError",
    "RunFolderError",
    "TrainingRun",
    "batches_from",
    "check_bad_fraction",
    "check_finite",
    "cycle_batches",
    "flat_config",
    "reseed",
]

logger = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the run stopped after saving the state from before that step."""


def reseed(seed: int, step: int, micro_batch: int, process: int) -> None:
    """Seed torch's global generator for one forward pass: one fixed stream per (step, micro-batch, process), so a
    resumed run needs no RNG state beyond the step."""
    torch.manual_seed(((seed * 1_000_003 + step) * 1_009 + micro_batch) * 257 + process)


def check_finite(loss: torch.Tensor, accelerator: Accelerator) -> None:
    """Raise `NonFiniteLossError` on every process when the loss is NaN or infinite on any of them; the message
    names the processes that saw it."""
    finite = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    flags = accelerator.gather(finite).reshape(-1).tolist()
    if min(flags) >= 1:
        return
    culprits = [index for index, flag in enumerate(flags) if flag < 1]
    here = accelerator.process_index
    if len(flags) == 1:
        raise NonFiniteLossError(f"The loss became {loss.item()} (NaN or infinite).")
    if here in culprits:
        raise NonFiniteLossError(f"The loss became {loss.item()} (NaN or infinite) on process {here}.")
    raise NonFiniteLossError(
        f"The loss became NaN or infinite on process(es) {culprits} (this process, {here}, had {loss.item():.4g})."
    )


def check_bad_fraction(state: TrainerState, limit: float, min_samples: int = 0) -> None:
    """Stop the run once more than `limit` of the samples read so far could not be decoded, from `min_samples`
    samples read on (a single bad clip among the first few is no evidence of broken data)."""
    total = state.samples_seen + state.bad_samples
    if total and total >= min_samples and state.bad_samples / total > limit:
        raise RuntimeError(
            f"{state.bad_samples} of {total} samples could not be decoded ({state.bad_samples / total:.1%}), "
            f"more than `data.max_bad_fraction` = {limit:.1%}. Check the data (see the warnings above)."
        )


def batches_from(loader, accelerator: Accelerator, epoch: int, skip: int):
    """The loader's batches for `epoch`, after the first `skip` ones (already consumed before a resume)."""
    loader.set_epoch(epoch)
    return accelerator.skip_first_batches(loader, skip) if skip else loader


def cycle_batches(loader, accelerator: Accelerator, start_batch: int) -> Iterator[Any]:
    """Endless batches, starting at global batch index `start_batch` (so resuming continues the stream), of one
    size on every process (`equalize_batch`; a batch left empty by bad samples is yielded empty on every process,
    for the caller to pass over, so that positions stay aligned with the steps)."""
    epoch, skip = divmod(start_batch, len(loader))
    while True:
        for batch in batches_from(loader, accelerator, epoch, skip):
            yield equalize_batch(batch, accelerator)
        epoch, skip = epoch + 1, 0


class TrainingRun:
    """One training run's setup and bookkeeping, for any `Recipe` (`PretrainRecipe`, `VideoToTextRecipe`): it reads
    the `run`, `data`, `optim`, `checkpoint` and `eval` sections.

    Creating it makes the accelerator, seeds everything with `run.seed`, and claims the run folder
    (`videofirst.train.run_folder`): it takes the folder's lock and decides, before anything is built, whether the run
    starts fresh or resumes from which verified checkpoint, or refuses (`RunFolderError`, `CheckpointError`, on
    every process); `start` (after `accelerator.prepare`) resumes and starts the logs; `micro_batches`,
    `accumulate`, `optimizer_step` and `end_micro_batch` drive the loop; `finish` exports and ends it, and
    releases the lock (so does `close`, when the run ends otherwise in a process that goes on).
    """

    def __init__(self, recipe: Recipe, *, dispatch_batches: bool | None = None):
        """`dispatch_batches` as accelerate's `DataLoaderConfiguration` takes it (None: accelerate's default,
        False: every process reads its own batches). DDP's options follow the recipe (`distributed.ddp_kwargs`)."""
        self.recipe = recipe
        self.run_dir = Path(recipe.run.output_dir)
        optim = recipe.optim
        self.accelerator = Accelerator(
            mixed_precision=optim.mixed_precision,
            gradient_accumulation_steps=optim.gradient_accumulation_steps,
            log_with=tracker_names(recipe.run.trackers) or None,
            project_config=ProjectConfiguration(project_dir=str(self.run_dir), logging_dir=str(self.run_dir / "logs")),
            dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, dispatch_batches=dispatch_batches),
            kwargs_handlers=[ddp_kwargs(recipe)],
        )
        set_seed(recipe.run.seed)
        configure_determinism(recipe.run.deterministic, self.accelerator.device)
        exit_with_launcher()
        self.checkpoints = CheckpointManager(
            self.run_dir / "checkpoints",
            self.accelerator,
            recipe.checkpoint.keep_last,
            metrics_log=self.run_dir / "metrics.jsonl",
        )
        self.folder = RunFolder(self.run_dir)
        self._resume_from = self._claim_folder()
        self.state = TrainerState()
        # The state and accelerate's micro-batch counter after the last applied optimizer step: what a stop on a
        # non-finite loss saves, whichever micro-batch of the next step it hit.
        self._applied = (TrainerState(), 0)
        self.logger: RunLogger | None = None
        self._scheduler = None
        self._progress = None
        self._slot = 0

    def _claim_folder(self) -> Path | None:
        """Lock and claim the run folder on the main process and tell every process the outcome."""
        outcome: list[Any] = [None, None]  # [checkpoint to resume from, error]
        if self.accelerator.is_main_process:
            try:
                notes = self.folder.lock()
                checkpoint, claim_notes = self.folder.claim(
                    self.recipe, self.accelerator.num_processes, self.checkpoints
                )
                for note in notes + claim_notes:  # each says what was found and what is done instead
                    logger.warning(note)
                outcome = [checkpoint, None]
            except (RunFolderError, CheckpointError) as error:
                self.folder.release()
                outcome = [None, error]
        broadcast_object_list(outcome)
        checkpoint, error = outcome
        if error is not None:
            raise error
        return checkpoint

    def checkpoint_to_resume(self) -> Path | None:
        """The checkpoint `start` resumes from: with `checkpoint.resume`, the newest one that passed verification
        (newer damaged ones were set aside with a warning); None for a fresh start."""
        return self._resume_from

    def close(self) -> None:
        """Release the run folder (its lock); `finish` does it, call it when a run ends otherwise but the process
        goes on."""
        self.folder.release()

    def start(self, scheduler, project: str) -> TrainerState:
        """After `accelerator.prepare`: register the learning-rate scheduler for checkpointing, resume from
        `checkpoint_to_resume()` if any, write the recipe to `recipe.yaml`, and start the trackers (under
        `project`) and the metrics log (`self.logger`). Returns the run's state (`self.state`)."""
        accelerator = self.accelerator
        # Not prepared: accelerate would step it once per process; it steps once per optimizer step here.
        accelerator.register_for_checkpointing(scheduler)
        self._scheduler = scheduler
        latest = self.checkpoint_to_resume()
        if latest is not None:
            self.state = self.checkpoints.load(latest)
            accelerator.print(f"Resumed from {latest} at step {self.state.step}.")
        self._applied = (dataclasses.replace(self.state), accelerator.step)
        if accelerator.is_main_process:
            (self.run_dir / "recipe.yaml").write_text(yaml.safe_dump(self.recipe.to_dict(), sort_keys=False))
        accelerator.init_trackers(project, config=flat_config(self.recipe.to_dict()))
        self.logger = RunLogger(accelerator, self.run_dir)
        # What was logged after the checkpoint is logged again from here: cut it away (a fresh start: nothing).
        self.logger.truncate(self.state.metrics_bytes)
        return self.state

    def micro_batches(self, loader, desc: str) -> Iterator[tuple[Any, int]]:
        """`(batch, slot)` from where the run stands until `optim.max_steps` optimizer steps are done, epoch after
        epoch, under a progress bar; `slot` numbers the micro-batches of the current optimizer step (for
        `reseed`). Batches have one size on every process (`equalize_batch`); a batch left empty by bad samples
        is counted and passed over on every process. Each micro-batch must end with `end_micro_batch`."""
        state, max_steps = self.state, self.recipe.optim.max_steps
        self._progress = tqdm(
            total=max_steps, initial=state.step, disable=not self.accelerator.is_main_process, desc=desc
        )
        self._slot = 0
        while state.step < max_steps:
            for batch in batches_from(loader, self.accelerator, state.epoch, state.batches_in_epoch):
                batch = equalize_batch(batch, self.accelerator)
                if not batch["captions"]:
                    self._count(batch, videos=0)
                    continue
                yield batch, self._slot
                if state.step >= max_steps:
                    break
            else:
                state.epoch += 1
                state.batches_in_epoch = 0
        self._progress.close()

    @contextmanager
    def accumulate(self, model: nn.Module):
        """`accelerator.accumulate(model)` that, when the loss is not finite (`NonFiniteLossError`), saves the state
        of the last applied optimizer step (its weights, and its data position even when earlier micro-batches of
        this step were read) and stops the run with a message that names the checkpoint."""
        with self.accelerator.accumulate(model):
            try:
                yield
            except NonFiniteLossError as error:
                state, micro_batch_counter = self._applied
                self.accelerator.step = micro_batch_counter  # saved by accelerate: where accumulation restarts
                saved = self.checkpoints.save(dataclasses.replace(state))
                raise NonFiniteLossError(
                    f"{error} Stopped at step {self.state.step}; the state from before this step is in {saved}."
                ) from error

    def optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Clip the gradients once they are synced (`optim.max_grad_norm`, 0: off), step the optimizer and clear
        the gradients (inside `accumulate`, where accelerate skips the step while gradients accumulate)."""
        max_grad_norm = self.recipe.optim.max_grad_norm
        if self.accelerator.sync_gradients and max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def end_micro_batch(self, batch, loss: torch.Tensor, videos: int, tokens: int | None = None) -> float | None:
        """Count a finished micro-batch: its `videos` clips and skipped samples, summed over processes, into the
        state, and `tokens` (kept video tokens; None: not counted) into the throughput; stop the run when too many
        samples were bad. When it completed an optimizer step, step the scheduler and the state, and return the
        loss averaged over processes; else (gradients still accumulate) None."""
        accelerator, state = self.accelerator, self.state
        self._count(batch, videos, tokens)
        self._slot += 1
        if not accelerator.sync_gradients:
            return None
        self._scheduler.step()
        state.step += 1
        self._applied = (dataclasses.replace(state), accelerator.step)
        self._slot = 0
        self._progress.update(1)
        loss_value = accelerator.reduce(loss.detach(), "mean").item()
        self._progress.set_postfix(loss=f"{loss_value:.4f}")
        return loss_value

    def _count(self, batch, videos: int, tokens: int | None = None) -> None:
        """A consumed micro-batch: its position, and its clips and bad samples summed over processes."""
        accelerator, state = self.accelerator, self.state
        state.batches_in_epoch += 1
        skipped = int(accelerator.reduce(batch["skipped"].to(accelerator.device).sum(), "sum"))
        videos = int(accelerator.reduce(torch.tensor(videos, device=accelerator.device)))
        state.bad_samples += skipped
        state.samples_seen += videos
        if tokens is not None:
            tokens = int(accelerator.reduce(torch.tensor(tokens, device=accelerator.device)))
        self.logger.count(videos, tokens or 0)
        data = self.recipe.data
        check_bad_fraction(state, data.max_bad_fraction, data.bad_fraction_min_samples)

    def due(self, every: int) -> bool:
        """Whether something done every `every` optimizer steps and at the last one (logging, saving) is due now."""
        return self.state.step % every == 0 or self.state.step == self.recipe.optim.max_steps

    def eval_due(self, at_end: bool = False) -> bool:
        """Whether to evaluate now: every `eval.every` optimizer steps (0: never) in the loop; with `at_end`, after
        it, unless the last step was just evaluated."""
        every = self.recipe.eval.every
        just_evaluated = bool(every) and self.state.step % every == 0
        return not just_evaluated if at_end else just_evaluated

    def finish(self, export: Callable[[Path], Any]) -> Path | None:
        """End the run: `export(folder)` on the main process into `export.partial/`, renamed to `export/` once
        complete (so a crash never leaves half an export; the folder is returned there, None elsewhere), then wait
        for every process, close the trackers and release the run folder."""
        export_dir = None
        if self.accelerator.is_main_process:
            export_dir, partial, previous = (self.run_dir / name for name in ("export", "export.partial", "export.old"))
            shutil.rmtree(partial, ignore_errors=True)
            export(partial)
            if export_dir.exists():
                os.replace(export_dir, previous)
            os.replace(partial, export_dir)
            shutil.rmtree(previous, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.end_training()
        self.close()
        return export_dir
