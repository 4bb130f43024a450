"""GPU acceptance run: one command, one GPU, at most 8 minutes, one table.

    python training/benchmarks/gpu_acceptance.py                 # on a machine with one CUDA GPU
    python training/benchmarks/gpu_acceptance.py --dry-run --out /tmp/acceptance   # CPU, tiny sizes, every step

Steps, in order, each a separate process with its own time limit (the limits add up to 8 minutes):

1. `demo_bf16`: the built-in demo (`training/pretrain.py`) with `optim.mixed_precision=bf16`, through
   `accelerate launch`;
2. `peers`: `peers.py --size vit-b` (SDPA, flash on a GPU), our towers against `VivitModel` / `VideoMAEModel` & co;
3. `limit`: `limit.py --recipes long_stage` up to the card's memory (90 % of it), `torch.cuda.max_memory_allocated`
   per probe, so the frame count is reached, not projected;
4. `efficiency`: `efficiency.py`, achieved FLOP/s over the card's matmul peak (the joint tower at 64+ frames);
5. `fsdp2`: the demo through `training/accelerate_configs/fsdp2.yaml` on one process.

Any error, non-zero exit or time-out stops the run with the step's output and exit status 1; nothing is skipped.
Writes `acceptance.md` (one table, the card named) and `acceptance.csv` to `--out`
(default `training/benchmarks/results/gpu/`), beside each step's own results in a subfolder.

`--dry-run` runs every step on the CPU at tiny size (the benchmarks' `--quick` mode, the demo for two steps on a
few synthetic clips, FSDP2 on two gloo processes since accelerate's FSDP needs a process group; each step gets
5 times its time limit), which tests the script's paths without a GPU; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _report  # noqa: E402
from _cli import REPO, RESULTS  # noqa: E402

BENCHMARKS = REPO / "training" / "benchmarks"
CONFIGS = REPO / "training" / "accelerate_configs"
PRETRAIN = REPO / "training" / "pretrain.py"
TOTAL_SECONDS = 8 * 60
# A dry run's steps get this many times their GPU limit: a shared CPU is slower than the GPU at any size.
DRY_RUN_SLACK = 5
# A tiny demo: small synthetic set, 4-frame clips, one layer per tower (dry-run, and the FSDP2 step on a GPU).
TINY_DEMO = [
    "data.synthetic.num_videos=16",
    "data.synthetic.duration=4.0",
    "data.num_frames=4",
    "data.num_workers=0",
    "model.vision.num_hidden_layers=1",
    "model.text.num_hidden_layers=1",
    "optim.batch_size=4",
    "optim.max_steps=2",
    "optim.warmup_steps=1",
    "checkpoint.save_every=2",
    "eval.batch_size=4",
    "run.trackers=none",
]


@dataclass
class Step:
    name: str
    command: list[str]
    seconds: int  # time limit
    output: Path  # the step's results folder
    env: dict[str, str] = field(default_factory=dict)


def launch(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *args]


def demo_args(run_dir: Path, dry_run: bool, *extra: str) -> list[str]:
    data = run_dir / "data"
    args = [str(PRETRAIN), f"run.output_dir={run_dir}", f"data.synthetic.folder={data}"]
    args += [f"data.train_manifest={data / 'train.jsonl'}", f"data.eval_manifest={data / 'test.jsonl'}"]
    return args + (TINY_DEMO if dry_run else []) + list(extra)


def steps(out: Path, dry_run: bool, memory_gb: float) -> list[Step]:
    """The acceptance steps; `dry_run`: the same code paths at tiny size on the CPU."""
    quick = ["--quick", "--device", "cpu"] if dry_run else []
    cpu = {"ACCELERATE_USE_CPU": "1"} if dry_run else {}
    fsdp_config = CONFIGS / ("fsdp2_cpu_2proc.yaml" if dry_run else "fsdp2.yaml")
    processes = "2" if dry_run else "1"  # FSDP2 needs a process group: two gloo processes on the CPU
    peers_size = [] if dry_run else ["--size", "vit-b", "--frames", "16", "32", "64"]
    budget = [] if dry_run else ["--budget-gb", f"{0.9 * memory_gb:.1f}"]

    def benchmark(name: str, seconds: int, *args: str) -> Step:
        script = [sys.executable, str(BENCHMARKS / f"{name}.py"), *args, "--out", str(out / name)]
        return Step(name, script, seconds, out / name)

    return [
        Step(
            "demo_bf16",
            launch("--num_processes", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no")
            + demo_args(out / "demo_bf16", dry_run, "optim.mixed_precision=bf16"),
            120,
            out / "demo_bf16",
            cpu,
        ),
        benchmark("peers", 120, *quick, *peers_size),
        benchmark("limit", 120, *quick, "--recipes", "long_stage", *budget),
        benchmark("efficiency", 60, *quick),
        Step(
            "fsdp2",
            launch("--config_file", str(fsdp_config), "--num_processes", processes, "--main_process_port", "0")
            + demo_args(out / "fsdp2", True),
            60,
            out / "fsdp2",
            cpu,
        ),
    ]


def run_step(step: Step) -> float:
    """Run one step; returns its seconds. Exits the script (status 1) on any failure."""
    step.output.mkdir(parents=True, exist_ok=True)
    command = step.command
    print(f"[acceptance] {step.name}: {' '.join(command)}", flush=True)
    start = time.perf_counter()
    try:
        result = subprocess.run(
            command,
            cwd=REPO,
            env={**os.environ, **step.env},
            capture_output=True,
            text=True,
            timeout=step.seconds,
        )
    except subprocess.TimeoutExpired as error:
        tail = error.stdout[-3000:] if isinstance(error.stdout, str) else ""
        sys.exit(f"[acceptance] FAILED: {step.name} ran past its {step.seconds} s limit.\n{tail}")
    seconds = time.perf_counter() - start
    (step.output / "output.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        sys.exit(
            f"[acceptance] FAILED: {step.name} exited with status {result.returncode}.\n"
            f"{(result.stdout + result.stderr)[-4000:]}"
        )
    return seconds


def headline(step: Step) -> str:
    """The step's main number, read from what it wrote."""
    if step.name in ("demo_bf16", "fsdp2"):
        log = [json.loads(line) for line in (step.output / "metrics.jsonl").read_text().splitlines()]
        losses = [record["loss"] for record in log if "loss" in record]
        if not losses or not all(abs(loss) < float("inf") for loss in losses):
            sys.exit(f"[acceptance] FAILED: {step.name} logged no finite loss: {losses}")
        speed = [record["videos_per_second"] for record in log if "videos_per_second" in record]
        return f"{len(losses)} steps, final loss {losses[-1]:.4f}, {speed[-1]:.1f} videos/s"
    tables = sorted(step.output.glob("*.md"))
    if not tables:
        sys.exit(f"[acceptance] FAILED: {step.name} wrote no markdown results to {step.output}")
    return ", ".join(f"[{table.name}]({step.output.name}/{table.name})" for table in tables)


def device_name(dry_run: bool) -> tuple[str, float]:
    import torch

    if dry_run:
        return "CPU (dry run: tiny sizes, numbers mean nothing)", 0.0
    if not torch.cuda.is_available():
        sys.exit("[acceptance] FAILED: no CUDA GPU here; use --dry-run to test the script on the CPU.")
    properties = torch.cuda.get_device_properties(0)
    return properties.name, properties.total_memory / 1024**3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU at tiny size")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu", help="results folder")
    args = parser.parse_args(argv)
    card, memory_gb = device_name(args.dry_run)
    plan = steps(args.out, args.dry_run, memory_gb)
    assert sum(step.seconds for step in plan) <= TOTAL_SECONDS
    if args.dry_run:
        for step in plan:
            step.seconds *= DRY_RUN_SLACK
    rows = []
    for step in plan:
        seconds = run_step(step)
        rows.append({"step": step.name, "seconds": round(seconds, 1), "result": headline(step), "device": card})
    args.out.mkdir(parents=True, exist_ok=True)
    _report.write_csv(args.out / "acceptance.csv", rows)
    lines = [f"# GPU acceptance run on {card}", "", "| step | seconds | result |", "|---|---:|---|"]
    lines += [f"| {row['step']} | {row['seconds']} | {row['result']} |" for row in rows]
    total = sum(row["seconds"] for row in rows)
    lines += ["", f"Total {total:.0f} s (limit {TOTAL_SECONDS} s). Command: `{' '.join(sys.argv)}`."]
    (args.out / "acceptance.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
