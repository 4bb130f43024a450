"""The masked path's embedding alone: the deterministic position gather against the former indexed lookup.

    python training/benchmarks/positions.py              # CPU: about 2 min
    python training/benchmarks/positions.py --quick --out /tmp/positions   # seconds

A full training step (the sweep's `positions` groups) hides the embedding in the encoder's cost and in the noise of a
shared machine. This times only what changed: the tubelet embedding of the kept tokens with their positions
(`VideoFirstEmbeddings.embed_video` with `token_indices`), forward and backward, with today's per-sample gather
(`kept_positions`) and with the former lookup (`_towers.indexed_kept_positions`), interleaved in one process
(A B A B ...), at 1 and 2 threads. Sizes: the long-range benchmark's tower (64 frames, 32 px, 2x8x8 tubelets, width
64, batch 32: where the former lookup was nondeterministic) and the sweep's CPU tower at 64 frames (96 px, 2x16x16,
width 384, batch 2). 75 % random masking. Reported: the median time of each and their ratio (former / today: above 1
means today's path is faster), and whether two backward passes gave bit-identical position gradients.

Writes `<out>/positions.csv` and `<out>/positions.md`.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import torch
from videofirst.modeling.configuration_videofirst import VideoFirstVisionConfig
from videofirst.modeling.masking_videofirst import select_tokens
from videofirst.modeling.modeling_videofirst import VideoFirstEmbeddings

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402
import _report  # noqa: E402
import _towers  # noqa: E402

SHAPES = {
    # name: (hidden, image size, tubelet, frames, batch)
    "long_range": (64, 32, (2, 8, 8), 64, 32),
    "cpu_tower_f64": (384, 96, (2, 16, 16), 64, 2),
}
QUICK_SHAPES = {"micro": (32, 32, (2, 8, 8), 8, 4)}


def _embeddings(hidden: int, image_size: int, tubelet: tuple[int, int, int], frames: int):
    config = VideoFirstVisionConfig(
        hidden_size=hidden,
        image_size=image_size,
        patch_size=tubelet[1],
        tubelet_size=list(tubelet),
        num_frames=frames,
        num_attention_heads=1,
    )
    embeddings = VideoFirstEmbeddings(config)
    with torch.no_grad():
        for parameter in embeddings.parameters():
            parameter.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(0))
    return embeddings


def measure(shape: tuple, threads: int, rounds: int) -> dict:
    torch.set_num_threads(threads)
    hidden, image_size, tubelet, frames, batch = shape
    embeddings = _embeddings(hidden, image_size, tubelet, frames)
    generator = torch.Generator().manual_seed(1)
    videos = torch.randn(batch, frames, 3, image_size, image_size, generator=generator)
    grid = embeddings.video_grid(frames, image_size, image_size)
    selection = select_tokens((grid[0], grid[1] * grid[2]), batch, 0.75, "random", None, "cpu", generator)
    gathered = embeddings.kept_positions
    variants = {"indexed": _towers.indexed_kept_positions, "gathered": gathered}
    times: dict[str, list[float]] = {name: [] for name in variants}
    gradients: dict[str, list[torch.Tensor]] = {name: [] for name in variants}
    for _ in range(rounds + 1):  # the first round warms up and is not timed
        for name, lookup in variants.items():
            embeddings.kept_positions = lookup
            embeddings.zero_grad(set_to_none=True)
            start = time.perf_counter()
            tokens, _ = embeddings.embed_video(videos, selection.indices)
            tokens.square().sum().backward()
            times[name].append(time.perf_counter() - start)
            gradients[name].append(embeddings.spatial_position_embedding.grad.clone())
    embeddings.kept_positions = gathered
    indexed, today = (statistics.median(times[name][1:]) for name in ("indexed", "gathered"))
    return {
        "threads": threads,
        "kept_tokens": selection.indices.shape[1],
        "indexed_ms": 1e3 * indexed,
        "gathered_ms": 1e3 * today,
        "indexed_over_gathered": indexed / today,
        "indexed_repeatable": all(torch.equal(g, gradients["indexed"][0]) for g in gradients["indexed"]),
        "gathered_repeatable": all(torch.equal(g, gradients["gathered"][0]) for g in gradients["gathered"]),
    }


COLUMNS = [
    ("shape", "size"),
    ("threads", "threads"),
    ("kept_tokens", "kept tokens"),
    ("indexed_ms", "former lookup ms"),
    ("gathered_ms", "gather ms"),
    ("indexed_over_gathered", "former / gather"),
    ("indexed_repeatable", "former repeatable"),
    ("gathered_repeatable", "gather repeatable"),
]


def main(argv: list[str] | None = None) -> int:
    parser = _cli.argument_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=30, help="timed forward + backward passes of each variant")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    shapes = QUICK_SHAPES if args.quick else SHAPES
    rows = []
    for name, shape in shapes.items():
        hidden, image_size, tubelet, frames, batch = shape
        for threads in (1, 2):
            row = {"shape": f"{name}: width {hidden}, {frames}x{image_size}px, tubelets {tubelet}, batch {batch}"}
            row.update(measure(shape, threads, 2 if args.quick else args.rounds))
            print(row, flush=True)
            rows.append(row)
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_csv(args.out / "positions.csv", rows)
    rounds = 2 if args.quick else args.rounds
    header = (
        f"CPU ({os.cpu_count()} cores, shared), torch {torch.__version__}, threads per row; measured "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Tubelet embedding of the kept tokens (75% random masking), forward + "
        f"backward, median of {rounds} interleaved passes per variant. Wall time {time.perf_counter() - start:.0f} s."
    )
    (args.out / "positions.md").write_text(f"{header}\n\n{_report.markdown_table(COLUMNS, rows)}\n")
    print((args.out / "positions.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
