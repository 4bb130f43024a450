"""Synthetic test videos written with PyAV whose frames encode their own index.

Frame `i` is black with 8 vertical stripes; stripe `b` is white when bit `b` of `i` is set. The pattern
survives lossy coding and any resize that keeps the full width, so `frame_ids` recovers exact frame indices
after decoding.
"""

import fractions
import struct
from pathlib import Path

import av
import numpy as np

BITS = 8
REAL_CLIP = Path(__file__).parent / "data" / "cockatoo.mp4"


def index_frame(index: int, height: int, width: int) -> np.ndarray:
    frame = np.zeros((height, width, 3), np.uint8)
    stripe = width // BITS
    for bit in range(BITS):
        if (index >> bit) & 1:
            frame[:, bit * stripe : (bit + 1) * stripe] = 255
    return frame


def frame_ids(frames) -> list[int]:
    """Frame indices encoded in decoded frames: uint8 array (T, H, W, 3) or tensor (T, 3, H, W)."""
    frames = np.asarray(frames)
    if frames.shape[-1] != 3:
        frames = frames.transpose(0, 2, 3, 1)
    height, width = frames.shape[1:3]
    columns = ((np.arange(BITS) + 0.5) * width / BITS).astype(int)  # stripe centres (videos use width % 8 == 0)
    bits = frames[:, height // 2, columns, :].mean(-1) > 127
    return [int(value) for value in (bits * (1 << np.arange(BITS))).sum(1)]


def write_video(
    path,
    num_frames: int,
    fps=10,
    height: int = 64,
    width: int = 128,
    codec: str = "libx264",
    container_format: str | None = None,
    faststart: bool = True,
    gop: int | None = 10,
    pts_ms: list[int] | None = None,
) -> Path:
    """Writes frames 0..num_frames-1 (see `index_frame`); `pts_ms` gives variable-frame-rate timestamps."""
    path = Path(path)
    options = {"movflags": "faststart"} if faststart and path.suffix in (".mp4", ".mov") else {}
    rate = fractions.Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format=container_format, options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop is not None:
            stream.options = {"g": str(gop)}
        if pts_ms is not None:
            stream.codec_context.time_base = fractions.Fraction(1, 1000)
        for index in range(num_frames):
            frame = av.VideoFrame.from_ndarray(index_frame(index, height, width), format="rgb24")
            if pts_ms is not None:
                frame.pts, frame.time_base = pts_ms[index], fractions.Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_empty_video(path, container_format: str = "matroska") -> Path:
    """A container with a video track but not a single frame."""
    path = Path(path)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    return path


def write_audio_only(path) -> Path:
    path = Path(path)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for _ in range(8):
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def patch_mp4_sample_entry(source, target, *, fourcc: bytes | None = None, size: tuple[int, int] | None = None):
    """Copies an MP4, rewriting the first sample entry's codec fourcc and/or (width, height)."""
    data = bytearray(Path(source).read_bytes())
    stsd = data.find(b"stsd")
    assert stsd > 0, "no stsd box"
    entry_type = stsd + 16  # 'stsd' + version/flags + entry count + entry size
    if fourcc is not None:
        data[entry_type : entry_type + 4] = fourcc
    if size is not None:
        struct.pack_into(">HH", data, entry_type + 28, *size)
    Path(target).write_bytes(bytes(data))
    return Path(target)
