"""Video sources (paths, bytes, binary file objects) and the error every decoding failure raises.

Before a decoder sees a file, cheap checks run without decoding: it must exist and be a regular, readable,
non-empty file (FIFOs and devices could block forever); URLs are not fetched. Frame sizes are checked against
``max_pixels_per_frame`` wherever one becomes known (container header, decoder, every decoded frame), so a
decompression bomb is refused before it is decoded.
"""

import io
import os
import stat
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DEFAULT_MAX_PIXELS_PER_FRAME = 7680 * 4320  # 8K UHD; larger frames are refused as decompression bombs


class VideoDecodingError(ValueError):
    """A video could not be read: bad file, unsupported content, or invalid sampling request.

    `source` names the input (a path, ``<N bytes>`` or a file object's name) and `reason` says what is
    wrong.
    """

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"cannot decode video {source!r}: {reason}")


@dataclass
class _Source:
    name: str
    size: int
    path: str | None = None
    data: bytes | None = None
    handle: Any = None  # an open binary file while the container is inspected

    def read_at(self, offset: int, length: int) -> bytes:
        if self.data is not None:
            return self.data[offset : offset + length]
        if self.handle is None:
            with open(self.path, "rb") as handle:
                handle.seek(offset)
                return handle.read(length)
        self.handle.seek(offset)
        return self.handle.read(length)

    def decord_uri(self):
        # decord consumes file objects, so every open gets a fresh BytesIO.
        return self.path if self.path is not None else io.BytesIO(self.data)


def _is_source(value) -> bool:
    return isinstance(value, (str, os.PathLike, bytes, bytearray, memoryview)) or (
        hasattr(value, "read") and not isinstance(value, (np.ndarray, torch.Tensor))
    )


def _load_source(source) -> _Source:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            if "://" in path:
                raise VideoDecodingError(path, "URLs are not fetched; download the file first") from None
            raise VideoDecodingError(path, "file not found") from None
        except OSError as err:
            raise VideoDecodingError(path, f"cannot access file ({err.strerror or err})") from None
        if stat.S_ISDIR(info.st_mode):
            raise VideoDecodingError(path, "is a directory, not a video file")
        if not stat.S_ISREG(info.st_mode):
            # FIFOs, devices and sockets could block forever or never end.
            raise VideoDecodingError(path, "not a regular file")
        if not os.access(path, os.R_OK):
            raise VideoDecodingError(path, "file is not readable (permission denied)")
        return _Source(name=path, size=info.st_size, path=path)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _Source(name=f"<{len(data)} bytes>", size=len(data), data=data)
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        name = name if isinstance(name, str) else "<file object>"
        try:
            data = source.read()
        except UnicodeDecodeError:
            raise VideoDecodingError(name, "file object is in text mode; open it in binary mode ('rb')") from None
        if isinstance(data, str):
            raise VideoDecodingError(name, "file object is in text mode; open it in binary mode ('rb')")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise VideoDecodingError(name, f"file object returned {type(data).__name__}, expected bytes")
        data = bytes(data)
        return _Source(name=name, size=len(data), data=data)
    raise TypeError(
        f"Unsupported video source of type {type(source).__name__}: expected a path, bytes, a binary file "
        "object, or decoded frames"
    )


def _check_frame_size(name: str, width: int, height: int, max_pixels_per_frame: int | None, where: str):
    if width <= 0 or height <= 0:
        raise VideoDecodingError(name, f"invalid frame size {width}x{height} ({where})")
    if max_pixels_per_frame is not None and width * height > max_pixels_per_frame:
        raise VideoDecodingError(
            name,
            f"frame size {width}x{height} ({width * height} pixels, {where}) exceeds max_pixels_per_frame="
            f"{max_pixels_per_frame}; refusing to decode (possible decompression bomb)",
        )
