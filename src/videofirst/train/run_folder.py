"""A run folder belongs to one run: its identity, its lock, and the decision to start, resume or refuse.

- `run.json` records the run's identity when the folder is claimed: the recipe (and its SHA-256), the number of
  processes, the global batch and the architecture. `--resume` compares it with the new recipe and refuses a
  change that cannot be honoured exactly (data, model, optimiser, batch, process count), naming each change;
  the changes listed in `RESUMABLE_CHANGES` (e.g. a longer `optim.max_steps`) are accepted and logged.
- `run.lock` (the process id and host of the run writing the folder) keeps a second run out while the first is
  alive; a lock left by a dead process is noticed by its process id and replaced, with a warning.
- A run started without `--resume` refuses a folder holding another run's checkpoints, log or export, unless
  `--overwrite` (`checkpoint.overwrite`) asks to delete them first.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from videofirst.recipe import Recipe
from videofirst.train.checkpointing import CheckpointManager, read_state

__all__ = ["RESUMABLE_CHANGES", "RunFolder", "RunFolderError", "exit_with_launcher", "flat_config"]

logger = logging.getLogger(__name__)

RUN_FILE = "run.json"
LOCK_FILE = "run.lock"
# What a run writes into its folder (`--overwrite` deletes these, and nothing else: the demo's data may live there).
RUN_OUTPUTS = (
    "checkpoints",
    "metrics.jsonl",
    "export",
    "export.partial",
    "export.old",
    "logs",
    "recipe.yaml",
    "tokenizer",
    "samples.jsonl",
    RUN_FILE,
)
# Recipe keys (a trailing dot: a whole section) that may change on `--resume`: they change how long the run goes,
# what it logs, evaluates and keeps, not the training computed so far or the data order.
RESUMABLE_CHANGES = (
    "optim.max_steps",
    "run.output_dir",
    "run.log_every",
    "run.trackers",
    "checkpoint.",
    "eval.",
    "data.eval_manifest",
    "data.num_workers",
    "data.max_bad_fraction",
    "data.bad_fraction_min_samples",
)
# How a run was started, not what it is.
_START_FLAGS = ("checkpoint.resume", "checkpoint.overwrite")


class RunFolderError(RuntimeError):
    """The run folder holds another run, is in use, or its run cannot be continued as asked."""


def flat_config(tree: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """Nested recipe to the flat scalar mapping trackers accept."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_config(value, name + "."))
        elif isinstance(value, (int, float, str, bool)) and not (isinstance(value, float) and math.isnan(value)):
            flat[name] = value
        else:
            flat[name] = str(value)
    return flat


def exit_with_launcher() -> None:
    """Under a launcher (`accelerate launch`, `torchrun`: they set `LOCAL_RANK`), have Linux send this worker
    SIGTERM when the launcher dies, so a killed launcher does not leave its workers training on."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() == 1:  # the launcher died before the request was in place
        os.kill(os.getpid(), signal.SIGTERM)


def _recipe_tree(recipe: Recipe) -> dict[str, Any]:
    """The recipe as plain JSON types (tuples as lists), as `run.json` stores it."""
    return json.loads(json.dumps(recipe.to_dict()))


def identity(recipe: Recipe, num_processes: int) -> dict[str, Any]:
    """What makes a run this run: the recipe, the process count, the global batch and the architecture."""
    tree = _recipe_tree(recipe)
    optim = recipe.optim
    return {
        "recipe_sha256": hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest(),
        "num_processes": num_processes,
        "global_batch": optim.batch_size * optim.gradient_accumulation_steps * num_processes,
        "architecture": tree.get("model", {}),
        "recipe": tree,
    }


def _resumable(key: str) -> bool:
    return any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in RESUMABLE_CHANGES)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


class RunFolder:
    """The run folder `path`, as one run's main process sees it: `lock`, then `claim`, and `release` at the end."""

    def __init__(self, path: Path):
        self.path = path
        self.lock_path = path / LOCK_FILE
        self._locked = False

    # The lock ---------------------------------------------------------------------------------------------------

    def lock(self) -> list[str]:
        """Take `run.lock`, replacing one left by a process that is gone; returns what was noticed doing so.
        `RunFolderError` when a live run holds it."""
        notes = []
        self.path.mkdir(parents=True, exist_ok=True)
        mine = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            draft = self.path / f"{LOCK_FILE}.{os.getpid()}"
            draft.write_text(json.dumps(mine))
            try:
                os.link(draft, self.lock_path)  # atomic: fails when the lock exists, never half written
                self._locked = True
                atexit.register(self.release)
                return notes
            except FileExistsError:
                pass
            finally:
                draft.unlink(missing_ok=True)
            try:
                owner = json.loads(self.lock_path.read_text())
                pid, host = int(owner["pid"]), str(owner["host"])
            except FileNotFoundError:
                continue  # released meanwhile
            except (OSError, ValueError, KeyError, TypeError):
                owner, pid, host = None, -1, mine["host"]
            if host != mine["host"]:
                raise RunFolderError(
                    f"The run folder {self.path} is in use by process {pid} on host {host} ({self.lock_path}). "
                    "If that run is over, delete the lock file."
                )
            if pid != os.getpid() and pid > 0 and _alive(pid):
                raise RunFolderError(
                    f"The run folder {self.path} is in use by process {pid} ({self.lock_path}): two runs cannot "
                    "write one folder. Wait for it to end, stop it, or set another `run.output_dir`."
                )
            if pid == os.getpid():
                notes.append(f"Took over {self.lock_path} from an earlier run in this process, which has ended.")
            else:
                notes.append(f"Removed a stale lock {self.lock_path} of process {pid}, which is no longer running.")
            self.lock_path.unlink(missing_ok=True)
        raise RunFolderError(f"Could not take the lock {self.lock_path}: other runs keep taking it.")

    def release(self) -> None:
        if not self._locked:
            return
        self._locked = False
        try:
            if json.loads(self.lock_path.read_text())["pid"] == os.getpid():
                self.lock_path.unlink()
        except (OSError, ValueError, KeyError):
            pass

    # What the folder holds --------------------------------------------------------------------------------------

    def traces(self) -> list[str]:
        """What an earlier run left here that a new run would mix with: checkpoints, the log, the export."""
        found = []
        checkpoints = sorted(path.name for path in (self.path / "checkpoints").glob("step_*"))
        if checkpoints:
            found.append("checkpoints " + ", ".join(checkpoints))
        found += [name for name in ("metrics.jsonl", "export") if (self.path / name).exists()]
        return found

    def recorded(self) -> dict[str, Any] | None:
        path = self.path / RUN_FILE
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise RunFolderError(f"{path} is unreadable ({error}); it records which run this folder holds.") from error

    def _record(self, record: dict[str, Any]) -> None:
        draft = self.path / (RUN_FILE + ".partial")
        draft.write_text(json.dumps(record, indent=1))
        os.replace(draft, self.path / RUN_FILE)

    # Start, resume or refuse ------------------------------------------------------------------------------------

    def claim(
        self, recipe: Recipe, num_processes: int, checkpoints: CheckpointManager
    ) -> tuple[Path | None, list[str]]:
        """Decide how the run starts in this folder: returns the checkpoint to resume from (None: a fresh start)
        and what to tell the user; `RunFolderError` / `CheckpointError` when it must not start."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        current = identity(recipe, num_processes)
        traces = self.traces()
        notes: list[str] = []
        if recipe.checkpoint.overwrite:
            if traces:
                for name in RUN_OUTPUTS:
                    target = self.path / name
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
                notes.append(f"--overwrite: deleted the earlier run in {self.path} ({'; '.join(traces)}).")
            self._record({**current, "started": now})
            return None, notes
        if not recipe.checkpoint.resume:
            if traces:
                outputs = ", ".join(name for name in RUN_OUTPUTS if (self.path / name).exists())
                raise RunFolderError(
                    f"The run folder {self.path} already holds a run ({'; '.join(traces)}). Continue it with "
                    f"--resume, start it over with --overwrite (deletes {outputs}), or set another `run.output_dir`."
                )
            self._record({**current, "started": now})
            return None, notes

        checkpoint, rejected = checkpoints.find_resumable()
        if checkpoint is None:
            if traces:
                raise RunFolderError(
                    f"Nothing to resume in {self.path}: no checkpoint was saved, but it holds an earlier run's "
                    f"{'; '.join(traces)}. Start it over with --overwrite, or set another `run.output_dir`."
                )
            notes.append(f"Nothing to resume in {self.path} (no checkpoint): starting a fresh run.")
            self._record({**current, "started": now})
            return None, notes
        recorded = self.recorded()
        if recorded is None:
            notes.append(f"{self.path / RUN_FILE} is missing: the recipe cannot be compared with the run's.")
            recorded = {**current, "started": now}
        else:
            changes = self._changes(recorded, current, identity(type(recipe)(), num_processes))
            refused = [change for key, change in changes.items() if not _resumable(key)]
            if refused:
                raise RunFolderError(
                    f"--resume: this run differs from the one in {self.path} where it cannot continue exactly:\n  - "
                    + "\n  - ".join(refused)
                    + "\nResume with the run's own settings (its recipe is in recipe.yaml), or start a new run in "
                    "another `run.output_dir`."
                )
            if changes:
                notes.append(
                    "--resume with changed recipe keys, honoured from the checkpoint on (a new `optim.max_steps` "
                    "also reshapes the learning-rate schedule from there): " + "; ".join(changes.values())
                )
        step = read_state(checkpoint).step
        if step > recipe.optim.max_steps:
            raise RunFolderError(
                f"--resume: the latest valid checkpoint {checkpoint} is at step {step}, past `optim.max_steps` = "
                f"{recipe.optim.max_steps}; raise `optim.max_steps` to continue it."
            )
        for bad, problem in rejected:
            aside = checkpoints.set_aside(bad)
            notes.append(f"Not resuming from {bad.name}: {problem}. Set aside as {aside.name}.")
        history = [*recorded.get("resumed", []), {"at": now, "step": step, "from": checkpoint.name}]
        self._record({**current, "started": recorded.get("started", now), "resumed": history})
        return checkpoint, notes

    @staticmethod
    def _changes(recorded: dict[str, Any], current: dict[str, Any], default: dict[str, Any]) -> dict[str, str]:
        """Each difference between the recorded identity and this run's, keyed by recipe key, as a sentence. A key
        the recorded recipe lacks (added to the recipe since) counts as changed only when set off its default."""
        changes = {}
        before, after = flat_config(recorded.get("recipe", {})), flat_config(current["recipe"])
        defaults = flat_config(default["recipe"])
        for key in sorted(set(before) | set(after)):
            if key not in before and key in defaults and after.get(key) == defaults[key]:
                continue
            if key not in _START_FLAGS and before.get(key) != after.get(key):
                changes[key] = f"`{key}`: {before.get(key, '(unset)')!r} -> {after.get(key, '(unset)')!r}"
        if recorded.get("num_processes") != current["num_processes"]:
            changes["num_processes"] = (
                f"processes: {recorded.get('num_processes')} -> {current['num_processes']} (global batch "
                f"{recorded.get('global_batch')} -> {current['global_batch']}; the data position and the random "
                "streams are per process)"
            )
        return changes
