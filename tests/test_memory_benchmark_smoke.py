"""The memory / speed benchmarks' machinery on micro configurations: search and fit, the memory probe, FLOP
counting of the CPU attention kernel, and the peers / sweep / limit / efficiency scripts end to end (seconds)."""

import csv
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

BENCHMARKS = Path(__file__).resolve().parents[1] / "training" / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _flops  # noqa: E402
import _memory  # noqa: E402
import efficiency  # noqa: E402
import limit  # noqa: E402
import peers  # noqa: E402
import sweep  # noqa: E402


def read_csv(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_search_finds_the_largest_fitting_frame_count_and_extrapolates_past_the_cap():
    def memory(frames: int) -> dict:
        return {"peak_mb": 100.0 + 3.0 * frames}

    cache: dict[int, dict] = {}
    assert limit.search(memory, 400.0, start=2, cap=None, granularity=2, cache=cache) == (100, "searched")
    assert 102 in cache and cache[102]["peak_mb"] > 400  # the bisection's upper bracket was probed
    capped: dict[int, dict] = {}
    assert limit.search(memory, 400.0, start=2, cap=16, granularity=2, cache=capped) == (100, "extrapolated")
    assert sorted(capped) == [2, 4, 8, 16]
    line = limit.fit_line([(frames, result["peak_mb"]) for frames, result in capped.items()])
    assert line.slope_mb_per_frame == pytest.approx(3.0)
    assert line.intercept_mb == pytest.approx(100.0)
    assert line.holdout_error == pytest.approx(0.0, abs=1e-9)
    # A peak that is the larger of a flat and a growing term: extrapolate with the steeper, last-segment slope.
    convex = limit.fit_line([(2, 200.0), (4, 200.0), (8, 200.0), (16, 248.0)])
    assert convex.marginal_slope_mb_per_frame == pytest.approx(6.0)
    assert convex.frames_at(400.0, granularity=2) == 40  # 16 + (400 - 248) / 6 = 41.3


def test_memory_probe_sees_a_short_lived_allocation():
    probe = _memory.MemoryProbe("cpu")
    _memory.pin_malloc()
    before = probe.current()
    probe.reset_peak()
    block = torch.ones(16 * 2**20)  # 64 MiB, touched, then freed
    del block
    assert probe.peak() - before > 48 * 2**20
    assert probe.current() - before < 16 * 2**20


def test_memory_probe_samples_the_rss_without_the_kernel_peak(monkeypatch, tmp_path):
    monkeypatch.setattr(_memory, "CLEAR_REFS", tmp_path / "no_clear_refs")  # as on macOS
    probe = _memory.MemoryProbe("cpu")
    assert probe.method == "psutil RSS sampled every 1 ms"
    _memory.pin_malloc()
    before = probe.current()
    probe.reset_peak()
    block = torch.ones(16 * 2**20)
    time.sleep(0.05)  # the sampler polls every millisecond: let it see the block
    del block
    assert probe.peak() - before > 48 * 2**20


def test_flop_counter_counts_the_cpu_attention_kernel():
    query = torch.randn(1, 2, 64, 16, requires_grad=True)
    flops = _flops.count_step_flops(lambda: F.scaled_dot_product_attention(query, query, query).sum().backward())
    forward = 4 * 1 * 2 * 64 * 64 * 16  # two matmuls of (64 x 16) @ (16 x 64)
    assert flops == forward + 5 * forward // 2  # torch's convention: the backward recomputes the scores (2.5x)


def test_peers_end_to_end_on_a_micro_tower(tmp_path):
    assert peers.main(["--quick", "--rounds", "1", "--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "peers.csv")
    assert [row["config"] for row in rows] == [
        "ours_joint_f4", "ours_joint_mask75_f4", "ours_factorized_f4",
        "vivit_f4", "timesformer_f4", "videomae_f4", "videoprism_f4",
    ]  # fmt: skip
    for row in rows:
        assert float(row["peak_mb"]) > 0 and float(row["step_s"]) > 0 and int(row["flops"]) > 0
    masked = rows[1]
    assert (int(masked["kept_tokens"]), int(masked["grid_tokens"])) == (2, 8)
    ratios = read_csv(tmp_path / "peers_ratios.csv")
    assert [row["peer"] for row in ratios][:4] == list(peers.PEERS)
    assert float(ratios[0]["joint_x_throughput"]) > 0
    assert "Ratios" in (tmp_path / "peers.md").read_text() and (tmp_path / "peers.png").stat().st_size > 0


def test_sweep_limit_and_efficiency_end_to_end(tmp_path):
    assert sweep.main(["--quick", "--groups", "adaptation", "--rounds", "1", "--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "sweep.csv")
    trainable = {row["config"]: int(row["trainable"]) for row in rows}
    assert trainable["joint"] > trainable["last4"] > trainable["last4_frozen_tubelet"]
    assert trainable["lora"] < trainable["joint"] and trainable["adapters"] < trainable["joint"]
    assert float(rows[0]["x_throughput"]) == 1.0 and (tmp_path / "sweep.png").exists()

    args = ["--quick", "--recipes", "long_stage", "--budget-gb", "16", "0.01", "--out", str(tmp_path)]
    assert limit.main(args) == 0
    answers = {float(row["budget_gb"]): row for row in read_csv(tmp_path / "limit_answers.csv")}
    assert answers[0.01]["method"] == "searched" and int(answers[0.01]["max_frames"]) == 0
    assert answers[16.0]["method"] == "extrapolated" and int(answers[16.0]["max_frames"]) > 8

    assert efficiency.main(["--quick", "--rounds", "1", "--out", str(tmp_path)]) == 0
    rows = read_csv(tmp_path / "efficiency.csv")
    assert all(0 < float(row["efficiency"]) < 1 for row in rows)
    assert all(float(row["gemm_time_share"]) > 0 for row in rows)


def test_gelu_linear_matches_autograd():
    """The MLP's recomputing GELU (a fix these benchmarks motivated) has autograd's gradients, in fp64 and bf16."""
    from videofirst.modeling.modeling_videofirst import GeluLinear

    for approximate in ("none", "tanh"):
        inputs = tuple(
            torch.randn(*shape, dtype=torch.double, requires_grad=True) for shape in ((2, 5, 8), (3, 8), (3,))
        )
        assert torch.autograd.gradcheck(lambda h, w, b, a=approximate: GeluLinear.apply(h, w, b, a), inputs)
    hidden, weight, bias = torch.randn(4, 8, requires_grad=True), torch.randn(3, 8, requires_grad=True), torch.randn(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = GeluLinear.apply(hidden * 1, weight, bias, "none")
        plain = F.linear(F.gelu(hidden * 1), weight, bias)
    assert ours.dtype == plain.dtype == torch.bfloat16
    expected = torch.autograd.grad(plain.float().sum(), (hidden, weight))
    for got, want in zip(torch.autograd.grad(ours.float().sum(), (hidden, weight)), expected):
        torch.testing.assert_close(got, want)


def test_masked_embedding_equals_the_tubelet_convolution_on_the_kept_tubelets():
    from tiny_models import tiny_model

    embeddings = tiny_model(num_frames=8).vision_model.embeddings
    videos = torch.randn(2, 8, 3, 32, 32)
    with torch.no_grad():
        conv = embeddings.tubelet_embedding(videos.transpose(1, 2))  # (B, dim, T', H', W')
        reference = conv.flatten(3).permute(0, 2, 3, 1)
        reference = (
            reference + embeddings.spatial_positions(4, 4)[:, None] + embeddings.temporal_positions(4)[:, :, None]
        )
        reference = reference.reshape(2, 64, -1)
        full, grid = embeddings.embed_video(videos)
        indices = torch.tensor([[0, 5, 17, 63], [3, 4, 40, 41]])
        kept, _ = embeddings.embed_video(videos, indices)
    assert grid == (4, 4, 4)
    torch.testing.assert_close(full, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kept, reference.gather(1, indices[:, :, None].expand(-1, -1, full.shape[-1])))


def test_limit_reports_a_probe_that_runs_past_its_timeout(tmp_path):
    args = ["--quick", "--recipes", "long_stage", "--budget-gb", "16", "--probe-timeout", "0.01"]
    # A failed probe is not a frame count that does not fit: the exit status says so.
    assert limit.main([*args, "--out", str(tmp_path)]) == 1
    probes = read_csv(tmp_path / "limit.csv")
    assert probes and all(row["error"].startswith("timed out after") for row in probes)
    assert "timed out after" in (tmp_path / "limit.md").read_text() and not (tmp_path / "limit.png").exists()
