"""Our video tower against transformers' own video models, same size, side by side in one run.

    python training/benchmarks/peers.py                       # CPU: ViT-S width at 96 px, 16/32/64 frames
    python training/benchmarks/peers.py --size vit-b --frames 16 32 64 128    # a GPU's default
    python training/benchmarks/peers.py --quick --out /tmp/peers             # micro model, seconds

Per frame count, one group: our joint tower (unmasked and with 75 % random masking), our factorized tower, and
`VivitModel` (joint attention, SDPA), `TimesformerModel` (divided space-time attention; transformers implements
it with plain matmul attention), `VideoMAEModel` (joint, SDPA) and `VideoPrismVisionModel` (a factorised encoder:
L spatial layers then L/3 temporal layers, VideoPrism's own 12:4, which matches our factorized tower's parameter
count; eager attention, since its logit soft-capping rules SDPA out). All share width, depth, heads, MLP width,
patch size, image size and frame count. TimeSformer and VideoPrism embed every frame (1x16x16 patches), so they
see twice the tokens of the 2x16x16-tubelet towers at equal frames: `tokens/s` counts each model's own tokens.

Training step: `_towers.py`; memory definitions: `_isolation.py`. Targets checked (joint tower, equal size and frames):

* no masking: >= 1.2x the clips/s of `VivitModel` with SDPA, and no more peak memory;
* 75 % masking: >= 3.5x the clips/s of the unmasked run and <= 0.35x its activation memory.

Writes `results/peers.csv`, `results/peers.md`, `results/peers.png`.
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

PEERS = ("vivit", "timesformer", "videomae", "videoprism")
MASKING_ROW = "ours_joint (75% masking vs none)"  # the ratio row of our masked run against our unmasked one


def peer_groups(base: _towers.Spec, frames: list[int]) -> list[tuple[str, list[_towers.Spec]]]:
    """One group per frame count: our joint tower unmasked and with 75% masking, our factorized tower, each peer."""
    groups = []
    for count in frames:
        specs = [
            dataclasses.replace(base, name=f"ours_joint_f{count}", frames=count),
            dataclasses.replace(base, name=f"ours_joint_mask75_f{count}", frames=count, mask_ratio=0.75),
            dataclasses.replace(base, name=f"ours_factorized_f{count}", frames=count, attention_type="factorized"),
        ]
        specs += [dataclasses.replace(base, name=f"{peer}_f{count}", family=peer, frames=count) for peer in PEERS]
        groups.append((f"frames_{count}", specs))
    return groups


def _model(row: dict) -> str:
    """The model a row measured, without its frame count: "ours_joint_f16" -> "ours_joint"."""
    return row["config"].rsplit("_f", 1)[0]


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator and denominator else None


def ratio_rows(rows: list[dict]) -> list[dict]:
    """Per frame count: our joint (and factorized) tower's throughput and peak memory as ratios to each peer."""
    out = []
    for group in dict.fromkeys(row["group"] for row in rows):
        by_model = {_model(row): row for row in rows if row["group"] == group}
        joint, masked = by_model.get("ours_joint", {}), by_model.get("ours_joint_mask75", {})
        factorized = by_model.get("ours_factorized", {})
        for peer in PEERS:
            other = by_model.get(peer, {})
            out.append(
                {
                    "frames": joint.get("frames"),
                    "peer": peer,
                    "peer_attention": other.get("attention"),
                    "joint_x_throughput": _ratio(joint.get("clips_per_s"), other.get("clips_per_s")),
                    "joint_x_peak": _ratio(joint.get("peak_mb"), other.get("peak_mb")),
                    "joint_x_act": _ratio(joint.get("act_mb"), other.get("act_mb")),
                    "factorized_x_throughput": _ratio(factorized.get("clips_per_s"), other.get("clips_per_s")),
                    "factorized_x_peak": _ratio(factorized.get("peak_mb"), other.get("peak_mb")),
                }
            )
        out.append(
            {
                "frames": joint.get("frames"),
                "peer": MASKING_ROW,
                "joint_x_throughput": _ratio(masked.get("clips_per_s"), joint.get("clips_per_s")),
                "joint_x_peak": _ratio(masked.get("peak_mb"), joint.get("peak_mb")),
                "joint_x_act": _ratio(masked.get("act_mb"), joint.get("act_mb")),
                "masked_x_step_mb": _ratio(masked.get("step_mb"), joint.get("step_mb")),
            }
        )
    return out


def _verdict(checks: dict[str, bool]) -> str:
    """Bold "met", or "missed" followed by the names of the checks that failed."""
    missed = [name for name, passed in checks.items() if not passed]
    return f"**missed** ({' and '.join(missed)})" if missed else "**met**"


def verdicts(ratios: list[dict]) -> list[str]:
    """The issue's targets for our joint tower, one line per frame count and target."""
    lines = []
    for row in ratios:
        frames, throughput = row["frames"], row.get("joint_x_throughput")
        peak, act = row.get("joint_x_peak"), row.get("joint_x_act")
        if row["peer"] == "vivit" and throughput and peak:
            verdict = _verdict({"throughput": throughput >= 1.2, "peak memory": peak <= 1.0})
            lines.append(
                f"* {frames} frames, joint vs VivitModel (SDPA): {throughput:.2f}x throughput (target >= 1.2x), "
                f"{peak:.2f}x peak memory (target <= 1.0x): {verdict}"
            )
        elif row["peer"] == MASKING_ROW and throughput and act:
            verdict = _verdict({"throughput": throughput >= 3.5, "activation memory": act <= 0.35})
            step = row.get("masked_x_step_mb") or float("nan")
            lines.append(
                f"* {frames} frames, 75% masking vs none: {throughput:.2f}x throughput (target >= 3.5x), {act:.2f}x "
                f"activation memory (target <= 0.35x; step memory incl. gradients: {step:.2f}x): {verdict}"
            )
    return lines


RUN_COLUMNS = [
    ("config", "config"),
    ("attention", "attention"),
    ("kept_tokens", "tokens"),
    ("parameters", "params"),
    *_report.STEP_COLUMNS,
    ("kept_tokens_per_s", "attended tokens/s"),
    ("tflops_per_s", "TFLOP/s"),
    ("efficiency", "of matmul peak"),
]
RATIO_COLUMNS = [
    ("frames", "frames"),
    ("peer", "against"),
    ("joint_x_throughput", "joint: x throughput"),
    ("joint_x_peak", "joint: x peak mem"),
    ("joint_x_act", "joint: x act mem"),
    ("factorized_x_throughput", "factorized: x throughput"),
    ("factorized_x_peak", "factorized: x peak mem"),
]


def write_markdown(rows: list[dict], ratios: list[dict], path: Path, header: str) -> None:
    path.write_text(
        f"{header}\n\n**Ratios** (ours / peer; for the masking row, masked / unmasked):\n\n"
        f"{_report.markdown_table(RATIO_COLUMNS, ratios)}\n\n**Targets**\n\n"
        + "\n".join(verdicts(ratios))
        + f"\n\n**All runs**\n\n{_report.markdown_table(RUN_COLUMNS, rows)}\n{_report.error_lines(rows)}"
    )


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Throughput and peak memory over frame counts, one line per model."""
    plt = _report.pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for model in dict.fromkeys(_model(row) for row in rows):
        series = sorted((row for row in rows if _model(row) == model and row.get("peak_mb")), key=lambda r: r["frames"])
        if not series:
            continue
        style = "o-" if model.startswith("ours") else "s--"
        axes[0].plot([r["frames"] for r in series], [r.get("clips_per_s") for r in series], style, label=model)
        axes[1].plot([r["frames"] for r in series], [r["peak_mb"] for r in series], style, label=model)
    for axis, ylabel in ((axes[0], "clips / s (training step)"), (axes[1], "peak training memory (MB)")):
        axis.set_yscale("log")
        _report.frames_axis(axis, ylabel, legend_size=7)
    figure.suptitle(title, fontsize=9)
    _report.save_figure(figure, path)


def write_results(rows: list[dict], args: argparse.Namespace, device: str, model: str, start: float) -> list[dict]:
    """CSVs, markdown and plot; returns the ratio rows."""
    ratios = ratio_rows(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_csv(args.out / "peers.csv", rows)
    _report.write_csv(args.out / "peers_ratios.csv", ratios)
    header = (
        f"{_report.environment_line(device)} {model}. Memory: one process per model; throughput: median of "
        f"{args.rounds} interleaved steps, all models of a frame count in one process. Wall time "
        f"{time.perf_counter() - start:.0f} s."
    )
    write_markdown(rows, ratios, args.out / "peers.md", header)
    plot(rows, args.out / "peers.png", f"{_cli.device_description(device)} | {model}")
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = _cli.tower_argument_parser(
        __doc__, rounds=2, frames_help="frame counts, a group each (default: by device)"
    )
    args = parser.parse_args(argv)
    device = _cli.setup(args)
    size = _cli.tower_size(args.size, args.quick, device)
    frames = args.frames or ([4] if args.quick else [16, 32, 64] if device == "cpu" else [16, 32, 64, 128])
    base = _towers.measured_tower("ours", size, args.quick)
    start = time.perf_counter()
    print(f"peers on {_cli.device_description(device)}; tower {size}", flush=True)
    rows = _isolation.run_groups(peer_groups(base, frames), device, args.rounds)
    ratios = write_results(rows, args, device, f"towers {size}: {_report.tower_line(base)}, fp32, fused AdamW", start)
    print("\n".join(verdicts(ratios)))
    print(f"wrote {args.out / 'peers.csv'}, peers.md, peers.png in {time.perf_counter() - start:.0f} s")
    return _report.exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
