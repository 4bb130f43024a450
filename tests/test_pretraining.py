"""The pretraining loop: recipes, optimisation, checkpoints, resume, faults, scale-out and the demo."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import tiny_model
from transformers import AutoModel

import videofirst.train.pretraining as pretraining
from videofirst.data.synthetic import write_synthetic_dataset
from videofirst.recipe import OptimSection, load_recipe
from videofirst.train.checkpointing import CheckpointManager, TrainerState
from videofirst.train.optimization import build_optimizer, warmup_cosine_factor

REPO = Path(__file__).resolve().parents[1]
PRETRAIN = REPO / "training" / "pretrain.py"
DEMO = REPO / "training" / "configs" / "demo.yaml"


def write_tiny_data(root: Path) -> Path:
    """24 short synthetic videos, 18 for training and 6 held out."""
    write_synthetic_dataset(
        root, num_videos=24, num_events=2, duration=4.0, fps=1.0, size=32, seed=0, test_fraction=0.25
    )
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


def tiny_overrides(data: Path, run_dir: Path, **extra) -> list[str]:
    """The demo recipe shrunk to seconds: 4-frame clips, batch 4, workers off."""
    values = {
        "run.output_dir": run_dir,
        "run.log_every": 1,
        "run.trackers": "none",
        "data.train_manifest": data / "train.jsonl",
        "data.eval_manifest": data / "test.jsonl",
        "data.num_frames": 4,
        "data.num_workers": 0,
        "model.vision.num_hidden_layers": 1,
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


# Recipes and optimisation ----------------------------------------------------------------------------------------


def test_recipe_overrides_and_errors(tmp_path):
    recipe = load_recipe(DEMO, ["optim.max_steps=7", "model.vision.mask_ratio=0.25", "optim.learning_rate=1"])
    assert recipe.optim.max_steps == 7 and recipe.optim.learning_rate == 1.0
    assert recipe.model.vision["mask_ratio"] == 0.25 and recipe.model.vision["hidden_size"] == 64
    with pytest.raises(ValueError, match="max_stepz"):
        load_recipe(DEMO, ["optim.max_stepz=3"])
    with pytest.raises(ValueError, match="optim.max_steps"):
        load_recipe(DEMO, ["optim.max_steps=many"])
    with pytest.raises(ValueError, match="section.key=value"):
        load_recipe(DEMO, ["optim.max_steps"])
    with pytest.raises(FileNotFoundError):
        load_recipe(tmp_path / "missing.yaml")


def test_load_recipe_builds_any_recipe_class():
    from videofirst.train.video_to_text import VideoToTextRecipe, load_video_to_text_recipe

    config = REPO / "training" / "configs" / "video_to_text_demo.yaml"
    recipe = load_recipe(config, ["eval.max_new_tokens=5"], recipe_class=VideoToTextRecipe)
    assert isinstance(recipe, VideoToTextRecipe) and recipe.eval.max_new_tokens == 5
    assert recipe == load_video_to_text_recipe(config, ["eval.max_new_tokens=5"])
    with pytest.raises(ValueError, match="projection_dim"):  # a pretraining key, unknown to this recipe
        load_recipe(config, ["model.projection_dim=3"], recipe_class=VideoToTextRecipe)


def test_every_recipe_in_configs_loads():
    from videofirst.train.video_to_text import load_video_to_text_recipe

    for path in sorted((REPO / "training" / "configs").glob("*.yaml")):
        (load_video_to_text_recipe if path.name.startswith("video_to_text") else load_recipe)(path)


def test_weight_decay_skips_biases_norms_and_embeddings():
    model = tiny_model()
    optimizer = build_optimizer(model, OptimSection(weight_decay=0.1))
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert optimizer.param_groups[0]["weight_decay"] == 0.1 and optimizer.param_groups[1]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    assert all(names[i].endswith("weight") for i in decayed)
    assert id(model.logit_scale) not in decayed
    assert id(model.vision_model.embeddings.spatial_position_embedding) not in decayed
    assert id(model.vision_model.encoder.layers[0].self_attn.q_proj.weight) in decayed


def test_warmup_then_cosine():
    factors = [warmup_cosine_factor(step, 4, 20, 0.1) for step in range(21)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[20] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[4:], factors[5:]))


# Checkpoints and faults ------------------------------------------------------------------------------------------


def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 3))
    manager = CheckpointManager(tmp_path, accelerator, keep_last=2)
    manager.save(TrainerState(step=1))
    first = {k: v.clone() for k, v in model.state_dict().items()}

    def crash(*args, **kwargs):
        Path(args[0], "model.safetensors").write_bytes(b"half a file")
        raise KeyboardInterrupt("killed while saving")

    with torch.no_grad():
        model.weight.add_(1.0)
    monkeypatch.setattr(accelerator, "save_state", crash)
    with pytest.raises(KeyboardInterrupt):
        manager.save(TrainerState(step=2))
    monkeypatch.undo()
    assert manager.latest().name == "step_00000001"
    assert (tmp_path / "step_00000002.partial").exists()
    state = manager.load(manager.latest())
    assert state.step == 1
    assert torch.equal(model.state_dict()["weight"], first["weight"])
    # The next successful save clears the debris and rotates old checkpoints away.
    for step in (3, 4, 5):
        manager.save(TrainerState(step=step))
    assert [p.name for p in manager.completed()] == ["step_00000004", "step_00000005"]
    assert not list(tmp_path.glob("*.partial"))


def test_resume_after_sigkill_equals_uninterrupted_run(tiny_data, tmp_path):
    reference = tmp_path / "reference"
    result = run_script(tiny_overrides(tiny_data, reference))
    assert result.returncode == 0, result.stderr[-4000:]

    interrupted = tmp_path / "interrupted"
    args = [str(PRETRAIN), "--config", str(DEMO), *tiny_overrides(tiny_data, interrupted)]
    process = subprocess.Popen([sys.executable, *args], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_at_checkpoint(process, interrupted, step=4, timeout=240)

    resumed = run_script([*tiny_overrides(tiny_data, interrupted), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "Resumed from" in resumed.stdout
    assert_same_weights(final_weights(reference), final_weights(interrupted))


def test_non_finite_loss_stops_with_a_checkpoint_from_before(tiny_data, tmp_path, monkeypatch):
    calls = {"count": 0}
    real_loss = pretraining.contrastive_loss

    def poisoned(*args, **kwargs):
        calls["count"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["count"] == 4 else loss

    monkeypatch.setattr(pretraining, "contrastive_loss", poisoned)
    recipe = load_recipe(DEMO, tiny_overrides(tiny_data, tmp_path / "run", **{"checkpoint.save_every": 100}))
    with pytest.raises(pretraining.NonFiniteLossError, match="step 3"):
        pretraining.pretrain(recipe)
    saved = tmp_path / "run" / "checkpoints" / "step_00000003"
    assert json.loads((saved / "trainer_state.json").read_text())["step"] == 3
    weights = load_file(str(saved / "model.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_bad_samples_are_skipped_and_counted(tiny_data, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    rows = [json.loads(line) for line in (tiny_data / "train.jsonl").read_text().splitlines()]
    for row in rows:
        row["video"] = str(tiny_data / row["video"])
    (data / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    rows[1]["video"] = str(data / "broken.mp4")
    rows[5]["video"] = str(data / "missing.mp4")
    (data / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    overrides = tiny_overrides(tiny_data, tmp_path / "run", **{"data.train_manifest": data / "train.jsonl"})
    # 2 bad rows of 18 (11%, above the default 5%): the check waits for `data.bad_fraction_min_samples` (100).
    result = pretraining.pretrain(load_recipe(DEMO, overrides))
    assert result.bad_samples >= 1 and result.final_step == 6
    state = json.loads((tmp_path / "run" / "checkpoints" / "step_00000006" / "trainer_state.json").read_text())
    # 6 steps of 4 rows read: each bad row is dropped from its batch and counted once, nothing replaces it.
    assert state["samples_seen"] + state["bad_samples"] == 24 and state["bad_samples"] == result.bad_samples
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [record["bad_samples"] for record in log if "bad_samples" in record][-1] == result.bad_samples

    strict = ["data.max_bad_fraction=0.01", "data.bad_fraction_min_samples=4", f"run.output_dir={tmp_path / 'strict'}"]
    with pytest.raises(RuntimeError, match="max_bad_fraction"):
        pretraining.pretrain(load_recipe(DEMO, overrides + strict))


# Gradient caching --------------------------------------------------------------------------------------------------


def test_cached_micro_batches_match_one_contrastive_batch(tiny_data, tmp_path):
    """Splitting a batch into cached micro-batches must give the gradients of the whole batch."""
    from accelerate import Accelerator

    recipe = load_recipe(DEMO, tiny_overrides(tiny_data, tmp_path))
    recipe.model.vision["mask_ratio"] = 0.0
    torch.manual_seed(0)
    model = tiny_model()
    model.text_model.config.hidden_dropout_prob = 0.0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = {
        "pixel_values_videos": torch.randn(6, 4, 3, 32, 32),
        "video_frame_mask": torch.ones(6, 4, dtype=torch.long),
        "input_ids": torch.randint(1, 128, (6, 5)),
        "attention_mask": torch.ones(6, 5, dtype=torch.long),
    }
    gradients = {}
    for micro_batches in (1, 3):
        recipe.optim.contrastive_micro_batches = micro_batches
        model.zero_grad()
        objective = pretraining.ContrastiveObjective(model, Accelerator(cpu=True), recipe)
        loss, _ = objective(batch, step=0, slot=0)
        gradients[micro_batches] = (
            loss,
            {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
        )
    (loss_full, grads_full), (loss_cached, grads_cached) = gradients[1], gradients[3]
    assert torch.allclose(loss_full, loss_cached, atol=1e-6)
    assert grads_full.keys() == grads_cached.keys() and "logit_scale" in grads_full
    for name in grads_full:
        assert torch.allclose(grads_full[name], grads_cached[name], atol=1e-5), name


# Scale-out and the demo ------------------------------------------------------------------------------------------


def test_two_cpu_processes_train_and_export(tiny_data, tmp_path):
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
    ]
    env_overrides = tiny_overrides(tiny_data, tmp_path / "ddp", **{"optim.max_steps": 3, "optim.batch_size": 2})
    command = launcher + [str(PRETRAIN), "--config", str(DEMO), *env_overrides]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=REPO, env={**os.environ, "ACCELERATE_USE_CPU": "1"}
    )
    assert result.returncode == 0, result.stderr[-4000:]
    log = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    # Two processes of batch 2 make a global batch of 4 clips per step.
    assert log[0]["step"] == 1 and (tmp_path / "ddp" / "export" / "model.safetensors").exists()
    state = json.loads((tmp_path / "ddp" / "checkpoints" / "step_00000003" / "trainer_state.json").read_text())
    assert state["samples_seen"] == 12


def test_demo_runs_end_to_end_and_exports_a_loadable_model(tiny_data, tmp_path):
    result = run_script(tiny_overrides(tiny_data, tmp_path / "demo", **{"optim.max_steps": 3}))
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Held-out retrieval" in result.stdout and "Exported model" in result.stdout
    export = tmp_path / "demo" / "export"
    model = AutoModel.from_pretrained(export, trust_remote_code=True)
    assert model.config.vision_config.mask_ratio == 0.5
    assert (export / "preprocessor_config.json").exists() or (export / "processor_config.json").exists()
    log = [json.loads(line) for line in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()]
    assert any("eval/t2v_recall@1" in record for record in log)
    assert all(record["videos_per_second"] > 0 for record in log if "videos_per_second" in record)


def test_loss_weight_scales_the_gradients(tiny_data, tmp_path):
    from accelerate import Accelerator

    recipe = load_recipe(DEMO, tiny_overrides(tiny_data, tmp_path))
    model = tiny_model()
    batch = {
        "pixel_values": torch.randn(4, 3, 32, 32),
        "input_ids": torch.randint(1, 128, (4, 5)),
        "attention_mask": torch.ones(4, 5, dtype=torch.long),
    }
    objective = pretraining.ContrastiveObjective(model, Accelerator(cpu=True), recipe)
    grads = []
    for weight in (1.0, 0.25):
        model.zero_grad()
        objective(batch, step=0, slot=0, weight=weight)
        grads.append(model.vision_model.embeddings.patch_embedding.weight.grad.clone())
    assert torch.allclose(grads[1], 0.25 * grads[0], atol=1e-7)


def test_image_text_co_training(tiny_data, tmp_path):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for index, colour in enumerate(["red", "green", "blue", "yellow"] * 2):
        Image.new("RGB", (40, 32), colour).save(images / f"{index}.png")
        rows.append({"image": f"{index}.png", "caption": f"a {colour} picture"})
    (images / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = tmp_path / "run"
    overrides = tiny_overrides(tiny_data, run, **{"optim.max_steps": 3, "data.image_manifest": images / "train.jsonl"})
    result = pretraining.pretrain(load_recipe(DEMO, overrides))
    assert result.final_step == 3
    trained = load_file(str(run / "export" / "model.safetensors"))
    first = load_file(str(run / "checkpoints" / "step_00000002" / "model.safetensors"))
    assert not torch.equal(
        first["vision_model.embeddings.patch_embedding.weight"],
        trained["vision_model.embeddings.patch_embedding.weight"],
    ), "the 2D patch kernel must train when images are co-trained"
