"""The long-range benchmark's machinery at a micro budget (data, training, whole/segment evaluation, memory probe
in a fresh process, CSV/markdown/plot), plus its order-accuracy metric on known inputs. The memory probe itself
(`_memory.MemoryProbe`) is tested in `test_memory_benchmark_smoke.py`."""

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("long_range", REPO / "training" / "benchmarks" / "long_range.py")
long_range = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = long_range  # dataclasses look their module up while the file executes
_spec.loader.exec_module(long_range)


def test_order_accuracy_ranks_only_within_the_permutation_group():
    # Videos 0-2 are one group, 3-4 another; caption i describes video i.
    similarity = torch.tensor(
        [
            [0.9, 0.1, 0.2, 5.0, 5.0],  # right within its group (the other group's scores do not count)
            [0.5, 0.4, 0.0, 0.0, 0.0],  # wrong: video 0 beats video 1
            [0.3, 0.3, 0.3, 0.0, 0.0],  # a three-way tie is a miss (pessimistic)
            [0.0, 0.0, 0.0, 0.2, 0.1],  # right, in a group of two
            [0.0, 0.0, 0.0, 0.2, 0.1],  # wrong
        ]
    )
    assert long_range.order_accuracy(similarity, [0, 1, 2, 3, 4], [7, 7, 7, 9, 9]) == pytest.approx(2 / 5)


def test_smoke_budget_end_to_end(tmp_path):
    out = tmp_path / "out"
    args = ["--budget", "smoke", "--variants", "joint_mask0", "joint_mask75", "--work", str(tmp_path / "work")]
    assert long_range.main([*args, "--out", str(out)]) == 0
    with (out / "long_range.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["variant"], row["eval"]) for row in rows] == [
        ("joint_mask0", "whole"),
        ("joint_mask0", "segments"),
        ("joint_mask75", "whole"),
        ("joint_mask75", "segments"),
    ]
    for row in rows:
        assert 0.0 <= float(row["t2v_r1"]) <= 1.0 and 0.0 <= float(row["order_acc"]) <= 1.0
        assert float(row["step_mem_mb"]) > 0 and row["steps"] == "2"
    # 75% masking keeps a quarter of the tokens: 8 frames -> 4 tubelet steps x 16 patches = 64, then 16.
    assert [float(row["tokens_per_clip"]) for row in rows[::2]] == [64.0, 16.0]
    report = (out / "long_range.md").read_text()
    assert "| joint | 75% | whole |" in report and "(a) long clip" in report and "(b) joint + 75% masking" in report
    assert (out / "long_range.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
