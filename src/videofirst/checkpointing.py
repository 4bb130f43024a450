"""Crash-safe training checkpoints with rotation, on top of `accelerate`'s `save_state` / `load_state`.

A checkpoint is written to `step_XXXXXXXX.partial/` and renamed to `step_XXXXXXXX/` only once complete,
with `trainer_state.json` written last inside it. A crash while saving therefore leaves at most a
`.partial` folder, which is ignored, and the previous checkpoint stays the latest loadable one.
"""

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from accelerate import Accelerator

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^step_(\d{8})$")


@dataclass
class TrainerState:
    """Where the run is: enough, with accelerate's state, to continue exactly."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples_seen: int = 0
    bad_samples: int = 0


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


class CheckpointManager:
    def __init__(self, folder: str | Path, accelerator: Accelerator, keep_last: int = 2):
        if keep_last < 1:
            raise ValueError(f"`checkpoint.keep_last` must be at least 1, got {keep_last}.")
        self.folder = Path(folder)
        self.accelerator = accelerator
        self.keep_last = keep_last

    def completed(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [
            path
            for path in self.folder.iterdir()
            if _NAME.match(path.name) and (path / STATE_FILE).is_file() and path.is_dir()
        ]
        return sorted(found, key=lambda path: int(_NAME.match(path.name).group(1)))

    def latest(self) -> Path | None:
        completed = self.completed()
        return completed[-1] if completed else None

    def save(self, state: TrainerState) -> Path:
        """Save model, optimizer, scheduler and RNG states plus `state`; every process must call this."""
        final = self.folder / f"step_{state.step:08d}"
        partial = final.with_name(final.name + ".partial")
        if self.accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(partial), safe_serialization=True)
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            (partial / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
            _fsync_tree(partial)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)
            self._rotate()
        self.accelerator.wait_for_everyone()
        return final

    def load(self, checkpoint: Path) -> TrainerState:
        self.accelerator.load_state(str(checkpoint))
        return TrainerState(**json.loads((checkpoint / STATE_FILE).read_text()))

    def _rotate(self) -> None:
        for stale in self.completed()[: -self.keep_last]:
            shutil.rmtree(stale, ignore_errors=True)
        for leftover in self.folder.glob("step_*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
