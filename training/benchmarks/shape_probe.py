"""Can an event's shape be read from a frozen video tower's tokens? The diagnosis behind video-to-text's shapes.

    python training/benchmarks/shape_probe.py --encoder contrastive=runs/benchmark_video_to_text/pretrain/export
    python training/benchmarks/shape_probe.py --quick --out /tmp/probe      # the machinery at toy size

The captions of the synthetic videos name each event's colour and shape. The video-to-text model reads the frozen
tower's tokens through a Perceiver resampler, so a caption can name a shape only if the tokens of an event's
tubelet steps let a small attention reader tell the shape. This script measures that on the video-to-text
benchmark's data (`video_to_text.py`'s `Benchmark`, so `--set` takes the same recipe overrides):

- **frozen tokens**: for the random tower of the video-to-text recipe and every `--encoder NAME=PATH` (an export),
  the tokens of each event's tubelet steps (no token dropped) feed an attention-pooling probe (4 learned queries,
  one attention layer, an MLP), trained on the training clips' events and scored on the held-out clips' events,
  for the shape (chance 1/5) and, as a check that the probe works, the colour;
- **the tower's ceiling**: the same tiny ViT, initialised at random and trained supervised for the shape on single
  frames, with no tokens dropped and with half of them dropped (the pretraining demo's masking): what the
  architecture can learn from these frames when shape is the whole objective.

Writes `<out>/<name>.csv` and `<out>/<name>.md`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402
import _report  # noqa: E402
from video_to_text import Benchmark, Clips  # noqa: E402

from videofirst.data.synthetic import COLOURS, SHAPES  # noqa: E402
from videofirst.train.video_to_text import build_video_to_text_model  # noqa: E402

NUM_QUERIES = 4


class AttentionProbe(torch.nn.Module):
    """Learned queries attend over an event's tokens; an MLP reads the pooled queries."""

    def __init__(self, width: int, classes: int):
        super().__init__()
        self.norm = torch.nn.LayerNorm(width)
        self.queries = torch.nn.Parameter(torch.randn(NUM_QUERIES, width) * 0.02)
        self.attention = torch.nn.MultiheadAttention(width, 4, batch_first=True)
        self.head = torch.nn.Sequential(
            torch.nn.Linear(NUM_QUERIES * width, 128), torch.nn.GELU(), torch.nn.Linear(128, classes)
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(tokens)
        pooled = self.attention(self.queries.expand(len(tokens), -1, -1), tokens, tokens)[0]
        return self.head(pooled.flatten(1))


def event_labels(clips: Clips, attribute: str, names: list[str]) -> torch.Tensor:
    """(clips * events,) class index of every event, in clip then event order."""
    return torch.tensor([names.index(event[attribute]) for row in clips.rows for event in row["events"]])


def events_per_clip(clips: Clips) -> int:
    counts = {len(row["events"]) for row in clips.rows}
    if len(counts) != 1:
        raise ValueError(f"the probe needs the same number of events in every clip, got {sorted(counts)}")
    return counts.pop()


@torch.no_grad()
def event_tokens(tower, clips: Clips, tubelet_frames: int) -> torch.Tensor:
    """(clips * events, tokens of the event's tubelet steps, width): the tower's last hidden states, none dropped."""
    tower.eval()
    hidden = torch.cat(
        [
            tower(
                pixel_values_videos=clips.videos[start : start + 64],
                video_frame_mask=clips.frame_mask[start : start + 64],
                mask_ratio=0.0,
            ).last_hidden_state
            for start in range(0, len(clips.videos), 64)
        ]
    )
    steps = clips.videos.shape[1] // tubelet_frames
    events = events_per_clip(clips)
    if hidden.shape[1] % steps or steps % events:
        raise ValueError(f"{hidden.shape[1]} tokens over {steps} tubelet steps cannot be split into {events} events")
    grid = hidden.reshape(len(hidden), events, hidden.shape[1] // events, hidden.shape[2])
    return grid.flatten(0, 1)


def train_classifier(logits, parameters, train_x, train_y, steps: int, weight_decay: float) -> None:
    """Minimise the cross-entropy of `logits(batch)` on random batches of 64 training rows with AdamW (lr 1e-3)."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=weight_decay)
    for _ in range(steps):
        rows = torch.randint(len(train_x), (64,))
        loss = torch.nn.functional.cross_entropy(logits(train_x[rows]), train_y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def fit_probe(train_x, train_y, test_x, test_y, classes: int, steps: int, seed: int) -> float:
    """Held-out accuracy of an attention probe trained on (train_x, train_y)."""
    torch.manual_seed(seed)
    probe = AttentionProbe(train_x.shape[-1], classes)
    train_classifier(probe, list(probe.parameters()), train_x, train_y, steps, weight_decay=0.01)
    with torch.no_grad():
        return (probe(test_x).argmax(-1) == test_y).float().mean().item()


def event_frames(clips: Clips) -> torch.Tensor:
    """(clips * events * frames per event, C, H, W): every frame, in clip, event, frame order."""
    videos = clips.videos
    events = events_per_clip(clips)
    return videos.reshape(len(videos), events, videos.shape[1] // events, *videos.shape[2:]).flatten(0, 2)


def supervised_ceiling(tower, bench: Benchmark, mask_ratio: float, steps: int, seed: int) -> float:
    """Held-out shape accuracy of a fresh copy of `tower`'s architecture trained on single frames for the shape."""
    torch.manual_seed(seed)
    config = copy.deepcopy(tower.config)
    model = type(tower)(config)
    head = torch.nn.Linear(config.hidden_size, len(SHAPES))
    per_event = bench.train_clips.videos.shape[1] // events_per_clip(bench.train_clips)
    train_x, test_x = event_frames(bench.train_clips), event_frames(bench.test_clips)
    train_y = event_labels(bench.train_clips, "shape", list(SHAPES)).repeat_interleave(per_event)
    test_y = event_labels(bench.test_clips, "shape", list(SHAPES)).repeat_interleave(per_event)
    model.train()
    train_classifier(
        lambda frames: head(model(pixel_values=frames, mask_ratio=mask_ratio).pooler_output),
        [*model.parameters(), *head.parameters()],
        train_x,
        train_y,
        steps,
        weight_decay=0.05,
    )
    model.eval()
    with torch.no_grad():
        return (head(model(pixel_values=test_x).pooler_output).argmax(-1) == test_y).float().mean().item()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(_cli.RESULTS), help="folder of <name>.csv / .md")
    parser.add_argument(
        "--work", default="runs/benchmark_video_to_text", help="data and tokenizer (video_to_text.py's)"
    )
    parser.add_argument("--encoder", nargs="*", default=[], help="NAME=PATH of a VideoFirst export to probe")
    parser.add_argument("--set", nargs="*", default=[], help="video-to-text recipe overrides (key=value)")
    parser.add_argument("--steps", type=int, default=1500, help="training steps of every probe and ceiling")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the probes and ceilings")
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the machinery only")
    parser.add_argument("--name", default="shape_probe", help="stem of the result files")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = 5 if args.quick else args.steps
    started = time.perf_counter()
    bench = Benchmark(argparse.Namespace(work=args.work, quick=args.quick, set=args.set, encoder=None))
    recipe = bench.recipe([])
    torch.manual_seed(0)
    random_tower = build_video_to_text_model(recipe, bench.tokenizer, text_warmup=False).vision_model
    towers = {"random tower": random_tower}
    for spec in args.encoder:
        name, _, path = spec.partition("=")
        if not path:
            parser.error(f"--encoder takes NAME=PATH, got {spec!r}")
        towers[name] = AutoModel.from_pretrained(path).vision_model

    rows = []
    for name, tower in towers.items():
        tubelet_frames = tower.config.tubelet_size[0]
        train_x = event_tokens(tower, bench.train_clips, tubelet_frames)
        test_x = event_tokens(tower, bench.test_clips, tubelet_frames)
        for seed in args.seeds:
            row = {
                "reader": f"attention probe on frozen tokens: {name}",
                "seed": seed,
                "tokens_per_event": train_x.shape[1],
            }
            for attribute, names in (("shape", list(SHAPES)), ("colour", list(COLOURS))):
                row[f"{attribute}_accuracy"] = fit_probe(
                    train_x,
                    event_labels(bench.train_clips, attribute, names),
                    test_x,
                    event_labels(bench.test_clips, attribute, names),
                    len(names),
                    steps,
                    seed,
                )
            rows.append(row)
            print(row, flush=True)
    for mask_ratio in (0.0, 0.5):
        reader = f"the random tower's architecture trained for the shape on frames, {mask_ratio:.0%} dropped"
        for seed in args.seeds:
            rows.append(
                {
                    "reader": reader,
                    "seed": seed,
                    "tokens_per_event": "",
                    "shape_accuracy": supervised_ceiling(random_tower, bench, mask_ratio, steps, seed),
                    "colour_accuracy": "",
                }
            )
            print(rows[-1], flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{args.name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    elapsed = time.perf_counter() - started
    command = " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"`python training/benchmarks/shape_probe.py {command}` — {elapsed / 60:.1f} min on {os.cpu_count()} CPU "
        f"cores, torch {torch.__version__}; {len(bench.train_clips.rows)} training and {len(bench.test_clips.rows)} "
        f"held-out clips, {steps} steps per reader; mean ± std over seeds {', '.join(map(str, args.seeds))} of the "
        f"probes and ceilings (the towers are fixed). Chance: shape {1 / len(SHAPES):.2f}, colour "
        f"{1 / len(COLOURS):.2f}.",
        "",
        "| reader | tokens per event | shape (held-out events) | colour (held-out events) |",
        "|---|---:|---:|---:|",
    ]
    readers: dict[str, list[dict]] = {}
    for row in rows:
        readers.setdefault(row["reader"], []).append(row)
    for reader, members in readers.items():
        cells = [reader, str(members[0]["tokens_per_event"])]
        for key in ("shape_accuracy", "colour_accuracy"):
            values = [member[key] for member in members if member[key] != ""]
            cells.append(_report.mean_std(values) if values else "")
        lines.append("| " + " | ".join(cells) + " |")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print(f"Wrote {out / args.name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
