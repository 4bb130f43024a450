"""Design-space sweep: peak training memory and training-step throughput of the video tower.

    python training/benchmarks/sweep.py                 # CPU: ViT-S width at 96 px (about 12 min on 1 core)
    python training/benchmarks/sweep.py --size vit-b    # the paper's ViT-B/16 at 224 px (a GPU's default)
    python training/benchmarks/sweep.py --quick --out /tmp/sweep   # the machinery on a micro model, seconds

Configurations (every one a training step of the video tower alone, see `_towers.py`), at the base frame count:

* attention: joint / factorized / frame;
* masking: random and tube, 25 / 50 / 75 % of the tokens dropped;
* adaptation: last 4 layers (tubelet kernel frozen, the paper's long stage; and trained), adapters (width 64),
  LoRA (rank 8), against full training;
* tokenisation: coarse tubelets 4x16x16 and 2x32x32, TubeViT's default kernel mix, against 2x16x16;
* frames: joint attention without masking and with 75 % random masking, for each frame count;
* positions: 75 % random masking with the kept tokens' positions gathered per sample (deterministic, today's path)
  against the former lookup that indexed the tables at all samples' positions at once (`--groups positions`), at
  the base frame count and at 64 frames: `x thr` of the gathered row is its speed over the former path's.

Each group's first row is its reference: the `x thr` / `x peak` columns are ratios to it, measured in the same
group (one interleaved timing process; memory per configuration in its own process).

Writes `results/sweep.csv`, `results/sweep.md` (the tables the README embeds) and `results/sweep.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402
import _isolation  # noqa: E402
import _report  # noqa: E402
import _towers  # noqa: E402


def design_groups(
    base: _towers.Spec, frames: list[int], masked_frames: list[int]
) -> list[tuple[str, list[_towers.Spec]]]:
    """The design groups at the base frame count, then one group per frame count (each group's first row is the
    reference of its ratios)."""

    def variant(name: str, **changes: object) -> _towers.Spec:
        return dataclasses.replace(base, name=name, **changes)

    joint = variant("joint")
    groups = [
        (
            "attention",
            [joint, variant("factorized", attention_type="factorized"), variant("frame", attention_type="frame")],
        ),
        (
            "masking",
            [joint]
            + [variant(f"random{round(r * 100)}", mask_ratio=r) for r in (0.25, 0.5, 0.75)]
            + [variant(f"tube{round(r * 100)}", mask_ratio=r, mask_type="tube") for r in (0.25, 0.5, 0.75)],
        ),
        (
            "adaptation",
            [
                joint,
                variant("last4_frozen_tubelet", adaptation="last_layers", train_patch_embedding=False),
                variant("last4", adaptation="last_layers"),
                variant("adapters", adaptation="adapters"),
                variant("lora", adaptation="lora"),
            ],
        ),
        (
            "tokenisation",
            [
                joint,
                variant("tubelet_4x16x16", tubelet_size=(4, 16, 16)),
                variant("tubelet_2x32x32", tubelet_size=(2, 32, 32)),
                variant("tubevit", tubevit=True),
            ],
        ),
    ]
    for count in sorted({base.frames, 64}):
        suffix = "" if count == base.frames else f"_f{count}"
        masked = variant(f"random75{suffix}", frames=count, mask_ratio=0.75)
        indexed = dataclasses.replace(masked, name=f"random75{suffix}_indexed_positions", position_lookup="indexed")
        groups.append((f"positions{suffix}", [indexed, masked]))
    for count in sorted(set(frames) | set(masked_frames)):
        specs = []
        if count in frames:
            specs.append(variant(f"joint_f{count}", frames=count))
        if count in masked_frames:
            specs.append(variant(f"joint_mask75_f{count}", frames=count, mask_ratio=0.75))
        groups.append((f"frames_{count}", specs))
    return groups


def add_ratios(rows: list[dict]) -> None:
    """Throughput and memory of each row relative to its group's first row."""
    reference: dict[str, dict] = {}
    for row in rows:
        ref = reference.setdefault(row["group"], row)
        for key, out in (("clips_per_s", "x_throughput"), ("peak_mb", "x_peak"), ("act_mb", "x_act")):
            if row.get(key) and ref.get(key):
                row[out] = row[key] / ref[key]


COLUMNS = [
    ("group", "group"),
    ("config", "config"),
    ("frames", "frames"),
    ("kept_tokens", "tokens kept"),
    ("grid_tokens", "of"),
    ("trainable", "trainable params"),
    *_report.STEP_COLUMNS,
    ("tokens_per_s", "tokens/s"),
    ("tflops_per_s", "TFLOP/s"),
    ("efficiency", "of peak"),
    ("x_throughput", "x thr"),
    ("x_peak", "x peak"),
    ("x_act", "x act"),
]


def write_markdown(rows: list[dict], path: Path, header: str) -> None:
    # A group's name shows on its first row only.
    shown = [
        dict(row, group="") if index and row["group"] == rows[index - 1]["group"] else row
        for index, row in enumerate(rows)
    ]
    path.write_text(header + "\n\n" + _report.markdown_table(COLUMNS, shown) + "\n" + _report.error_lines(rows))


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Memory and throughput over frame counts, and the design space at the base frame count."""
    plt = _report.pyplot()
    figure, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    framed = [row for row in rows if row["group"].startswith("frames_") and row.get("peak_mb")]
    for label, masked in (("joint, no masking", False), ("joint, 75% masking", True)):
        series = sorted((row for row in framed if (row["mask_ratio"] > 0) == masked), key=lambda row: row["frames"])
        if series:
            axes[0].plot([r["frames"] for r in series], [r["peak_mb"] for r in series], "o-", label=label)
            axes[1].plot([r["frames"] for r in series], [r.get("clips_per_s") for r in series], "o-", label=label)
    _report.frames_axis(axes[0], "peak training memory (MB)")
    _report.frames_axis(axes[1], "clips / s")
    axes[1].set_yscale("log")
    first_of_config: dict[str, dict] = {}  # "joint" is every design group's reference: plot it once
    for row in rows:
        if not row["group"].startswith("frames_") and row.get("peak_mb"):
            first_of_config.setdefault(row["config"], row)
    colors = {"attention": "C0", "masking": "C1", "adaptation": "C2", "tokenisation": "C3"}
    for row in first_of_config.values():
        if row.get("clips_per_s"):
            axes[2].scatter(row["peak_mb"], row["clips_per_s"], color=colors.get(row["group"], "k"))
            axes[2].annotate(row["config"], (row["peak_mb"], row["clips_per_s"]), fontsize=7)
    axes[2].set_xlabel("peak training memory (MB)")
    axes[2].set_ylabel("clips / s")
    axes[2].set_title("design space at the base frame count")
    axes[2].grid(alpha=0.3)
    figure.suptitle(title, fontsize=9)
    _report.save_figure(figure, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _cli.tower_argument_parser(__doc__, rounds=3, frames_help="frame counts, joint without masking")
    parser.add_argument("--masked-frames", type=int, nargs="*", default=None, help="frame counts, 75%% masking")
    parser.add_argument("--base-frames", type=int, default=16, help="frame count of the design groups")
    parser.add_argument("--groups", nargs="*", default=None, help="only these groups (attention, masking, ...)")
    return parser.parse_args(argv)


def selected_groups(base: _towers.Spec, args: argparse.Namespace, device: str) -> list[tuple[str, list[_towers.Spec]]]:
    """The design groups at the frame counts asked for (or the device's defaults), filtered by `--groups`."""
    cpu = device == "cpu"
    if args.quick:
        default_frames, default_masked = [8], [8]
    else:
        default_frames = [16, 32, 64, 128] if cpu else [16, 32, 64, 128, 256]
        default_masked = [16, 32, 64, 128, 256] if cpu else [16, 64, 256, 512, 1024]
    frames = default_frames if args.frames is None else args.frames
    masked = default_masked if args.masked_frames is None else args.masked_frames
    groups = design_groups(base, frames, masked)
    if args.quick:  # TubeViT's 16-frame kernels need at least 16 frames
        groups = [(name, [s for s in specs if not s.tubevit]) for name, specs in groups]
    if args.groups:
        groups = [(name, specs) for name, specs in groups if name.split("_")[0] in args.groups or name in args.groups]
    return groups


def long_group_rounds(rounds: int) -> int:
    """Timing rounds of a group of 64+ frames on CPU, whose steps take tens of seconds: one fewer, at least 2."""
    return max(2, rounds - 1)


def write_results(rows: list[dict], args: argparse.Namespace, device: str, model: str, start: float) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_csv(args.out / "sweep.csv", rows)
    cpu = device == "cpu"
    timing = f"median of {args.rounds} interleaved steps per group"
    timing += f" ({long_group_rounds(args.rounds)} at 64+ frames on CPU)" if cpu else ""
    timing += "; 1 CPU thread per process" if cpu and args.threads == 1 else ""
    header = (
        f"{_report.environment_line(device)} {model}. Memory: {rows[0].get('memory_method', '?')}, one process per "
        f"configuration; throughput: {timing}. Total wall time {time.perf_counter() - start:.0f} s."
    )
    write_markdown(rows, args.out / "sweep.md", header)
    plot(rows, args.out / "sweep.png", f"{_cli.device_description(device)} | {model}")
    print(f"wrote {args.out / 'sweep.csv'}, sweep.md, sweep.png in {time.perf_counter() - start:.0f} s")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = _cli.setup(args)
    size = _cli.tower_size(args.size, args.quick, device)
    base = _towers.measured_tower("joint", size, args.quick, frames=4 if args.quick else args.base_frames)

    def rounds(specs: list[_towers.Spec]) -> int:
        long_group = device == "cpu" and max(spec.frames for spec in specs) >= 64
        return long_group_rounds(args.rounds) if long_group else args.rounds

    start = time.perf_counter()
    print(f"sweep on {_cli.device_description(device)}; tower {size}", flush=True)
    rows = _isolation.run_groups(selected_groups(base, args, device), device, rounds)
    add_ratios(rows)
    model = f"video tower {size}: {_report.tower_line(base)}, fp32, SDPA, fused AdamW; base {base.frames} frames"
    write_results(rows, args, device, model, start)
    return _report.exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
