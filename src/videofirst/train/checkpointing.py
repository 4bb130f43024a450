"""Crash-safe, verifiable training checkpoints with rotation, on top of `accelerate`'s `save_state` / `load_state`.

A checkpoint is written to `step_XXXXXXXX.partial/` and renamed to `step_XXXXXXXX/` only once complete. Inside
it, `trainer_state.json` (where the run stands) is written after accelerate's files, and `manifest.json` (the
size and SHA-256 of every file) last. A crash while saving therefore leaves at most a `.partial` folder, which is
ignored; a checkpoint damaged later (truncated, zeroed, deleted or flipped bytes) fails `verify`, and resuming
falls back to the newest checkpoint that passes it (`find_resumable`).
"""

import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
_NAME = re.compile(r"^step_(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no checkpoint of a run can be resumed from."""


@dataclass
class TrainerState:
    """Where the run is: enough, with accelerate's state, to continue exactly."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    bad_samples: int = 0
    # Size of the run's `metrics.jsonl` when the checkpoint was written: resuming cuts the log back to it, so
    # what was logged after the checkpoint is not logged twice.
    metrics_bytes: int = 0


def read_state(checkpoint: Path) -> TrainerState:
    """The `TrainerState` saved in `checkpoint`; `ValueError` naming the file when it is not a complete one."""
    path = checkpoint / STATE_FILE
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is unreadable: {error}") from error
    fields = [field.name for field in dataclasses.fields(TrainerState)]
    if not isinstance(values, dict) or sorted(values) != sorted(fields):
        raise ValueError(f"{path} must hold exactly the fields {fields}, got {values!r}.")
    if not all(type(value) is int and value >= 0 for value in values.values()):
        raise ValueError(f"{path} must hold non-negative integers, got {values!r}.")
    return TrainerState(**values)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.rglob("*") if path.is_file())


def write_manifest(checkpoint: Path) -> None:
    """Record the size and SHA-256 of every file of `checkpoint`; written last, so its presence means complete."""
    files = {
        path.relative_to(checkpoint).as_posix(): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in _files(checkpoint)
        if path.name != MANIFEST_FILE
    }
    (checkpoint / MANIFEST_FILE).write_text(json.dumps({"files": files}, indent=1))


def verify(checkpoint: Path) -> str | None:
    """What is wrong with `checkpoint` (a missing, resized or changed file, an unreadable state), or None when
    every file matches the manifest written when it was saved."""
    manifest = checkpoint / MANIFEST_FILE
    try:
        files = json.loads(manifest.read_text())["files"]
    except FileNotFoundError:
        return f"{manifest} is missing (the checkpoint is incomplete, or was written by an older version)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
        return f"{manifest} is unreadable: {error!r}"
    if STATE_FILE not in files:
        return f"{manifest} does not list {STATE_FILE}"
    for name, expected in files.items():
        path = checkpoint / name
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{path} has {path.stat().st_size} bytes, {expected['bytes']} were saved (truncated or replaced)"
        if _sha256(path) != expected["sha256"]:
            return f"{path} does not match the checksum saved with it (damaged)"
    try:
        read_state(checkpoint)
    except ValueError as error:
        return str(error)
    return None


def _fsync_tree(folder: Path) -> None:
    for path in _files(folder):
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())


def _is_disk_full(error: BaseException) -> bool:
    """Whether `error` (from Python's or torch's C++ writers, which do not keep errno) means the disk is full."""
    text = str(error)
    return (
        getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
        or "No space left" in text
        or "iostream error" in text
        or "file write failed" in text
    )


class CheckpointManager:
    """Saves, verifies, lists and rotates the checkpoints of one run folder (`folder` is its `checkpoints/`).

    `metrics_log` (the run's `metrics.jsonl`) is measured at each save into `TrainerState.metrics_bytes`."""

    def __init__(
        self, folder: str | Path, accelerator: Accelerator, keep_last: int = 2, metrics_log: Path | None = None
    ):
        if keep_last < 1:
            raise ValueError(f"`checkpoint.keep_last` must be at least 1, got {keep_last}.")
        self.folder = Path(folder)
        self.accelerator = accelerator
        self.keep_last = keep_last
        self.metrics_log = metrics_log

    def completed(self) -> list[Path]:
        """Checkpoint folders (renamed from `.partial`, not yet verified), oldest first."""
        if not self.folder.is_dir():
            return []
        found = [path for path in self.folder.iterdir() if _NAME.match(path.name) and path.is_dir()]
        return sorted(found, key=lambda path: int(_NAME.match(path.name).group(1)))

    def latest(self) -> Path | None:
        completed = self.completed()
        return completed[-1] if completed else None

    def find_resumable(self) -> tuple[Path | None, list[tuple[Path, str]]]:
        """The newest checkpoint that passes `verify`, and each newer one with what is wrong with it; `(None, [])`
        when there is no checkpoint at all. Raises `CheckpointError`, listing every problem, when none is valid."""
        rejected = []
        for checkpoint in reversed(self.completed()):
            problem = verify(checkpoint)
            if problem is None:
                return checkpoint, rejected
            rejected.append((checkpoint, problem))
        if rejected:
            raise CheckpointError(
                f"No checkpoint in {self.folder} can be resumed from (nothing was changed):\n  - "
                + "\n  - ".join(problem for _, problem in rejected)
            )
        return None, []

    def set_aside(self, checkpoint: Path) -> Path:
        """Rename a checkpoint that failed `verify` to `step_XXXXXXXX.invalid` (kept for inspection, out of
        resuming and rotation)."""
        target = checkpoint.with_name(checkpoint.name + ".invalid")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(checkpoint, target)
        return target

    def save(self, state: TrainerState) -> Path:
        """Save model, optimizer, scheduler and RNG states plus `state`; every process must call this. A failed
        write raises `CheckpointError` naming the folder (and a full disk as such); the previous checkpoint stays
        the latest."""
        final = self.folder / f"step_{state.step:08d}"
        partial = final.with_name(final.name + ".partial")
        if self.accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        try:
            self.accelerator.save_state(str(partial), safe_serialization=True)
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                if self.metrics_log is not None and self.metrics_log.is_file():
                    state.metrics_bytes = self.metrics_log.stat().st_size
                (partial / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
                write_manifest(partial)
                _fsync_tree(partial)
        except Exception as error:
            shutil.rmtree(partial, ignore_errors=True)
            previous = self.latest()
            kept = f" {previous} is still the latest checkpoint." if previous is not None else ""
            if _is_disk_full(error):
                raise CheckpointError(f"No space left on the device while writing {partial}.{kept}") from error
            raise CheckpointError(f"Writing the checkpoint {partial} failed: {error}.{kept}") from error
        if self.accelerator.is_main_process:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            self._rotate()
        self.accelerator.wait_for_everyone()
        return final

    def load(self, checkpoint: Path) -> TrainerState:
        """Load a checkpoint (one `find_resumable` chose) into the prepared objects; returns its state."""
        try:
            self.accelerator.load_state(str(checkpoint))
        except Exception as error:
            raise CheckpointError(f"Could not load the checkpoint {checkpoint}: {error}") from error
        return read_state(checkpoint)

    def _rotate(self) -> None:
        for stale in self.completed()[: -self.keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
        for leftover in self.folder.glob("step_*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
