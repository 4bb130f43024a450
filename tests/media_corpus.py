"""A corpus of awkward but valid videos, written with PyAV's encoders, each with the presentation time of every
frame it holds: the truth the decoding tests compare both backends against.

Frame `i` shows the bits of `i` as 8 bands along the frame's longer side (white band = bit set), so its index
survives compression, chroma subsampling and resizing even for 16-pixel-wide frames. `MediaFile.times[i]` is when
frame `i` appears (seconds after the first frame), as written into the container.
"""

import fractions
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from video_fixtures import patch_mp4_sample_entry

BITS = 8


def band_frame(index: int, height: int, width: int) -> np.ndarray:
    """Frame `index` of the corpus: its bits as bands along the longer side (bit 0 first)."""
    frame = np.zeros((height, width, 3), np.uint8)
    length = max(height, width)
    for bit in range(BITS):
        if (index >> bit) & 1:
            begin, end = bit * length // BITS, (bit + 1) * length // BITS
            if width >= height:
                frame[:, begin:end] = 255
            else:
                frame[begin:end, :] = 255
    return frame


def band_ids(frames: np.ndarray) -> list[int]:
    """Frame indices shown by decoded frames ``(T, H, W, 3)`` of `band_frame`s."""
    frames = np.asarray(frames)
    height, width = frames.shape[1:3]
    length = max(height, width)
    centres = ((np.arange(BITS) + 0.5) * length / BITS).astype(int)
    if width >= height:
        values = frames[:, height // 2, centres, :]
    else:
        values = frames[:, centres, width // 2, :]
    bits = values.mean(-1) > 127
    return [int(value) for value in (bits * (1 << np.arange(BITS))).sum(1)]


@dataclass
class MediaFile:
    path: Path
    times: np.ndarray  # when each written frame appears, seconds after the first
    width: int  # as displayed
    height: int
    rotation: int = 0  # display rotation written into the file (degrees counter-clockwise)
    notes: str = ""
    # Requests that may be refused for this file, with a pattern the refusal must match.
    refusals: dict[str, str] = field(default_factory=dict)

    def on_screen(self, t: float) -> int:
        """The frame on screen at `t` seconds: the last one that appeared at or before it."""
        return int(np.searchsorted(self.times, t + 1e-4, side="right") - 1)


def write_frames(
    path: Path,
    stamps: list[int],
    time_base: fractions.Fraction,
    *,
    codec: str = "libx264",
    container_format: str | None = None,
    width: int = 128,
    height: int = 64,
    pix_fmt: str = "yuv420p",
    rotation: int = 0,
    options: dict[str, str] | None = None,
) -> Path:
    """Encodes `band_frame(i)` at presentation timestamp `stamps[i]` (in `time_base`)."""
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=1 / time_base if time_base.numerator == 1 else 25)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.time_base = time_base
        stream.options = {"g": "12", **(options or {})}
        if rotation:
            stream.set_display_rotation(rotation)
        for index, stamp in enumerate(stamps):
            frame = av.VideoFrame.from_ndarray(band_frame(index, height, width), format="rgb24")
            frame = frame.reformat(format=pix_fmt)
            frame.pts, frame.time_base = stamp, time_base
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def build_corpus(root: Path) -> dict[str, MediaFile]:
    """Writes every corpus file under `root` (about a second of CPU in all)."""
    root = Path(root)
    ms = fractions.Fraction(1, 1000)
    rng = np.random.default_rng(19)
    vfr_ms = [0, 100, 150, 400, 450, 500, 900, 1000, 1033, 1066, 1100, 1500, 1533, 2400, 2450, 3000]
    corpus: dict[str, MediaFile] = {}

    def add(name: str, stamps: list[int], time_base: fractions.Fraction, **kwargs) -> None:
        refusals = kwargs.pop("refusals", {})
        notes = kwargs.pop("notes", "")
        write_frames(root / name, stamps, time_base, **kwargs)
        width, height = kwargs.get("width", 128), kwargs.get("height", 64)
        rotation = kwargs.get("rotation", 0)
        if rotation % 180:
            width, height = height, width
        times = (np.asarray(stamps, np.float64) - stamps[0]) * float(time_base)
        corpus[name] = MediaFile(root / name, times, width, height, rotation, notes, refusals)

    add("vfr.mp4", vfr_ms, ms, notes="variable frame rate, B-frames")
    add("vfr.mkv", vfr_ms, ms, container_format="matroska")
    add("vfr.webm", vfr_ms, ms, codec="libvpx-vp9", container_format="webm")
    # AVI has one time slot per chunk: variable timing is written as empty "drop" chunks between frames.
    add("vfr.avi", [stamp // 10 for stamp in vfr_ms], fractions.Fraction(1, 100), codec="mpeg4")
    irregular = np.cumsum(rng.integers(1, 40, size=40))  # 40 frames, 10 ms to 390 ms apart
    add("irregular.avi", [0, *irregular.tolist()], fractions.Fraction(1, 100), codec="mpeg4", container_format="avi")
    add("cfr_bframes.avi", list(range(30)), fractions.Fraction(1, 25), container_format="avi", notes="H.264 in AVI")
    add("program_stream.mpg", list(range(40)), fractions.Fraction(1, 25), codec="mpeg2video", container_format="mpeg")
    add("rotated.mp4", list(range(20)), fractions.Fraction(1, 10), rotation=90, notes="90 degree display matrix")
    add("10bit.mp4", list(range(20)), fractions.Fraction(1, 10), pix_fmt="yuv420p10le")
    add("odd_size.mp4", list(range(20)), fractions.Fraction(1, 10), width=75, height=45, pix_fmt="yuv444p")
    add("thin.mp4", list(range(20)), fractions.Fraction(1, 10), width=16, height=256)
    add(
        "huge_gap.mkv",
        [0, 40, 100_000_000],
        ms,
        container_format="matroska",
        notes="last frame 100000 s after the others",
        refusals={"fps": "max_frames"},
    )
    # A header that lies about the frame size (the stream is 256x256, the MP4 sample entry says 64x48).
    add("honest.mp4", list(range(12)), fractions.Fraction(1, 10), width=256, height=256)
    patch_mp4_sample_entry(root / "honest.mp4", root / "lying_header.mp4", size=(64, 48))
    corpus["lying_header.mp4"] = MediaFile(root / "lying_header.mp4", corpus["honest.mp4"].times, 256, 256)
    return corpus
