"""Synthetic long-range video-text data: coloured shapes whose captions depend on event ORDER.

The paper's claim is that a video-first encoder that sees a whole long clip beats
aggregating short segments on tasks with long-range temporal dependencies. Real long-video
benchmarks cannot be downloaded here, so this module builds the project's own small probe of
that property:

* every video is a sequence of ``num_events`` events of equal length spread over the whole
  clip; an event is a coloured shape (``"a red circle"``) that moves or sits on a plain,
  slightly noisy background;
* the caption lists the events in order: ``"a red circle, then a blue square, then a green
  triangle"``;
* with ``order_distractors=True`` (the default) videos come in groups that show the SAME set
  of events in DIFFERENT orders. A bag-of-frames model (anything that averages frame features
  before comparing) gets identical evidence for all members of a group, so it cannot tell
  their captions apart; only a model that encodes temporal order can.

Everything is deterministic by ``seed``: captions, event timings, drawn pixels and the encoded
mp4 bytes (x264 runs single-threaded, so the bytes do not depend on the machine's core count).

Videos are written as H.264 / yuv420p mp4 with PyAV (``pip install av``, part of the
``train`` and ``test`` extras), with a keyframe every second (``gop = fps``) so that random
access by time stays cheap for decord. Next to the videos sit ``manifest.jsonl`` (all
videos) and, with ``test_fraction > 0``, ``train.jsonl`` / ``test.jsonl``; each line has
``video`` (path relative to the manifest's folder), ``caption``, ``start`` and ``end`` (seconds),
plus ``events`` (colour, shape, start, end of each event), ``group`` and ``split``.

Command line::

    python -m videofirst.data.synthetic --out DIR --num-videos 64 --events 3 --duration 16 --fps 1 \\
        --size 64 --seed 0 --test-fraction 0.2
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

__all__ = [
    "COLOURS",
    "SHAPES",
    "SyntheticEvent",
    "SyntheticVideo",
    "sample_videos",
    "render_video",
    "write_video",
    "write_synthetic_dataset",
    "main",
]

#: Palette of event colours (RGB). Hues are far apart so that the colour of a shape survives
#: yuv420p chroma subsampling and x264 quantisation at 64 px, and all are saturated so that
#: they stand out against the grey background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "green": (40, 185, 60),
    "blue": (45, 80, 235),
    "yellow": (235, 215, 40),
    "purple": (150, 55, 205),
    "orange": (245, 140, 20),
}

#: Shapes drawn with numpy masks (see ``_shape_mask``).
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")

#: Bump when the rendering or the file layout changes, so that cached datasets are rebuilt.
FORMAT_VERSION = 1

STAMP_NAME = "synthetic.json"
_TRIANGULAR_STD = math.sqrt(2 * (16**2 - 1) / 12)  # std of the sum of two uniform integers in [0, 15]
VIDEO_DIR = "videos"


@dataclass(frozen=True)
class SyntheticEvent:
    """One event: a ``colour`` ``shape`` visible from ``start`` to ``end`` seconds."""

    colour: str
    shape: str
    start: float
    end: float

    @property
    def phrase(self) -> str:
        article = "an" if self.colour[0] in "aeiou" else "a"
        return f"{article} {self.colour} {self.shape}"


@dataclass(frozen=True)
class SyntheticVideo:
    """Everything needed to render one video and to write its manifest line.

    ``group`` identifies the set of events: videos of one group show the same events in
    different orders. ``seed`` is the dataset seed; with ``index`` it seeds the renderer, so a
    video renders identically on its own or as part of a dataset.
    """

    index: int
    group: int
    events: tuple[SyntheticEvent, ...]
    duration: float
    seed: int

    @property
    def caption(self) -> str:
        return ", then ".join(event.phrase for event in self.events)


def _check_palette(colours: Sequence[str], shapes: Sequence[str]) -> None:
    unknown_colours = [c for c in colours if c not in COLOURS]
    if unknown_colours or not colours:
        raise ValueError(f"colours must be a non-empty subset of {sorted(COLOURS)}, got {list(colours)}")
    unknown_shapes = [s for s in shapes if s not in SHAPES]
    if unknown_shapes or not shapes:
        raise ValueError(f"shapes must be a non-empty subset of {list(SHAPES)}, got {list(shapes)}")


def _sample_sequence(
    rng: np.random.Generator, num_events: int, colours: Sequence[str], shapes: Sequence[str]
) -> tuple[tuple[str, str], ...]:
    """Draw ``num_events`` distinct (colour, shape) pairs.

    Colours are all different when the palette allows it (so every event boundary is visible
    and every event is identifiable by colour alone); otherwise distinct pairs are drawn from
    all colour/shape combinations.
    """
    if num_events > len(colours) * len(shapes):
        raise ValueError(
            f"num_events={num_events} exceeds the {len(colours) * len(shapes)} distinct colour/shape pairs"
        )
    if num_events <= len(colours):
        picked = [colours[i] for i in rng.permutation(len(colours))[:num_events]]
        return tuple((c, shapes[int(rng.integers(len(shapes)))]) for c in picked)
    pairs = [(c, s) for c in colours for s in shapes]
    return tuple(pairs[i] for i in rng.choice(len(pairs), size=num_events, replace=False))


def sample_videos(
    num_videos: int,
    num_events: int,
    duration: float,
    *,
    seed: int = 0,
    order_distractors: bool = True,
    permutations_per_set: int = 3,
    shape_variants_per_set: int = 0,
    colours: Sequence[str] | None = None,
    shapes: Sequence[str] | None = None,
) -> list[SyntheticVideo]:
    """Sample the event sequences (and so the captions) of a dataset, without rendering.

    With ``order_distractors`` the videos come in groups of ``permutations_per_set`` (capped at
    ``num_events!``) that share one event set in distinct orders; without it every video draws
    its own events. ``shape_variants_per_set`` more videos join each group with the colours of its
    first video in the same order but other shapes (shape distractors: their captions differ
    only in shape words, so a model that ignores shapes cannot tell them apart). Captions are
    unique across the dataset (and event sets across groups) as long as the palette has room;
    after many failed draws duplicates are allowed rather than looping forever.
    """
    if num_videos < 1:
        raise ValueError(f"num_videos must be >= 1, got {num_videos}")
    if num_events < 1:
        raise ValueError(f"num_events must be >= 1, got {num_events}")
    if duration <= 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration}")
    if permutations_per_set < 1:
        raise ValueError(f"permutations_per_set must be >= 1, got {permutations_per_set}")
    if shape_variants_per_set < 0:
        raise ValueError(f"shape_variants_per_set must be >= 0, got {shape_variants_per_set}")
    colours = list(COLOURS) if colours is None else list(colours)
    shapes = list(SHAPES) if shapes is None else list(shapes)
    _check_palette(colours, shapes)

    rng = np.random.default_rng([seed, 0])
    group_size = min(permutations_per_set, math.factorial(num_events)) if order_distractors else 1
    bounds = [duration * i / num_events for i in range(num_events + 1)]

    used_sets: set[frozenset[tuple[str, str]]] = set()
    videos: list[SyntheticVideo] = []
    group = 0
    while len(videos) < num_videos:
        for _ in range(1000):
            base = _sample_sequence(rng, num_events, colours, shapes)
            if frozenset(base) not in used_sets:
                break
        used_sets.add(frozenset(base))
        members = [base]
        wanted = min(group_size, num_videos - len(videos))
        tries = 0
        while len(members) < wanted and tries < 1000:
            tries += 1
            candidate = tuple(base[i] for i in rng.permutation(num_events))
            if candidate not in members:
                members.append(candidate)
        variants = min(shape_variants_per_set, num_videos - len(videos) - len(members))
        tries = 0
        while variants > 0 and len(shapes) > 1 and tries < 1000:
            tries += 1
            candidate = tuple((colour, shapes[int(rng.integers(len(shapes)))]) for colour, _ in base)
            if candidate not in members and frozenset(candidate) not in used_sets:
                used_sets.add(frozenset(candidate))
                members.append(candidate)
                variants -= 1
        for member in members:
            events = tuple(
                SyntheticEvent(colour, shape, bounds[i], bounds[i + 1]) for i, (colour, shape) in enumerate(member)
            )
            videos.append(SyntheticVideo(len(videos), group, events, float(duration), seed))
        group += 1
    return videos


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` of radius ``r`` given pixel offsets ``dx, dy`` from its centre.

    Sizes are tuned so that all shapes cover a similar area (no shape is identifiable by size).
    """
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(ax, ay) <= 0.85 * r
    if shape == "triangle":  # pointing up, apex at -r, base at +r/2 (image y grows downwards)
        return (dy <= 0.5 * r) & (ax <= (dy + r) * (1.0 / math.sqrt(3.0)))
    if shape == "diamond":
        return ax + ay <= 1.15 * r
    if shape == "cross":
        arm = 0.38 * r
        return ((ax <= arm) & (ay <= r)) | ((ay <= arm) & (ax <= r))
    raise ValueError(f"unknown shape {shape!r}; choose from {list(SHAPES)}")


def _num_frames(duration: float, fps: float) -> int:
    return max(1, int(round(duration * fps)))


def _frame_events(video: SyntheticVideo, fps: float) -> np.ndarray:
    """Index of the event shown by each frame: frame ``f`` (time ``f / fps``) belongs to the
    event whose ``[start, end)`` interval contains it. Fails if an event would get no frame."""
    num_frames = _num_frames(video.duration, fps)
    times = np.arange(num_frames, dtype=np.float64) / fps
    share = video.duration / len(video.events)
    idx = np.clip(np.floor(times / share + 1e-9).astype(np.int64), 0, len(video.events) - 1)
    if len(np.unique(idx)) < len(video.events):
        raise ValueError(
            f"duration * fps = {num_frames} frames cannot show {len(video.events)} events "
            "(every event needs at least one frame); raise duration or fps"
        )
    return idx


def render_video(video: SyntheticVideo, *, fps: float, size: int, noise: float = 4.0) -> np.ndarray:
    """Draw the frames of ``video`` as a ``(frames, size, size, 3)`` uint8 RGB array.

    Each event's shape gets a random radius, a random straight path (or, one time in three,
    stays put) and a sub-pixel jitter per frame; its colour is perturbed slightly; the grey
    background level is per video and bell-shaped pixel noise of std ``noise`` is added to the
    whole frame. All randomness comes from ``(seed, index)`` so rendering is reproducible.
    """
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16 (yuv420p needs even sides), got {size}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    frame_event = _frame_events(video, fps)
    num_frames = len(frame_event)

    rng = np.random.default_rng([video.seed, 1, video.index])
    background = float(rng.uniform(45.0, 95.0))
    frames = np.full((num_frames, size, size, 3), background, dtype=np.float32)
    grid = np.arange(size, dtype=np.float32)
    ys, xs = grid[None, :, None], grid[None, None, :]

    for e, event in enumerate(video.events):
        (frame_idx,) = np.nonzero(frame_event == e)
        n = len(frame_idx)
        radius = float(rng.uniform(0.16, 0.24)) * size
        lo, hi = radius + 1.0, size - radius - 2.0
        start = rng.uniform(lo, hi, size=2)
        end = start if rng.random() < 1.0 / 3.0 else rng.uniform(lo, hi, size=2)
        progress = np.linspace(0.0, 1.0, n) if n > 1 else np.zeros(1)
        centres = start[None, :] + progress[:, None] * (end - start)[None, :]
        centres += rng.normal(0.0, 0.012 * size, size=centres.shape)
        centres = np.clip(centres, lo, hi).astype(np.float32)
        dy = ys - centres[:, 1, None, None]
        dx = xs - centres[:, 0, None, None]
        mask = _shape_mask(event.shape, dx, dy, np.float32(radius))
        colour = np.asarray(COLOURS[event.colour], dtype=np.float32) + rng.uniform(-10.0, 10.0, size=3)
        # An event's frames are contiguous, so a slice gives a view to paint into in place.
        frames[frame_idx[0] : frame_idx[-1] + 1][mask] = colour.astype(np.float32)

    if noise > 0:
        # Triangular noise (sum of two uniform nibbles of random bytes) rescaled to std `noise`:
        # bell-shaped enough for its purpose and several times cheaper than Gaussian draws,
        # which dominated the rendering time.
        raw = np.frombuffer(rng.bytes(frames.size), dtype=np.uint8).reshape(frames.shape)
        tri = (raw & 15).astype(np.float32) + (raw >> 4).astype(np.float32) - np.float32(15.0)
        frames += tri * np.float32(noise / _TRIANGULAR_STD)
    np.rint(frames, out=frames)
    np.clip(frames, 0, 255, out=frames)
    return frames.astype(np.uint8)


def _require_av():
    try:
        import av
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Writing synthetic videos needs PyAV: `pip install av` "
            "(or install videofirst with the `train` or `test` extra)."
        ) from err
    return av


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float,
    *,
    gop: int | None = None,
    crf: int = 20,
    preset: str = "veryfast",
) -> Path:
    """Encode ``(frames, H, W, 3)`` uint8 RGB frames as an H.264 / yuv420p mp4 with PyAV.

    ``gop`` (default: ``round(fps)``, i.e. one keyframe per second) bounds how far a seek has
    to decode. Scene-cut detection and B-frames are off, so keyframes fall exactly every
    ``gop`` frames and decode order equals presentation order. x264 runs single-threaded, which
    keeps the output bytes identical across machines.
    """
    av = _require_av()
    frames = np.ascontiguousarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be a (T, H, W, 3) uint8 array, got {frames.shape} {frames.dtype}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sides, got {height}x{width}")
    gop = max(1, int(round(fps))) if gop is None else int(gop)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.gop_size = gop
        stream.codec_context.thread_count = 1
        stream.options = {
            "crf": str(crf),
            "preset": preset,
            "bframes": "0",
            "sc_threshold": "0",
            "keyint_min": str(gop),
        }
        for array in frames:
            # Converted here on one thread: PyAV's implicit conversion uses threaded swscale, whose output
            # varies from call to call.
            frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p", threads=1)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _split_groups(videos: Sequence[SyntheticVideo], test_fraction: float, seed: int) -> set[int]:
    """Pick whole groups for the test split (so order distractors stay together and the test
    set keeps its hard negatives), about ``test_fraction`` of the videos, never all of them."""
    groups: dict[int, int] = {}
    for video in videos:
        groups[video.group] = groups.get(video.group, 0) + 1
    order = [int(g) for g in np.random.default_rng([seed, 2]).permutation(sorted(groups))]
    target = test_fraction * len(videos)
    test: set[int] = set()
    count = 0
    for g in order:
        if count >= target - 1e-9 or len(test) == len(groups) - 1:
            break
        # Take the group if it brings the count closer to the target (always take the first).
        if not test or abs(count + groups[g] - target) <= abs(count - target):
            test.add(g)
            count += groups[g]
    return test


def _write_jsonl(path: Path, rows: Sequence[Mapping]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    *,
    num_videos: int = 64,
    num_events: int = 3,
    duration: float = 16.0,
    fps: float = 1.0,
    size: int = 64,
    seed: int = 0,
    test_fraction: float = 0.0,
    order_distractors: bool = True,
    permutations_per_set: int = 3,
    shape_variants_per_set: int = 0,
    noise: float = 4.0,
    crf: int = 20,
    colours: Sequence[str] | None = None,
    shapes: Sequence[str] | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Render and write a synthetic dataset; return the paths of what was written.

    Returns a dict with ``root``, ``videos`` (folder), ``manifest`` (all videos), ``stamp`` and,
    when ``test_fraction > 0``, ``train`` and ``test``. A json stamp of every parameter is
    written last; when it matches and all files exist, nothing is regenerated (unless
    ``overwrite``), so training scripts can call this unconditionally.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if size < 16 or size % 2:
        raise ValueError(f"size must be an even number >= 16 (yuv420p needs even sides), got {size}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    root = Path(out_dir)
    params = {
        "format_version": FORMAT_VERSION,
        "num_videos": int(num_videos),
        "num_events": int(num_events),
        "duration": float(duration),
        "fps": float(fps),
        "size": int(size),
        "seed": int(seed),
        "test_fraction": float(test_fraction),
        "order_distractors": bool(order_distractors),
        "permutations_per_set": int(permutations_per_set),
        "shape_variants_per_set": int(shape_variants_per_set),
        "noise": float(noise),
        "crf": int(crf),
        "colours": list(COLOURS) if colours is None else list(colours),
        "shapes": list(SHAPES) if shapes is None else list(shapes),
    }
    paths = {
        "root": root,
        "videos": root / VIDEO_DIR,
        "manifest": root / "manifest.jsonl",
        "stamp": root / STAMP_NAME,
    }
    if test_fraction > 0:
        paths["train"] = root / "train.jsonl"
        paths["test"] = root / "test.jsonl"
    video_names = [f"{VIDEO_DIR}/{i:05d}.mp4" for i in range(num_videos)]

    stamp = paths["stamp"]
    if not overwrite and stamp.is_file():
        try:
            previous = json.loads(stamp.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            previous = None
        files = [p for k, p in paths.items() if k not in ("root", "videos")] + [root / v for v in video_names]
        if previous == params and all(p.is_file() for p in files):
            return paths

    videos = sample_videos(
        num_videos,
        num_events,
        duration,
        seed=seed,
        order_distractors=order_distractors,
        permutations_per_set=permutations_per_set,
        shape_variants_per_set=shape_variants_per_set,
        colours=params["colours"],
        shapes=params["shapes"],
    )
    _frame_events(videos[0], fps)  # fail before touching the folder if events get no frame
    stamp.unlink(missing_ok=True)  # the stamp is the commit marker: invalid while we write
    paths["videos"].mkdir(parents=True, exist_ok=True)
    wanted = set(video_names)
    for stale in paths["videos"].glob("*.mp4"):  # leftovers of a larger previous dataset
        if f"{VIDEO_DIR}/{stale.name}" not in wanted and stale.stem.isdigit():
            stale.unlink()

    test_groups = _split_groups(videos, test_fraction, seed) if test_fraction > 0 else set()
    rows = []
    for video, name in zip(videos, video_names, strict=True):
        write_video(root / name, render_video(video, fps=fps, size=size, noise=noise), fps, crf=crf)
        rows.append(
            {
                "video": name,
                "caption": video.caption,
                "start": 0.0,
                "end": video.duration,
                "events": [asdict(event) for event in video.events],
                "group": video.group,
                "split": "test" if video.group in test_groups else "train",
            }
        )
    _write_jsonl(paths["manifest"], rows)
    if test_fraction > 0:
        _write_jsonl(paths["train"], [r for r in rows if r["split"] == "train"])
        _write_jsonl(paths["test"], [r for r in rows if r["split"] == "test"])
    stamp.write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    return paths


def main(argv: Sequence[str] | None = None) -> dict[str, Path]:
    """Command-line entry point; prints the written paths as json."""
    parser = argparse.ArgumentParser(
        prog="python -m videofirst.data.synthetic",
        description="Write synthetic videos of coloured shapes whose captions depend on event order.",
    )
    parser.add_argument("--out", required=True, help="output folder (videos/, manifest.jsonl, ...)")
    parser.add_argument("--num-videos", type=int, default=64)
    parser.add_argument("--events", type=int, default=3, help="events per video")
    parser.add_argument("--duration", type=float, default=16.0, help="seconds per video")
    parser.add_argument("--fps", type=float, default=1.0)
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels (even)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-fraction", type=float, default=0.0, help="also write train/test.jsonl")
    parser.add_argument(
        "--permutations-per-set",
        type=int,
        default=3,
        help="videos sharing one event set in different orders (order distractors)",
    )
    parser.add_argument(
        "--shape-variants-per-set",
        type=int,
        default=0,
        help="more videos per group with its first video's colours in order but other shapes (shape distractors)",
    )
    parser.add_argument(
        "--no-order-distractors",
        action="store_true",
        help="sample every video's events independently instead of in permutation groups",
    )
    parser.add_argument("--noise", type=float, default=4.0, help="std of the pixel noise")
    parser.add_argument("--crf", type=int, default=20, help="x264 quality (lower is better)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if the stamp matches")
    args = parser.parse_args(argv)
    paths = write_synthetic_dataset(
        args.out,
        num_videos=args.num_videos,
        num_events=args.events,
        duration=args.duration,
        fps=args.fps,
        size=args.size,
        seed=args.seed,
        test_fraction=args.test_fraction,
        order_distractors=not args.no_order_distractors,
        permutations_per_set=args.permutations_per_set,
        shape_variants_per_set=args.shape_variants_per_set,
        noise=args.noise,
        crf=args.crf,
        overwrite=args.overwrite,
    )
    print(json.dumps({k: str(v) for k, v in paths.items()}, indent=2))
    return paths


if __name__ == "__main__":
    main()
