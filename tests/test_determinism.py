"""Bit-reproducibility: identical backward passes give identical gradients at sizes where parallel kernels engage,
the `run.deterministic` switch, `torch.compile(fullgraph=True)` of the video tower, and a SIGKILL-resume run at the
long-range benchmark's size.

The sizes matter: the long-range benchmark's tower (64 frames of 32 px, 2x8x8 tubelets: 512 tokens, the issue's
count; batch 32, 2 threads) is where the CPU kernels accumulate in parallel (PyTorch's indexed accumulation goes
parallel, with atomic adds in no fixed order, above 32768 elements), and where the masked path used to differ.
Each test runs the same backward pass three times and compares every gradient bit for bit, without
`torch.use_deterministic_algorithms`: they check the model itself.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_pretraining import kill_at_checkpoint
from tiny_models import TINY_TEXT_CONFIG

from videofirst import VideoFirstConfig, VideoFirstModel, VideoFirstVisionConfig, VideoFirstVisionModel
from videofirst.data.synthetic import write_synthetic_dataset
from videofirst.train.determinism import CUBLAS_WORKSPACE, configure_determinism
from videofirst.train.losses import contrastive_loss, sigmoid_loss

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "training" / "benchmarks"))  # the benchmark scripts' modules
BATCH, FRAMES = 32, 64
PASSES = 3


def long_range_vision_config(**overrides) -> VideoFirstVisionConfig:
    """The long-range benchmark's tower: 64 frames, 32 px, 8 px tubelets of 2 frames (32 x 16 = 512 tokens)."""
    values = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        num_frames=FRAMES,
        tubelet_size=[2, 8, 8],
        mask_ratio=0.75,
    )
    values.update(overrides)
    return VideoFirstVisionConfig(**values)


@pytest.fixture
def two_threads():
    """Two intra-op threads (what the benchmarks use), whatever the test runner set, and not the deterministic
    mode: the model alone must be deterministic."""
    threads, mode = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(False)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(mode)


def randomised(model: torch.nn.Module) -> torch.nn.Module:
    """Non-zero weights everywhere (position tables and gates start at zero), so every gradient is informative."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model.train()


def gradients(model: torch.nn.Module, loss_fn) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss_fn().backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def assert_repeatable(model: torch.nn.Module, loss_fn) -> None:
    """`PASSES` identical backward passes give bit-identical gradients for every parameter that gets one."""
    first = gradients(model, loss_fn)
    assert first, "no parameter got a gradient"
    for _ in range(PASSES - 1):
        again = gradients(model, loss_fn)
        assert again.keys() == first.keys()
        differing = [name for name in first if not torch.equal(first[name], again[name])]
        assert not differing, f"gradients differ between identical backward passes: {differing}"


def video_loss(model: VideoFirstVisionModel, videos: torch.Tensor, frame_mask: torch.Tensor | None = None):
    def loss() -> torch.Tensor:
        generator = torch.Generator().manual_seed(1)  # the same token drop every pass
        output = model(pixel_values_videos=videos, video_frame_mask=frame_mask, generator=generator)
        return output.pooler_output.square().sum()

    return loss


def random_videos(frames: int = FRAMES, size: int = 32) -> torch.Tensor:
    return torch.randn(BATCH, frames, 3, size, size, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("mask_type", ["random", "tube"])
@pytest.mark.parametrize("attention_type", ["joint", "factorized", "frame"])
def test_masked_backward_is_repeatable(two_threads, attention_type, mask_type):
    config = long_range_vision_config(attention_type=attention_type, mask_type=mask_type)
    model = randomised(VideoFirstVisionModel(config))
    assert_repeatable(model, video_loss(model, random_videos()))


@pytest.mark.parametrize("attention_type", ["joint", "frame"])
def test_masked_backward_with_padded_frames_is_repeatable(two_threads, attention_type):
    """Padding makes rows of different lengths: padded slots repeat grid position 0 and groups are uneven."""
    model = randomised(
        VideoFirstVisionModel(long_range_vision_config(attention_type=attention_type, pooling="attention"))
    )
    frame_mask = torch.ones(BATCH, FRAMES, dtype=torch.long)
    for row in range(BATCH):
        frame_mask[row, FRAMES - 2 * (row % 8) :] = 0
    assert_repeatable(model, video_loss(model, random_videos(), frame_mask))


def test_masked_backward_of_tubevit_and_images_is_repeatable(two_threads):
    kernels = [
        {"kernel_size": [8, 8, 8], "stride": [4, 8, 8], "offset": [0, 0, 0]},
        {"kernel_size": [2, 8, 8], "stride": [2, 8, 8], "offset": [0, 0, 0]},
    ]
    model = randomised(VideoFirstVisionModel(long_range_vision_config(tubevit_kernels=kernels, pooling="cls")))
    assert_repeatable(model, video_loss(model, random_videos()))
    images = torch.randn(BATCH, 3, 128, 128, generator=torch.Generator().manual_seed(3))

    def image_loss() -> torch.Tensor:
        output = model(pixel_values=images, mask_ratio=0.75, generator=torch.Generator().manual_seed(1))
        return output.pooler_output.square().sum()

    assert_repeatable(model, image_loss)


@pytest.mark.parametrize("loss_name", ["contrastive", "sigmoid"])
def test_dual_encoder_and_losses_are_repeatable(two_threads, loss_name):
    """The whole model (BERT text tower, projections) and the training losses of `videofirst.train.losses`."""
    config = VideoFirstConfig(
        vision_config=long_range_vision_config().to_dict(), text_config=TINY_TEXT_CONFIG, projection_dim=64
    )
    model = randomised(VideoFirstModel(config))
    videos = random_videos()
    input_ids = torch.randint(1, 128, (BATCH, 48), generator=torch.Generator().manual_seed(4))

    def loss() -> torch.Tensor:
        torch.manual_seed(5)  # the text tower's dropout, as the training loop reseeds it per micro-batch
        generator = torch.Generator().manual_seed(1)
        video = model.get_video_features(pixel_values_videos=videos, generator=generator).pooler_output
        text = model.get_text_features(input_ids=input_ids).pooler_output  # both L2-normalised
        if loss_name == "sigmoid":
            return sigmoid_loss(video, text, 10.0, -10.0)
        return contrastive_loss(video, text, 20.0)

    assert_repeatable(model, loss)


def test_masked_path_equals_the_index_lookup_it_replaced():
    """The kept tokens' positions are the tables looked up at their (step, position): the old formula."""
    model = randomised(VideoFirstVisionModel(long_range_vision_config(hidden_size=16, num_frames=8)))
    embeddings = model.embeddings
    spatial, temporal = embeddings.spatial_positions(4, 4)[0], embeddings.temporal_positions(4)[0]
    indices = torch.stack(
        [torch.randperm(64, generator=torch.Generator().manual_seed(i))[:16].sort()[0] for i in range(3)]
    )
    expected = spatial[indices % 16] + temporal[indices // 16]
    torch.testing.assert_close(embeddings.kept_positions(spatial, temporal, indices), expected, rtol=0, atol=1e-7)


def test_sweep_compares_the_former_position_lookup_with_todays():
    """The benchmark's baseline (`_towers.indexed_kept_positions`) is the former lookup: same values, and the sweep's
    "positions" groups time it against today's path in one process."""
    import _towers
    import sweep

    model = randomised(VideoFirstVisionModel(long_range_vision_config(hidden_size=16, num_frames=8)))
    spatial, temporal = model.embeddings.spatial_positions(4, 4)[0], model.embeddings.temporal_positions(4)[0]
    indices = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(0))
    expected = model.embeddings.kept_positions(spatial, temporal, indices)
    torch.testing.assert_close(_towers.indexed_kept_positions(spatial, temporal, indices), expected)
    groups = dict(sweep.design_groups(_towers.Spec("joint"), [16], [16]))
    for name in ("positions", "positions_f64"):
        assert [spec.position_lookup for spec in groups[name]] == ["indexed", "gathered"]
        assert {spec.mask_ratio for spec in groups[name]} == {0.75}


def test_position_benchmark_runs_and_checks_repeatability(tmp_path):
    import positions

    assert positions.main(["--quick", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "positions.csv").read_text()
    assert "gathered_repeatable" in text and "former / gather" in (tmp_path / "positions.md").read_text()


# The recipe switch -------------------------------------------------------------------------------------------------


@pytest.fixture
def restore_determinism(monkeypatch):
    mode, benchmark = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(mode)
    torch.backends.cudnn.benchmark = benchmark


def test_deterministic_switch_defaults_on_for_cpu_off_for_gpus(restore_determinism):
    assert configure_determinism(None, torch.device("cpu")) is True
    assert torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # CPU runs need no cuBLAS setting
    assert configure_determinism(None, torch.device("cuda")) is False
    assert not torch.are_deterministic_algorithms_enabled()
    assert configure_determinism(False, torch.device("cpu")) is False
    assert not torch.are_deterministic_algorithms_enabled()


def test_deterministic_switch_on_a_gpu_sets_the_cublas_workspace(restore_determinism, monkeypatch):
    torch.backends.cudnn.benchmark = True
    assert configure_determinism(True, torch.device("cuda")) is True
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE
    assert torch.backends.cudnn.benchmark is False
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting is kept
    configure_determinism(True, torch.device("cuda"))
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_recipe_has_the_switch_and_the_run_applies_it(restore_determinism, tmp_path):
    from videofirst.recipe import PretrainRecipe, load_recipe
    from videofirst.train.loop import TrainingRun

    assert PretrainRecipe().run.deterministic is None
    recipe = load_recipe(
        REPO / "training" / "configs" / "demo.yaml",
        [f"run.output_dir={tmp_path}", "run.trackers=none", "run.deterministic=false"],
    )
    torch.use_deterministic_algorithms(True)
    TrainingRun(recipe)
    assert not torch.are_deterministic_algorithms_enabled()
    recipe.run.deterministic = None
    TrainingRun(recipe)
    assert torch.are_deterministic_algorithms_enabled()  # the CPU default


# torch.compile ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attention_type, mask_ratio", [("joint", 0.0), ("joint", 0.75), ("factorized", 0.0), ("frame", 0.0)]
)
def test_video_tower_compiles_with_fullgraph(attention_type, mask_ratio):
    """`fullgraph=True` raises on any graph break. `aot_eager` traces forward and backward (AOTAutograd) without
    needing a C compiler; the compiled tower must give the eager tower's outputs and gradients. Masked training
    compiles whole for the unpadded inputs of pretraining; padded frames (and masked factorized / frame attention,
    whose per-frame groups vary in size) make token counts depend on tensor values."""
    torch._dynamo.reset()
    config = long_range_vision_config(hidden_size=32, num_frames=4, mask_ratio=mask_ratio)
    config.attention_type = attention_type
    model = randomised(VideoFirstVisionModel(config))
    videos = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    outputs = []
    for forward in (model, compiled):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the token drop, from the global generator as in training (a Generator argument
        output = forward(pixel_values_videos=videos)  # would be an object dynamo cannot trace)
        output.pooler_output.square().sum().backward()
        outputs.append((output.pooler_output.detach(), model.embeddings.spatial_position_embedding.grad.clone()))
    torch.testing.assert_close(outputs[1], outputs[0])


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None,
    reason="inductor's CPU backend compiles C++ and no C compiler (cc, gcc or $CC) is on PATH",
)
def test_video_tower_compiles_with_inductor():
    """The default backend end to end (generated C++ kernels), evaluation mode: the eager tower's embeddings."""
    torch._dynamo.reset()
    model = randomised(VideoFirstVisionModel(long_range_vision_config(hidden_size=32, num_frames=4))).eval()
    videos = torch.randn(2, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(pixel_values_videos=videos).pooler_output
        compiled = torch.compile(model, fullgraph=True)(pixel_values_videos=videos).pooler_output
    torch.testing.assert_close(compiled, expected, rtol=1e-4, atol=1e-5)


# SIGKILL and resume at the long-range benchmark's size ------------------------------------------------------------


def run_pretraining(run_dir: Path, data: Path, *extra: str) -> subprocess.Popen:
    """`training/pretrain.py` on the long-range recipe (64 frames, batch 32, joint attention, 75% masking, 2
    threads), shortened to 6 steps with a checkpoint every 2. `run.deterministic=false`: the model and the loop
    alone must be deterministic on CPU. Its output goes to `<run_dir>.log`."""
    overrides = {
        "run.deterministic": "false",
        "run.output_dir": run_dir,
        "run.log_every": 1,
        "run.trackers": "none",
        "data.train_manifest": data / "train.jsonl",
        "data.eval_manifest": data / "test.jsonl",
        "data.num_workers": 0,
        "model.vision.mask_ratio": 0.75,
        "optim.max_steps": 6,
        "optim.warmup_steps": 2,
        "checkpoint.save_every": 2,
        "checkpoint.keep_last": 2,
        "eval.every": 0,
    }
    command = [sys.executable, str(REPO / "training" / "pretrain.py")]
    command += ["--config", str(REPO / "training" / "configs" / "long_range.yaml")]
    command += [f"{key}={value}" for key, value in overrides.items()] + list(extra)
    environment = dict(os.environ, OMP_NUM_THREADS="2")
    log = run_dir.with_suffix(".log").open("a")
    return subprocess.Popen(command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT)


def finished(process: subprocess.Popen, run_dir: Path) -> str:
    process.wait(timeout=600)
    output = run_dir.with_suffix(".log").read_text()
    assert process.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted_run_at_long_range_size(tmp_path):
    data = tmp_path / "data"
    write_synthetic_dataset(
        data, num_videos=48, num_events=4, duration=64.0, fps=1.0, size=32, seed=0, test_fraction=0.25
    )
    reference = tmp_path / "reference"
    finished(run_pretraining(reference, data), reference)

    interrupted = tmp_path / "interrupted"
    process = run_pretraining(interrupted, data)
    kill_at_checkpoint(process, interrupted, step=4, timeout=400)

    assert "Resumed from" in finished(run_pretraining(interrupted, data, "--resume"), interrupted)
    expected = load_file(str(reference / "export" / "model.safetensors"))
    resumed = load_file(str(interrupted / "export" / "model.safetensors"))
    assert expected.keys() == resumed.keys()
    assert [name for name in expected if not torch.equal(expected[name], resumed[name])] == []
