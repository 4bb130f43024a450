"""Tiny pretraining runs shared by the training, run-folder, scale-out and Hub tests: the demo recipe shrunk to
seconds, a tiny synthetic dataset, and ways to compare or interrupt runs."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from videofirst.data.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "training" / "pretrain.py"
DEMO = REPO / "training" / "configs" / "demo.yaml"


def write_tiny_data(root: Path) -> Path:
    """24 short synthetic videos, 18 for training and 6 held out."""
    write_synthetic_dataset(
        root, num_videos=24, num_events=2, duration=4.0, fps=1.0, size=32, seed=0, test_fraction=0.25
    )
    return root


def tiny_run_and_data(data: Path, run_dir: Path) -> dict:
    """The recipe keys every tiny run shares (pretraining and video-to-text): its folder, no trackers, the tiny
    data's manifests, 4-frame clips, no data workers, a one-layer video tower."""
    return {
        "run.output_dir": run_dir,
        "run.log_every": 1,
        "run.trackers": "none",
        "data.train_manifest": data / "train.jsonl",
        "data.eval_manifest": data / "test.jsonl",
        "data.num_frames": 4,
        "data.num_workers": 0,
        "model.vision.num_hidden_layers": 1,
    }


def tiny_overrides(data: Path, run_dir: Path, **extra) -> list[str]:
    """The demo recipe shrunk to seconds: 4-frame clips, batch 4, workers off."""
    values = {
        **tiny_run_and_data(data, run_dir),
        "model.text.num_hidden_layers": 1,
        "optim.batch_size": 4,
        "optim.max_steps": 6,
        "optim.warmup_steps": 2,
        "checkpoint.save_every": 2,
        "checkpoint.keep_last": 2,
        "eval.every": 0,
        "eval.batch_size": 8,
    }
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def run_script(args: list[str], timeout: float = 300, launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + [str(PRETRAIN), "--config", str(DEMO), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def kill_at_checkpoint(process: subprocess.Popen, run_dir: Path, step: int, timeout: float) -> None:
    """SIGKILL the training `process` as soon as its step-`step` checkpoint exists (before it can export)."""
    checkpoint = run_dir / "checkpoints" / f"step_{step:08d}"
    deadline = time.monotonic() + timeout
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), f"the run never reached its step-{step} checkpoint"
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "export").exists(), "the run finished before it could be killed"


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "export" / "model.safetensors"))


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
