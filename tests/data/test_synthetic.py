"""Tests of the synthetic long-range (event order) video-text data."""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from videofirst.data import synthetic
from videofirst.data.synthetic import (
    COLOURS,
    SHAPES,
    render_video,
    sample_videos,
    write_synthetic_dataset,
    write_video,
)

av = pytest.importorskip("av")

PARAMS = dict(num_videos=12, num_events=3, duration=6.0, fps=2.0, size=64, seed=3, test_fraction=0.25)


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


def _decode(path: Path) -> tuple[np.ndarray, list[float]]:
    """All frames (T, H, W, 3) uint8 RGB and their timestamps in seconds."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), [float(f.time) for f in frames]


def _dominant_colour(frames: np.ndarray) -> str:
    """Palette colour nearest to the mean of the saturated (non-grey) pixels."""
    pixels = frames.reshape(-1, 3).astype(np.float32)
    saturated = pixels[(pixels.max(axis=1) - pixels.min(axis=1)) > 60]
    assert len(saturated) > 20, "no coloured shape found"
    mean = saturated.mean(axis=0)
    return min(COLOURS, key=lambda name: float(np.sum((np.asarray(COLOURS[name]) - mean) ** 2)))


def _best_shape(frame: np.ndarray) -> str:
    """Shape whose mask (centred on the coloured blob's centroid) best overlaps the blob."""
    pix = frame.astype(np.int32)
    blob = (pix.max(axis=-1) - pix.min(axis=-1)) > 60
    ys, xs = np.nonzero(blob)
    cy, cx = ys.mean(), xs.mean()
    grid = np.arange(frame.shape[0], dtype=np.float32)
    dy, dx = grid[:, None] - cy, grid[None, :] - cx
    scores = {}
    for shape in SHAPES:
        ious = []
        for r in np.arange(6.0, 20.0, 0.25, dtype=np.float32):
            mask = synthetic._shape_mask(shape, dx, dy, r)
            ious.append((mask & blob).sum() / max(1, (mask | blob).sum()))
        scores[shape] = max(ious)
    return max(scores, key=scores.get)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "a", **PARAMS)


def test_sampling_is_deterministic_and_groups_permute_one_event_set():
    a = sample_videos(30, 3, 12.0, seed=7)
    b = sample_videos(30, 3, 12.0, seed=7)
    c = sample_videos(30, 3, 12.0, seed=8)
    assert [v.caption for v in a] == [v.caption for v in b]
    assert [v.caption for v in a] != [v.caption for v in c]
    assert len({v.caption for v in a}) == 30  # captions are unique

    groups: dict[int, list] = {}
    for v in a:
        groups.setdefault(v.group, []).append(v)
    assert len(groups) == 10
    seen_sets = set()
    for members in groups.values():
        assert len(members) == 3
        sets = {frozenset((e.colour, e.shape) for e in v.events) for v in members}
        orders = {tuple((e.colour, e.shape) for e in v.events) for v in members}
        assert len(sets) == 1 and len(orders) == 3  # same events, different orders
        seen_sets |= sets
        for v in members:
            assert len({e.colour for e in v.events}) == 3  # colours differ inside a video
    assert len(seen_sets) == 10  # different groups show different event sets

    independent = sample_videos(30, 3, 12.0, seed=7, order_distractors=False)
    assert len({v.group for v in independent}) == 30
    # The group size is capped by the number of distinct orders.
    assert len(sample_videos(4, 2, 4.0, seed=0, permutations_per_set=5)) == 4
    assert {v.group for v in sample_videos(4, 2, 4.0, seed=0, permutations_per_set=5)} == {0, 1}


def test_shape_variants_keep_the_colour_order_and_change_only_shapes():
    videos = sample_videos(36, 3, 12.0, seed=3, shape_variants_per_set=3)
    groups: dict[int, list] = {}
    for video in videos:
        groups.setdefault(video.group, []).append(video)
    assert len(groups) == 6 and len({video.caption for video in videos}) == 36
    seen_sets: set = set()
    for members in groups.values():
        assert len(members) == 6
        first = members[0]
        base_set = frozenset((e.colour, e.shape) for e in first.events)
        permutations, variants = members[:3], members[3:]
        assert {frozenset((e.colour, e.shape) for e in v.events) for v in permutations} == {base_set}
        for variant in variants:
            # The first video's colours in its order; at least one shape differs, so only shape words tell them apart.
            assert [e.colour for e in variant.events] == [e.colour for e in first.events]
            assert [e.shape for e in variant.events] != [e.shape for e in first.events]
        sets = {frozenset((e.colour, e.shape) for e in v.events) for v in members}
        assert len(sets) == 4  # one set for the permutations, one per variant
        assert not sets & seen_sets  # no event set is shared across groups
        seen_sets |= sets
    # Off by default: the groups are the order distractors alone, as before the option existed.
    assert [v.caption for v in sample_videos(12, 3, 12.0, seed=3)] == [
        v.caption for v in sample_videos(12, 3, 12.0, seed=3, shape_variants_per_set=0)
    ]


def test_caption_wording_and_event_timing():
    video = sample_videos(1, 4, 10.0, seed=0)[0]
    assert video.caption == ", then ".join(
        f"{'an' if e.colour[0] in 'aeiou' else 'a'} {e.colour} {e.shape}" for e in video.events
    )
    assert [(e.start, e.end) for e in video.events] == [(0.0, 2.5), (2.5, 5.0), (5.0, 7.5), (7.5, 10.0)]


def test_rendering_is_deterministic_and_draws_the_caption():
    video = sample_videos(1, 3, 9.0, seed=11)[0]
    frames = render_video(video, fps=2.0, size=64)
    assert frames.shape == (18, 64, 64, 3) and frames.dtype == np.uint8
    assert np.array_equal(frames, render_video(video, fps=2.0, size=64))
    for i, event in enumerate(video.events):
        segment = frames[i * 6 : (i + 1) * 6]
        assert _dominant_colour(segment) == event.colour
        assert all(_best_shape(frame) == event.shape for frame in segment)
    # Not trivially static: consecutive frames of one event differ (jitter, motion, noise).
    assert np.abs(frames[1].astype(int) - frames[0].astype(int)).mean() > 1.0


@pytest.mark.parametrize("shape", SHAPES)
def test_every_shape_is_recognisable(shape):
    events = tuple(synthetic.SyntheticEvent(c, shape, 0.0, 1.0) for c in ["red"])
    video = synthetic.SyntheticVideo(index=0, group=0, events=events, duration=1.0, seed=0)
    frames = render_video(video, fps=3.0, size=64, noise=0.0)
    assert all(_best_shape(frame) == shape for frame in frames)


def test_dataset_is_byte_identical_for_the_same_seed(dataset, tmp_path):
    again = write_synthetic_dataset(tmp_path / "b", **PARAMS)
    for key in ("manifest", "train", "test", "stamp"):
        assert dataset[key].read_bytes() == again[key].read_bytes(), key
    rows = _read_jsonl(dataset["manifest"])
    for row in rows:
        a, b = dataset["root"] / row["video"], again["root"] / row["video"]
        assert hashlib.sha256(a.read_bytes()).digest() == hashlib.sha256(b.read_bytes()).digest()
    first_a, _ = _decode(dataset["root"] / rows[0]["video"])
    first_b, _ = _decode(again["root"] / rows[0]["video"])
    assert np.array_equal(first_a, first_b)

    other = write_synthetic_dataset(tmp_path / "c", **{**PARAMS, "seed": 4})
    assert other["manifest"].read_bytes() != dataset["manifest"].read_bytes()


def test_manifest_format(dataset):
    rows = _read_jsonl(dataset["manifest"])
    assert len(rows) == PARAMS["num_videos"]
    for row in rows:
        assert {"video", "caption", "start", "end"} <= set(row)
        assert not Path(row["video"]).is_absolute()
        assert (dataset["root"] / row["video"]).is_file()
        assert row["start"] == 0.0 and row["end"] == PARAMS["duration"]
        events = row["events"]
        assert len(events) == PARAMS["num_events"]
        assert row["caption"] == ", then ".join(
            f"{'an' if e['colour'][0] in 'aeiou' else 'a'} {e['colour']} {e['shape']}" for e in events
        )
        share = PARAMS["duration"] / PARAMS["num_events"]
        for i, e in enumerate(events):
            assert math.isclose(e["start"], i * share) and math.isclose(e["end"], (i + 1) * share)
    stamp = json.loads(dataset["stamp"].read_text())
    assert stamp["num_videos"] == PARAMS["num_videos"] and stamp["seed"] == PARAMS["seed"]


def test_videos_are_h264_with_short_gop_and_captions_match_the_drawn_order(dataset):
    rows = _read_jsonl(dataset["manifest"])
    fps, duration = PARAMS["fps"], PARAMS["duration"]
    for row in rows:
        path = dataset["root"] / row["video"]
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            assert stream.codec_context.pix_fmt == "yuv420p"
            assert float(stream.average_rate) == fps
            keyframes = [i for i, f in enumerate(container.decode(video=0)) if f.key_frame]
        assert keyframes == list(range(0, int(duration * fps), int(fps)))  # gop = fps

        frames, times = _decode(path)
        assert len(frames) == int(duration * fps) and frames.shape[1:] == (64, 64, 3)
        for event in row["events"]:
            idx = [i for i, t in enumerate(times) if event["start"] <= t < event["end"]]
            assert idx, "every event has frames"
            assert _dominant_colour(frames[idx]) == event["colour"], (row["caption"], event)


def test_decord_reads_the_videos(dataset):
    decord = pytest.importorskip("decord")
    row = _read_jsonl(dataset["manifest"])[0]
    reader = decord.VideoReader(str(dataset["root"] / row["video"]))
    assert len(reader) == int(PARAMS["duration"] * PARAMS["fps"])
    assert reader.get_avg_fps() == pytest.approx(PARAMS["fps"])
    last = reader.get_batch([len(reader) - 1]).asnumpy()[0]
    assert _dominant_colour(last[None]) == row["events"][-1]["colour"]


def test_split_keeps_groups_together(dataset):
    rows = _read_jsonl(dataset["manifest"])
    train, test = _read_jsonl(dataset["train"]), _read_jsonl(dataset["test"])
    assert len(train) + len(test) == len(rows)
    assert {r["video"] for r in train}.isdisjoint(r["video"] for r in test)
    assert {r["video"] for r in train} | {r["video"] for r in test} == {r["video"] for r in rows}
    assert {r["group"] for r in train}.isdisjoint(r["group"] for r in test)
    assert len(test) == 3  # 25% of 12 videos, as whole groups of 3
    assert all(r["split"] == "test" for r in test) and all(r["split"] == "train" for r in train)


def test_no_split_files_without_test_fraction(tmp_path):
    paths = write_synthetic_dataset(tmp_path, num_videos=2, num_events=2, duration=2.0, fps=1.0, size=32)
    assert "train" not in paths and "test" not in paths
    assert not (tmp_path / "train.jsonl").exists()
    assert len(_read_jsonl(paths["manifest"])) == 2


def test_existing_dataset_is_reused_and_changes_regenerate(tmp_path):
    kwargs = dict(num_videos=3, num_events=2, duration=2.0, fps=1.0, size=32, seed=0)
    paths = write_synthetic_dataset(tmp_path, **kwargs)
    video = tmp_path / "videos" / "00000.mp4"
    before = video.stat().st_mtime_ns
    os.utime(video, ns=(before - 10**9, before - 10**9))
    marker = video.stat().st_mtime_ns
    assert write_synthetic_dataset(tmp_path, **kwargs) == paths
    assert video.stat().st_mtime_ns == marker  # skipped: nothing rewritten

    write_synthetic_dataset(tmp_path, **{**kwargs, "num_videos": 2})
    assert video.stat().st_mtime_ns != marker  # parameters changed: regenerated
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["00000.mp4", "00001.mp4"]

    os.utime(video, ns=(before - 10**9, before - 10**9))
    write_synthetic_dataset(tmp_path, **{**kwargs, "num_videos": 2}, overwrite=True)
    assert video.stat().st_mtime_ns != before - 10**9  # overwrite forces a rewrite


def test_invalid_parameters_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="every event needs at least one frame"):
        write_synthetic_dataset(tmp_path, num_videos=1, num_events=4, duration=3.0, fps=1.0, size=32)
    with pytest.raises(ValueError, match="even"):
        write_synthetic_dataset(tmp_path, num_videos=1, num_events=1, duration=1.0, fps=1.0, size=33)
    with pytest.raises(ValueError, match="test_fraction"):
        write_synthetic_dataset(tmp_path, num_videos=1, test_fraction=1.0)
    with pytest.raises(ValueError, match="colours"):
        sample_videos(1, 1, 1.0, colours=["mauve"])
    with pytest.raises(ValueError, match="shape_variants_per_set"):
        sample_videos(1, 1, 1.0, shape_variants_per_set=-1)
    with pytest.raises(ValueError, match="distinct colour/shape pairs"):
        sample_videos(1, 3, 3.0, colours=["red"], shapes=["circle", "square"])


def test_write_video_round_trip(tmp_path):
    frames = np.zeros((5, 32, 48, 3), dtype=np.uint8)
    frames[..., 0] = 200
    path = write_video(tmp_path / "red.mp4", frames, fps=5.0)
    decoded, times = _decode(path)
    assert decoded.shape == (5, 32, 48, 3)
    assert times == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8])
    assert np.abs(decoded.astype(int) - frames.astype(int)).max() < 8


def test_cli_main_and_module(tmp_path):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--num-videos", "4", "--events", "2", "--duration", "4", "--fps", "1"]
    args += ["--size", "32", "--seed", "1", "--test-fraction", "0.5"]
    paths = synthetic.main(args)
    assert len(_read_jsonl(paths["train"])) == 2 and len(_read_jsonl(paths["test"])) == 2

    out2 = tmp_path / "module"
    result = subprocess.run(
        [sys.executable, "-m", "videofirst.data.synthetic", *args[:1], str(out2), *args[2:]],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    printed = json.loads(result.stdout)
    assert Path(printed["manifest"]).read_bytes() == paths["manifest"].read_bytes()


def test_more_events_than_colours():
    videos = sample_videos(6, 10, 20.0, seed=0)
    for video in videos:
        pairs = [(e.colour, e.shape) for e in video.events]
        assert len(set(pairs)) == 10
    frames = render_video(videos[0], fps=1.0, size=32)
    assert frames.shape == (20, 32, 32, 3)
