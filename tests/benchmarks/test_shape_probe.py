"""The shape probe benchmark: events get their own tubelet steps' tokens, and the script runs end to end."""

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "training" / "benchmarks"


@pytest.fixture(scope="module")
def shape_probe():
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location("shape_probe", BENCHMARKS / "shape_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StepTower:
    """A stand-in tower whose token (step, position) holds the value step * 100 + position."""

    def __init__(self, positions: int):
        self.positions = positions

    def eval(self):
        return self

    def __call__(self, pixel_values_videos, video_frame_mask, mask_ratio):
        assert mask_ratio == 0.0  # every token of every event reaches the probe
        steps = pixel_values_videos.shape[1] // 2
        values = torch.arange(steps)[:, None] * 100 + torch.arange(self.positions)[None, :]
        hidden = values.flatten().float()[None, :, None].expand(len(pixel_values_videos), -1, 3)
        return SimpleNamespace(last_hidden_state=hidden)


def test_each_event_gets_the_tokens_of_its_own_tubelet_steps(shape_probe):
    events = [{"colour": "red", "shape": "circle"}] * 3
    clips = SimpleNamespace(
        videos=torch.zeros(2, 12, 3, 8, 8), frame_mask=torch.ones(2, 12), rows=[{"events": events}] * 2
    )
    tokens = shape_probe.event_tokens(StepTower(positions=4), clips, tubelet_frames=2)
    assert tokens.shape == (6, 8, 3)  # 2 clips x 3 events; 2 tubelet steps x 4 positions per event
    steps_of_event = [sorted({int(value) // 100 for value in tokens[event, :, 0]}) for event in range(3)]
    assert steps_of_event == [[0, 1], [2, 3], [4, 5]]
    assert torch.equal(tokens[3], tokens[0])  # the second clip starts again at its first event
    clips.rows = [{"events": events}, {"events": events[:2]}]
    with pytest.raises(ValueError, match="same number of events"):
        shape_probe.event_tokens(StepTower(positions=4), clips, tubelet_frames=2)


def test_shape_probe_runs_end_to_end(shape_probe, tmp_path):
    assert shape_probe.main(["--quick", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "shape_probe.md").read_text()
    assert "| attention probe on frozen tokens: random tower | 32 |" in table
    assert "trained for the shape on frames, 50% dropped" in table
    assert (tmp_path / "out" / "shape_probe.csv").read_text().startswith("reader,seed,tokens_per_event,shape_accuracy")
