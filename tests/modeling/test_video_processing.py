"""Video decoding, frame sampling, batch padding, the video processor and the processor."""

import io
import math
import os
import sys
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertTokenizerFast
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from video_fixtures import (
    REAL_CLIP,
    frame_ids,
    index_frame,
    patch_mp4_sample_entry,
    write_audio_only,
    write_empty_video,
    write_video,
)
from videofirst.modeling import video_decoding_videofirst as decoding
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import (
    VideoDecodingError,
    VideoFirstVideoProcessor,
    pad_video_batch,
    read_video_frames,
    sample_frame_indices,
)

NTSC = 30000 / 1001
VFR_PTS_MS = [0, 100, 150, 400, 450, 500, 900, 1000, 1033, 1066, 1100, 1500]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Synthetic videos (frames encode their index); see tests/video_fixtures.py."""
    root = tmp_path_factory.mktemp("videos")
    return {
        "v25": write_video(root / "v25.mp4", 25, fps=10),  # 2.5 s
        "v45": write_video(root / "v45.mp4", 45, fps=10, height=48, width=96),  # 4.5 s, other size
        "v8": write_video(root / "v8.mp4", 8, fps=10, height=80, width=64),  # 0.8 s, portrait
        "ntsc": write_video(root / "ntsc.mp4", 60, fps=NTSC),  # 2.002 s at 29.97 fps
        "v30_moov_last": write_video(root / "v30.mp4", 95, fps=30, faststart=False),
        "vfr": write_video(root / "vfr.mp4", len(VFR_PTS_MS), fps=30, pts_ms=VFR_PTS_MS),
    }


def tokenizer(tmp_path) -> BertTokenizerFast:
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "cat", "runs", "the", "bird", "sings"]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab=str(path))


def raw_processor(**overrides) -> VideoFirstVideoProcessor:
    """A processor that keeps raw 0-255 pixels at 32x64 so frame indices can be read back."""
    options = dict(
        do_normalize=False,
        do_rescale=False,
        do_center_crop=False,
        size={"height": 32, "width": 64},
        fps=1.0,
        num_frames=None,
    )
    return VideoFirstVideoProcessor(**{**options, **overrides})


# ------------------------------------------------------------------------------------------------------------
# Sampling rules (pure function)
# ------------------------------------------------------------------------------------------------------------

TEN_FPS = np.arange(25) / 10  # 25 frames at 10 fps, 2.5 s


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(fps=1.0), [0, 10, 20]),
        (dict(fps=2.0), [0, 5, 10, 15, 20]),
        (dict(fps=2.0, num_frames=2, sampling="window"), [0, 5]),
        (dict(fps=1.0, start=0.35), [3, 13, 23]),
        (dict(fps=1.0, offset=0.25), [2, 12, 22]),
        (dict(fps=2.0, start=0.5, end=1.6), [5, 10, 15]),
        (dict(fps=4.0, start=1.0, end=2.0), [10, 12, 15, 17]),
        (dict(fps=1.0, start=2.3), [23]),  # 2.3 * 10 is 22.999... in floating point: still frame 23
        (dict(fps=None, start=1.0, end=1.5), [10, 11, 12, 13, 14]),
        (dict(fps=20.0, num_frames=6, sampling="window"), [0, 0, 1, 1, 2, 2]),  # faster than the video: repeats
        (dict(fps=1.0, num_frames=256, sampling="window"), [0, 10, 20]),  # shorter than the request
        (dict(num_frames=4), [2, 8, 14, 21]),  # num_frames alone: uniform over the whole clip
    ],
)
def test_fps_sampling_exact_indices(kwargs, expected):
    assert sample_frame_indices(TEN_FPS, 2.5, **kwargs).tolist() == expected


def test_fps_sampling_floors_time_to_the_frame_on_screen():
    times = np.arange(60) / NTSC
    # t = 1 s falls inside frame 29 (29.97 frames have elapsed), t = 2 s inside frame 59.
    assert sample_frame_indices(times, 60 / NTSC, fps=1.0).tolist() == [0, 29, 59]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(num_frames=5), [2, 7, 12, 17, 22]),
        (dict(num_frames=4), [2, 8, 14, 21]),
        (dict(num_frames=1), [12]),
        (dict(num_frames=2, start=1.0, end=2.0), [12, 17]),
        (dict(num_frames=40), list(range(25))),  # fewer frames than requested: every frame once
        (dict(num_frames=8, start=2.05), [20, 21, 22, 23, 24]),
    ],
)
def test_uniform_sampling_exact_indices(kwargs, expected):
    assert sample_frame_indices(TEN_FPS, 2.5, sampling="uniform", **kwargs).tolist() == expected


def test_random_offsets_are_seeded_and_stay_in_their_period():
    draws = [sample_frame_indices(TEN_FPS, 2.5, fps=1.0, offset="random", seed=seed) for seed in range(20)]
    assert np.array_equal(draws[3], sample_frame_indices(TEN_FPS, 2.5, fps=1.0, offset="random", seed=3))
    assert len({tuple(d.tolist()) for d in draws}) > 1
    for draw in draws:
        assert len(draw) in (2, 3)
        for k, index in enumerate(draw):
            assert 10 * k <= index < 10 * (k + 1)
    for seed in range(20):
        uniform = sample_frame_indices(TEN_FPS, 2.5, sampling="uniform", num_frames=5, offset="random", seed=seed)
        bounds = np.arange(6) * 5
        assert ((uniform >= bounds[:-1]) & (uniform < bounds[1:])).all()


def test_variable_frame_rate_uses_presentation_times():
    times = np.array(VFR_PTS_MS) / 1000
    indices = sample_frame_indices(times, 1.5166, fps=10.0)
    assert indices.tolist() == [0, 1, 2, 2, 3, 5, 5, 5, 5, 6, 7, 10, 10, 10, 10, 11]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(start=-0.5), "negative"),
        (dict(end=-1.0), "negative"),
        (dict(start=2.5), "at or after the end"),
        (dict(end=2.8), "beyond the end"),
        (dict(start=1.0, end=1.0), "greater than start"),
        (dict(fps=1.0, offset=3.0), "not inside the clip"),
        (dict(fps=1.0, num_frames=4), "ambiguous"),
        (dict(fps=1.0, num_frames=4, sampling="fps"), "sampling='window'"),
        (dict(fps=1.0, sampling="uniform", num_frames=4), "no fps"),
        (dict(num_frames=4, sampling="window"), "needs fps"),
        (dict(offset="later"), "offset"),
        (dict(sampling="random"), "sampling"),
        (dict(sampling="uniform"), "num_frames"),
        (dict(sampling="uniform", num_frames=4, offset=0.5), "offset"),
        (dict(num_frames=0), "num_frames"),
        (dict(fps=0.0), "fps"),
        (dict(start=float("nan")), "finite"),
    ],
)
def test_invalid_sampling_requests_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        sample_frame_indices(TEN_FPS, 2.5, **kwargs)


def test_end_within_one_frame_of_the_duration_is_accepted():
    assert sample_frame_indices(TEN_FPS, 2.5, fps=1.0, end=2.55).tolist() == [0, 10, 20]


# ------------------------------------------------------------------------------------------------------------
# Decoding files
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(), list(range(25))),  # neither fps nor num_frames: every frame
        (dict(fps=1.0), [0, 10, 20]),
        (dict(fps=2.0), [0, 5, 10, 15, 20]),
        (dict(fps=1.0, start=0.35), [3, 13, 23]),
        (dict(fps=4.0, start=1.0, end=2.0), [10, 12, 15, 17]),
        (dict(fps=1.0, num_frames=256, sampling="window"), [0, 10, 20]),
        (dict(num_frames=4), [2, 8, 14, 21]),
        (dict(sampling="uniform", num_frames=4), [2, 8, 14, 21]),
        (dict(sampling="uniform", num_frames=100), list(range(25))),
        (dict(fps=None), list(range(25))),
    ],
)
def test_read_video_frames_returns_exact_frames(videos, kwargs, expected):
    frames, timestamps = read_video_frames(videos["v25"], **kwargs)
    assert frames.dtype == np.uint8 and frames.shape == (len(expected), 64, 128, 3)
    assert frame_ids(frames) == expected
    np.testing.assert_allclose(timestamps, np.array(expected) / 10, atol=1e-9)


def test_read_ntsc_and_moov_at_end(videos):
    frames, timestamps = read_video_frames(videos["ntsc"], fps=1.0)
    assert frame_ids(frames) == [0, 29, 59]
    np.testing.assert_allclose(timestamps, [0, 29 / NTSC, 59 / NTSC])
    frames, _ = read_video_frames(videos["v30_moov_last"], fps=3.0)  # 95 frames at 30 fps, GOP 10, moov last
    assert frame_ids(frames) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90]


def test_read_variable_frame_rate_file(videos):
    frames, timestamps = read_video_frames(videos["vfr"], fps=10.0)
    assert frame_ids(frames) == [0, 1, 2, 2, 3, 5, 5, 5, 5, 6, 7, 10, 10, 10, 10, 11]
    np.testing.assert_allclose(timestamps[:5], [0, 0.1, 0.15, 0.15, 0.4], atol=1e-6)


@pytest.mark.parametrize(
    "name, codec, container_format",
    [
        ("clip.mkv", "libx264", "matroska"),
        ("clip.webm", "libvpx-vp9", "webm"),
        ("clip.flv", "libx264", "flv"),
        ("clip.avi", "mpeg4", "avi"),
        (
            "clip.avi",
            "libx264",
            "avi",
        ),  # B-frames in AVI: decord's seeks land on wrong frames, read sequentially
        ("clip.mpg", "mpeg2video", "mpeg"),  # MPEG-PS: no frame size in the header, sequential reading
    ],
)
def test_other_containers(tmp_path, name, codec, container_format):
    path = write_video(tmp_path / name, 45, fps=10, codec=codec, container_format=container_format, gop=None)
    frames, _ = read_video_frames(path, fps=2.0, size=32)
    assert frame_ids(frames) == list(range(0, 45, 5))
    frames, _ = read_video_frames(path, sampling="uniform", num_frames=3)
    assert frame_ids(frames) == [7, 22, 37]


def test_mpeg_ts_goes_to_pyav_or_is_refused_without_it(tmp_path, monkeypatch):
    path = write_video(tmp_path / "clip.ts", 25, fps=10, codec="libx264", container_format="mpegts")
    frames, timestamps = read_video_frames(path, fps=2.0)  # decord would misplace frames: PyAV decodes them
    assert frame_ids(frames) == [0, 5, 10, 15, 20]
    np.testing.assert_allclose(timestamps, [0, 0.5, 1.0, 1.5, 2.0], atol=1e-6)
    monkeypatch.setattr(decoding, "_has_av", lambda: False)
    with pytest.raises(VideoDecodingError, match="not verified on mpeg-ts files.*install PyAV"):
        read_video_frames(path)


def test_decode_time_resize(videos):
    # (16, 48) also exercises the fallback for widths decord cannot scale to (16, 24, 48, 72, ...).
    frames, _ = read_video_frames(videos["v25"], fps=1.0, size=32)  # shortest edge 64 -> 32, aspect kept
    assert frames.shape == (3, 32, 64, 3) and frame_ids(frames) == [0, 10, 20]
    frames, _ = read_video_frames(videos["v8"], fps=1.0, size=32)  # portrait 80x64 -> 40x32
    assert frames.shape == (1, 40, 32, 3)
    frames, _ = read_video_frames(videos["v25"], fps=1.0, size=(16, 48))
    assert frames.shape == (3, 16, 48, 3)
    frames, _ = read_video_frames(videos["v25"], fps=1.0, size=224)  # never enlarges
    assert frames.shape == (3, 64, 128, 3)


def test_bytes_and_file_objects_match_paths(videos):
    path = videos["v45"]
    expected, expected_times = read_video_frames(path, fps=2.0)
    for source in (path.read_bytes(), bytearray(path.read_bytes()), io.BytesIO(path.read_bytes()), str(path)):
        frames, timestamps = read_video_frames(source, fps=2.0)
        assert np.array_equal(frames, expected) and np.array_equal(timestamps, expected_times)
    with open(path, "rb") as handle:
        frames, _ = read_video_frames(handle, fps=2.0)
    assert np.array_equal(frames, expected)
    assert frame_ids(expected) == list(range(0, 45, 5))


def test_real_clip_end_to_end():
    assert REAL_CLIP.stat().st_size < 1_000_000
    frames, timestamps = read_video_frames(REAL_CLIP, fps=1.0, size=224)
    assert frames.shape == (14, 224, 398, 3)  # 1280x720, 14 s at 20 fps
    np.testing.assert_allclose(timestamps, np.arange(14))
    assert frames.std() > 20  # real content, not a blank decode
    batch = VideoFirstVideoProcessor()(str(REAL_CLIP), fps=1.0, return_tensors="pt", return_metadata=True)
    assert batch["pixel_values_videos"].shape == (1, 14, 3, 224, 224)
    assert batch["video_frame_mask"].tolist() == [[1] * 14]
    metadata = batch["video_metadata"][0]
    assert (metadata.total_num_frames, metadata.fps, metadata.width, metadata.height) == (
        280,
        20.0,
        1280,
        720,
    )
    assert metadata.frames_indices == list(range(0, 280, 20))


def test_decode_time_resize_matches_resizing_afterwards():
    shrunk = VideoFirstVideoProcessor()(REAL_CLIP, num_frames=2, return_tensors="pt")["pixel_values_videos"]
    native = VideoFirstVideoProcessor(decode_resize=False)(REAL_CLIP, num_frames=2, return_tensors="pt")
    difference = (shrunk - native["pixel_values_videos"]).abs().mean().item()
    assert shrunk.shape == native["pixel_values_videos"].shape and difference < 0.05  # normalised units


# ------------------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------------------


def _truncate(source, target, fraction):
    data = source.read_bytes()
    target.write_bytes(data[: int(len(data) * fraction)])
    return target


def _corrupt_media_data(source, target):
    data = bytearray(source.read_bytes())
    rng = np.random.default_rng(0)
    begin = data.find(b"mdat") + 4
    data[begin + 40 :] = rng.integers(0, 256, len(data) - begin - 40, dtype=np.uint8).tobytes()
    target.write_bytes(bytes(data))
    return target


def _bad_inputs(root, videos):
    png = root / "still.png"
    Image.fromarray(index_frame(3, 32, 32)).save(png)
    fifo = root / "pipe.mp4"
    os.mkfifo(fifo)
    (root / "empty.mp4").write_bytes(b"")
    (root / "tiny.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom")
    (root / "notes.mp4").write_text("this is not a video, just some text that is long enough " * 4)
    (root / "noise.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (root / "folder.mp4").mkdir()
    return {
        "missing": (root / "missing.mp4", "file not found"),
        "empty": (root / "empty.mp4", "empty file"),
        "tiny": (root / "tiny.mp4", "too small"),
        "text": (root / "notes.mp4", "text file"),
        "image": (png, "PNG image"),
        "noise": (root / "noise.mp4", "unrecognised container"),
        "truncated": (_truncate(videos["v25"], root / "cut.mp4", 0.6), "truncated"),
        "truncated_moov_last": (_truncate(videos["v30_moov_last"], root / "cut_end.mp4", 0.9), "truncated"),
        "corrupt": (_corrupt_media_data(videos["v45"], root / "corrupt.mp4"), None),
        "audio_only": (write_audio_only(root / "speech.m4a"), "no video stream"),
        "zero_frames": (write_empty_video(root / "nothing.mkv"), "zero frames"),
        "unsupported_codec": (
            patch_mp4_sample_entry(videos["v25"], root / "codec.mp4", fourcc=b"zzzz"),
            "unsupported codec 'zzzz'",
        ),
        "absurd_dimensions": (
            patch_mp4_sample_entry(videos["v25"], root / "bomb.mp4", size=(60000, 60000)),
            "exceeds max_pixels_per_frame",
        ),
        "directory": (root / "folder.mp4", "directory"),
        "fifo": (fifo, "not a regular file"),  # would block forever if opened
    }


BAD_INPUTS = [
    "missing", "empty", "tiny", "text", "image", "noise", "truncated", "truncated_moov_last", "corrupt",
    "audio_only", "zero_frames", "unsupported_codec", "absurd_dimensions", "directory", "fifo",
]  # fmt: skip


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, videos):
    return _bad_inputs(tmp_path_factory.mktemp("bad"), videos)


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise_video_decoding_error(bad_inputs, case):
    path, reason = bad_inputs[case]
    started = time.monotonic()
    with pytest.raises(VideoDecodingError) as caught:
        read_video_frames(path)
    assert time.monotonic() - started < 10
    assert str(path) in str(caught.value) and caught.value.source == str(path)
    if reason is not None:
        assert reason in caught.value.reason
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("case", ["empty", "text", "image", "noise", "truncated", "audio_only", "absurd_dimensions"])
def test_cheap_checks_reject_before_decord(bad_inputs, case, monkeypatch):
    decord = pytest.importorskip("decord")

    def forbidden(*args, **kwargs):
        raise AssertionError("decord must not be called for this input")

    monkeypatch.setattr(decord, "VideoReader", forbidden)
    path, reason = bad_inputs[case]
    with pytest.raises(VideoDecodingError, match=reason):
        read_video_frames(path)


def test_bad_bytes_and_processor_errors_name_the_source(bad_inputs):
    with pytest.raises(VideoDecodingError, match=r"<\d+ bytes>.*text file"):
        read_video_frames(bad_inputs["text"][0].read_bytes())
    with pytest.raises(VideoDecodingError, match="truncated"):
        VideoFirstVideoProcessor()([bad_inputs["truncated"][0]])
    with pytest.raises(VideoDecodingError, match="text mode"):
        with open(bad_inputs["text"][0]) as handle:
            read_video_frames(handle)


def test_urls_and_unnamed_file_objects(videos):
    with pytest.raises(VideoDecodingError, match="URLs are not fetched"):
        read_video_frames("https://example.com/clip.mp4")
    with pytest.raises(VideoDecodingError, match="<file object>.*text file"):
        read_video_frames(io.BytesIO(b"plain words, not a video at all, but long enough to be sniffed" * 2))


def test_oversized_mp4_header_falls_back_to_the_decoder(videos, monkeypatch):
    import videofirst.modeling.video_containers_videofirst as containers

    monkeypatch.setattr(containers, "_MAX_HEADER_BYTES", 16)  # the 'moov' box is not parsed: sizes come from frames
    frames, _ = read_video_frames(videos["v25"], fps=1.0, size=32)
    assert frames.shape == (3, 32, 64, 3) and frame_ids(frames) == [0, 10, 20]


def test_frame_size_guard_without_a_container_header(tmp_path, videos):
    stream = write_video(tmp_path / "clip.mpg", 10, codec="mpeg2video", container_format="mpeg", gop=None)
    with pytest.raises(VideoDecodingError, match="frame size 128x64 .*video stream"):  # the decoder's size
        read_video_frames(stream, max_pixels_per_frame=64 * 64)
    with pytest.raises(VideoDecodingError, match="container header"):
        read_video_frames(videos["v25"], max_pixels_per_frame=64 * 64)
    assert read_video_frames(videos["v25"], fps=1.0, max_pixels_per_frame=None)[0].shape[0] == 3


def test_max_frames_guard(videos):
    with pytest.raises(VideoDecodingError, match="max_frames=5"):
        read_video_frames(videos["v25"], fps=10.0, max_frames=5)
    with pytest.raises(VideoDecodingError, match="max_frames=5"):
        VideoFirstVideoProcessor(max_frames=5)([videos["v25"]], fps=10.0, num_frames=None)
    with pytest.raises(ValueError, match="max_frames=5"):
        VideoFirstVideoProcessor(max_frames=5)(np.zeros((6, 8, 8, 3), np.uint8))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(start=-1.0), "negative"),
        (dict(start=3.0), "at or after the end"),
        (dict(end=30.0), "beyond the end"),
        (dict(start=2.0, end=1.0), "greater than start"),
        (dict(sampling="uniform"), "num_frames"),
    ],
)
def test_clip_time_errors_name_the_file(videos, kwargs, message):
    with pytest.raises(VideoDecodingError, match=message) as caught:
        read_video_frames(videos["v25"], **kwargs)
    assert str(videos["v25"]) in str(caught.value)


def test_stuck_decoder_times_out(videos, monkeypatch):
    decord = pytest.importorskip("decord")
    release = threading.Event()

    def stuck(self, indices):
        release.wait(30)
        raise RuntimeError("released")

    monkeypatch.setattr(decord.VideoReader, "get_batch", stuck)
    started = time.monotonic()
    try:
        with pytest.raises(VideoDecodingError, match="did not finish within decode_timeout=0.3 s"):
            read_video_frames(videos["v25"], timeout=0.3)
        assert time.monotonic() - started < 5
    finally:
        release.set()


def test_missing_decord_gives_a_clear_error(videos, monkeypatch):
    monkeypatch.setitem(sys.modules, "decord", None)
    with pytest.raises(ImportError, match="pip install decord"):
        read_video_frames(videos["v25"])
    out = VideoFirstVideoProcessor()(np.zeros((2, 8, 8, 3), np.uint8), return_tensors="pt")  # decoded: no decord
    assert out["pixel_values_videos"].shape == (1, 2, 3, 224, 224)


# ------------------------------------------------------------------------------------------------------------
# Batch padding
# ------------------------------------------------------------------------------------------------------------


def test_pad_video_batch_rules():
    videos = [
        torch.full((length, 3, 2, 2), float(length)) + torch.arange(length).view(-1, 1, 1, 1) for length in (3, 5, 1)
    ]
    batch, mask = pad_video_batch(videos, tubelet_frames=2)
    assert batch.shape == (3, 6, 3, 2, 2) and mask.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]
    assert torch.equal(batch[0, :3], videos[0]) and torch.equal(batch[0, 3], videos[0][-1])  # edge padding
    assert batch[0, 4:].abs().sum() == 0 and batch[2, 2:].abs().sum() == 0  # zero padding
    assert torch.equal(batch[1, 5], videos[1][-1])
    _, mask = pad_video_batch(videos, tubelet_frames=1)
    assert mask.sum(1).tolist() == [3, 5, 1]
    batch, mask = pad_video_batch(videos, tubelet_frames=4, pad_to=12)
    assert batch.shape[1] == 12 and mask.sum(1).tolist() == [4, 8, 4]
    with pytest.raises(ValueError, match="pad_to"):
        pad_video_batch(videos, tubelet_frames=2, pad_to=4)
    with pytest.raises(ValueError, match="frame shape"):
        pad_video_batch([torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 5)])
    with pytest.raises(ValueError, match="tubelet_frames"):
        pad_video_batch(videos, tubelet_frames=0)


# ------------------------------------------------------------------------------------------------------------
# Video processor
# ------------------------------------------------------------------------------------------------------------


def test_video_processor_defaults():
    processor = VideoFirstVideoProcessor()
    assert processor.size.shortest_edge == 224 and (
        processor.crop_size.height,
        processor.crop_size.width,
    ) == (224, 224)
    assert list(processor.image_mean) == list(OPENAI_CLIP_MEAN) and list(processor.image_std) == list(OPENAI_CLIP_STD)
    # num_frames alone: 16 frames spread uniformly over the whole video, as transformers means it.
    assert (processor.fps, processor.num_frames, processor.sampling, processor.tubelet_frames) == (None, 16, None, 2)
    assert processor.model_input_names == ["pixel_values_videos", "video_frame_mask"]


def test_mixed_length_batch_padding_and_mask(videos):
    processor = VideoFirstVideoProcessor(size=32, crop_size=32, fps=1.0, num_frames=None)
    batch = processor([videos["v25"], videos["v45"], videos["v8"]], return_tensors="pt", return_metadata=True)
    pixels, mask = batch["pixel_values_videos"], batch["video_frame_mask"]
    # 2.5 s -> 3 frames (+1 edge), 4.5 s -> 5 frames (+1 edge), 0.8 s -> 1 frame (+1 edge); zero-padded to 6.
    assert pixels.shape == (3, 6, 3, 32, 32) and pixels.dtype == torch.float32 and mask.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]]
    assert [m.frames_indices for m in batch["video_metadata"]] == [[0, 10, 20], [0, 10, 20, 30, 40], [0]]
    assert torch.equal(pixels[0, 3], pixels[0, 2]) and torch.equal(pixels[2, 1], pixels[2, 0])
    assert pixels[0, 4:].abs().sum() == 0 and pixels[2, 2:].abs().sum() == 0
    for index, name in enumerate(["v25", "v45", "v8"]):  # alone or batched: identical real frames
        alone = processor(videos[name], return_tensors="pt")
        length = alone["video_frame_mask"].sum().item()
        assert length == mask[index].sum().item()
        assert torch.equal(alone["pixel_values_videos"][0, :length], pixels[index, :length])


def test_equal_lengths_still_return_a_mask(videos):
    batch = VideoFirstVideoProcessor(size=32, crop_size=32, fps=1.0, num_frames=None)(
        [videos["v25"], videos["v25"]], return_tensors="pt"
    )
    assert batch["video_frame_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]


def test_tubelet_frames_and_sampling_overrides(videos):
    processor = raw_processor(tubelet_frames=4)
    batch = processor(videos["v45"], fps=2.0, num_frames=5, sampling="window", return_tensors="pt")
    assert batch["pixel_values_videos"].shape[1] == 8 and batch["video_frame_mask"].tolist() == [[1] * 8]
    assert frame_ids(batch["pixel_values_videos"][0]) == [0, 5, 10, 15, 20, 20, 20, 20]
    batch = processor(videos["v45"], sampling="uniform", num_frames=3, tubelet_frames=1, return_tensors="pt")
    assert frame_ids(batch["pixel_values_videos"][0]) == [7, 22, 37]
    assert batch["video_frame_mask"].tolist() == [[1, 1, 1]]


def test_per_video_start_and_end(videos):
    processor = raw_processor()
    batch = processor(
        [videos["v25"], videos["v45"]],
        start=[0.35, 1.0],
        end=[None, 3.0],
        return_tensors="pt",
        return_metadata=True,
    )
    assert [m.frames_indices for m in batch["video_metadata"]] == [[3, 13, 23], [10, 20]]
    assert frame_ids(batch["pixel_values_videos"][0][:3]) == [3, 13, 23]
    assert frame_ids(batch["pixel_values_videos"][1][:2]) == [10, 20]
    with pytest.raises(ValueError, match="start has 3 values for 2 videos"):
        processor([videos["v25"], videos["v45"]], start=[0, 0, 0])


def test_every_frame_and_unstackable_outputs(videos):
    processor = raw_processor(size=16, tubelet_frames=1)
    out = processor(videos["v8"], do_sample_frames=False, return_tensors="pt", return_metadata=True)
    assert out["video_metadata"][0].frames_indices == list(range(8))
    assert out["pixel_values_videos"].shape == (1, 8, 3, 20, 16)  # portrait 80x64, shortest edge 16
    mixed = processor([videos["v8"], videos["v25"]])  # different shapes, no crop: a list without tensors
    assert [tuple(v.shape) for v in mixed["pixel_values_videos"]] == [(1, 3, 20, 16), (3, 3, 16, 32)]
    assert mixed["video_frame_mask"].tolist() == [[1, 0, 0], [1, 1, 1]]
    with pytest.raises(ValueError, match="cannot be stacked"):
        processor([videos["v8"], videos["v25"]], return_tensors="pt")
    as_numpy = VideoFirstVideoProcessor(size=32, crop_size=32, fps=1.0, num_frames=None)(
        videos["v25"], return_tensors="np"
    )
    assert isinstance(as_numpy["pixel_values_videos"], np.ndarray) and as_numpy["video_frame_mask"].shape == (
        1,
        4,
    )


def test_decoded_inputs_are_used_as_given(videos):
    frames, _ = read_video_frames(videos["v25"], fps=None, end=0.5)
    processor = VideoFirstVideoProcessor(size=32, crop_size=32, fps=1.0, num_frames=None)
    expected = processor(frames, return_tensors="pt")
    assert expected["pixel_values_videos"].shape == (1, 6, 3, 32, 32)  # 5 frames, edge-padded to 6
    as_tensor = torch.from_numpy(frames)
    variants = [
        as_tensor.permute(0, 3, 1, 2),  # (T, C, H, W)
        as_tensor,  # (T, H, W, C) tensor
        [Image.fromarray(frame) for frame in frames],
        list(frames),
        [frames],
    ]
    for variant in variants:
        out = processor(variant, return_tensors="pt")
        assert torch.equal(out["pixel_values_videos"], expected["pixel_values_videos"])
    batch = processor(np.stack([frames, frames]), return_tensors="pt")  # 5-D array: a batch
    assert batch["pixel_values_videos"].shape == (2, 6, 3, 32, 32)
    gray = processor([Image.fromarray(frame[..., 0]) for frame in frames], return_tensors="pt")
    rgba = processor(np.concatenate([frames, np.full_like(frames[..., :1], 255)], -1), return_tensors="pt")
    assert gray["pixel_values_videos"].shape[2] == 3 and rgba["pixel_values_videos"].shape[2] == 3
    assert torch.allclose(rgba["pixel_values_videos"], expected["pixel_values_videos"])
    raw = raw_processor()(frames, return_tensors="pt")
    assert frame_ids(raw["pixel_values_videos"][0][:5]) == [0, 1, 2, 3, 4]


def test_decoded_inputs_with_fps_metadata_are_sampled():
    frames = np.stack([index_frame(i, 32, 64) for i in range(30)])  # 30 frames at 10 fps
    out = raw_processor()(frames, video_metadata={"fps": 10.0}, fps=2.0, return_tensors="pt", return_metadata=True)
    assert out["video_metadata"][0].frames_indices == [0, 5, 10, 15, 20, 25]
    assert frame_ids(out["pixel_values_videos"][0]) == [0, 5, 10, 15, 20, 25]


def test_images_become_pixel_values(tmp_path):
    image = index_frame(5, 48, 64)
    path = tmp_path / "frame.png"
    Image.fromarray(image).save(path)
    processor = VideoFirstVideoProcessor()
    out = processor.preprocess_images(
        [
            Image.fromarray(image),
            image,
            torch.from_numpy(image).permute(2, 0, 1),
            str(path),
            path.read_bytes(),
        ],
        return_tensors="pt",
    )
    assert out["pixel_values"].shape == (5, 3, 224, 224)
    for index in range(1, 5):
        assert torch.equal(out["pixel_values"][index], out["pixel_values"][0])
    as_video = processor(image[None], tubelet_frames=1, return_tensors="pt")["pixel_values_videos"][0, 0]
    assert torch.equal(as_video, out["pixel_values"][0])
    with pytest.raises(ValueError, match="cannot read image"):
        processor.preprocess_images(str(tmp_path / "missing.png"))


def test_invalid_processor_options(videos):
    with pytest.raises(ValueError, match="sampling"):
        VideoFirstVideoProcessor(sampling="dense")
    with pytest.raises(ValueError, match="tubelet_frames"):
        VideoFirstVideoProcessor(tubelet_frames=0)
    with pytest.raises(ValueError, match="decode_timeout"):
        VideoFirstVideoProcessor(decode_timeout=0)
    processor = VideoFirstVideoProcessor()
    with pytest.raises(ValueError, match="sampling"):
        processor(videos["v25"], sampling="dense")
    with pytest.raises(ValueError, match="fps"):
        processor(videos["v25"], fps=-1.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        processor(videos["v25"], frames_per_second=2)
    with pytest.raises(TypeError, match="videos\\[1\\]"):
        processor([videos["v25"], 42])


def test_video_processor_save_load_round_trip(tmp_path, videos):
    processor = VideoFirstVideoProcessor(
        tubelet_frames=4, fps=2.0, num_frames=6, sampling="window", size=48, crop_size=40, max_frames=100
    )
    processor.save_pretrained(tmp_path)
    loaded = VideoFirstVideoProcessor.from_pretrained(tmp_path)
    for name in ("tubelet_frames", "fps", "num_frames", "sampling", "max_frames", "decode_timeout"):
        assert getattr(loaded, name) == getattr(processor, name)
    assert loaded.size == processor.size and loaded.crop_size == processor.crop_size
    assert loaded.to_dict() == processor.to_dict()
    before = processor(videos["v45"], return_tensors="pt")
    after = loaded(videos["v45"], return_tensors="pt")
    assert before["pixel_values_videos"].shape == (1, 8, 3, 40, 40)
    assert torch.equal(before["pixel_values_videos"], after["pixel_values_videos"])


def test_processor_with_bert_tokenizer(tmp_path, videos):
    processor = VideoFirstProcessor(
        video_processor=VideoFirstVideoProcessor(size=32, crop_size=32, fps=1.0, num_frames=None),
        tokenizer=tokenizer(tmp_path),
    )
    batch = processor(
        videos=[videos["v25"], videos["v45"]],
        images=[index_frame(1, 32, 64)],
        text=["a dog runs", "the bird"],
        fps=1.0,
        num_frames=256,
        sampling="window",
        return_tensors="pt",
        padding=True,
    )
    assert set(batch) == {
        "pixel_values_videos",
        "video_frame_mask",
        "pixel_values",
        "input_ids",
        "attention_mask",
    }
    assert batch["pixel_values_videos"].shape == (2, 6, 3, 32, 32)
    assert batch["video_frame_mask"].tolist() == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert batch["pixel_values"].shape == (1, 3, 32, 32)
    assert batch["input_ids"].tolist() == [[2, 5, 6, 8, 3], [2, 9, 10, 3, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
    processor.save_pretrained(tmp_path / "saved")
    loaded = VideoFirstProcessor.from_pretrained(tmp_path / "saved")
    assert isinstance(loaded.video_processor, VideoFirstVideoProcessor)
    assert loaded.video_processor.to_dict() == processor.video_processor.to_dict()
    again = loaded(videos=[videos["v25"], videos["v45"]], text=["a dog runs", "the bird"], return_tensors="pt")
    assert torch.equal(again["input_ids"], batch["input_ids"])
    assert torch.equal(again["pixel_values_videos"], batch["pixel_values_videos"])
    assert loaded.model_input_names == [
        "pixel_values_videos", "video_frame_mask", "pixel_values", "input_ids", "attention_mask",
    ]  # fmt: skip
    # Keyword routing: video options go to the video processor, text ones to the tokenizer. (Done after
    # saving: a fixed-length padding call leaks into the saved tokenizer.json, a transformers behaviour.)
    routed = loaded(videos=videos["v45"], text=["a cat"], num_frames=3, padding="max_length", max_length=8)
    assert len(routed["input_ids"][0]) == 8 and routed["video_frame_mask"].tolist() == [[1, 1, 1, 1]]
    with pytest.raises(ValueError, match="at least one"):
        loaded()


# ------------------------------------------------------------------------------------------------------------
# PyAV backend and the keyframe-snapping fast mode
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("v25", dict()),
        ("v25", dict(fps=4.0, start=1.0, end=2.0)),
        ("v25", dict(sampling="uniform", num_frames=4)),
        ("v25", dict(fps=None, size=32)),
        ("v25", dict(fps=2.0, offset="random", seed=3)),
        ("ntsc", dict(fps=1.0)),
        ("v30_moov_last", dict(fps=3.0)),
        ("vfr", dict(fps=10.0)),
        ("v8", dict(fps=20.0, num_frames=6, sampling="window", size=32)),
    ],
)
def test_pyav_backend_matches_decord(videos, name, kwargs):
    pytest.importorskip("av")
    expected, expected_times = read_video_frames(videos[name], **kwargs)
    frames, timestamps = read_video_frames(videos[name], backend="pyav", **kwargs)
    assert frames.shape == expected.shape and frame_ids(frames) == frame_ids(expected)
    np.testing.assert_allclose(timestamps, expected_times, atol=1e-6)


@pytest.mark.parametrize(
    "name, codec, container_format",
    [("clip.mkv", "libx264", "matroska"), ("clip.avi", "libx264", "avi"), ("clip.mpg", "mpeg2video", "mpeg")],
)
def test_pyav_backend_other_containers(tmp_path, name, codec, container_format):
    pytest.importorskip("av")
    path = write_video(tmp_path / name, 45, fps=10, codec=codec, container_format=container_format, gop=None)
    frames, _ = read_video_frames(path, fps=2.0, size=32, backend="pyav")
    assert frame_ids(frames) == list(range(0, 45, 5))
    frames, _ = read_video_frames(io.BytesIO(path.read_bytes()), sampling="uniform", num_frames=3, backend="pyav")
    assert frame_ids(frames) == [7, 22, 37]


def test_pyav_backend_real_clip_matches_decord_pixels():
    pytest.importorskip("av")
    expected, _ = read_video_frames(REAL_CLIP, fps=1.0, size=224)
    frames, _ = read_video_frames(REAL_CLIP, fps=1.0, size=224, backend="pyav")
    assert frames.shape == expected.shape == (14, 224, 398, 3)
    assert np.abs(frames.astype(np.int16) - expected).mean() < 2  # same frames, both swscale bicubic


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_pyav_backend_bad_inputs(bad_inputs, case):
    pytest.importorskip("av")
    path, reason = bad_inputs[case]
    with pytest.raises(VideoDecodingError) as caught:
        read_video_frames(path, backend="pyav")
    assert caught.value.source == str(path)
    if reason is not None:
        assert reason.replace("decord", "PyAV") in caught.value.reason


def test_pyav_backend_options_and_missing_library(videos, monkeypatch):
    pytest.importorskip("av")
    batch = raw_processor(decode_backend="pyav")(videos["v25"], return_metadata=True, return_tensors="pt")
    assert batch["video_metadata"][0].video_backend == "pyav"
    assert frame_ids(batch["pixel_values_videos"][0]) == [0, 10, 20, 20]  # edge-padded to the tubelet
    with pytest.raises(ValueError, match="decode_backend"):
        VideoFirstVideoProcessor(decode_backend="opencv")
    with pytest.raises(ValueError, match="backend must be one of"):
        read_video_frames(videos["v25"], backend="opencv")
    monkeypatch.setitem(sys.modules, "av", None)
    with pytest.raises(ImportError, match="pip install av"):
        read_video_frames(videos["v25"], backend="pyav")


def test_snap_to_keyframes_rules():
    from videofirst.modeling.video_processing_videofirst import snap_to_keyframes

    times = np.arange(40) / 10  # 10 fps
    keyframes = [0, 10, 25, 35]
    samples = np.array([0, 4, 5, 12, 18, 30, 39])
    # Nearest keyframe within 0.5 s; 5 is halfway between 0 and 10 and goes to the earlier one.
    assert snap_to_keyframes(samples, times, keyframes, 0.5).tolist() == [0, 0, 0, 10, 18, 25, 35]
    assert snap_to_keyframes(samples, times, keyframes, 0.2).tolist() == [0, 4, 5, 10, 18, 30, 39]
    assert snap_to_keyframes(samples, times, keyframes, 0.0).tolist() == samples.tolist()
    assert snap_to_keyframes(samples, times, keyframes, math.inf).tolist() == [0, 0, 0, 10, 25, 25, 35]
    # Keyframes outside the clip are not used.
    assert snap_to_keyframes(samples, times, keyframes, math.inf, frame_range=(1, 30)).tolist() == [
        10, 10, 10, 10, 25, 25, 25,
    ]  # fmt: skip
    assert snap_to_keyframes(samples, times, [], math.inf).tolist() == samples.tolist()


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_keyframe_snap_fast_mode(tmp_path, backend):
    av = pytest.importorskip("av")
    path = write_video(tmp_path / "gop.mp4", 100, fps=10, gop=20)  # 10 s, keyframes at most 2 s apart
    with av.open(str(path)) as container:
        keys = {int(round(float(p.pts * p.time_base) * 10)) for p in container.demux(video=0) if p.is_keyframe}
    exact, exact_times = read_video_frames(path, fps=1.0, backend=backend)
    assert frame_ids(exact) == list(range(0, 100, 10))
    frames, times = read_video_frames(path, fps=1.0, backend=backend, keyframe_snap=math.inf)
    assert set(frame_ids(frames)) <= keys and len(frames) == len(exact)
    assert np.all(np.diff(times) >= 0) and np.abs(times - exact_times).max() <= 1.0 + 1e-6  # half a GOP at most
    frames, times = read_video_frames(path, fps=1.0, backend=backend, keyframe_snap=0.25)
    close = np.abs(times - exact_times) <= 0.25 + 1e-6
    assert close.all() and all(i in keys or i % 10 == 0 for i in frame_ids(frames))
    batch = raw_processor(decode_backend=backend, keyframe_snap=0.0)(path, return_tensors="pt")
    assert frame_ids(batch["pixel_values_videos"][0]) == list(range(0, 100, 10))
    with pytest.raises(ValueError, match="keyframe_snap"):
        raw_processor(keyframe_snap=-1.0)
    with pytest.raises(ValueError, match="keyframe_snap"):
        read_video_frames(path, keyframe_snap="fast")
