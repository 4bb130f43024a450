"""Prepare a collection for training: transcode a manifest's videos once into WebDataset-style tar shards.

    python training/prepare_data.py MANIFEST OUTPUT_DIR                          # 1 FPS, shortest edge 224
    python training/prepare_data.py data/train.jsonl data/train_shards --fps 1 --size 224 --workers 8
    python training/prepare_data.py data/train.jsonl data/train_shards --keyframe-interval 2 --samples-per-shard 64

Every video is sampled at `--fps` with the processor's exact rules, shrunk to shortest edge `--size`, and
re-encoded as H.264 with a keyframe every `--keyframe-interval` seconds; images become JPEGs of the same size.
Files are processed in parallel (`--workers`), shards are written in manifest order with a done-marker each,
so running the same command again resumes after the last finished shard, and the same input gives the same
shard bytes. Bad files (unreadable, or more than `--max-clip-frames` frames) are skipped and listed in
OUTPUT_DIR/bad_files.jsonl; OUTPUT_DIR/report.json sums up the run. A manifest row without a caption (missing,
null, empty, or not a string) stops the command before any work, naming the rows (exit status 2). Train on the
result by naming the folder as the data source (e.g. `data.train_manifest=data/train_shards`). The exit status
is 1 when more than `--max-bad-fraction` of the files were bad.
"""

import argparse
import logging
import sys
from pathlib import Path

from videofirst.data.preparation import PrepareSettings, prepare_shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest", help="JSONL / CSV manifest, or a folder with metadata.jsonl / .csv")
    parser.add_argument("output_dir", type=Path, help="where the shards go (resumed when it already holds some)")
    parser.add_argument("--fps", type=float, default=1.0, help="frames per second stored (the training rate)")
    parser.add_argument("--size", type=int, default=224, help="shortest edge of the stored frames (never enlarged)")
    parser.add_argument("--keyframe-interval", type=float, default=2.0, help="seconds between keyframes")
    parser.add_argument("--crf", type=int, default=23, help="x264 constant rate factor (lower: better, bigger)")
    parser.add_argument("--preset", default="fast", help="x264 preset")
    parser.add_argument("--tune", default="fastdecode", help="x264 tune ('none' to disable)")
    parser.add_argument("--max-frames", type=int, default=None, help="keep at most this many frames per video")
    parser.add_argument(
        "--max-clip-frames",
        type=int,
        default=PrepareSettings.max_clip_frames,
        help="refuse (as a bad file) a video that would hold more frames than this (0: no bound)",
    )
    parser.add_argument("--samples-per-shard", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores; 0: none)")
    parser.add_argument("--decode-backend", choices=["auto", "pyav", "decord"], default="auto")
    parser.add_argument("--decode-timeout", type=float, default=300.0, help="seconds per decode call in a worker")
    parser.add_argument("--task-timeout", type=float, default=1800.0, help="seconds per file before it is killed")
    parser.add_argument("--max-bad-fraction", type=float, default=0.05, help="exit with status 1 above this")
    parser.add_argument("--quiet", action="store_true", help="no progress line")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR if args.quiet else logging.WARNING, format="%(levelname)s %(message)s")
    settings = PrepareSettings(
        fps=args.fps,
        size=args.size,
        keyframe_interval=args.keyframe_interval,
        crf=args.crf,
        preset=args.preset,
        tune=None if args.tune == "none" else args.tune,
        samples_per_shard=args.samples_per_shard,
        max_frames=args.max_frames,
        max_clip_frames=args.max_clip_frames or None,
    )
    try:
        report = prepare_shards(
            args.manifest,
            args.output_dir,
            settings,
            workers=args.workers,
            decode_backend=args.decode_backend,
            decode_timeout=args.decode_timeout,
            task_timeout=args.task_timeout,
            progress=not args.quiet,
        )
    except (ValueError, FileNotFoundError) as error:  # a manifest or settings problem, found before any work
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"{report.prepared} of {report.total} files prepared into {report.shards} shards in {report.output_dir} "
        f"({report.bytes / 2**20:.1f} MiB, {report.seconds:.1f} s; {report.resumed_shards} shards were already done); "
        f"{report.bad} bad files listed in {Path(report.output_dir) / 'bad_files.jsonl'}"
    )
    if report.bad_fraction > args.max_bad_fraction:
        print(
            f"error: {report.bad_fraction:.1%} of the files were bad, more than --max-bad-fraction "
            f"{args.max_bad_fraction:.1%}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
