"""Efficiency against the hardware: achieved FLOP/s of the training step over the device's plain-matmul peak.

    python training/benchmarks/efficiency.py                 # CPU: joint tower (ViT-S width, 96 px), 16-128 frames
    python training/benchmarks/efficiency.py --quick --out /tmp/eff

For each configuration: FLOPs of one training step (counted by `torch.utils.flop_counter`: matmuls, convolutions
and attention as executed, activation recomputation included), the median step time (steps interleaved with the
other configurations and with plain fp32 matmul probes in ONE process, so the peak and the steps see the same
machine), achieved FLOP/s = FLOPs / step time, efficiency = achieved / best matmul FLOP/s. Then one profiled step
per configuration splits time and FLOPs between GEMMs, the attention kernel and the rest, which says what limits
the efficiency. Goal: >= 40 % for the joint-attention tower at 64+ frames.

It also collects the efficiency of every configuration of `results/sweep.csv` and `results/peers.csv` when they
exist (their timing processes measure the matmul peak the same way).

Writes `results/efficiency.csv`, `results/efficiency.md`, `results/efficiency.png`.
"""

from __future__ import annotations

import csv
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402
import _flops  # noqa: E402
import _isolation  # noqa: E402
import _report  # noqa: E402
import _towers  # noqa: E402

GOAL = 0.4  # of the matmul peak, for the joint tower at 64+ frames


def collected(out: Path) -> list[dict]:
    """Efficiency of the sweep's and peers' configurations, from their CSVs."""
    rows = []
    for name in ("sweep", "peers"):
        path = out / f"{name}.csv"
        if not path.exists():
            continue
        with path.open() as handle:
            for row in csv.DictReader(handle):
                if row.get("efficiency"):
                    rows.append(
                        {
                            "source": name,
                            "group": row["group"],
                            "config": row["config"],
                            "tflops_per_s": float(row["tflops_per_s"]),
                            "efficiency": float(row["efficiency"]),
                        }
                    )
    return rows


def profile_columns(profile: dict, peak: float | None) -> dict:
    """Per category (GEMM / attention / other): its share of the step's time, its FLOP/s and their share of the
    matmul peak."""
    total = sum(profile["seconds"].values())
    row = {}
    for category in _flops.OP_CATEGORIES:
        seconds, flops = profile["seconds"][category], profile["flops"][category]
        row[f"{category}_time_share"] = seconds / total if total else None
        row[f"{category}_tflops_per_s"] = flops / seconds / 1e12 if seconds and flops else None
        row[f"{category}_of_peak"] = flops / seconds / peak if seconds and flops and peak else None
    return row


def measure(specs: list[_towers.Spec], device: str, rounds: int) -> list[dict]:
    """Interleaved step times and FLOPs of `specs` (one process), then a profiled step of each (a process each)."""
    rows = []
    for spec, timing in zip(specs, _isolation.measure_interleaved(specs, device, rounds)):
        row = {**_report.describe(spec), **timing, **_report.throughput(timing, spec)}
        profile = _isolation.measure_profile(spec, device)
        if "error" in profile:
            row["error"] = profile["error"]
        else:
            row.update(profile_columns(profile, timing.get("matmul_peak_flops")))
        rows.append(row)
        print(f"  {spec.name}: {row.get('efficiency', float('nan')):.0%} of the matmul peak", flush=True)
    return rows


def verdicts(rows: list[dict]) -> list[str]:
    return [
        f"* joint, {r['frames']} frames: {r['efficiency']:.0%} of the matmul peak (goal >= {GOAL * 100:.0f} %): "
        f"**{'met' if r['efficiency'] >= GOAL else 'missed'}**"
        for r in rows
        if r.get("efficiency") and r["frames"] >= 64
    ]


COLUMNS = [
    ("config", "config"),
    ("frames", "frames"),
    ("kept_tokens", "tokens"),
    ("step_s", "step s"),
    ("flops", "FLOP / step"),
    ("tflops_per_s", "achieved TFLOP/s"),
    ("matmul_peak_flops", "matmul peak FLOP/s"),
    ("efficiency", "efficiency"),
    ("gemm_time_share", "GEMM time share"),
    ("gemm_of_peak", "GEMM of peak"),
    ("attention_time_share", "attention time share"),
    ("attention_of_peak", "attention of peak"),
    ("other_time_share", "other time share"),
]
COLLECTED_COLUMNS = [
    ("source", "source"),
    ("group", "group"),
    ("config", "config"),
    ("tflops_per_s", "TFLOP/s"),
    ("efficiency", "efficiency"),
]


def write_markdown(rows: list[dict], others: list[dict], path: Path, header: str) -> None:
    text = f"{header}\n\n{_report.markdown_table(COLUMNS, rows)}\n\n" + "\n".join(verdicts(rows)) + "\n"
    if others:
        text += (
            "\n**Every configuration of the sweep and peers runs** (their own matmul probes):\n\n"
            f"{_report.markdown_table(COLLECTED_COLUMNS, others)}\n"
        )
    path.write_text(text)


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Efficiency of the step and of its GEMM and attention kernels over frame counts, against the goal."""
    plt = _report.pyplot()
    rows = [row for row in rows if row.get("efficiency")]
    figure, axis = plt.subplots(figsize=(8, 4.8))
    frames = [row["frames"] for row in rows]
    axis.plot(frames, [row["efficiency"] for row in rows], "o-", label="training step")
    for category in ("gemm", "attention"):
        axis.plot(frames, [row.get(f"{category}_of_peak") for row in rows], "s--", label=f"{category} kernels only")
    axis.axhline(GOAL, color="k", lw=0.8)
    axis.set_ylim(0, 1)
    _report.frames_axis(axis, "achieved FLOP/s / matmul peak")
    axis.set_title(title, fontsize=8)
    _report.save_figure(figure, path)


def main(argv: list[str] | None = None) -> int:
    parser = _cli.tower_argument_parser(__doc__, rounds=2, frames_help="frame counts (default: by device)")
    args = parser.parse_args(argv)
    device = _cli.setup(args)
    cuda = device.startswith("cuda")
    size = _cli.tower_size(args.size, args.quick, device)
    frames = args.frames or ([4, 8] if args.quick else [16, 64, 128] if not cuda else [16, 64, 128, 256])
    base = _towers.measured_tower("joint", size, args.quick)
    start = time.perf_counter()
    print(f"efficiency on {_cli.device_description(device)}; tower {size}", flush=True)
    rows = measure([dataclasses.replace(base, name=f"joint_f{n}", frames=n) for n in frames], device, args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_csv(args.out / "efficiency.csv", rows)
    model = (
        f"joint tower {size}: width {base.hidden_size}, {base.num_layers} layers, {base.image_size} px, batch "
        f"{base.batch_size}, fp32, SDPA, fused AdamW"
    )
    header = (
        f"{_report.environment_line(device)} {model}. Median of {args.rounds} interleaved steps; "
        "matmul peak: best plain fp32 matmul timed between the steps in the same process. "
        f"Wall time {time.perf_counter() - start:.0f} s."
    )
    write_markdown(rows, [] if args.quick else collected(args.out), args.out / "efficiency.md", header)
    plot(rows, args.out / "efficiency.png", f"{_cli.device_description(device)} | {model}")
    print("\n".join(verdicts(rows)))
    print(f"wrote {args.out / 'efficiency.csv'}, efficiency.md, efficiency.png in {time.perf_counter() - start:.0f} s")
    return _report.exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
