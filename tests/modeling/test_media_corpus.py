"""Both decoding backends against the truth of a generated media corpus (tests/media_corpus.py): for every requested
time, the frame on screen at that time, or a named refusal; memory bounds checked before anything is allocated."""

import fractions
import json
import subprocess
import sys
import textwrap

import av
import numpy as np
import pytest
import torch
from media_corpus import band_frame, band_ids, build_corpus, write_frames
from video_fixtures import patch_mp4_sample_entry
from videofirst.modeling import video_decoding_videofirst as decoding
from videofirst.modeling import video_pyav_videofirst as pyav_backend
from videofirst.modeling.video_processing_videofirst import (
    VideoDecodingError,
    VideoFirstVideoProcessor,
    read_video_frames,
)

BACKENDS = ("decord", "pyav")
NAMES = (
    "vfr.mp4",
    "vfr.mkv",
    "vfr.webm",
    "vfr.avi",
    "irregular.avi",
    "cfr_bframes.avi",
    "program_stream.mpg",
    "rotated.mp4",
    "10bit.mp4",
    "odd_size.mp4",
    "thin.mp4",
    "huge_gap.mkv",
    "lying_header.mp4",
)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def displayed_ids(media, frames: np.ndarray) -> list[int]:
    """Frame indices in frames as displayed: a rotated file's frames are turned back to read their bands, so a
    rotation the wrong way round reads as other indices."""
    if media.rotation:
        frames = np.rot90(frames, k=-(media.rotation // 90), axes=(1, 2))
    return band_ids(frames)


@pytest.mark.parametrize("name", NAMES)
def test_the_corpus_is_what_pyav_decodes(corpus, name):
    """The truth itself: PyAV's decoded frames, in output order, carry the written indices and (sorted) times."""
    media = corpus[name]
    with av.open(str(media.path)) as container:
        decoded = list(container.decode(video=0))
    times = np.sort([frame.time for frame in decoded])
    np.testing.assert_allclose(times - times[0], media.times, atol=1e-3)
    assert band_ids(np.stack([frame.to_ndarray(format="rgb24") for frame in decoded])) == list(range(len(decoded)))


def read_or_refusal(media, backend, **kwargs):
    try:
        return read_video_frames(media.path, backend=backend, **kwargs)
    except VideoDecodingError as err:
        return err


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", NAMES)
def test_every_requested_time_gets_the_frame_on_screen(corpus, name, backend):
    media = corpus[name]
    last = media.times[-1]
    for fps in (7.0, 1.0):
        result = read_or_refusal(media, backend, fps=fps)
        if isinstance(result, VideoDecodingError):
            assert "fps" in media.refusals, result
            assert media.refusals["fps"] in str(result)
            continue
        frames, timestamps = result
        wanted = np.arange(len(frames)) / fps
        # Every sample time before the last frame appears is there, and none more than a second after it.
        assert (wanted < last + 1.0).all() and len(frames) >= int(np.sum(np.arange(0, last, 1 / fps) < last))
        expected = [media.on_screen(t) for t in wanted]
        assert displayed_ids(media, frames) == expected, (fps, timestamps)
        np.testing.assert_allclose(timestamps, media.times[expected], atol=1e-3)
        assert frames.shape[1:] == (media.height, media.width, 3)

    # num_frames alone: the middle frame of each of 5 equal runs of frames, over the whole video.
    frames, timestamps = read_video_frames(media.path, backend=backend, num_frames=5)
    count = len(media.times)
    bounds = (np.arange(6) * count) // 5
    expected = list(range(count)) if count <= 5 else ((bounds[:-1] + bounds[1:] - 1) // 2).tolist()
    assert displayed_ids(media, frames) == expected
    np.testing.assert_allclose(timestamps, media.times[expected], atol=1e-3)

    # The paper's window: the first 3 samples at 4 fps from 0.3 s.
    frames, timestamps = read_video_frames(
        media.path, backend=backend, fps=4.0, num_frames=3, sampling="window", start=0.3
    )
    expected = [media.on_screen(0.3 + k / 4) for k in range(3)]
    assert displayed_ids(media, frames) == expected
    np.testing.assert_allclose(timestamps, media.times[expected], atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_backends_give_the_same_pixels_for_a_rotated_video(corpus, backend):
    media = corpus["rotated.mp4"]
    frames, _ = read_video_frames(media.path, backend=backend, num_frames=4, size=32)
    assert frames.shape == (4, 64, 32, 3)  # the displayed (portrait) box, shrunk without squashing
    reference, _ = read_video_frames(media.path, backend="pyav", num_frames=4, size=32)
    assert np.abs(frames.astype(int) - reference).mean() < 2
    processor = VideoFirstVideoProcessor(size={"shortest_edge": 32}, do_center_crop=False, decode_backend=backend)
    batch = processor(str(media.path), num_frames=2, return_tensors="pt", return_metadata=True)
    assert batch["pixel_values_videos"].shape[-2:] == (64, 32)
    assert (batch["video_metadata"][0].width, batch["video_metadata"][0].height) == (64, 128)


@pytest.mark.parametrize(
    "name, reason",
    [
        ("program_stream.mpg", "not verified on mpeg-ps"),
        ("thin.mp4", "16 px wide"),
        ("lying_header.mp4", "header says 64x48 but the stream is 256x256"),
        ("huge_gap.mkv", "timestamps differ"),
    ],
)
def test_decord_hands_files_it_gets_wrong_to_pyav_with_a_logged_reason(corpus, monkeypatch, name, reason):
    logged = []
    monkeypatch.setattr(decoding.logger, "warning", lambda message, *args: logged.append(message % args))
    frames, _ = read_video_frames(corpus[name].path, backend="decord", num_frames=3)
    assert len(frames) == 3
    assert len(logged) == 1 and reason in logged[0] and "decoding it with PyAV instead" in logged[0]
    assert str(corpus[name].path) in logged[0]


def test_without_pyav_decord_refuses_what_it_cannot_decode_instead_of_guessing(corpus, monkeypatch):
    monkeypatch.setattr(decoding, "_has_av", lambda: False)
    with pytest.raises(VideoDecodingError, match="size must exactly match.*install PyAV"):
        read_video_frames(corpus["thin.mp4"].path, backend="decord", num_frames=3)
    with pytest.raises(VideoDecodingError, match="not verified on mpeg-ps files.*install PyAV"):
        read_video_frames(corpus["program_stream.mpg"].path, backend="decord", num_frames=3)
    media = corpus["vfr.mp4"]
    frames, _ = read_video_frames(media.path, backend="decord", fps=7.0)  # decord's own index, checked
    assert band_ids(frames) == [media.on_screen(k / 7) for k in range(len(frames))] and len(frames) == 22


def test_thin_videos_are_bounded_by_their_output_size(corpus):
    """A 16x256 video enlarged to a 224 shortest edge is 224x3584 per frame: the memory bound counts that."""
    path = corpus["thin.mp4"].path
    processor = VideoFirstVideoProcessor(num_frames=4)
    assert processor(str(path), return_tensors="pt")["pixel_values_videos"].shape == (1, 4, 3, 224, 224)
    small = VideoFirstVideoProcessor(num_frames=4, max_video_bytes=4 * 224 * 3584 * 3 * 4 - 1)
    with pytest.raises(VideoDecodingError, match=r"4 frames of 224x3584 .*max_video_bytes"):
        small(str(path), return_tensors="pt")
    with pytest.raises(VideoDecodingError, match="resized to 224x3584 .*max_pixels_per_frame"):
        VideoFirstVideoProcessor(num_frames=4, max_pixels_per_frame=224 * 3000)(str(path))
    decoded = np.stack([band_frame(i, 256, 16) for i in range(4)])
    with pytest.raises(ValueError, match="max_video_bytes"):  # decoded inputs are bounded the same way
        small(decoded, return_tensors="pt")


# ------------------------------------------------------------------------------------------------------------
# Decoded arrays and file objects
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "video, message",
    [
        (np.zeros((2, 32, 32, 3), np.uint16) + 1000, "outside 0-255"),
        (np.full((2, 32, 32, 3), 0.5, np.float32), r"already in \[0, 1\]"),
        (np.zeros((2, 32, 32, 3), bool), "boolean"),
        (np.full((2, 32, 32, 3), np.nan, np.float32), "NaN"),
        (np.full((2, 32, 32, 3), np.inf, np.float64), "NaN or infinite"),
        (np.zeros((2, 0, 0, 3), np.uint8), "empty 0x0 frames"),
    ],
)
def test_decoded_arrays_are_validated(video, message):
    with pytest.raises(ValueError, match=message):
        VideoFirstVideoProcessor(size=32, crop_size=32)(video, return_tensors="pt")


def test_valid_decoded_dtypes_are_accepted():
    processor = VideoFirstVideoProcessor(size=32, crop_size=32)
    as_uint8 = processor(np.full((2, 32, 32, 3), 200, np.uint8), return_tensors="pt")["pixel_values_videos"]
    as_float = processor(np.full((2, 32, 32, 3), 200.0, np.float32), return_tensors="pt")["pixel_values_videos"]
    as_int64 = processor(torch.full((2, 3, 32, 32), 200), return_tensors="pt")["pixel_values_videos"]
    assert torch.allclose(as_uint8, as_float) and torch.allclose(as_uint8, as_int64)
    rescaled = VideoFirstVideoProcessor(size=32, crop_size=32, do_rescale=False)
    assert (
        rescaled(np.full((2, 32, 32, 3), 0.5, np.float32), return_tensors="pt")["pixel_values_videos"].isfinite().all()
    )


def test_a_text_mode_file_handle_is_named(corpus):
    path = corpus["vfr.mp4"].path
    with open(path, encoding="utf-8") as handle, pytest.raises(VideoDecodingError, match="text mode") as err:
        read_video_frames(handle)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------------------------------
# Peak memory of the bomb cases, measured in a fresh process
# ------------------------------------------------------------------------------------------------------------

PEAK_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from videofirst.modeling.video_processing_videofirst import (
        VideoDecodingError, VideoFirstVideoProcessor, read_video_frames,
    )

    def run(kind, path, backend, num_frames):
        if kind == "read":
            return read_video_frames(path, backend=backend, max_pixels_per_frame=512 * 512)
        return VideoFirstVideoProcessor(num_frames=num_frames, decode_backend=backend)(path)

    outcomes = []
    for case in json.loads(sys.argv[1]):
        try:
            run(*case)  # warm-up: the backend's libraries are loaded before the peak is read
        except VideoDecodingError:
            pass
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            run(*case)
            error = None
        except VideoDecodingError as err:
            error = str(err)
        growth = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        outcomes.append({"growth_mib": growth, "error": error})
    print(json.dumps(outcomes))
    """
)
CASES = {
    "lying_header_decord": ("read", "lying", "decord", None),
    "lying_header_pyav": ("read", "lying", "pyav", None),
    "thin_16_frames": ("processor", "thin", "decord", 16),
    "thin_64_frames_pyav": ("processor", "thin", "pyav", 64),
}


@pytest.fixture(scope="module")
def peaks(tmp_path_factory) -> dict[str, dict]:
    """Peak memory growth of each bomb case, measured in one fresh process (ru_maxrss before and after)."""
    root = tmp_path_factory.mktemp("bombs")
    tenth = fractions.Fraction(1, 10)
    # 24 frames of 2048x2048 (288 MiB once decoded to RGB) behind an MP4 header that says 64x48.
    honest = write_frames(
        root / "big.mp4", list(range(24)), tenth, width=2048, height=2048, options={"preset": "ultrafast"}
    )
    paths = {"lying": patch_mp4_sample_entry(honest, root / "lying.mp4", size=(64, 48))}
    # 16x8192: each frame becomes 224x114688 at a 224 shortest edge (16 frames: 4.6 GiB as float32).
    paths["thin"] = write_frames(root / "thin.mp4", list(range(64)), tenth, width=16, height=8192)
    cases = [(kind, str(paths[file]), backend, frames) for kind, file, backend, frames in CASES.values()]
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, json.dumps(cases)], capture_output=True, text=True, timeout=600, check=True
    )
    return dict(zip(CASES, json.loads(done.stdout.strip().splitlines()[-1])))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["lying_header_decord", "lying_header_pyav"])
def test_lying_header_bomb_is_refused_before_decoding(peaks, case):
    outcome = peaks[case]
    assert outcome["error"] and "2048x2048" in outcome["error"] and "max_pixels_per_frame" in outcome["error"]
    assert outcome["growth_mib"] < 48, outcome


@pytest.mark.slow
@pytest.mark.parametrize("case", ["thin_16_frames", "thin_64_frames_pyav"])
def test_extreme_aspect_ratio_is_refused_before_allocating(peaks, case):
    outcome = peaks[case]
    assert outcome["error"] and "max_video_bytes" in outcome["error"] and "224x114688" in outcome["error"]
    assert outcome["growth_mib"] < 48, outcome


def test_missing_timestamps_use_the_decoder_then_a_loud_constant_rate(corpus, monkeypatch):
    media = corpus["vfr.mp4"]
    logged = []
    monkeypatch.setattr(pyav_backend.logger, "warning", lambda message, *args: logged.append(message % args))
    packet_index = pyav_backend._pyav_packet_index
    monkeypatch.setattr(pyav_backend, "_pyav_packet_index", lambda *args: (None, *packet_index(*args)[1:]))
    frames, _ = read_video_frames(media.path, backend="pyav", fps=7.0)  # the decoder's timestamps: still exact
    assert band_ids(frames) == [media.on_screen(k / 7) for k in range(len(frames))] and not logged
    monkeypatch.setattr(pyav_backend, "_pyav_decoded_stamps", lambda *args: np.full(len(media.times), -1))
    read_video_frames(media.path, backend="pyav", fps=7.0)
    assert len(logged) == 1 and "timestamps are missing or not increasing; assuming a constant rate" in logged[0]
