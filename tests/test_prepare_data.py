"""Preparing a collection: manifest -> transcoded tar shards (parallel, resumable, bad files reported)."""

import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from video_fixtures import frame_ids, index_frame, write_video
from videofirst.modeling.video_processing_videofirst import read_video_frames

import videofirst.data.preparation as preparation
import videofirst.data.shards as shards
from videofirst.data.preparation import PrepareSettings, prepare_shards
from videofirst.data.shards import index_tar_shard, read_range, transcode_video

pytest.importorskip("av")
REPO = Path(__file__).resolve().parents[1]
SETTINGS = PrepareSettings(fps=2.0, size=64, keyframe_interval=1.0, samples_per_shard=3)
_real_prepare_one = preparation.prepare_one


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """Seven videos (frames encode their index), one corrupt file and one missing file."""
    root = tmp_path_factory.mktemp("collection")
    rows = []
    for index in range(7):
        write_video(root / f"clip{index}.mp4", 20 + 5 * index, fps=10, gop=20)  # 2.0 .. 5.0 s
        rows.append({"video": f"clip{index}.mp4", "caption": f"clip {index}"})
    rows[2]["start"], rows[2]["end"] = 1.0, 2.5
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 100)
    rows.insert(4, {"video": "corrupt.mp4", "caption": "corrupt"})
    rows.append({"video": "missing.mp4", "caption": "missing"})
    (root / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def shard_files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.glob("shard-*.tar"))}


def test_transcode_keeps_the_processor_samples_and_makes_short_gops(tmp_path):
    source = write_video(tmp_path / "long.mp4", 95, fps=10, gop=50)
    data, facts = transcode_video(str(source), fps=2.0, size=32, keyframe_interval=1.0, start=0.5)
    frames, times = read_video_frames(data, fps=None)  # every stored frame
    expected, expected_times = read_video_frames(source, fps=2.0, start=0.5, size=32)
    assert frame_ids(frames) == frame_ids(expected) == list(range(5, 95, 5))
    assert frames.shape == expected.shape == (18, 32, 64, 3)
    np.testing.assert_allclose(times, np.arange(18) / 2.0)
    assert facts["frames"] == 18 and facts["source_first_time"] == pytest.approx(expected_times[0])
    import av

    with av.open(io.BytesIO(data)) as container:
        keys = [packet.is_keyframe for packet in container.demux(video=0) if packet.size]
    assert sum(keys) >= 9  # a keyframe every 2 frames (1 s at 2 FPS), no B-frames


def test_chunked_transcoding_matches_one_pass(tmp_path, monkeypatch):
    source = write_video(tmp_path / "clip.mp4", 40, fps=10)
    whole, _ = transcode_video(str(source), fps=5.0, size=64)
    monkeypatch.setattr(shards, "_CHUNK_FRAMES", 4)  # 20 samples in 5 decode calls (the last one exactly at the end)
    chunked, facts = transcode_video(str(source), fps=5.0, size=64)
    assert facts["frames"] == 20 and whole == chunked


def test_prepare_writes_shards_reports_bad_files_and_resumes(collection, tmp_path):
    out = tmp_path / "prepared"
    report = prepare_shards(collection / "manifest.jsonl", out, SETTINGS, workers=2, progress=False)
    assert (report.total, report.prepared, report.bad, report.shards) == (9, 7, 2, 3)
    bad = [json.loads(line) for line in (out / "bad_files.jsonl").read_text().splitlines()]
    assert [entry["row"] for entry in bad] == [4, 8]
    assert "corrupt" in bad[0]["media"] and "file not found" in bad[1]["reason"]
    assert json.loads((out / "report.json").read_text())["bad_fraction"] == pytest.approx(2 / 9)

    # Samples keep manifest order and their captions; each video holds the 2 FPS samples of its clip.
    rows = [row for path in sorted(out.glob("shard-*.tar")) for row in index_tar_shard(path)[0]]
    assert [row["caption"] for row in rows] == [f"clip {i}" for i in range(7)]
    assert [row["key"] for row in rows[:3]] == ["000000000", "000000001", "000000002"]
    clip2, times = read_video_frames(read_range(rows[2]["media"], rows[2]["offset"], rows[2]["size"]), fps=None)
    assert frame_ids(clip2) == [10, 15, 20]  # its manifest clip [1.0, 2.5) s
    with tarfile.open(out / "shard-000000.tar") as archive:
        meta = json.loads(archive.extractfile("000000002.json").read())
    assert meta["source_start"] == 1.0 and meta["frames"] == 3 and meta["fps"] == 2.0

    # Resume: a finished run does nothing; a lost shard (crash while writing it) is rebuilt byte for byte.
    first = shard_files(out)
    stamps = {path.name: path.stat().st_mtime_ns for path in out.glob("shard-*.tar")}
    (out / "shard-000001.json").unlink()
    (out / "shard-000001.tar").write_bytes(first["shard-000001.tar"][:1000])
    again = prepare_shards(collection / "manifest.jsonl", out, SETTINGS, workers=0, progress=False)
    assert again.resumed_shards == 2 and (again.prepared, again.bad) == (7, 2)
    assert shard_files(out) == first
    for name in ("shard-000000.tar", "shard-000002.tar"):
        assert out.joinpath(name).stat().st_mtime_ns == stamps[name]

    with pytest.raises(ValueError, match="other settings"):
        prepare_shards(collection / "manifest.jsonl", out, PrepareSettings(fps=1.0), progress=False)


def test_interrupted_run_resumes_to_the_same_shards(collection, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    prepare_shards(collection / "manifest.jsonl", reference, SETTINGS, workers=0, progress=False)

    def interrupted(index, row, settings, options):
        if index == 6:
            raise KeyboardInterrupt("stopped by the operator")
        return _real_prepare_one(index, row, settings, options)

    out = tmp_path / "interrupted"
    monkeypatch.setattr(preparation, "prepare_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare_shards(collection / "manifest.jsonl", out, SETTINGS, workers=0, progress=False)
    assert sorted(path.name for path in out.glob("shard-*")) == [
        "shard-000000.json",
        "shard-000000.tar",
        "shard-000001.json",
        "shard-000001.tar",
    ]
    monkeypatch.undo()
    report = prepare_shards(collection / "manifest.jsonl", out, SETTINGS, workers=0, progress=False)
    assert report.resumed_shards == 2 and shard_files(out) == shard_files(reference)


def hang_on_clip_3(index, row, settings, options):
    if row["media"].endswith("clip3.mp4"):
        time.sleep(300)  # a worker stuck in native code
    return _real_prepare_one(index, row, settings, options)


def test_a_stuck_worker_is_killed_and_its_file_reported(collection, tmp_path, monkeypatch):
    monkeypatch.setattr(preparation, "prepare_one", hang_on_clip_3)  # forked workers inherit the patch
    started = time.monotonic()
    report = prepare_shards(
        collection / "manifest.jsonl", tmp_path / "out", SETTINGS, workers=2, task_timeout=1.5, progress=False
    )
    assert time.monotonic() - started < 45
    assert report.prepared == 6 and report.bad == 3
    stuck = [entry for entry in report.bad_files if entry["media"].endswith("clip3.mp4")]
    assert stuck and "timed out" in stuck[0]["reason"]


def test_images_become_jpeg_samples(tmp_path):
    rows = []
    for index in range(3):
        Image.fromarray(index_frame(index + 1, 120, 160)).save(tmp_path / f"image{index}.png")
        rows.append({"image": f"image{index}.png", "caption": f"picture {index}"})
    (tmp_path / "images.csv").write_text("image,caption\n" + "".join(f"{r['image']},{r['caption']}\n" for r in rows))
    report = prepare_shards(tmp_path / "images.csv", tmp_path / "out", SETTINGS, workers=0, progress=False)
    assert report.prepared == 3
    rows = index_tar_shard(tmp_path / "out" / "shard-000000.tar")[0]
    assert [row["modality"] for row in rows] == ["image"] * 3
    image = Image.open(io.BytesIO(read_range(rows[1]["media"], rows[1]["offset"], rows[1]["size"])))
    assert image.format == "JPEG" and image.size == (85, 64)  # shortest edge 64, never enlarged


def test_command_line(collection, tmp_path):
    out = tmp_path / "cli"
    command = [
        sys.executable,
        str(REPO / "training" / "prepare_data.py"),
        str(collection / "manifest.jsonl"),
        str(out),
        "--fps",
        "2",
        "--size",
        "64",
        "--samples-per-shard",
        "4",
        "--workers",
        "1",
        "--quiet",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert result.returncode == 1, result.stderr[-2000:]  # 2 of 9 files are bad: above the default 5%
    assert "7 of 9 files prepared into 3 shards" in result.stdout and "--max-bad-fraction" in result.stderr
    result = subprocess.run([*command, "--max-bad-fraction", "0.5"], capture_output=True, text=True, timeout=240)
    assert result.returncode == 0 and "3 shards were already done" in result.stdout


def test_a_timestamp_gap_is_refused_not_transcoded(tmp_path):
    """3 frames, the last at 100000 s: at 2 FPS that would be a 200001-frame clip. The bound refuses it from one
    probed frame; a clip under the bound, or cut by max_frames, is kept."""
    write_video(tmp_path / "gap.mkv", 3, fps=25, container_format="matroska", pts_ms=[0, 40, 100_000_000])
    write_video(tmp_path / "clip.mp4", 50, fps=10)  # 5 s: 10 frames at 2 FPS
    rows = [{"video": "gap.mkv", "caption": "gap"}, {"video": "clip.mp4", "caption": "clip"}]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    tight, exact, cut = (
        PrepareSettings(**{**SETTINGS.__dict__, "max_clip_frames": 9}),
        PrepareSettings(**{**SETTINGS.__dict__, "max_clip_frames": 10}),
        PrepareSettings(**{**SETTINGS.__dict__, "max_clip_frames": 9, "max_frames": 4}),
    )
    started = time.monotonic()
    report = prepare_shards(tmp_path / "manifest.jsonl", tmp_path / "default", SETTINGS, workers=0, progress=False)
    assert time.monotonic() - started < 30
    assert (report.prepared, report.bad) == (1, 1)
    (entry,) = [json.loads(line) for line in (tmp_path / "default" / "bad_files.jsonl").read_text().splitlines()]
    assert entry["row"] == 0 and "more than 18000 frames at 2 FPS" in entry["reason"]

    report = prepare_shards(tmp_path / "manifest.jsonl", tmp_path / "tight", tight, workers=0, progress=False)
    assert report.bad == 2 and "more than 9 frames" in report.bad_files[1]["reason"]
    assert prepare_shards(tmp_path / "manifest.jsonl", tmp_path / "exact", exact, workers=0, progress=False).bad == 1
    report = prepare_shards(tmp_path / "manifest.jsonl", tmp_path / "cut", cut, workers=0, progress=False)
    assert report.prepared == 2 and report.bad == 0  # max_frames asks for the first 4 frames of each: no bound
    data, _ = transcode_video(str(tmp_path / "clip.mp4"), fps=2.0, size=64, max_frames=4, frame_limit=9)
    assert frame_ids(read_video_frames(data, fps=None)[0]) == [0, 5, 10, 15]


def test_transcoding_is_byte_reproducible_call_after_call(tmp_path):
    """PyAV's implicit RGB -> YUV conversion runs swscale on several threads and gave differing bytes for the same
    frames now and then (3 distinct outputs in 10 calls): each call must give the same bytes."""
    from videofirst.data.synthetic import render_video, sample_videos
    from videofirst.data.synthetic import write_video as write_noisy_video

    frames = render_video(sample_videos(12, 3, 6.0, seed=3)[1], fps=8.0, size=64)  # shapes over pixel noise
    source = write_noisy_video(tmp_path / "noisy.mp4", frames, fps=8.0, crf=10)
    outputs = {transcode_video(str(source), fps=4.0, size=64)[0] for _ in range(10)}
    assert len(outputs) == 1


def test_shards_are_byte_reproducible_and_the_index_gives_member_offsets(collection, tmp_path):
    """The same manifest prepared in this process and by a pool of workers gives identical shard bytes; each
    done-marker's index points at the bytes of every member; the videos have no B-frames, as documented."""
    import av

    single = prepare_shards(collection / "manifest.jsonl", tmp_path / "a", SETTINGS, workers=0, progress=False)
    pooled = prepare_shards(collection / "manifest.jsonl", tmp_path / "b", SETTINGS, workers=2, progress=False)
    assert single.prepared == pooled.prepared == 7
    assert shard_files(tmp_path / "a") == shard_files(tmp_path / "b")
    for marker_path in sorted((tmp_path / "a").glob("shard-*.json")):
        marker = json.loads(marker_path.read_text())
        shard = marker_path.with_suffix(".tar")
        with tarfile.open(shard) as archive:
            for sample in marker["index"]:
                for extension in ("json", "txt", "mp4"):
                    member = archive.extractfile(f"{sample['key']}.{extension}").read()
                    assert read_range(str(shard), sample[extension]["offset"], sample[extension]["size"]) == member
        assert len({sample["mp4"]["offset"] for sample in marker["index"]}) == len(marker["index"]) > 0
        first = marker["index"][0]["mp4"]
        with av.open(io.BytesIO(read_range(str(shard), first["offset"], first["size"]))) as container:
            kinds = {av.video.frame.PictureType(frame.pict_type).name for frame in container.decode(video=0)}
        assert "B" not in kinds and "I" in kinds


def test_manifest_rows_without_a_caption_are_reported_before_any_work(collection, tmp_path):
    rows = [{"video": "clip0.mp4", "caption": "clip 0"}, {"video": "clip1.mp4", "caption": None}]
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({**row, "video": str(collection / row["video"])}) + "\n" for row in rows))
    with pytest.raises(ValueError, match=r"row 2 \(missing\)"):
        prepare_shards(manifest, tmp_path / "out", SETTINGS, workers=0, progress=False)
    assert not (tmp_path / "out" / "shard-000000.tar").exists()
    command = [sys.executable, str(REPO / "training" / "prepare_data.py"), str(manifest), str(tmp_path / "cli")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2 and "row 2 (missing)" in result.stderr and "Traceback" not in result.stderr
