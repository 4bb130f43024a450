"""Long-range benchmark: the paper's qualitative claims at laptop scale, trained and evaluated by one script.

    python training/benchmarks/long_range.py                  # the full benchmark (about 20-30 min on 2 CPU cores)
    python training/benchmarks/long_range.py --seeds 0 1 2    # more seeds, if time allows
    python training/benchmarks/long_range.py --budget smoke --out /tmp/lr --work /tmp/lr/work   # seconds

Data: synthetic order-of-events videos (`videofirst.data.synthetic`), one fixed data seed. A video is
`num_frames` seconds at 1 FPS, so the trained clip covers it all, and holds `num_frames / segment_frames` events
(64 / 16 = 4): every event lasts exactly one 16-frame segment, so the ORDER of events is visible only across
segments, a long-range dependency by construction. The held-out split keeps whole permutation groups: videos that
show the same events in different orders, whose captions are order permutations of each other.

Every configuration is trained with the real loop, `videofirst.train.pretraining.pretrain` on
`training/configs/long_range.yaml` plus overrides (attention type, masking ratio, seed), and evaluated zero-shot on
the held-out split with `videofirst.evaluation.sets` and `.embedding`:

* `t2v_r1`, `v2t_r1`: text-to-video / video-to-text Recall@1 over the whole held-out split;
* `order_acc`: order-dependent retrieval, text-to-video Recall@1 among the caption's own permutation group only
  (chance 1 / group size): a model that ignores order cannot beat chance here.

Claims checked (the rules are fixed here, before running; the numbers are reported whatever they say):

* (a) the joint-attention model trained on long clips, evaluated on whole clips, beats the SAME model used as
  `segment_frames`-frame segments whose embeddings are averaged (`embed_videos_by_segments`) on `order_acc`
  (reproduced if the mean gap exceeds 0.05);
* (b) joint attention with 75% training-time masking loses little retrieval accuracy against no masking
  (mean R@1 = (t2v_r1 + v2t_r1) / 2 drops by at most 0.05) while a training step uses clearly less memory (at
  least 1.5x less);
* (c) frame-level attention loses more mean R@1 under 75% masking than joint attention.

Memory: each configuration's training step is measured in its own fresh process (same recipe, one real batch,
the real `ContrastiveObjective` and optimizer step): after a warm-up step, the resident set size (RSS) is read,
the peak-RSS counter is reset (`_memory.MemoryProbe`: `/proc/self/clear_refs` on Linux, elsewhere a 1 ms RSS
sampler thread), one step runs, and the step's memory is the peak minus that idle baseline (the max over two
steps). glibc's mmap threshold is pinned as in every other benchmark (`_memory.pin_malloc`), so that freed tensors
leave the RSS and cannot hide in the heap.

Outputs: `<out>/long_range.csv` (one row per configuration, seed and evaluation mode), `long_range.md` (table,
claims, timings) and `long_range.png`.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402
import _memory  # noqa: E402
import _report  # noqa: E402

RECIPE = _cli.REPO / "training" / "configs" / "long_range.yaml"
FPS = 1.0
IMAGE_SIZE = 32
MEMORY_FLAG = "--measure-step-memory"


@dataclass(frozen=True)
class Variant:
    attention: str
    mask_ratio: float

    @property
    def name(self) -> str:
        return f"{self.attention}_mask{round(self.mask_ratio * 100)}"


VARIANTS = (Variant("joint", 0.0), Variant("joint", 0.75), Variant("frame", 0.0), Variant("frame", 0.75))


@dataclass(frozen=True)
class Budget:
    num_videos: int  # a multiple of 3 keeps every permutation group complete
    num_frames: int
    segment_frames: int
    max_steps: int
    batch_size: int
    eval_batch_size: int

    @property
    def num_events(self) -> int:
        return self.num_frames // self.segment_frames


BUDGETS = {
    "full": Budget(num_videos=240, num_frames=64, segment_frames=16, max_steps=200, batch_size=32, eval_batch_size=32),
    "smoke": Budget(num_videos=12, num_frames=8, segment_frames=4, max_steps=2, batch_size=4, eval_batch_size=8),
}


# ---------------------------------------------------------------------------------------------------------------
# Training and evaluation of one configuration
# ---------------------------------------------------------------------------------------------------------------


def recipe_overrides(budget: Budget, variant: Variant, seed: int, data_dir: Path, run_dir: Path) -> list[str]:
    values: dict[str, Any] = {
        "run.output_dir": run_dir,
        "run.seed": seed,
        "run.trackers": "none",
        "data.train_manifest": data_dir / "train.jsonl",
        "data.eval_manifest": "null",  # evaluated below, whole and by segments
        "data.num_frames": budget.num_frames,
        "data.fps": FPS,
        "data.image_size": IMAGE_SIZE,
        "model.vision.attention_type": variant.attention,
        "model.vision.mask_ratio": variant.mask_ratio,
        "optim.batch_size": budget.batch_size,
        "optim.max_steps": budget.max_steps,
        "optim.warmup_steps": min(20, max(1, budget.max_steps // 10)),
        "checkpoint.save_every": budget.max_steps,
        "checkpoint.overwrite": True,  # a rerun in the same --work folder starts each run afresh
    }
    return [f"{key}={value}" for key, value in values.items()]


def write_data(budget: Budget, data_dir: Path, data_seed: int) -> None:
    from videofirst.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(
        data_dir,
        num_videos=budget.num_videos,
        num_events=budget.num_events,
        duration=budget.num_frames / FPS,
        fps=FPS,
        size=IMAGE_SIZE,
        seed=data_seed,
        test_fraction=0.25,
    )


def order_accuracy(similarity, video_of_text: list[int], group_of_video: list[int]) -> float:
    """Text-to-video accuracy among the videos of the caption's permutation group (pessimistic ties)."""
    import torch

    from videofirst.evaluation.metrics import multiple_choice_metrics

    members: dict[int, list[int]] = defaultdict(list)
    for video, group in enumerate(group_of_video):
        members[group].append(video)
    width = max(len(videos) for videos in members.values())
    # Groups smaller than the widest are padded with -inf scores, which never outrank a real candidate.
    scores = torch.full((len(video_of_text), width), -torch.inf)
    answers = []
    for text, video in enumerate(video_of_text):
        candidates = members[group_of_video[video]]
        scores[text, : len(candidates)] = similarity[text, candidates]
        answers.append(candidates.index(video))
    return multiple_choice_metrics(scores, answers)["accuracy"]


def evaluate_export(export_dir: Path, test_manifest: Path, budget: Budget) -> dict[str, dict[str, float]]:
    """Held-out metrics of an exported checkpoint, whole clips and the segment-aggregation baseline."""
    from videofirst.modeling.modeling_videofirst import VideoFirstModel
    from videofirst.modeling.processing_videofirst import VideoFirstProcessor

    from videofirst.evaluation.embedding import embed_texts
    from videofirst.evaluation.metrics import retrieval_metrics
    from videofirst.evaluation.sets import embed_video_clips, load_retrieval_manifest, read_manifest_rows

    model = VideoFirstModel.from_pretrained(export_dir).eval()
    processor = VideoFirstProcessor.from_pretrained(export_dir)
    test = load_retrieval_manifest(test_manifest)
    group_of_row = {(row["video"], row["start"], row["end"]): row["group"] for row in read_manifest_rows(test_manifest)}
    groups = [group_of_row[(clip.path, clip.start, clip.end)] for clip in test.clips]
    text_embeds = embed_texts(model, processor.tokenizer, test.texts, budget.eval_batch_size)
    results = {}
    for mode, segment_frames in (("whole", None), ("segments", budget.segment_frames)):
        videos = embed_video_clips(
            model,
            processor.video_processor,
            test.clips,
            num_frames=budget.num_frames,
            segment_frames=segment_frames,
            batch_size=budget.eval_batch_size,
        )
        if videos.failures:
            raise RuntimeError(f"Synthetic test videos failed to decode: {videos.failures}")
        similarity = text_embeds @ videos.embeddings.t()
        metrics = retrieval_metrics(similarity, test.video_ids_of_texts, recall_at=(1, 5))
        results[mode] = {
            "t2v_r1": metrics["t2v_recall@1"],
            "v2t_r1": metrics["v2t_recall@1"],
            "t2v_r5": metrics["t2v_recall@5"],
            "order_acc": order_accuracy(similarity, test.video_ids_of_texts, groups),
            "chance_r1": 1.0 / len(test.clips),
            "chance_order": len(set(groups)) / len(test.clips),
        }
    return results


def measure_step_memory(overrides: list[str], work: Path) -> dict[str, Any]:
    """Run the memory probe of one configuration in a fresh process (see the module docstring)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        MEMORY_FLAG,
        json.dumps([*overrides, "data.num_workers=0"]),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=work, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"Memory probe failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# The memory probe (runs in its own process)
# ---------------------------------------------------------------------------------------------------------------


def _memory_probe(overrides: list[str]) -> dict[str, Any]:
    import torch
    from accelerate import Accelerator

    from videofirst.adaptation import apply_adaptation
    from videofirst.data.loading import build_dataloader
    from videofirst.recipe import load_recipe
    from videofirst.train.optimization import build_optimizer
    from videofirst.train.pretraining import ContrastiveObjective
    from videofirst.train.setup import build_model, build_processor, prepare_data

    _memory.pin_malloc()
    recipe = load_recipe(RECIPE, overrides)
    torch.manual_seed(recipe.run.seed)
    run_dir = Path(recipe.run.output_dir)
    accelerator = Accelerator(cpu=True)
    processor = build_processor(recipe, prepare_data(recipe, run_dir).tokenizer)
    model = build_model(recipe, processor)
    apply_adaptation(model, recipe.adaptation, train_images=False)
    optimizer = build_optimizer(model, recipe.optim)
    loader = build_dataloader(recipe.data, recipe.data.train_manifest, processor, recipe.optim.batch_size, True)
    batch = next(iter(loader))
    model, optimizer = accelerator.prepare(model, optimizer)
    objective = ContrastiveObjective(model, accelerator, recipe)
    model.train()

    def step(index: int) -> int:
        _, kept = objective(batch, index, 0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return kept

    step(0)  # warm-up: optimizer state and lazily built kernels exist from here on
    probe = _memory.MemoryProbe("cpu")
    measured = []
    for index in (1, 2):
        gc.collect()
        baseline = probe.current()
        probe.reset_peak()
        kept = step(index)
        measured.append((probe.peak() - baseline, baseline))
    step_bytes, baseline = max(measured)
    return {
        "step_mem_mb": step_bytes / 2**20,
        "idle_rss_mb": baseline / 2**20,
        "tokens_per_clip": kept / recipe.optim.batch_size,
        "memory_method": probe.method,
    }


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------

CSV_FIELDS = (
    "variant", "attention", "train_mask_ratio", "seed", "eval", "num_frames", "segment_frames", "steps",
    "t2v_r1", "v2t_r1", "t2v_r5", "order_acc", "chance_r1", "chance_order",
    "step_mem_mb", "idle_rss_mb", "tokens_per_clip", "train_seconds", "memory_method",
)  # fmt: skip


def _mean(rows: list[dict], key: str) -> float:
    return statistics.fmean(float(row[key]) for row in rows)


def _cell(rows: list[dict], key: str, digits: int = 3) -> str:
    return _report.mean_std([float(row[key]) for row in rows], digits)


def claims(rows: list[dict]) -> list[tuple[str, str, str]]:
    """(claim, numbers, verdict) for the three claims, from means over seeds; n/a when a variant is missing."""
    by = defaultdict(list)
    for row in rows:
        by[(row["variant"], row["eval"])].append(row)

    def r1(key: tuple[str, str]) -> float:
        return (_mean(by[key], "t2v_r1") + _mean(by[key], "v2t_r1")) / 2

    verdicts = []
    if by[("joint_mask0", "whole")]:
        whole, segments = (
            _mean(by[("joint_mask0", "whole")], "order_acc"),
            _mean(by[("joint_mask0", "segments")], "order_acc"),
        )
        numbers = (
            f"order acc {whole:.3f} (whole clip) vs {segments:.3f} (segments averaged), gap {whole - segments:+.3f}; "
            f"mean R@1 {r1(('joint_mask0', 'whole')):.3f} vs {r1(('joint_mask0', 'segments')):.3f}"
        )
        verdicts.append(
            ("(a) long clip beats 16-frame segments + averaging", numbers, _verdict(whole - segments > 0.05))
        )
    if by[("joint_mask0", "whole")] and by[("joint_mask75", "whole")]:
        drop = r1(("joint_mask0", "whole")) - r1(("joint_mask75", "whole"))
        ratio = _mean(by[("joint_mask0", "whole")], "step_mem_mb") / _mean(by[("joint_mask75", "whole")], "step_mem_mb")
        order_drop = _mean(by[("joint_mask0", "whole")], "order_acc") - _mean(
            by[("joint_mask75", "whole")], "order_acc"
        )
        numbers = f"mean R@1 drop {drop:+.3f} (order acc drop {order_drop:+.3f}); step memory {ratio:.2f}x less"
        verdicts.append(
            ("(b) joint + 75% masking: little loss, less memory", numbers, _verdict(drop <= 0.05 and ratio >= 1.5))
        )
    if all(by[(name, "whole")] for name in ("joint_mask0", "joint_mask75", "frame_mask0", "frame_mask75")):
        joint = r1(("joint_mask0", "whole")) - r1(("joint_mask75", "whole"))
        frame = r1(("frame_mask0", "whole")) - r1(("frame_mask75", "whole"))
        numbers = f"mean R@1 drop under 75% masking: frame {frame:+.3f} vs joint {joint:+.3f}"
        verdicts.append(("(c) frame-level degrades more under masking", numbers, _verdict(frame > joint)))
    return verdicts


def _verdict(holds: bool) -> str:
    return "reproduced" if holds else "NOT reproduced"


def write_markdown(rows: list[dict], path: Path, budget: Budget, seeds: list[int], timings: dict[str, float]) -> None:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["variant"], row["eval"])].append(row)
    first = rows[0]
    test_videos = round(1 / float(first["chance_r1"]))
    lines = [
        "# Long-range benchmark (synthetic order-of-events videos)",
        "",
        f"Written by `training/benchmarks/long_range.py` ({len(seeds)} seed(s): {', '.join(map(str, seeds))}; "
        f"mean ± std over seeds where several). {budget.num_videos} videos of {budget.num_frames} s at 1 FPS with "
        f"{budget.num_events} events of {budget.segment_frames} s; {budget.num_frames}-frame training clips, "
        f"{budget.max_steps} steps of batch {budget.batch_size}; held-out split of {test_videos} videos in "
        f"permutation groups (chance: R@1 {float(first['chance_r1']):.3f}, order acc "
        f"{float(first['chance_order']):.3f}). `segments`: the same checkpoint applied to "
        f"{budget.segment_frames}-frame segments whose embeddings are averaged. Step memory: peak RSS of a training "
        f"step minus the idle RSS before it, each configuration in its own process ({first['memory_method']}).",
        "",
        "| attention | train mask | eval | t2v R@1 | v2t R@1 | order acc | step mem (MB) | tokens/clip | train (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (_, mode), group in groups.items():
        mask = float(group[0]["train_mask_ratio"])
        lines.append(
            f"| {group[0]['attention']} | {mask:.0%} | {mode} | {_cell(group, 't2v_r1')} | {_cell(group, 'v2t_r1')} "
            f"| {_cell(group, 'order_acc')} | {_cell(group, 'step_mem_mb', 1)} "
            f"| {_cell(group, 'tokens_per_clip', 0)} | {_cell(group, 'train_seconds', 0)} |"
        )
    lines += ["", "| claim | numbers | verdict |", "|---|---|---|"]
    lines += [f"| {claim} | {numbers} | {verdict} |" for claim, numbers, verdict in claims(rows)]
    lines += [
        "",
        "Rules fixed before running: (a) order-acc gap > 0.05; (b) mean R@1 (t2v, v2t) drop <= 0.05 and step memory "
        ">= 1.5x less; (c) frame-level mean R@1 drop > joint's.",
        "",
        "Runtime: " + ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in timings.items()) + ".",
        "",
    ]
    path.write_text("\n".join(lines))


def write_plot(rows: list[dict], path: Path, segment_frames: int) -> None:
    """One panel per claim whose variants ran (the same rule as `claims`), so a subset run plots only what it tested."""
    plt = _report.pyplot()
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(row["variant"], row["eval"])].append(row)

    def mean_r1(name: str) -> float:
        return (_mean(groups[(name, "whole")], "t2v_r1") + _mean(groups[(name, "whole")], "v2t_r1")) / 2

    names = [name for name in ("joint_mask0", "joint_mask75", "frame_mask0", "frame_mask75") if groups[(name, "whole")]]
    panels = ["order"]
    if "joint_mask0" in names and "joint_mask75" in names:
        panels.append("memory")
    if len(names) == 4:
        panels.append("masking")
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.2), squeeze=False)
    axes = dict(zip(panels, axes[0]))

    x = range(len(names))
    for offset, mode, label in ((-0.2, "whole", "whole clip"), (0.2, "segments", f"{segment_frames}-frame segments")):
        values = [_mean(groups[(n, mode)], "order_acc") for n in names]
        axes["order"].bar([i + offset for i in x], values, 0.4, label=label)
    axes["order"].axhline(float(rows[0]["chance_order"]), color="grey", linestyle="--", linewidth=1, label="chance")
    axes["order"].set(xticks=list(x), xticklabels=names, ylim=(0, 1))
    axes["order"].set_ylabel("order accuracy (within permutation group)")
    axes["order"].set_title("(a) whole long clip vs segments + averaging")
    axes["order"].legend(fontsize=8)

    if "memory" in axes:
        for name in names:
            marker = "o" if name.startswith("joint") else "s"
            axes["memory"].scatter(
                _mean(groups[(name, "whole")], "step_mem_mb"), mean_r1(name), s=60, marker=marker, label=name
            )
        axes["memory"].set(xlabel="training-step memory (MB, peak RSS - idle)", ylabel="mean R@1 (t2v, v2t)")
        axes["memory"].set_title("(b) accuracy vs training memory")
        axes["memory"].legend(fontsize=8)

    if "masking" in axes:
        for offset, mask, label in ((-0.2, "mask0", "no masking"), (0.2, "mask75", "75% masking")):
            values = [mean_r1(f"{attention}_{mask}") for attention in ("joint", "frame")]
            axes["masking"].bar([offset, 1 + offset], values, 0.4, label=label)
        axes["masking"].set(xticks=[0, 1], xticklabels=["joint", "frame"], ylabel="mean R@1 (t2v, v2t)")
        axes["masking"].set_title("(c) effect of masking by attention type")
        axes["masking"].legend(fontsize=8)
    _report.save_figure(figure, path)


# ---------------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> list[dict]:
    from videofirst.recipe import load_recipe
    from videofirst.train.pretraining import pretrain

    started = time.perf_counter()
    budget = BUDGETS[args.budget]
    if args.steps is not None:
        budget = Budget(**{**budget.__dict__, "max_steps": args.steps})
    variants = [variant for variant in VARIANTS if not args.variants or variant.name in args.variants]
    work, out = args.work.resolve(), args.out.resolve()
    data_dir = work / "data"
    write_data(budget, data_dir, args.data_seed)
    timings: dict[str, float] = defaultdict(float)
    rows = []
    for seed in args.seeds:
        for variant in variants:
            print(f"== {variant.name}, seed {seed}", flush=True)
            overrides = recipe_overrides(budget, variant, seed, data_dir, work / "runs" / f"{variant.name}_seed{seed}")
            tick = time.perf_counter()
            result = pretrain(load_recipe(RECIPE, overrides))
            train_seconds = time.perf_counter() - tick
            timings["training"] += train_seconds
            tick = time.perf_counter()
            evaluation = evaluate_export(result.export_dir, data_dir / "test.jsonl", budget)
            timings["evaluation"] += time.perf_counter() - tick
            tick = time.perf_counter()
            probe_dir = work / "memory" / f"{variant.name}_seed{seed}"
            memory = measure_step_memory(recipe_overrides(budget, variant, seed, data_dir, probe_dir), work)
            timings["memory probes"] += time.perf_counter() - tick
            for mode, metrics in evaluation.items():
                rows.append(
                    {
                        "variant": variant.name,
                        "attention": variant.attention,
                        "train_mask_ratio": variant.mask_ratio,
                        "seed": seed,
                        "eval": mode,
                        "num_frames": budget.num_frames,
                        "segment_frames": budget.segment_frames,
                        "steps": result.final_step,
                        **{key: round(value, 4) for key, value in metrics.items()},
                        **{key: round(v, 2) if isinstance(v, float) else v for key, v in memory.items()},
                        "train_seconds": round(train_seconds, 1),
                    }
                )
            print(json.dumps(rows[-2:]), flush=True)
    timings["total"] = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    with (out / "long_range.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    write_markdown(rows, out / "long_range.md", budget, args.seeds, timings)
    write_plot(rows, out / "long_range.png", budget.segment_frames)
    print((out / "long_range.md").read_text())
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [MEMORY_FLAG]:
        print(json.dumps(_memory_probe(json.loads(argv[1]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (the data seed is fixed)")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="override the budget's training steps")
    parser.add_argument("--variants", nargs="+", choices=[v.name for v in VARIANTS], help="default: all four")
    parser.add_argument("--work", type=Path, default=_cli.REPO / "runs" / "long_range", help="data, runs and exports")
    parser.add_argument("--out", type=Path, default=_cli.RESULTS, help="where long_range.{csv,md,png} go")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
