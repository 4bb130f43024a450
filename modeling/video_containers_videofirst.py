"""Container sniffing and the hand-written MP4/MOV, Matroska/WebM and AVI header parsers.

A file must start with a known video container signature (MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, Ogg,
ASF, ...); for MP4/MOV, Matroska/WebM and AVI the container header is read, without decoding, to catch truncated
files, files without a video track, zero-frame tracks and the header's frame size (checked against
``max_pixels_per_frame`` by the caller). Hand-written because the decoders only report these problems after
allocating and decoding, or not at all; PyAV and decord stay the source of truth for frames and times.
"""

import math
import struct
from dataclasses import dataclass

from .video_sources_videofirst import VideoDecodingError, _Source

# Both backends seek in these containers; in the others frames are decoded in order up to the last needed one,
# because decord's seeking returns wrong frames there (e.g. AVI with B-frames).
_RANDOM_ACCESS_CONTAINERS = ("mp4", "matroska", "flv")

_MIN_VIDEO_BYTES = 64
_HEAD_BYTES = 64 * 1024
_MAX_HEADER_BYTES = 64 * 1024 * 1024  # largest MP4 'moov' / Matroska header we parse ourselves


_NON_VIDEO_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image (animated GIFs are not supported; convert to MP4)"),
    (b"GIF89a", "a GIF image (animated GIFs are not supported; convert to MP4)"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"ID3", "an MP3 audio file"),
    (b"fLaC", "a FLAC audio file"),
    (b"\x7fELF", "an executable"),
)
_MP4_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp")


def _looks_like_mpeg_ts(head: bytes) -> bool:
    for packet, sync in ((188, 0), (192, 4)):
        positions = [sync + k * packet for k in range(3)]
        if len(head) > positions[-1] and all(head[p] == 0x47 for p in positions):
            return True
    return False


def _sniff_container(head: bytes) -> str | None:
    """Names the container from its first bytes, or None when no known video signature matches."""
    if len(head) >= 8 and head[4:8] in _MP4_FIRST_BOXES:
        return "mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "matroska"
    if head.startswith(b"RIFF") and head[8:12] in (b"AVI ", b"AVIX"):
        return "avi"
    simple = (
        (b"FLV\x01", "flv"),
        (b"OggS", "ogg"),
        (b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "asf"),
        (b"\x00\x00\x01\xba", "mpeg-ps"),
        (b"\x00\x00\x01\xb3", "mpeg-video"),
        (b"DKIF", "ivf"),
        (b"YUV4MPEG2", "y4m"),
        (b"\x06\x0e\x2b\x34", "mxf"),
        (b".RMF", "realmedia"),
    )
    for magic, name in simple:
        if head.startswith(magic):
            return name
    if _looks_like_mpeg_ts(head):
        return "mpeg-ts"
    return None


def _describe_non_video(head: bytes) -> str:
    for magic, what in _NON_VIDEO_SIGNATURES:
        if head.startswith(magic):
            return f"not a video file: it looks like {what}"
    if head.startswith(b"RIFF"):
        return f"not a video file: RIFF container of type {head[8:12]!r} (not AVI)"
    if b"\x00" not in head[:4096]:
        try:
            head[:4096].decode("utf-8")
            return "not a video file: it looks like a text file"
        except UnicodeDecodeError:
            pass
    return f"not a video file: unrecognised container signature (first bytes {head[:12].hex(' ')})"


@dataclass
class _ContainerInfo:
    container: str
    width: int | None = None
    height: int | None = None
    codec: str | None = None
    num_frames: int | None = None
    rotation: int = 0  # display rotation, degrees counter-clockwise (MP4/MOV track matrix)


def _iter_mp4_boxes(buffer: bytes, begin: int, end: int):
    pos = begin
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buffer, pos)
        header = 8
        if size == 1:
            if pos + 16 > end:
                return
            size = struct.unpack_from(">Q", buffer, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            return
        yield kind, pos + header, pos + size
        pos += size


def _mp4_child(buffer: bytes, begin: int, end: int, kind: bytes):
    for child, child_begin, child_end in _iter_mp4_boxes(buffer, begin, end):
        if child == kind:
            return child_begin, child_end
    return None


def _parse_mp4_track(moov: bytes, begin: int, end: int) -> dict | None:
    mdia = _mp4_child(moov, begin, end, b"mdia")
    if mdia is None:
        return None
    hdlr = _mp4_child(moov, *mdia, b"hdlr")
    handler = moov[hdlr[0] + 8 : hdlr[0] + 12] if hdlr and hdlr[1] - hdlr[0] >= 12 else b""
    track = {"handler": handler, "codec": None, "width": None, "height": None, "num_frames": None, "rotation": 0}
    tkhd = _mp4_child(moov, begin, end, b"tkhd")
    if tkhd is not None:
        matrix_at = tkhd[0] + (52 if moov[tkhd[0]] == 1 else 40)
        if matrix_at + 36 <= tkhd[1]:
            track["rotation"] = _matrix_rotation(struct.unpack_from(">9i", moov, matrix_at))
    minf = _mp4_child(moov, *mdia, b"minf")
    stbl = _mp4_child(moov, *minf, b"stbl") if minf else None
    if stbl is None:
        return track
    stsd = _mp4_child(moov, *stbl, b"stsd")
    if stsd is not None and stsd[1] - stsd[0] >= 16:
        entry = stsd[0] + 8
        track["codec"] = moov[entry + 4 : entry + 8].decode("latin-1")
        if handler == b"vide" and entry + 36 <= stsd[1]:
            track["width"], track["height"] = struct.unpack_from(">HH", moov, entry + 32)
    for kind in (b"stsz", b"stz2"):
        sizes = _mp4_child(moov, *stbl, kind)
        if sizes is not None and sizes[1] - sizes[0] >= 12:
            track["num_frames"] = struct.unpack_from(">I", moov, sizes[0] + 8)[0]
            break
    return track


def _matrix_rotation(matrix: tuple[int, ...]) -> int:
    """Display rotation (degrees counter-clockwise, a multiple of 90) of an MP4 track matrix, as FFmpeg reads it."""
    a, b, c, d = (value / 65536 for value in (matrix[0], matrix[1], matrix[3], matrix[4]))
    if math.hypot(a, c) == 0 or math.hypot(b, d) == 0:
        return 0
    angle = -math.degrees(math.atan2(b / math.hypot(b, d), a / math.hypot(a, c)))
    return int(round(angle / 90)) * 90 % 360


def _inspect_mp4(source: _Source) -> _ContainerInfo:
    pos, moov, moov_seen, fragmented, boxes = 0, None, False, False, 0
    while pos + 8 <= source.size and boxes < 100_000:
        boxes += 1
        header = source.read_at(pos, 16)
        if len(header) < 8:
            break
        size, kind = struct.unpack_from(">I4s", header, 0)
        header_size = 8
        if size == 1 and len(header) >= 16:
            size, header_size = struct.unpack_from(">Q", header, 8)[0], 16
        elif size == 0:
            size = source.size - pos
        if size < header_size:
            if not moov_seen:
                raise VideoDecodingError(source.name, f"corrupt MP4: box at byte {pos} has invalid size {size}")
            break
        if pos + size > source.size:
            if not moov_seen or kind in (b"moov", b"mdat"):
                raise VideoDecodingError(
                    source.name,
                    f"truncated file: MP4 box {kind.decode('latin-1')!r} at byte {pos} needs {size} bytes "
                    f"but only {source.size - pos} remain (incomplete download?)",
                )
            break
        if kind == b"moov" and not moov_seen:
            moov_seen = True
            if size <= _MAX_HEADER_BYTES:
                moov = source.read_at(pos + header_size, size - header_size)
        elif kind == b"moof":
            fragmented = True
        pos += size
    if not moov_seen:
        raise VideoDecodingError(
            source.name, "MP4 has no 'moov' header box (truncated or incomplete file, or not a playable MP4)"
        )
    if moov is None:  # an unusually large header: leave it to the decoder
        return _ContainerInfo(container="mp4")
    if _mp4_child(moov, 0, len(moov), b"mvex") is not None:
        fragmented = True
    tracks = [
        _parse_mp4_track(moov, begin, end)
        for kind, begin, end in _iter_mp4_boxes(moov, 0, len(moov))
        if kind == b"trak"
    ]
    video = [track for track in tracks if track is not None and track["handler"] == b"vide"]
    if not video:
        raise VideoDecodingError(source.name, "the file contains no video stream (audio-only or empty MP4)")
    track = video[0]
    if track["num_frames"] == 0 and not fragmented:
        raise VideoDecodingError(source.name, "the video stream has zero frames")
    return _ContainerInfo(
        container="mp4",
        width=track["width"] or None,
        height=track["height"] or None,
        codec=track["codec"],
        num_frames=None if fragmented else track["num_frames"],
        rotation=track["rotation"],
    )


def _read_ebml_vint(buffer: bytes, pos: int, keep_marker: bool):
    """Returns (value, length); value None means 'unknown size'."""
    if pos >= len(buffer):
        raise IndexError
    first = buffer[pos]
    if first == 0:
        raise ValueError("invalid EBML variable-length integer")
    length = 9 - first.bit_length()
    if pos + length > len(buffer):
        raise IndexError
    raw = int.from_bytes(buffer[pos : pos + length], "big")
    if keep_marker:
        return raw, length
    value = raw & ((1 << (7 * length)) - 1)
    return (None if value == (1 << (7 * length)) - 1 else value), length


def _iter_ebml(buffer: bytes, begin: int, end: int):
    pos = begin
    while pos < end:
        try:
            element_id, id_length = _read_ebml_vint(buffer, pos, keep_marker=True)
            size, size_length = _read_ebml_vint(buffer, pos + id_length, keep_marker=False)
        except (IndexError, ValueError):
            return
        data = pos + id_length + size_length
        yield element_id, data, size
        if size is None:
            return
        pos = data + size


def _inspect_matroska(source: _Source) -> _ContainerInfo:
    info = _ContainerInfo(container="matroska")
    head = source.read_at(0, min(source.size, 4 * 1024 * 1024))
    segment = None
    for element_id, data, size in _iter_ebml(head, 0, len(head)):
        if element_id == 0x18538067:
            if size is not None and data + size > source.size:
                raise VideoDecodingError(
                    source.name,
                    f"truncated file: Matroska segment needs {data + size} bytes but the file has {source.size}",
                )
            segment = (data, len(head) if size is None else min(len(head), data + size))
            break
    if segment is None:
        raise VideoDecodingError(source.name, "Matroska/WebM file has no segment (truncated or corrupt)")
    # `scanned` reaches the segment's end only if every top-level element of a fully buffered file was parsed.
    has_video, saw_cluster, scanned = False, False, segment[0]
    for element_id, data, size in _iter_ebml(head, *segment):
        if element_id in (0x1F43B675, 0x1F43B676):  # Cluster, or a (deprecated) slice: frames exist
            saw_cluster = True
            break
        if size is None:  # unknown-size element: stop scanning
            break
        scanned = data + size
        if element_id != 0x1654AE6B:  # Tracks
            continue
        found_video = False
        for entry_id, entry_data, entry_size in _iter_ebml(head, data, min(len(head), data + size)):
            if entry_id != 0xAE or entry_size is None:  # TrackEntry
                continue
            fields = {}
            for field_id, field_data, field_size in _iter_ebml(head, entry_data, entry_data + entry_size):
                if field_size is not None:
                    fields[field_id] = (field_data, field_size)
            track_type = fields.get(0x83)
            if track_type is None or int.from_bytes(head[track_type[0] : sum(track_type)], "big") != 1:
                continue
            found_video = True
            codec = fields.get(0x86)
            info.codec = head[codec[0] : sum(codec)].decode("latin-1").rstrip("\x00") if codec else None
            video = fields.get(0xE0)
            if video is not None:
                for video_id, video_data, video_size in _iter_ebml(head, video[0], sum(video)):
                    value = int.from_bytes(head[video_data : video_data + (video_size or 0)], "big")
                    if video_id == 0xB0:
                        info.width = value or None
                    elif video_id == 0xBA:
                        info.height = value or None
            break
        if not found_video:
            raise VideoDecodingError(source.name, "the file contains no video stream (Matroska/WebM without video)")
        has_video = True
    if has_video and not saw_cluster and len(head) >= source.size and scanned == segment[1]:
        raise VideoDecodingError(source.name, "the video stream has zero frames (the file holds no clusters)")
    return info


def _inspect_avi(source: _Source) -> _ContainerInfo:
    head = source.read_at(0, 96)
    info = _ContainerInfo(container="avi")
    riff_size = struct.unpack_from("<I", head, 4)[0]
    if riff_size + 8 > source.size and head[8:12] == b"AVI ":
        raise VideoDecodingError(
            source.name, f"truncated file: AVI declares {riff_size + 8} bytes but the file has {source.size}"
        )
    if len(head) >= 72 and head[12:16] == b"LIST" and head[20:28] == b"hdrlavih":
        (total_frames,) = struct.unpack_from("<I", head, 48)
        info.width, info.height = (value or None for value in struct.unpack_from("<II", head, 64))
        info.num_frames = total_frames or None
    return info


def _inspect_container(source: _Source) -> _ContainerInfo:
    """Cheap, decode-free checks on a file's bytes. Raises VideoDecodingError for definite problems."""
    if source.path is None:
        return _inspect_bytes(source)
    try:
        with open(source.path, "rb") as handle:
            source.handle = handle
            return _inspect_bytes(source)
    except OSError as err:
        raise VideoDecodingError(source.name, f"cannot read file ({err.strerror or err})") from None
    finally:
        source.handle = None


def _inspect_bytes(source: _Source) -> _ContainerInfo:
    if source.size == 0:
        raise VideoDecodingError(source.name, "empty file (0 bytes)")
    if source.size < _MIN_VIDEO_BYTES:
        raise VideoDecodingError(source.name, f"file too small to be a video ({source.size} bytes; truncated?)")
    head = source.read_at(0, _HEAD_BYTES)
    container = _sniff_container(head)
    if container is None:
        raise VideoDecodingError(source.name, _describe_non_video(head))
    if container == "mp4":
        return _inspect_mp4(source)
    if container == "matroska":
        return _inspect_matroska(source)
    if container == "avi":
        return _inspect_avi(source)
    return _ContainerInfo(container=container)
