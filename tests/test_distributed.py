"""DDP-safe parameters: two gloo processes with gradient checkpointing, video-only and with co-trained images."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_pretraining import DEMO, PRETRAIN, REPO, tiny_overrides
from tiny_models import tiny_model
from torch.nn.parallel import DistributedDataParallel

from videofirst import apply_adaptation
from videofirst.data.synthetic import write_synthetic_dataset

STEPS = 2  # DDP reports parameters that got no gradient when the next step starts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def batches(rank: int) -> tuple[dict, dict]:
    """A video batch and an image batch of this rank (different on every rank)."""
    generator = torch.Generator().manual_seed(100 + rank)
    text = {"input_ids": torch.randint(1, 128, (2, 5), generator=generator), "attention_mask": torch.ones(2, 5)}
    video = {"pixel_values_videos": torch.randn(2, 4, 3, 32, 32, generator=generator), **text}
    image = {"pixel_values": torch.randn(2, 3, 32, 32, generator=generator), **text}
    return video, image


def build(train_images: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    model = tiny_model()
    # As the training scripts do: the image kernel trains only when images do.
    apply_adaptation(model, method="full", train_images=train_images)
    model.activation_checkpointing_enable()
    return model.train()


def train_steps(model: torch.nn.Module, rank: int, with_images: bool) -> None:
    video, image = batches(rank)
    for _ in range(STEPS):
        model.zero_grad()
        model(**video, return_loss=True).loss.backward()
        if with_images:  # its own forward pass, as `pretrain` co-trains images
            model(**image, return_loss=True).loss.backward()


def worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    results = {}
    for name, with_images, find_unused in [
        ("videos", False, False),
        ("images", True, True),
        ("undeclared", True, False),
    ]:
        model = build(train_images=with_images)
        ddp = DistributedDataParallel(model, find_unused_parameters=find_unused)
        try:
            train_steps(ddp, rank, with_images)
            results[name] = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        except RuntimeError as error:
            results[name] = str(error)
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def reference_gradients(with_images: bool) -> dict[str, torch.Tensor]:
    """The gradient DDP must produce: the mean over the two ranks' batches, computed in one process."""
    total = {}
    for rank in range(2):
        model = build(train_images=with_images)
        train_steps(model, rank, with_images)
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                total[name] = total.get(name, 0) + parameter.grad / 2
    return total


@pytest.mark.slow
def test_two_gloo_processes_with_gradient_checkpointing(tmp_path):
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    for name, with_images in [("videos", False), ("images", True)]:
        expected = reference_gradients(with_images)
        for result in ranks:
            assert isinstance(result[name], dict), result[name]
            # Every trainable parameter got its gradient, averaged over both processes.
            assert result[name].keys() == expected.keys()
            for parameter, grad in expected.items():
                torch.testing.assert_close(result[name][parameter], grad, msg=parameter)
    assert "vision_model.embeddings.patch_embedding.weight" not in ranks[0]["videos"]  # frozen without images
    assert "vision_model.embeddings.patch_embedding.weight" in ranks[0]["images"]
    # Why images need `find_unused_parameters`: each pass leaves the other modality's kernel without a gradient.
    for result in ranks:
        assert isinstance(result["undeclared"], str) and "did not receive grad" in result["undeclared"]


@pytest.mark.slow
def test_two_process_pretraining_with_images_and_activation_checkpointing(tmp_path):
    """`pretrain` under `accelerate launch` with 2 CPU processes, co-trained images and activation checkpointing."""
    from PIL import Image

    data = tmp_path / "data"
    write_synthetic_dataset(
        data, num_videos=24, num_events=2, duration=4.0, fps=1.0, size=32, seed=0, test_fraction=0.25
    )
    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for index, colour in enumerate(["red", "green", "blue", "yellow"] * 2):
        Image.new("RGB", (40, 32), colour).save(images / f"{index}.png")
        rows.append(f'{{"image": "{index}.png", "caption": "a {colour} picture"}}\n')
    (images / "train.jsonl").write_text("".join(rows))
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launcher += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    extra = {
        "optim.max_steps": 3,
        "optim.batch_size": 2,
        "optim.activation_checkpointing": "true",
        "data.image_manifest": images / "train.jsonl",
    }
    command = [*launcher, str(PRETRAIN), "--config", str(DEMO), *tiny_overrides(data, tmp_path / "run", **extra)]
    environment = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "run" / "export" / "model.safetensors").exists()
