"""What the benchmarks write: the columns of a configuration, derived throughput, CSV, markdown tables, plots.

Every script writes `<out>/<name>.csv` (`write_csv`: every key of every row, floats to 6 significant digits),
`<out>/<name>.md` (`markdown_table`, with `environment_line` and `error_lines`) and a PNG (`pyplot`, then
`frames_axis` / `save_figure`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _cli import device_description
from _towers import Spec


def describe(spec: Spec) -> dict:
    """The columns of a configuration in the result tables."""
    return {
        "config": spec.name,
        "family": spec.family,
        "frames": spec.frames,
        "attention_type": spec.attention_type if spec.family == "videofirst" else spec.family,
        "mask_ratio": spec.mask_ratio,
        "mask_type": spec.mask_type,
        "tokeniser": "tubevit" if spec.tubevit else "x".join(str(size) for size in spec.tubelet_size),
        "adaptation": spec.adaptation,
        "train_patch_embedding": spec.train_patch_embedding,
        "checkpointing": spec.checkpointing,
        "position_lookup": spec.position_lookup,
        "batch_size": spec.batch_size,
        "hidden_size": spec.hidden_size,
        "layers": spec.num_layers,
        "image_size": spec.image_size,
    }


def throughput(row: dict, spec: Spec) -> dict:
    """clips/s and tokens/s of a timed row (tokens: video grid tokens per clip, i.e. before masking)."""
    step = row.get("step_s")
    if not step or "grid_tokens" not in row:
        return {}
    clips = spec.batch_size / step
    out = {
        "clips_per_s": clips,
        "tokens_per_s": clips * row["grid_tokens"],
        "kept_tokens_per_s": clips * row["kept_tokens"],
    }
    if row.get("flops"):
        out["tflops_per_s"] = row["flops"] / step / 1e12
        if row.get("matmul_peak_flops"):
            out["efficiency"] = row["flops"] / step / row["matmul_peak_flops"]
    return out


# The memory and speed of a timed configuration, as the tables of several scripts title them.
STEP_COLUMNS = [
    ("peak_mb", "peak MB"),
    ("act_mb", "act MB"),
    ("step_mb", "step MB"),
    ("step_s", "step s"),
    ("clips_per_s", "clips/s"),
]


def write_csv(path: Path, rows: list[dict]) -> None:
    """`rows` as CSV: every key of any row, in first-seen order; floats to 6 significant digits, lists as JSON."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    for row in rows:
        keys.extend(key for key in row if key not in keys)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _csv_value(row.get(key)) for key in keys})


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def markdown_table(columns: Sequence[tuple[str, str]], rows: Sequence[dict]) -> str:
    """`rows` as a markdown table, one column per `(key, title)`; a missing value shows as "-"."""
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_cell(row.get(key)) for key, _ in columns) + " |" for row in rows]
    return "\n".join(lines)


def error_lines(rows: Sequence[dict]) -> str:
    """The configurations that failed, as a markdown list preceded by a blank line ("" when none did)."""
    errors = [f"* `{row['config']}`: {row['error']}" for row in rows if row.get("error")]
    return "\n" + "\n".join(errors) + "\n" if errors else ""


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def mean_std(values: Sequence[float], digits: int = 3) -> str:
    """ "mean ± sample std" of several runs (seeds), the mean alone for one."""
    text = f"{statistics.fmean(values):.{digits}f}"
    return text + (f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else "")


def tower_line(spec: Spec) -> str:
    """The size of a spec's tower, for the headers of the result files."""
    return (
        f"width {spec.hidden_size}, {spec.num_layers} layers, {spec.num_heads} heads, MLP {spec.intermediate_size}, "
        f"{spec.image_size} px, patch {spec.patch_size}, batch {spec.batch_size}"
    )


def exit_code(rows: Sequence[dict]) -> int:
    """A script's exit status: 1 when any configuration failed (its error is in the results)."""
    return 1 if any(row.get("error") for row in rows) else 0


def environment_line(device: str) -> str:
    return f"Device: {device_description(device)}. Measured {time.strftime('%Y-%m-%d %H:%M')}."


# ----------------------------------------------------------------------------------------------- plots


def pyplot() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def frames_axis(axis: Any, ylabel: str, xlabel: str = "frames", legend_size: int | None = None) -> None:
    """An axis over frame counts: log2 x scale, labels, a light grid, the legend when something is labelled."""
    axis.set_xscale("log", base=2)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=legend_size)


def save_figure(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot().close(figure)
