"""Video-to-text on the synthetic order-of-events videos: do the generated captions follow the video?

    python training/benchmarks/video_to_text.py                       # the table and the sweep (CPU, see README)
    python training/benchmarks/video_to_text.py --encoder runs/demo/export   # reuse a pretrained demo encoder
    python training/benchmarks/video_to_text.py --quick --out /tmp/v2t      # the machinery at toy size, a minute

The setting is the video-to-text demo (`training/configs/video_to_text_demo.yaml`): the pretraining demo's
synthetic videos (3 events each, 144 training and 48 held-out clips whose event sets never occur in training), a
tiny GPT-2 first trained on the training captions alone and then frozen, a frozen video tower, and a new Perceiver
resampler and gated cross-attention layers trained with the captioning loss.

**Table** (every seed of `--seeds`): the language model alone (gates closed: the same model before training, so
the generated caption cannot depend on the video), a random frozen video tower, and the contrastively trained
encoder of the pretraining demo (pretrained here once, seed 0, unless `--encoder` names one), all with the
demo's settings; and the contrastive encoder with the paper's mean over time instead of the demo's time
embeddings (`model.temporal_pooling=mean`: the latents cannot tell the order of events). **Sweep**
(`--sweep-seeds`, contrastive encoder): the settings one at a time, against the demo's: the gates' learning rate
and initialisation, the number of latents, the training steps, a weaker language model prior (fewer text-only
steps) and the token masking of this stage (the paper's 30% against none).

Each run reports, on the held-out clips: the event-sequence metrics of `videofirst.evaluation.event_order` (exact
sequence, per position, event set; per position and exact sequence of the colours alone), Rouge-L and CIDEr-D
(when `pycocoevalcap` is installed) of greedy captions, the "what happened second?" 5-option likelihood QA
(`videofirst.evaluation.event_order.event_order_option_scores`; chance 0.2), the number of distinct captions and
the final mean |tanh(gate)|. The videos are decoded once and kept in memory, and training samples batches from
them (with replacement) in a plain loop built from the training script's parts (`build_video_to_text_model`,
`build_video_to_text_optimizer`, `captioning_loss`, the warmup-cosine schedule); inference drops tokens as in
training (30%) from a fixed seed.

Writes `results/video_to_text.csv` (one row per run), `results/video_to_text.md` (mean ± std tables and example
captions) into `--out`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer

from videofirst.data.captions import prepare_causal_tokenizer
from videofirst.evaluation.captioning import caption_metrics, captioning_loss, generate_captions
from videofirst.evaluation.event_order import event_order_option_scores, event_order_questions, event_sequence_metrics
from videofirst.evaluation.metrics import multiple_choice_metrics
from videofirst.evaluation.sets import read_manifest_rows
from videofirst.recipe import load_recipe
from videofirst.train.optimization import build_scheduler
from videofirst.train.pretraining import pretrain
from videofirst.train.setup import build_processor, prepare_data
from videofirst.train.video_to_text import (
    VideoToTextRecipe,
    build_language_model,
    build_video_to_text_model,
    build_video_to_text_optimizer,
    load_video_to_text_recipe,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli  # noqa: E402
import _report  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
QA_POSITION = 2

# Table rows: (condition, video tower, recipe overrides); "gates closed" is the language model alone.
CONDITIONS: list[tuple[str, str, list[str]]] = [
    ("gates closed", "random", []),
    ("random tower", "random", []),
    ("contrastive encoder", "contrastive", []),
    ("contrastive encoder, mean over time (the paper)", "contrastive", ["model.temporal_pooling=mean"]),
]

# Sweep rows: one setting changed at a time from the demo recipe (`key=value` recipe overrides).
SWEEP: list[tuple[str, list[str]]] = [
    ("demo settings", []),
    ("gates closed at the start (0, Flamingo)", ["model.gate_init=0"]),
    (
        "gates closed at the start, 30x gate learning rate",
        ["model.gate_init=0", "model.gate_learning_rate_multiplier=30"],
    ),
    ("learning rate 1e-3", ["optim.learning_rate=0.001"]),
    ("latents: 8", ["model.resampler_num_latents=8"]),
    ("latents: 32", ["model.resampler_num_latents=32"]),
    ("steps: half", ["optim.max_steps={half_steps}"]),
    ("language model: 50 text-only steps (weaker prior)", ["model.language_model_text_steps=50"]),
    ("no token masking (0%)", ["model.mask_ratio=0.0"]),
]

QUICK_OVERRIDES = [
    "data.synthetic.num_videos=24",
    "optim.max_steps=6",
    "optim.warmup_steps=2",
    "optim.batch_size=4",
    "model.language_model_text_steps=5",
    "eval.max_new_tokens=12",
]


@dataclasses.dataclass
class Clips:
    videos: torch.Tensor
    frame_mask: torch.Tensor
    captions: list[str]
    rows: list[dict]


def decode_clips(manifest: Path, video_processor) -> Clips:
    rows = read_manifest_rows(manifest)
    pixels, masks = [], []
    for row in rows:
        processed = video_processor(
            videos=row["video"], start=row.get("start"), end=row.get("end"), return_tensors="pt"
        )
        pixels.append(processed["pixel_values_videos"][0])
        masks.append(processed["video_frame_mask"][0])
    return Clips(torch.stack(pixels), torch.stack(masks), [row["caption"] for row in rows], rows)


def mean_gate(model) -> float:
    layers = list(model.cross_attention_layers)
    return sum(torch.tanh(layer.attention_gate).abs().item() for layer in layers) / len(layers)


def train(model, recipe: VideoToTextRecipe, tokenizer, clips: Clips, seed: int) -> None:
    optim = recipe.optim
    optimizer = build_video_to_text_optimizer(model, optim, recipe.model.gate_learning_rate_multiplier)
    scheduler = build_scheduler(optimizer, optim)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(1, optim.max_steps + 1):
        rows = torch.randint(len(clips.captions), (optim.batch_size,), generator=generator)
        batch = {
            "pixel_values_videos": clips.videos[rows],
            "video_frame_mask": clips.frame_mask[rows],
            "captions": [clips.captions[row] for row in rows.tolist()],
        }
        loss = captioning_loss(model, batch, tokenizer, recipe.model.prompt or None, recipe.data.max_text_length)
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0:
            print(f"  step {step}: loss {loss.item():.4f}, gate {mean_gate(model):.3f}", flush=True)


@torch.no_grad()
def evaluate(model, recipe: VideoToTextRecipe, tokenizer, clips: Clips, seed: int, use_video: bool) -> dict:
    model.eval()
    torch.manual_seed(10_000 + seed)  # the inference token drop
    batch_size = recipe.eval.batch_size
    captions, latents = [], []
    for start in range(0, len(clips.captions), batch_size):
        videos = clips.videos[start : start + batch_size]
        frame_mask = clips.frame_mask[start : start + batch_size]
        captions += generate_captions(
            model,
            tokenizer,
            videos,
            frame_mask,
            prompt=recipe.model.prompt or None,
            max_new_tokens=recipe.eval.max_new_tokens,
            do_sample=False,
        )
        latents.append(model.get_video_features(videos, video_frame_mask=frame_mask).pooler_output)
    metrics = {**event_sequence_metrics(captions, clips.captions), **caption_metrics(captions, clips.captions)}
    questions = event_order_questions(clips.rows, position=QA_POSITION, seed=seed)
    scores = event_order_option_scores(
        model,
        tokenizer,
        [question["options"] for question in questions],
        QA_POSITION,
        torch.cat(latents) if use_video else None,
    )
    metrics["qa_second_accuracy"] = multiple_choice_metrics(scores, [q["answer"] for q in questions])["accuracy"]
    metrics["distinct_captions"] = len(set(captions))
    metrics["gate"] = mean_gate(model)
    metrics["captions"] = captions
    return metrics


class Benchmark:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work)
        data = self.work / "data"
        self.base_overrides = [
            f"run.output_dir={self.work / 'video_to_text'}",
            f"data.synthetic.folder={data}",
            f"data.train_manifest={data / 'train.jsonl'}",
            f"data.eval_manifest={data / 'test.jsonl'}",
            *(QUICK_OVERRIDES if args.quick else []),
            *args.set,
        ]
        recipe = self.recipe([])
        tokenizer_dir = prepare_data(recipe, self.work).tokenizer
        self.tokenizer = prepare_causal_tokenizer(AutoTokenizer.from_pretrained(tokenizer_dir))
        torch.manual_seed(0)
        probe = build_video_to_text_model(recipe, self.tokenizer, text_warmup=False)
        tubelet_frames = probe.config.vision_config.tubelet_size[0]
        video_processor = build_processor(recipe, self.tokenizer, tubelet_frames=tubelet_frames).video_processor
        self.train_clips = decode_clips(Path(recipe.data.train_manifest), video_processor)
        self.test_clips = decode_clips(Path(recipe.data.eval_manifest), video_processor)
        self._encoder = None
        self.language_models: dict[tuple[int, int], torch.nn.Module] = {}

    def recipe(self, overrides: list[str]) -> VideoToTextRecipe:
        recipe = load_video_to_text_recipe(CONFIGS / "video_to_text_demo.yaml", self.base_overrides)
        half = max(1, recipe.optim.max_steps // 2)
        return load_video_to_text_recipe(
            CONFIGS / "video_to_text_demo.yaml",
            self.base_overrides + [override.format(half_steps=half) for override in overrides],
        )

    @property
    def encoder(self):
        """The contrastively trained video tower (pretrained on first use unless `--encoder` names one)."""
        if self._encoder is None:
            self._encoder = self._contrastive_encoder(self.recipe([]))
        return self._encoder

    def _contrastive_encoder(self, recipe: VideoToTextRecipe):
        export = Path(self.args.encoder) if self.args.encoder else self.work / "pretrain" / "export"
        if not export.is_dir():
            if self.args.encoder:
                raise FileNotFoundError(f"--encoder {export} does not exist.")
            print(f"Pretraining the contrastive demo encoder into {export.parent} (seed 0) ...", flush=True)
            overrides = [
                f"run.output_dir={export.parent}",
                f"data.synthetic.folder={recipe.data.synthetic.folder}",
                f"data.train_manifest={recipe.data.train_manifest}",
                f"data.eval_manifest={recipe.data.eval_manifest}",
            ]
            if self.args.quick:
                overrides += ["optim.max_steps=4", "optim.batch_size=8"]
            overrides += [f"data.synthetic.num_videos={recipe.data.synthetic.num_videos}"]
            pretrain(load_recipe(CONFIGS / "demo.yaml", overrides))
        return AutoModel.from_pretrained(export).vision_model

    def language_model(self, recipe: VideoToTextRecipe, seed: int) -> torch.nn.Module:
        """The frozen text-trained language model of a seed, trained once and reused (a copy per run)."""
        key = (seed, recipe.model.language_model_text_steps)
        if key not in self.language_models:
            recipe = dataclasses.replace(recipe, run=dataclasses.replace(recipe.run, seed=seed))
            torch.manual_seed(seed)
            self.language_models[key] = build_language_model(recipe, self.tokenizer, self.train_clips.captions)
        return copy.deepcopy(self.language_models[key])

    def run(self, condition: str, setting: str, overrides: list[str], seed: int, tower: str = "contrastive") -> dict:
        recipe = self.recipe(overrides)
        language_model = self.language_model(recipe, seed)
        torch.manual_seed(seed)
        vision_model = copy.deepcopy(self.encoder) if tower == "contrastive" else None
        model = build_video_to_text_model(
            recipe, self.tokenizer, language_model=language_model, vision_model=vision_model
        )
        start = time.perf_counter()
        if condition == "gates closed":
            for layer in model.cross_attention_layers:
                layer.attention_gate.data.zero_()
                if layer.mlp is not None:
                    layer.ffn_gate.data.zero_()
        else:
            train(model, recipe, self.tokenizer, self.train_clips, seed)
        seconds = time.perf_counter() - start
        metrics = evaluate(model, recipe, self.tokenizer, self.test_clips, seed, condition != "gates closed")
        row = {"condition": condition, "setting": setting, "seed": seed, "train_seconds": round(seconds, 1)}
        row.update(metrics)
        printed = {key: round(value, 3) for key, value in metrics.items() if isinstance(value, float)}
        print(f"{condition} | {setting} | seed {seed}: {json.dumps(printed)}", flush=True)
        return row


METRICS = [
    ("event_sequence_accuracy", "event sequence"),
    ("event_position_accuracy", "event / position"),
    ("event_set_accuracy", "event set"),
    ("colour_position_accuracy", "colour / position"),
    ("colour_sequence_accuracy", "colour sequence"),
    ("qa_second_accuracy", 'QA "second?"'),
    ("rougeL", "Rouge-L"),
    ("cider", "CIDEr-D"),
    ("distinct_captions", "distinct captions"),
    ("gate", "gate"),
]


def summary_table(rows: list[dict], key: str) -> list[str]:
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    columns = [(name, title) for name, title in METRICS if any(name in row for row in rows)]
    lines = [
        "| " + " | ".join([key, "seeds", *(title for _, title in columns)]) + " |",
        "|---|---:|" + "---:|" * len(columns),
    ]
    for name, members in groups.items():
        cells = [_report.mean_std([float(member[column]) for member in members]) for column, _ in columns]
        lines.append(f"| {name} | {len(members)} | " + " | ".join(cells) + " |")
    return lines


def write_results(
    rows: list[dict], out: Path, name: str, examples: dict[str, list[str]], references: list[str], note: str
):
    out.mkdir(parents=True, exist_ok=True)
    fields = [key for key in rows[0] if key != "captions"]
    with open(out / f"{name}.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    table = [row for row in rows if row["setting"] == "demo settings" and row["condition"] != "sweep"]
    sweep = [row for row in rows if row["condition"] == "sweep"]
    lines = [note]
    if table:
        lines += ["", "Conditions (mean ± std over seeds, held-out clips):", ""]
        lines += summary_table(table, "condition")
    if sweep:
        lines += ["", "Sweep (contrastive encoder; one setting changed from the demo's):", ""]
        lines += summary_table(sweep, "setting")
    lines += ["", f"Example captions (seed {rows[0]['seed']}, first held-out clips):", ""]
    lines += ["| reference | " + " | ".join(examples) + " |", "|---|" + "---|" * len(examples)]
    for index, reference in enumerate(references):
        lines.append(f"| {reference} | " + " | ".join(examples[name][index] for name in examples) + " |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(_cli.RESULTS), help="folder of video_to_text.csv / .md")
    parser.add_argument("--work", default="runs/benchmark_video_to_text", help="data, tokenizer and encoder")
    parser.add_argument("--encoder", help="a pretrained VideoFirst export (default: pretrain the demo's here)")
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="none: no table")
    parser.add_argument("--sweep-seeds", type=int, nargs="*", default=[0], help="none: no sweep")
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks the machinery only")
    parser.add_argument("--set", nargs="*", default=[], help="recipe overrides (key=value) for every run")
    parser.add_argument("--name", default="video_to_text", help="stem of the result files")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the models are tiny)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    started = time.perf_counter()
    bench = Benchmark(args)
    rows = []
    for seed in args.seeds:
        for condition, tower, overrides in CONDITIONS:
            rows.append(bench.run(condition, "demo settings", overrides, seed, tower))
    for seed in args.sweep_seeds:
        for setting, overrides in SWEEP[1:]:
            row = bench.run("contrastive encoder", setting, overrides, seed)
            rows.append({**row, "condition": "sweep"})
        # The demo settings' row of the sweep is the table's run of the same seed (when it ran).
        same = [row for row in rows if row["condition"] == "contrastive encoder" and row["seed"] == seed]
        base = same[0] if same else bench.run("contrastive encoder", "demo settings", [], seed)
        rows.append({**base, "condition": "sweep"})
    elapsed = time.perf_counter() - started
    # Example captions: the table's conditions (or, for a sweep alone, its first two settings) at the first seed.
    shown = [row for row in rows if row["condition"] != "sweep"] or [
        row for row in rows if row["setting"] in (SWEEP[0][0], SWEEP[1][0])
    ]
    examples = {
        row["condition"] if row["condition"] != "sweep" else row["setting"]: row["captions"][:6]
        for row in shown
        if row["seed"] == shown[0]["seed"]
    }
    load = os.getloadavg()
    note = (
        f"`python training/benchmarks/video_to_text.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
        f" — {elapsed / 60:.1f} min on {os.cpu_count()} CPU cores (load average {load[0]:.1f} at the end), "
        f"torch {torch.__version__}. Chance on the 5-option QA: 0.2."
    )
    write_results(rows, Path(args.out), args.name, examples, bench.test_clips.captions[:6], note)
    print(f"Wrote {Path(args.out) / args.name}.md ({elapsed / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
