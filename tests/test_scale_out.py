"""Scale-out that has run: FSDP2 and DDP over two CPU (gloo) processes, two "nodes" on the loopback, bf16 mixed
precision, and torch.compile under masking. The GPU acceptance script is exercised in its --dry-run mode."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_pretraining import DEMO, PRETRAIN, REPO, assert_same_weights, final_weights, tiny_data, tiny_overrides
from transformers import AutoModel

from videofirst.recipe import load_recipe
from videofirst.train.distributed import ddp_kwargs

__all__ = ["tiny_data"]  # the fixture, shared with test_pretraining

CONFIGS = REPO / "training" / "accelerate_configs"
CPU_ENV = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
# Deterministic per sample whatever the process: no token masking, no dropout.
EXACT = {
    "model.vision.mask_ratio": 0.0,
    "model.text.hidden_dropout_prob": 0.0,
    "model.text.attention_probs_dropout_prob": 0.0,
}


def launch(config: str, run_dir: Path, tiny_data: Path, *extra: str, **overrides) -> subprocess.Popen:
    """`accelerate launch --config_file <config> training/pretrain.py` on CPU processes, batch 2 per process."""
    values = {"optim.batch_size": 2, "optim.max_steps": 4, **EXACT, **overrides}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(CONFIGS / config),
        "--main_process_port",
        str(free_port()),
        *extra,
        str(PRETRAIN),
        "--config",
        str(DEMO),
        *tiny_overrides(tiny_data, run_dir, **values),
    ]
    log = open(run_dir.with_suffix(".log"), "w")  # noqa: SIM115 (closed with the process)
    # Its own process group, so that SIGKILL reaches the launcher and the workers at once (a lost machine).
    return subprocess.Popen(
        command, cwd=REPO, env=CPU_ENV, stdout=log, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finished(process: subprocess.Popen, run_dir: Path, timeout: float = 400) -> None:
    assert process.wait(timeout=timeout) == 0, run_dir.with_suffix(".log").read_text()[-4000:]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def losses(run_dir: Path) -> list[float]:
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record["loss"] for record in log if "loss" in record]


def one_process_reference(tiny_data: Path, run_dir: Path, **overrides) -> None:
    """The same run on one process with the global batch (4 clips)."""
    values = {"optim.batch_size": 4, "optim.max_steps": 4, **EXACT, **overrides}
    command = [sys.executable, str(PRETRAIN), "--config", str(DEMO), *tiny_overrides(tiny_data, run_dir, **values)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO, env=CPU_ENV)
    assert result.returncode == 0, result.stderr[-4000:]


def assert_close_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 1e-4) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol), (name, (a[name] - b[name]).abs().max())


def kill_after_checkpoint(process: subprocess.Popen, checkpoint: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert checkpoint.exists(), f"the run never reached {checkpoint.name}"
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


# FSDP2 ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_trains_resumes_and_exports(tiny_data, tmp_path):
    """accelerate's FSDP2 config on 2 gloo processes: the same losses and weights as one process on the global
    batch; sharded checkpoints; the sharded checkpoint exports; SIGKILL + resume ends bit-identical."""
    from videofirst.train.run_export import export_run

    reference, sharded, interrupted = tmp_path / "one", tmp_path / "fsdp", tmp_path / "killed"
    uninterrupted = launch("fsdp2_cpu_2proc.yaml", sharded, tiny_data)
    one_process_reference(tiny_data, reference)
    finished(uninterrupted, sharded)
    log = sharded.with_suffix(".log").read_text()
    assert "switched this 2-process CPU group to FSDP2" in log
    checkpoint = sharded / "checkpoints" / "step_00000004"
    assert (checkpoint / "pytorch_model_fsdp_0" / ".metadata").is_file() and not (
        checkpoint / "model.safetensors"
    ).exists()
    # Gathered contrastive loss: 2 processes x 2 clips = one process x 4 clips, step by step.
    assert losses(sharded) == pytest.approx(losses(reference), rel=1e-5)
    assert_close_weights(final_weights(sharded), final_weights(reference))

    process = launch("fsdp2_cpu_2proc.yaml", interrupted, tiny_data)
    kill_after_checkpoint(process, interrupted / "checkpoints" / "step_00000002")
    assert not (interrupted / "export").exists(), "the run finished before it could be killed"
    resumed = launch("fsdp2_cpu_2proc.yaml", interrupted, tiny_data, **{"checkpoint.resume": True})
    finished(resumed, interrupted)
    assert "Resumed from" in interrupted.with_suffix(".log").read_text()

    exported = export_run(checkpoint, tmp_path / "from_shards")
    assert_same_weights(load_file(str(exported / "model.safetensors")), final_weights(sharded))
    AutoModel.from_pretrained(exported, trust_remote_code=True)

    # Bit-identical after SIGKILL + resume: parameters with fewer rows than processes stay replicated (an empty
    # shard's optimizer step count was not restored, and the resumed run drifted).
    assert_same_weights(final_weights(sharded), final_weights(interrupted))


# DDP with frozen parts, activation checkpointing and images -------------------------------------------------------

LONG_STAGE = {  # the long stage's recipe at tiny size: last layer only, frozen text and tubelet kernel
    "model.vision.num_hidden_layers": 2,
    "adaptation.method": "last_layers",
    "adaptation.trainable_last_layers": 1,
    "adaptation.freeze_text": True,
    "adaptation.train_patch_embedding": False,
    "optim.activation_checkpointing": True,
}


@pytest.fixture(scope="module")
def image_manifest(tmp_path_factory) -> Path:
    from PIL import Image

    images = tmp_path_factory.mktemp("images")
    rows = []
    for index, colour in enumerate(["red", "green", "blue", "yellow"] * 2):
        Image.new("RGB", (40, 32), colour).save(images / f"{index}.png")
        rows.append({"image": f"{index}.png", "caption": f"a {colour} picture"})
    (images / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return images / "train.jsonl"


def test_ddp_options_follow_the_recipe(image_manifest):
    videos = load_recipe(DEMO, [f"{key}={value}" for key, value in LONG_STAGE.items()])
    assert ddp_kwargs(videos).to_kwargs() == {}  # DDP's defaults: no unused-parameter search, no static graph
    with_images = load_recipe(DEMO, [f"data.image_manifest={image_manifest}"])
    assert ddp_kwargs(with_images).to_kwargs() == {"find_unused_parameters": True}


@pytest.mark.slow
def test_ddp_long_stage_and_image_co_training_match_one_process(tiny_data, image_manifest, tmp_path):
    """On 2 gloo processes the long-stage recipe (frozen parts, activation checkpointing) and image co-training
    (parameters unused by one of the two passes) train without DDP errors, to the weights of one process on the
    global batch."""
    recipes = {"long": LONG_STAGE, "images": {"data.image_manifest": image_manifest, "optim.max_steps": 3}}
    runs = {
        name: launch("cpu_2proc.yaml", tmp_path / f"ddp_{name}", tiny_data, **recipe)
        for name, recipe in recipes.items()
    }
    for name, recipe in recipes.items():
        finished(runs[name], tmp_path / f"ddp_{name}")
        one_process_reference(tiny_data, tmp_path / f"one_{name}", **recipe)
        assert losses(tmp_path / f"ddp_{name}") == pytest.approx(losses(tmp_path / f"one_{name}"), rel=1e-5)
        assert_close_weights(final_weights(tmp_path / f"ddp_{name}"), final_weights(tmp_path / f"one_{name}"))


# Multi-node ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_nodes_on_the_loopback_train_checkpoint_and_resume(tiny_data, tmp_path):
    """training/accelerate_configs/multi_node.yaml, one launcher per "machine" (rank 0 and 1) on 127.0.0.1, one
    process each, sharing the run folder: 2 steps and a checkpoint, then a resume to step 3."""
    run_dir = tmp_path / "nodes"

    def both_nodes(**overrides) -> None:
        port = str(free_port())
        nodes = []
        for rank in (0, 1):
            args = ["--num_processes", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1"]
            args += ["--main_process_port", port]
            node = launch("multi_node.yaml", run_dir.with_name(f"nodes_{rank}"), tiny_data, *args, **overrides)
            nodes.append(node)
        for rank, node in enumerate(nodes):
            finished(node, run_dir.with_name(f"nodes_{rank}"))

    common = {"run.output_dir": run_dir, "checkpoint.save_every": 2}
    both_nodes(**common, **{"optim.max_steps": 2})
    assert json.loads((run_dir / "checkpoints" / "step_00000002" / "trainer_state.json").read_text())["step"] == 2
    both_nodes(**common, **{"optim.max_steps": 3, "checkpoint.resume": True})
    assert "Resumed from" in run_dir.with_name("nodes_0").with_suffix(".log").read_text()
    state = json.loads((run_dir / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())
    assert state["step"] == 3 and state["samples_seen"] == 3 * 2 * 2  # 3 steps of 2 machines x 2 clips
    assert (run_dir / "export" / "model.safetensors").is_file()


# Mixed precision and compile -------------------------------------------------------------------------------------


@pytest.fixture
def fresh_accelerator_state():
    """Each in-process run makes its own Accelerator with its own precision (accelerate keeps one per process)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow
def test_bf16_mixed_precision_trains_close_to_fp32(tiny_data, tmp_path, fresh_accelerator_state):
    from accelerate.state import AcceleratorState

    from videofirst.train.pretraining import pretrain

    for precision in ("no", "bf16"):
        AcceleratorState._reset_state(reset_partial_state=True)
        # Quoted: a bare `no` is YAML for false.
        overrides = {"optim.mixed_precision": f"'{precision}'", "optim.max_steps": 4, **EXACT}
        pretrain(load_recipe(DEMO, tiny_overrides(tiny_data, tmp_path / precision, **overrides)))
    fp32, bf16 = losses(tmp_path / "no"), losses(tmp_path / "bf16")
    assert len(bf16) == 4 and all(torch.isfinite(torch.tensor(bf16)))
    assert bf16 != fp32, "bf16 autocast did not change the computation"
    assert bf16 == pytest.approx(fp32, abs=0.05)
    assert_close_weights(final_weights(tmp_path / "bf16"), final_weights(tmp_path / "no"), atol=2e-2)


def test_compiled_towers_do_not_recompile_for_every_token_count():
    """Under masking the kept-token count, the frames and the batch change between steps: after the first
    recompile (which makes the sizes dynamic) new counts reuse the compiled graphs."""
    from tiny_models import tiny_model
    from torch._dynamo.utils import counters

    from videofirst.train.distributed import compile_towers

    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = compile_towers(tiny_model(mask_ratio=0.5), backend="eager")
    graphs, tokens = [], []
    for step, (batch, frames) in enumerate([(2, 4), (3, 4), (4, 2), (2, 2), (5, 4), (3, 2), (6, 4)]):
        outputs = model(
            pixel_values_videos=torch.randn(batch, frames, 3, 32, 32),
            input_ids=torch.randint(1, 100, (batch, 5 + step)),
            attention_mask=torch.ones(batch, 5 + step, dtype=torch.long),
        )
        (outputs.video_embeds.sum() + outputs.text_embeds.sum()).backward()
        graphs.append(counters["stats"]["unique_graphs"])
        tokens.append(outputs.vision_model_output.last_hidden_state.shape[1])
    assert graphs[0] > 0, "nothing was compiled"
    assert len(set(tokens[3:])) > 1 and graphs[3:] == [graphs[2]] * 4, (tokens, graphs)
    torch._dynamo.reset()


@pytest.mark.slow
def test_compile_runs_in_the_training_loop(tiny_data, tmp_path, fresh_accelerator_state):
    from videofirst.train.pretraining import pretrain

    overrides = {"optim.compile": True, "optim.compile_backend": "eager", "optim.max_steps": 2}
    result = pretrain(load_recipe(DEMO, tiny_overrides(tiny_data, tmp_path / "run", **overrides)))
    assert result.final_step == 2 and all(torch.isfinite(torch.tensor(losses(tmp_path / "run"))))
    torch._dynamo.reset()


# GPU acceptance script -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_gpu_acceptance_dry_run_runs_every_step(tmp_path):
    script = REPO / "training" / "benchmarks" / "gpu_acceptance.py"
    result = subprocess.run(
        [sys.executable, str(script), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=2400,
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    with open(tmp_path / "acceptance.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["step"] for row in rows] == ["demo_bf16", "peers", "limit", "efficiency", "fsdp2"]
    assert "final loss" in rows[0]["result"] and "final loss" in rows[-1]["result"]
    assert all(float(row["seconds"]) > 0 for row in rows)
    assert "| limit |" in (tmp_path / "acceptance.md").read_text()
    assert "switched this 2-process CPU group to FSDP2" in (tmp_path / "fsdp2" / "output.log").read_text()


def test_gpu_acceptance_fails_loudly_without_a_gpu(tmp_path):
    script = REPO / "training" / "benchmarks" / "gpu_acceptance.py"
    result = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 1 and "no CUDA GPU" in result.stderr
    assert not (tmp_path / "acceptance.csv").exists()
