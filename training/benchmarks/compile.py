"""`optim.compile=true` against eager: the training step of the dual encoder, side by side in one process.

    python training/benchmarks/compile.py                    # CPU: ViT-Ti width, 64 px, 16 frames, 50 % masking
    python training/benchmarks/compile.py --quick --out /tmp/compile     # micro model, the machinery only

Two copies of one model (same weights): eager, and with its towers compiled as the training loop does
(`videofirst.train.distributed.compile_towers`, inductor, dynamic sizes). A training step is what
`videofirst.train.pretraining` runs: forward of both towers on random clips and captions with random token masking,
the contrastive loss, backward, AdamW step. The first steps of the compiled copy include compilation and its
one dynamic recompile (reported as `compile_s`); then rounds alternate eager and compiled steps, with the
caption length changing every round (as real batches do), and the report gives the median step time of each and
the median of the per-round ratios. Writes `OUT/compile.csv` and `OUT/compile.md`.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from videofirst import VideoFirstConfig, VideoFirstModel
from videofirst.train.distributed import compile_towers
from videofirst.train.losses import contrastive_loss

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402
import _report  # noqa: E402


def build(quick: bool) -> tuple[VideoFirstModel, dict]:
    width, layers, size, frames = (32, 1, 32, 4) if quick else (192, 4, 64, 16)
    vision = {
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": layers,
        "num_attention_heads": max(2, width // 64),
        "image_size": size,
        "patch_size": 16 if not quick else 8,
        "num_frames": frames,
        "tubelet_size": [2, 16, 16] if not quick else [2, 8, 8],
        "mask_ratio": 0.5,
    }
    text = {
        "model_type": "bert",
        "vocab_size": 1000,
        "hidden_size": width,
        "num_hidden_layers": layers,
        "num_attention_heads": max(2, width // 64),
        "intermediate_size": 4 * width,
        "max_position_embeddings": 64,
    }
    torch.manual_seed(0)
    model = VideoFirstModel(VideoFirstConfig(vision_config=vision, text_config=text, projection_dim=width))
    return model, {"frames": frames, "size": size, "width": width, "layers": layers}


def step(model: VideoFirstModel, optimizer: torch.optim.Optimizer, shape: dict, batch: int, text_length: int) -> float:
    videos = torch.randn(batch, shape["frames"], 3, shape["size"], shape["size"])
    input_ids = torch.randint(1, 1000, (batch, text_length))
    start = time.perf_counter()
    outputs = model(pixel_values_videos=videos, input_ids=input_ids, attention_mask=torch.ones_like(input_ids))
    loss = contrastive_loss(outputs.video_embeds, outputs.text_embeds, model.scaled_logit_scale())
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="micro model, the machinery only")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 10; quick 2)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, default=_cli.RESULTS)
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 10)
    eager, shape = build(args.quick)
    compiled = compile_towers(copy.deepcopy(eager), backend="inductor")
    optimizers = {
        name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in (("eager", eager), ("compiled", compiled))
    }

    start = time.perf_counter()
    for text_length in (8, 9):  # compiles, then recompiles once with dynamic sizes
        step(compiled, optimizers["compiled"], shape, args.batch_size, text_length)
    compile_seconds = time.perf_counter() - start
    step(eager, optimizers["eager"], shape, args.batch_size, 8)  # warm-up
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for index in range(rounds):
        text_length = 10 + index % 6
        for name, model in (
            (("eager", eager), ("compiled", compiled)) if index % 2 == 0 else (("compiled", compiled), ("eager", eager))
        ):
            times[name].append(step(model, optimizers[name], shape, args.batch_size, text_length))
    ratios = [e / c for e, c in zip(times["eager"], times["compiled"])]
    row = {
        **shape,
        "batch_size": args.batch_size,
        "mask_ratio": 0.5,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "compile_s": round(compile_seconds, 2),
        "eager_step_s": round(statistics.median(times["eager"]), 4),
        "compiled_step_s": round(statistics.median(times["compiled"]), 4),
        "speedup": round(statistics.median(ratios), 3),
        "break_even_steps": round(
            compile_seconds / max(1e-9, statistics.median(times["eager"]) - statistics.median(times["compiled"]))
        )
        if statistics.median(ratios) > 1
        else "never",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_csv(args.out / "compile.csv", [row])
    lines = [
        "# torch.compile (inductor) against eager, training step, CPU"
        + (" (quick: numbers mean nothing)" if args.quick else ""),
        "",
        "| " + " | ".join(row) + " |",
        "|" + "---|" * len(row),
        "| " + " | ".join(str(value) for value in row.values()) + " |",
        "",
        "`speedup`: median over rounds of eager / compiled step time (interleaved, one process). "
        "`compile_s`: the compiled copy's first two steps (compilation and one dynamic recompile).",
    ]
    (args.out / "compile.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
