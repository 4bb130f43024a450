"""The limit: per recipe, the largest frame count whose training step fits a memory budget, found by search.

    python training/benchmarks/limit.py                        # CPU: measured small, extrapolated to 16 GB
    python training/benchmarks/limit.py --budget-gb 16 40      # several budgets
    python training/benchmarks/limit.py --quick --out /tmp/limit   # micro model, seconds

Model: ViT-B/16 at 224 px with a BERT-medium text tower (the paper's smaller pair), the full dual-encoder
training step (`VideoFirstModel` forward with the contrastive loss, backward, fused AdamW), `--batch-size`
clips per device (default 1: the limit is per clip; the contrastive batch is gathered across devices).
Recipes (all activation-checkpointed, as `short_stage.yaml`, unless named otherwise):

* `short_stage`: both towers trained, no masking;
* `mask75`: both towers trained, 75 % random masking;
* `long_stage`: 75 % random masking, last 4 video layers trained, text tower and tubelet kernel frozen (the
  paper's LongViViT stage, `long_stage_*.yaml`);
* `long_stage_no_ckpt`: the same without activation checkpointing.

Memory is the peak of the step minus the idle process (weights, optimizer state, input clip, activations,
gradients), one process per probe (`_isolation.py`). The search doubles the frame count from `start` while the
step fits, then bisects down to the tubelet-step granularity. Probes stop at `--max-frames` (on CPU, time is the
limit, not memory): if the budget is not reached by then, the answer is EXTRAPOLATED from a least-squares line
`memory = a + b * frames` through the probes, and says so. A line is the right model when attention memory is
linear in the tokens: SDPA's flash / memory-efficient kernels (on CPU torch's flash kernel, used for training
too: checked below by the fit's residuals and a leave-one-out prediction of the largest probe). A probe that runs
past `--probe-timeout` seconds (default 900) is a failed probe, reported as such; CPU probes of the long stage take
about 10 min at 512 frames and 30 min at 1024, so raise it to probe that far.

On a GPU the same search runs at the budget itself (`--max-frames` unlimited by default), with bf16 autocast as
the recipes train.

Writes `results/limit.csv` (every probe), `results/limit_answers.csv` (every recipe and budget),
`results/limit.md`, `results/limit.png`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402
import _isolation  # noqa: E402
import _report  # noqa: E402
import _towers  # noqa: E402

# The line's figures that every answer of a recipe reports.
FIT_COLUMNS = ("slope_mb_per_frame", "marginal_slope_mb_per_frame", "intercept_mb", "max_residual_mb", "holdout_error")
MICRO_LAYERS = 4  # the micro tower of `--quick` with as many layers as the long stage tunes

# recipe -> (spec changes, first probe on CPU, last probe on CPU)
RECIPES = {
    "short_stage": (dict(checkpointing=True), 2, 8),
    "mask75": (dict(checkpointing=True, mask_ratio=0.75), 4, 32),
    "long_stage": (
        dict(checkpointing=True, mask_ratio=0.75, adaptation="last_layers", train_patch_embedding=False),
        16,
        128,
    ),
    "long_stage_no_ckpt": (dict(mask_ratio=0.75, adaptation="last_layers", train_patch_embedding=False), 16, 64),
}


@dataclasses.dataclass
class Fit:
    """Least-squares line through the probes, and the slope between the two largest ones.

    The peak of a step is the largest of several terms linear in the frames (the input clip, the activations of
    the recomputed layer, the gradients, which do not grow): a convex, piecewise-linear curve whose slope can
    only grow. Extrapolation therefore continues from the largest probe with the steeper of the two slopes.
    """

    intercept_mb: float
    slope_mb_per_frame: float
    marginal_slope_mb_per_frame: float
    last_frames: int
    last_mb: float
    max_residual_mb: float
    holdout_error: float | None  # relative error predicting the largest probe from the others

    def frames_at(self, budget_mb: float, granularity: int) -> int:
        slope = max(self.slope_mb_per_frame, self.marginal_slope_mb_per_frame)
        if slope <= 0:
            return 0
        if budget_mb <= self.last_mb:
            frames = (budget_mb - self.intercept_mb) / self.slope_mb_per_frame
        else:
            frames = self.last_frames + (budget_mb - self.last_mb) / slope
        return max(0, int(frames / granularity + 1e-6) * granularity)  # 1e-6: rounding of the fit


def _measured_points(cache: dict[int, dict]) -> list[tuple[int, float]]:
    """(frames, peak MB) of the probes that ran, by frame count."""
    return [(frames, result["peak_mb"]) for frames, result in sorted(cache.items()) if "error" not in result]


def fit_line(points: list[tuple[int, float]]) -> Fit | None:
    """The line through (frames, peak MB) points; None with fewer than two."""
    if len(points) < 2:
        return None
    import numpy as np

    points = sorted(points)
    frames = np.array([p[0] for p in points], dtype=float)
    memory = np.array([p[1] for p in points], dtype=float)
    slope, intercept = np.polyfit(frames, memory, 1)
    residual = float(np.max(np.abs(memory - (intercept + slope * frames))))
    marginal = float((memory[-1] - memory[-2]) / (frames[-1] - frames[-2]))
    holdout = None
    if len(points) >= 3:
        s, i = np.polyfit(frames[:-1], memory[:-1], 1)
        holdout = float(abs(i + s * frames[-1] - memory[-1]) / memory[-1])
    return Fit(float(intercept), float(slope), marginal, points[-1][0], float(memory[-1]), residual, holdout)


def search(
    measure: Callable[[int], dict],
    budget_mb: float,
    start: int,
    cap: int | None,
    granularity: int,
    cache: dict[int, dict],
) -> tuple[int, str]:
    """Largest multiple of `granularity` frames whose step's peak memory (`measure(frames)["peak_mb"]`) fits
    `budget_mb`, and how it was found: "searched", or "extrapolated" when `cap` stopped the probes first.

    Measurements are memoised in `cache` (frames -> result), which also feeds the line of an extrapolation.
    """

    def fits(frames: int) -> bool:
        if frames not in cache:
            cache[frames] = measure(frames)
        result = cache[frames]
        return "error" not in result and result["peak_mb"] <= budget_mb

    low, high = 0, None  # low fits (0: nothing yet), high does not
    frames = start
    while cap is None or frames <= cap:
        if not fits(frames):
            high = frames
            break
        low = frames
        frames *= 2
    if high is None:  # the cap stopped the search first
        line = fit_line(_measured_points(cache))
        if line is None:
            return low, "capped, no fit"
        return max(low, line.frames_at(budget_mb, granularity)), "extrapolated"
    while high - low > granularity:
        middle = (low + high) // 2 // granularity * granularity
        if middle <= low:
            break
        if fits(middle):
            low = middle
        else:
            high = middle
    return low, "searched"


def probe_range(recipe: str, args: argparse.Namespace, cuda: bool) -> tuple[int, int | None]:
    """The first probe's frame count and the largest probe (None: up to the budget). On a GPU the search starts
    at 16 frames and runs to the budget itself; on CPU each recipe has its range, since time is the limit there."""
    _, first, last = RECIPES[recipe]
    if args.quick:
        first, last = 2, 8
    elif cuda:
        first, last = 16, None
    return first, args.max_frames if args.max_frames is not None else last


def find_limits(
    spec: _towers.Spec,
    budgets: list[float],
    probes: tuple[int, int | None],
    granularity: int,
    device: str,
    probe_timeout: float,
) -> tuple[list[dict], list[dict], Fit | None]:
    """The limit of one recipe (`spec`) at each budget: its probes (a row each), its answers (one per budget)
    and the line through the probes. A probe that runs past `probe_timeout` seconds counts as failed."""
    cache: dict[int, dict] = {}

    def measure(frames: int) -> dict:
        begin = time.perf_counter()
        result = _isolation.measure_isolated(
            dataclasses.replace(spec, name=f"{spec.name}_f{frames}", frames=frames), device, probe_timeout
        )
        shown = result.get("error") or f"peak {result['peak_mb']:.0f} MB"
        print(f"  {spec.name:<20} {frames:>6} frames: {shown} ({time.perf_counter() - begin:.0f} s)", flush=True)
        return result

    answers = []
    for budget in budgets:
        budget_mb = budget * 1024
        frames, method = search(measure, budget_mb, *probes, granularity, cache)
        answer = {
            "recipe": spec.name,
            "budget_gb": budget,
            "max_frames": frames,
            "method": method,
            "minutes_at_1fps": frames / 60,
        }
        # How well a line through the probes that fit predicts a searched answer (the extrapolation's check).
        fitting = [(f, mb) for f, mb in _measured_points(cache) if mb <= budget_mb]
        check = fit_line(fitting) if method == "searched" and frames > 0 else None
        if check is not None:
            answer["line_prediction"] = check.frames_at(budget_mb, granularity)
        answers.append(answer)
    points = _measured_points(cache)
    line = fit_line(points)
    if line is not None:
        probed = " ".join(str(frames) for frames, _ in points)
        for answer in answers:
            answer.update({name: getattr(line, name) for name in FIT_COLUMNS}, probes=probed)
    rows = [
        {"recipe": spec.name, **_report.describe(dataclasses.replace(spec, frames=frames)), **result}
        for frames, result in sorted(cache.items())
    ]
    return rows, answers, line


ANSWER_COLUMNS = [
    ("recipe", "recipe"),
    ("budget_gb", "budget GB"),
    ("max_frames", "max frames"),
    ("method", "found by"),
    ("minutes_at_1fps", "minutes at 1 FPS"),
    ("probes", "probed frames"),
    ("line_prediction", "line through fitting probes predicts"),
    ("slope_mb_per_frame", "MB / frame (fit)"),
    ("marginal_slope_mb_per_frame", "MB / frame (last two probes)"),
    ("intercept_mb", "MB at 0 frames"),
    ("max_residual_mb", "fit max residual MB"),
    ("holdout_error", "fit leave-last-out error"),
]
PROBE_COLUMNS = [
    ("recipe", "recipe"),
    ("frames", "frames"),
    ("kept_tokens", "tokens kept"),
    ("trainable", "trainable"),
    ("peak_mb", "peak MB"),
    ("static_mb", "static MB"),
    ("act_mb", "act MB"),
    ("step_mb", "step MB"),
    ("step_s_isolated", "step s"),
]


def plot(rows: list[dict], fits: dict[str, Fit | None], budgets: list[float], path: Path, title: str) -> None:
    """Measured peaks per recipe, the extrapolated lines and the budgets."""
    import numpy as np

    plt = _report.pyplot()
    figure, axis = plt.subplots(figsize=(9, 5.5))
    for index, (recipe, line) in enumerate(fits.items()):
        points = sorted((r["frames"], r["peak_mb"]) for r in rows if r["recipe"] == recipe and r.get("peak_mb"))
        color = f"C{index}"
        axis.plot([p[0] for p in points], [p[1] / 1024 for p in points], "o", color=color, label=f"{recipe} (measured)")
        if line is not None and points:
            end = max(line.frames_at(max(budgets) * 1024, 1), points[-1][0]) * 1.05
            slope = max(line.slope_mb_per_frame, line.marginal_slope_mb_per_frame)
            xs = np.geomspace(points[0][0], end, 64)
            ys = [
                line.intercept_mb + line.slope_mb_per_frame * x
                if x <= line.last_frames
                else line.last_mb + slope * (x - line.last_frames)
                for x in xs
            ]
            axis.plot(xs, [y / 1024 for y in ys], "--", color=color, alpha=0.6)
    for budget in budgets:
        axis.axhline(budget, color="k", lw=0.8)
        axis.text(0.01, budget * 1.03, f"{budget:g} GB budget", fontsize=8, transform=axis.get_yaxis_transform())
    axis.set_yscale("log")
    _report.frames_axis(axis, "peak training memory (GB)", xlabel="frames per clip", legend_size=8)
    axis.set_title(title.replace(" | ", "\n"), fontsize=8)
    _report.save_figure(figure, path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _cli.argument_parser(__doc__)
    parser.add_argument(
        "--budget-gb", type=float, nargs="+", default=None, help="budgets (default: 16; on CPU also a reduced 1.0)"
    )
    parser.add_argument("--granularity", type=int, default=None, help="bisection step in frames (CPU default 8)")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--batch-size", type=int, default=1, help="clips per training step")
    parser.add_argument("--max-frames", type=int, default=None, help="largest probe (default: CPU per recipe)")
    parser.add_argument(
        "--probe-timeout",
        type=float,
        default=900.0,
        help="seconds one probe (a warm-up and a measured step) may take; raise it for CPU probes of 512+ frames",
    )
    return parser.parse_args(argv)


def write_results(
    out: Path,
    rows: list[dict],
    answers: list[dict],
    fits: dict[str, Fit | None],
    budgets: list[float],
    header: str,
    title: str,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    _report.write_csv(out / "limit.csv", rows)
    _report.write_csv(out / "limit_answers.csv", answers)
    (out / "limit.md").write_text(
        f"{header}\n\n{_report.markdown_table(ANSWER_COLUMNS, answers)}\n\n**Probes**\n\n"
        f"{_report.markdown_table(PROBE_COLUMNS, rows)}\n{_report.error_lines(rows)}"
    )
    if any(row.get("peak_mb") for row in rows):  # nothing to draw when every probe failed
        plot(rows, fits, budgets, out / "limit.png", title)


def exit_code(rows: list[dict]) -> int:
    """1 when a probe failed; running out of device memory is not a failure here, only a frame count that does
    not fit (the search treats it so)."""
    return _report.exit_code([row for row in rows if "OutOfMemoryError" not in row.get("error", "")])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = _cli.setup(args)
    cuda = device.startswith("cuda")
    sizes = dict(_towers.SIZES["micro"], num_layers=MICRO_LAYERS) if args.quick else _towers.SIZES["vit-b"]
    base = _towers.Spec("limit", text_tower=True, bf16_autocast=cuda, **dict(sizes, batch_size=args.batch_size))
    granularity = args.granularity or (base.tubelet_size[0] if cuda or args.quick else 8)
    budgets = sorted(args.budget_gb or ([16.0] if cuda else [1.0, 16.0]))
    start = time.perf_counter()
    print(f"limit on {_cli.device_description(device)}", flush=True)
    rows, answers, fits = [], [], {}
    for recipe in args.recipes:
        spec = dataclasses.replace(base, name=recipe, **RECIPES[recipe][0])
        probes, found, fits[recipe] = find_limits(
            spec, budgets, probe_range(recipe, args, cuda), granularity, device, args.probe_timeout
        )
        rows += probes
        answers += found
    model = (
        f"{'micro' if args.quick else 'ViT-B/16 at 224 px'} + BERT-medium text tower, {args.batch_size} clip(s) per "
        f"step, {'bf16 autocast' if cuda else 'fp32'}, SDPA, fused AdamW"
    )
    header = (
        f"{_report.environment_line(device)} {model}. Wall time {time.perf_counter() - start:.0f} s. "
        f"`searched`: doubling then bisection to a multiple of {granularity} frames, every probe a measured training "
        "step. `extrapolated`: the probes stopped at the frame cap (CPU time) before the budget; the answer continues "
        "from the largest probe with the steeper of the fitted and the last-segment slope: a projection, not a "
        "measurement at that length."
    )
    write_results(args.out, rows, answers, fits, budgets, header, f"{_cli.device_description(device)} | {model}")
    for answer in answers:
        print(f"{answer['recipe']:<20} {answer['budget_gb']:g} GB: {answer['max_frames']} frames ({answer['method']})")
    print(f"wrote {args.out / 'limit.csv'}, limit.md, limit.png in {time.perf_counter() - start:.0f} s")
    return exit_code(rows)


if __name__ == "__main__":
    sys.exit(main())
