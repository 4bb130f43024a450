"""Zero-shot evaluation of a VideoFirst checkpoint (local folder or Hub id) on a paper benchmark or a manifest.

    python training/evaluate.py CKPT --benchmark msrvtt --videos MSRVTT/videos/all     # MSRVTT_JSFUSION_test.csv
    python training/evaluate.py CKPT --benchmark activitynet --videos anet/ --annotations captions/val_1.json
    python training/evaluate.py CKPT --benchmark all --videos-root benchmarks/          # benchmarks/<name>/...
    python training/evaluate.py runs/demo/export --task retrieval --manifest runs/demo/data/test.jsonl
    python training/evaluate.py CKPT --task mcq --manifest egoschema.jsonl --num-frames 256 --output ego.json
    python training/evaluate.py CKPT --task classification --manifest k400_val.csv --class-names classes.txt \\
        --template "a video of {}." --template "{}"
    python training/evaluate.py CKPT --task retrieval --manifest test.jsonl --segment-frames 16   # baseline
    python training/evaluate.py CKPT ... --embeddings-cache ~/.cache/videofirst/embeddings          # reuse

Benchmarks (`--benchmark`, see `videofirst.evaluation.benchmarks` and the README's table): msrvtt, vatex, youcook2,
activitynet, egoschema, kinetics400, kinetics600, read from their official annotation files (found by their
published names in the videos folder, its parent or below, or `--annotations FILE` /
`hf://datasets/OWNER/NAME/FILE` from the local Hub cache) with the paper's protocol; `--split`, `--fps`,
`--num-frames`, `--sampling` change it. The results JSON names the benchmark's Hub dataset and split for the model
card (`training/push.py --results`). `--benchmark all` evaluates every benchmark whose folder
`<videos-root>/<name>` exists and writes a list. With a video-to-text checkpoint, `--task summarization`
(youcook2, activitynet: one summary per full-length video, Rouge-L against its sentences joined) and
`--task qa-likelihood` (egoschema: answers scored by the language model).

Manifests are JSONL or CSV with a `video` path (relative to the manifest's folder, or absolute) and optional
`start` / `end` seconds, plus, per task:

* `retrieval`: `caption` (or `text`), a string or a list of strings. Rows with the same video are one video with
  several captions.
* `mcq` (EgoSchema format): `question`, `options` (a list, or `option 0` ... `option 4` columns), `answer` (the
  0-based index of the correct option). Each option is scored as `--qa-template` filled with question and option.
* `classification`: `label`, a class name, or a 0-based index into `--class-names` (a text file, one name per
  line, or a JSON list). Classes default to the sorted distinct labels of the manifest.

With a manifest, frames are sampled with the checkpoint's processor settings unless `--fps`, `--num-frames` or
`--sampling` say otherwise. A video that fails to decode is reported (a warning, and `failed_videos` in the JSON)
and excluded together with the captions / questions / samples that refer to it, so no text is ever scored against
another video; a benchmark video that is not in the folder is reported and excluded the same way. `--strict` turns any
such failure into an error. The results JSON records the metrics, the counts (printed beside the metrics, so a
partial run cannot pass for a full one), the failures and every argument.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor

import videofirst
from videofirst.data.captions import prepare_causal_tokenizer
from videofirst.evaluation.benchmarks import (
    BENCHMARKS,
    LONG_FRAMES,
    BenchmarkData,
    FrameProtocol,
    load_benchmark,
    summarization_set,
)
from videofirst.evaluation.captioning import DEFAULT_QA_PROMPT as DEFAULT_QA_PROMPT_V2T
from videofirst.evaluation.captioning import answer_log_likelihoods, caption_metrics, generate_captions
from videofirst.evaluation.embedding import (
    DEFAULT_CLASS_TEMPLATES,
    DEFAULT_QA_TEMPLATE,
    embed_answer_options,
    embed_class_prompts,
    embed_texts,
)
from videofirst.evaluation.metrics import classification_metrics, multiple_choice_metrics, retrieval_metrics
from videofirst.evaluation.sets import (
    ClipEmbeddings,
    EmbeddingCache,
    checkpoint_fingerprint,
    clip_loader,
    embed_video_clips,
    load_classification_manifest,
    load_multiple_choice_manifest,
    load_retrieval_manifest,
)

TASKS = ("retrieval", "mcq", "classification")
# With --benchmark, the video-to-text model's tasks: full-length summarisation (YouCook2, ActivityNet Captions) and
# EgoSchema scored by the language model's likelihood of each answer.
VIDEO_TO_TEXT_TASKS = {"summarization": ("youcook2", "activitynet"), "qa-likelihood": ("egoschema",)}
# What a results line leads with, per task.
HEADLINE = {
    "retrieval": ("t2v_recall@1", "v2t_recall@1"),
    "mcq": ("accuracy",),
    "classification": ("top1_accuracy", "top5_accuracy"),
    "summarization": ("rougeL", "cider"),
}
UNITS = {"retrieval": "texts", "mcq": "questions", "classification": "samples", "summarization": "videos"}
logger = logging.getLogger("videofirst.evaluate")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="exported checkpoint folder or Hub id (loaded with trust_remote_code)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--benchmark", choices=[*BENCHMARKS, "all"], help="a paper benchmark (official files)")
    source.add_argument("--manifest", type=Path, help="JSONL or CSV manifest (with --task)")
    parser.add_argument(
        "--task",
        choices=[*TASKS, *VIDEO_TO_TEXT_TASKS],
        help="with --manifest: what the manifest holds; with --benchmark: summarization (youcook2, activitynet) or "
        "qa-likelihood (egoschema) with a video-to-text checkpoint",
    )
    parser.add_argument("--output", type=Path, help="results JSON (default: eval_<benchmark or task>_<name>.json)")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    bench = parser.add_argument_group("benchmarks")
    bench.add_argument("--videos", type=Path, metavar="DIR", help="the benchmark's videos (searched recursively)")
    bench.add_argument("--videos-root", type=Path, metavar="DIR", help="--benchmark all: one folder per benchmark")
    bench.add_argument("--annotations", help="annotation file, or hf://datasets/OWNER/NAME/FILE (local cache)")
    bench.add_argument("--split", help="benchmark split (default: the paper's, e.g. msrvtt test_1k)")
    bench.add_argument("--answers", type=Path, help="egoschema: answers file (default: subset_answers.json beside)")
    bench.add_argument("--video-list", type=Path, help="evaluate only the video ids listed (one per line)")
    sampling = parser.add_argument_group("frame sampling (default: the benchmark's protocol, or the processor's)")
    sampling.add_argument("--fps", type=float)
    sampling.add_argument("--num-frames", type=int)
    sampling.add_argument("--sampling", choices=("uniform", "fps", "window"))
    sampling.add_argument(
        "--segment-frames", type=int, help="segment-aggregation baseline: embed N-frame segments and average them"
    )
    run = parser.add_argument_group("execution")
    run.add_argument("--batch-size", type=int, default=8, help="videos per forward pass")
    run.add_argument("--text-batch-size", type=int, default=64)
    run.add_argument("--num-workers", type=int, default=2, help="decoding processes")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    run.add_argument("--embeddings-cache", type=Path, metavar="DIR", help="reuse video embeddings saved here")
    run.add_argument("--strict", action="store_true", help="fail if any video cannot be decoded")
    run.add_argument("--no-progress", action="store_true")
    task = parser.add_argument_group("task options")
    task.add_argument("--recall-at", type=int, nargs="+", default=[1, 5, 10], help="retrieval: the K of Recall@K")
    task.add_argument("--qa-template", default=DEFAULT_QA_TEMPLATE, help="mcq: text of one option")
    task.add_argument("--class-names", type=Path, help="classification: one class name per line, or a JSON list")
    task.add_argument(
        "--template", action="append", dest="templates", help="classification: prompt with {} (repeatable)"
    )
    task.add_argument("--top-k", type=int, nargs="+", default=[1, 5], help="classification: the K of top-K")
    task.add_argument("--prompt", default="", help="summarization: text the summary follows (the training prompt)")
    task.add_argument("--max-new-tokens", type=int, default=128, help="summarization: longest summary in tokens")
    task.add_argument("--num-beams", type=int, default=1, help="summarization: beam search width")
    task.add_argument(
        "--qa-prompt", default=DEFAULT_QA_PROMPT_V2T, help="qa-likelihood: prompt with {question} the answers follow"
    )
    args = parser.parse_args(argv)
    if args.segment_frames is not None and args.segment_frames <= 0:
        parser.error("--segment-frames must be positive")
    if args.batch_size <= 0 or args.text_batch_size <= 0 or args.num_workers < 0:
        parser.error("batch sizes must be positive and --num-workers non-negative")
    if args.templates and any("{}" not in template for template in args.templates):
        parser.error("every --template needs a {} for the class name")
    if "{question}" not in args.qa_template or "{answer}" not in args.qa_template:
        parser.error("--qa-template needs {question} and {answer}")
    if args.manifest is not None and args.task not in TASKS:
        parser.error(f"--manifest needs --task, one of {', '.join(TASKS)}")
    if args.benchmark is not None and args.task is not None:
        if args.task not in VIDEO_TO_TEXT_TASKS:
            parser.error("--task with --benchmark is summarization or qa-likelihood (the others come from it)")
        if args.benchmark not in (*VIDEO_TO_TEXT_TASKS[args.task], "all"):
            parser.error(f"--task {args.task} runs on {', '.join(VIDEO_TO_TEXT_TASKS[args.task])}")
    benchmark_only = ("videos", "videos_root", "annotations", "split", "answers", "video_list")
    if args.manifest is not None and any(getattr(args, name) is not None for name in benchmark_only):
        parser.error("--videos, --videos-root, --annotations, --split, --answers, --video-list go with --benchmark")
    if args.benchmark == "all":
        if args.videos_root is None or args.videos is not None:
            parser.error("--benchmark all reads <--videos-root>/<benchmark>/ (not --videos)")
        if any(getattr(args, name) is not None for name in ("annotations", "split", "answers", "video_list")):
            parser.error("--annotations, --split, --answers, --video-list name one benchmark's files, not all")
    if args.task in VIDEO_TO_TEXT_TASKS and (args.segment_frames is not None or args.embeddings_cache is not None):
        parser.error("--segment-frames and --embeddings-cache are for the video-text encoder, not --task " + args.task)
    if args.answers is not None and args.benchmark != "egoschema":
        parser.error("--answers is EgoSchema's answers file (with --benchmark egoschema)")
    if args.class_names is not None and args.benchmark is not None and not args.benchmark.startswith("kinetics"):
        parser.error("--class-names goes with a classification manifest or a Kinetics benchmark")
    if args.benchmark not in (None, "all") and (args.videos is None or args.videos_root is not None):
        parser.error(f"--benchmark {args.benchmark} needs --videos DIR (--videos-root goes with --benchmark all)")
    return args


def read_class_names(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return [str(name) for name in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def keep_items(items: list, keep: list[bool]) -> list:
    return [item for item, kept in zip(items, keep, strict=True) if kept]


def score(
    args: argparse.Namespace, task: str, model: Any, tokenizer: Any, dataset: Any, videos: ClipEmbeddings
) -> dict:
    """Metrics and item counts of one task; items whose video failed are dropped (see `ClipEmbeddings.rows_of`)."""
    if task == "retrieval":
        # Failed videos are neither targets nor distractors: the gallery is the decoded videos only.
        row_of_clip = {clip: row for row, clip in enumerate(videos.indices)}
        keep = [clip in row_of_clip for clip in dataset.video_ids_of_texts]
        texts = keep_items(dataset.texts, keep)
        targets = [row_of_clip[clip] for clip in keep_items(dataset.video_ids_of_texts, keep)]
        text_embeds = embed_texts(model, tokenizer, texts, args.text_batch_size)
        metrics = retrieval_metrics(text_embeds @ videos.embeddings.t(), targets, args.recall_at)
        return {"metrics": metrics, "counts": {"texts": len(dataset.texts), "texts_evaluated": len(texts)}}
    if task == "mcq":
        video_embeds, keep = videos.rows_of(dataset.video_ids_of_questions)
        questions, options = keep_items(dataset.questions, keep), keep_items(dataset.options, keep)
        option_embeds = embed_answer_options(
            model, tokenizer, questions, options, args.qa_template, args.text_batch_size
        )
        scores = torch.einsum("qd,qod->qo", video_embeds, option_embeds)
        metrics = multiple_choice_metrics(scores, keep_items(dataset.answers, keep))
        return {"metrics": metrics, "counts": {"questions": len(keep), "questions_evaluated": len(questions)}}
    video_embeds, keep = videos.rows_of(dataset.video_ids_of_samples)
    templates = args.templates or list(DEFAULT_CLASS_TEMPLATES)
    class_embeds = embed_class_prompts(model, tokenizer, dataset.class_names, templates, args.text_batch_size)
    metrics = classification_metrics(video_embeds @ class_embeds.t(), keep_items(dataset.labels, keep), args.top_k)
    counts = {"samples": len(keep), "samples_evaluated": sum(keep), "classes": len(dataset.class_names)}
    return {"metrics": metrics, "counts": counts}


def load_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The dual encoder, or for the video-to-text tasks the video-to-text model (and a causal-LM tokenizer)."""
    auto = AutoModelForImageTextToText if args.task in VIDEO_TO_TEXT_TASKS else AutoModel
    model = auto.from_pretrained(args.checkpoint, trust_remote_code=True, revision=args.revision)
    model = model.to(args.device).eval()
    processor = AutoProcessor.from_pretrained(args.checkpoint, trust_remote_code=True, revision=args.revision)
    if args.task in VIDEO_TO_TEXT_TASKS:
        prepare_causal_tokenizer(processor.tokenizer)
    return model, processor


def sampling_settings(args: argparse.Namespace, video_processor: Any, protocol: FrameProtocol | None) -> dict:
    """Frame sampling: the command line over the benchmark's protocol, or for a manifest over the processor's
    settings, where a rate or a count on the command line replaces both of the processor's defaults."""
    if protocol is None and (args.fps is not None or args.num_frames is not None):
        sampling, fps, num_frames = args.sampling, args.fps, args.num_frames
    else:
        default = protocol or FrameProtocol(video_processor.sampling, video_processor.fps, video_processor.num_frames)
        sampling = args.sampling or default.sampling
        fps = args.fps if args.fps is not None else default.fps
        num_frames = args.num_frames if args.num_frames is not None else default.num_frames
        if sampling == "uniform":  # a count spread over the clip: no rate
            fps = None
        elif sampling == "fps":  # a rate over the whole clip: no count
            num_frames = None
    return {"fps": fps, "num_frames": num_frames, "sampling": sampling, "segment_frames": args.segment_frames}


def embed_clips(args: argparse.Namespace, model: Any, video_processor: Any, clips: list, settings: dict):
    """Decode and embed `clips` with `settings`, through the embedding cache when one is given."""
    cache = None
    if args.embeddings_cache is not None:
        # The processor's full config (resize, crop, normalisation) is part of the key, beside the sampling.
        key = {**settings, "video_processor": json.loads(video_processor.to_json_string())}
        cache = EmbeddingCache(args.embeddings_cache, checkpoint_fingerprint(args.checkpoint, args.revision), key)
    videos = embed_video_clips(
        model,
        video_processor,
        clips,
        fps=settings["fps"],
        num_frames=settings["num_frames"],
        sampling=settings["sampling"],
        segment_frames=args.segment_frames,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        cache=cache,
        progress=not args.no_progress,
        device=args.device,
    )
    cache_report = None
    if cache is not None:
        cache_report = {
            "file": str(cache.path),
            "hits": videos.cache_hits,
            "embedded": len(videos.indices) - videos.cache_hits,
        }
    return videos, cache_report


def common_fields(args: argparse.Namespace, started: float) -> dict[str, Any]:
    return {
        "seconds": round(time.perf_counter() - started, 3),
        "videofirst_version": videofirst.__version__,
        "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    }


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate on a manifest (`--manifest`, `--task`)."""
    started = time.perf_counter()
    if args.task == "retrieval":
        dataset = load_retrieval_manifest(args.manifest)
    elif args.task == "mcq":
        dataset = load_multiple_choice_manifest(args.manifest)
    else:
        class_names = read_class_names(args.class_names) if args.class_names else None
        dataset = load_classification_manifest(args.manifest, class_names)

    model, processor = load_model(args)
    settings = sampling_settings(args, processor.video_processor, None)
    videos, cache_report = embed_clips(args, model, processor.video_processor, dataset.clips, settings)
    failed = [{"video": dataset.clips[index].path, "error": error} for index, error in sorted(videos.failures.items())]
    if failed and args.strict:
        raise RuntimeError(f"{len(failed)} video(s) could not be decoded (--strict); first: {failed[0]}")
    scored = score(args, args.task, model, processor.tokenizer, dataset, videos)
    return {
        "task": args.task,
        "checkpoint": str(args.checkpoint),
        "manifest": str(args.manifest),
        "metrics": scored["metrics"],
        "counts": {"videos": len(dataset.clips), "videos_evaluated": len(videos.indices), **scored["counts"]},
        "failed_videos": failed,
        "sampling": settings,
        "embeddings_cache": cache_report,
        **common_fields(args, started),
    }


def load_benchmark_data(args: argparse.Namespace, name: str, videos_dir: Path, single: bool) -> BenchmarkData:
    """The benchmark's annotations and videos; with `--strict`, a video missing from the folder is an error."""
    video_list = None
    if single and args.video_list is not None:
        video_list = [line.strip() for line in args.video_list.read_text().splitlines() if line.strip()]
    data = load_benchmark(
        name,
        videos_dir,
        args.annotations if single else None,
        split=args.split if single else None,
        answers=args.answers if single else None,
        video_list=video_list,
        class_names=read_class_names(args.class_names) if args.class_names else None,
    )
    if data.missing and args.strict:
        first = next(iter(data.missing.values()))
        raise RuntimeError(f"{len(data.missing)} {data.benchmark.title} video(s) not found (--strict); first: {first}")
    return data


def run_video_to_text(
    args: argparse.Namespace, model: Any, processor: Any, data: BenchmarkData, settings: dict
) -> tuple[dict, dict[int, str], int]:
    """Decode the clips (a failure is reported, never shifted onto another clip) and run the video-to-text model:
    a summary of each video, or the likelihood of each EgoSchema answer. Returns the scored results, the failures
    and the number of clips decoded."""
    options = {key: settings[key] for key in ("fps", "num_frames", "sampling") if settings[key] is not None}
    dataset, tokenizer = data.dataset, processor.tokenizer
    loader = clip_loader(dataset.clips, processor.video_processor, options, args.batch_size, args.num_workers)
    summaries: dict[int, str] = {}
    scores: dict[int, torch.Tensor] = {}  # question -> its options' log-likelihoods
    failures: dict[int, str] = {}
    for batch in loader:
        failures.update(batch["failures"])
        for index, error in batch["failures"].items():
            logger.warning("Excluding %s from the evaluation: %s", dataset.clips[index].path, error)
        if not batch["indices"]:
            continue
        pixels, frame_mask = batch["pixel_values_videos"], batch["video_frame_mask"]
        if args.task == "summarization":
            texts = generate_captions(
                model, tokenizer, pixels, frame_mask, prompt=args.prompt or None,
                max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, do_sample=False,
            )  # fmt: skip
            summaries.update(zip(batch["indices"], texts, strict=True))
            continue
        # The videos are encoded once; each question is scored against its own video's latents.
        with torch.no_grad():
            latents = model.get_video_features(pixels.to(args.device), video_frame_mask=frame_mask.to(args.device))
        row = {clip: position for position, clip in enumerate(batch["indices"])}
        asked = [q for q, clip in enumerate(dataset.video_ids_of_questions) if clip in row]
        question_scores = answer_log_likelihoods(
            model,
            tokenizer,
            [dataset.questions[q] for q in asked],
            [dataset.options[q] for q in asked],
            visual_latents=latents.pooler_output[[row[dataset.video_ids_of_questions[q]] for q in asked]],
            prompt_template=args.qa_prompt,
        )
        scores.update(zip(asked, question_scores, strict=True))
    decoded = len(dataset.clips) - len(failures)
    if not decoded:
        raise RuntimeError(f"None of the {len(dataset.clips)} videos could be decoded; first: {failures[0]}")
    if args.task == "summarization":
        order = sorted(summaries)
        predictions = [summaries[index] for index in order]
        metrics = caption_metrics(predictions, [dataset.references[index] for index in order])
        items = [
            {"video_id": data.video_ids[index], "summary": summaries[index], "reference": dataset.references[index]}
            for index in order
        ]
        scored = {"metrics": metrics, "counts": {}, "predictions": items}
    else:
        asked = sorted(scores)
        metrics = multiple_choice_metrics(torch.stack([scores[q] for q in asked]), [dataset.answers[q] for q in asked])
        counts = {"questions": len(dataset.questions), "questions_evaluated": len(asked)}
        scored = {"metrics": metrics, "counts": counts}
    return scored, failures, decoded


def evaluate_benchmark(args: argparse.Namespace, data: BenchmarkData, model: Any, processor: Any) -> dict[str, Any]:
    """Score one benchmark; the record carries the Hub dataset id and split that the model card names."""
    started = time.perf_counter()
    benchmark = data.benchmark
    video_to_text = args.task in VIDEO_TO_TEXT_TASKS
    if args.task == "summarization":
        data = summarization_set(data)
    protocol = LONG_FRAMES if args.task == "summarization" else benchmark.frames
    settings = sampling_settings(args, processor.video_processor, protocol)
    cache_report = None
    if video_to_text:
        scored, failures, decoded = run_video_to_text(args, model, processor, data, settings)
    else:
        videos, cache_report = embed_clips(args, model, processor.video_processor, data.dataset.clips, settings)
        failures, decoded = videos.failures, len(videos.indices)
    failed = []
    for index, error in sorted(failures.items()):
        entry = {"video_id": data.video_ids[index], "video": data.dataset.clips[index].path}
        failed.append({**entry, "error": data.missing.get(index, error), "missing": index in data.missing})
    if failed and args.strict:
        raise RuntimeError(f"{len(failed)} video(s) could not be decoded (--strict); first: {failed[0]}")
    if not video_to_text:
        scored = score(args, benchmark.task, model, processor.tokenizer, data.dataset, videos)
    counts = {
        "videos": len(data.dataset.clips),
        "videos_evaluated": decoded,
        "videos_missing": len(data.missing),
        **scored["counts"],
    }
    frames = FrameProtocol(settings["sampling"], settings["fps"], settings["num_frames"])
    queries = "the video's sentences joined are the reference summary" if args.task == "summarization" else None
    record = {
        "benchmark": benchmark.name,
        "dataset": benchmark.title,
        "dataset_type": benchmark.dataset_type,
        "dataset_config": benchmark.hub_config if data.split == benchmark.default_split else None,
        "split": data.split,
        # The card's task names: EgoSchema stays multiple choice whichever model scores it.
        "task": {"qa-likelihood": "mcq"}.get(args.task, args.task or benchmark.task),
        "model": "video-to-text" if video_to_text else "video-text",
        "checkpoint": str(args.checkpoint),
        "annotations": str(data.annotations),
        "videos": str(data.videos),
        "metrics": scored["metrics"],
        "counts": counts,
        "failed_videos": failed,
        "protocol": {"queries": queries or benchmark.queries, "frames": frames.describe(), **data.notes},
        "sampling": settings,
        "embeddings_cache": cache_report,
        **common_fields(args, started),
    }
    if "predictions" in scored:
        record["predictions"] = scored["predictions"]
    return record


def evaluate_benchmarks(args: argparse.Namespace) -> list[dict[str, Any]]:
    """`--benchmark NAME` (one record) or `--benchmark all` (every benchmark folder under `--videos-root`)."""
    if args.benchmark != "all":
        jobs = [(args.benchmark, args.videos)]
    else:
        if not args.videos_root.is_dir():
            raise FileNotFoundError(f"--videos-root folder not found: {args.videos_root}")
        names = VIDEO_TO_TEXT_TASKS.get(args.task, BENCHMARKS)
        jobs = [(name, args.videos_root / name) for name in names if (args.videos_root / name).is_dir()]
        absent = [name for name in names if not (args.videos_root / name).is_dir()]
        if not jobs:
            raise FileNotFoundError(f"No benchmark folder under {args.videos_root}; expected some of {absent}")
        if absent:
            print(f"warning: no folder for {', '.join(absent)} under {args.videos_root}; skipped", file=sys.stderr)
    # Annotations first, so a bad file fails before the model loads.
    datasets = [load_benchmark_data(args, name, folder, args.benchmark != "all") for name, folder in jobs]
    model, processor = load_model(args)
    return [evaluate_benchmark(args, data, model, processor) for data in datasets]


def summary_line(record: dict[str, Any]) -> str:
    """The headline metrics with the number of items they cover."""
    task = record["task"]
    metrics = ", ".join(f"{name} {record['metrics'][name]:.4f}" for name in HEADLINE[task] if name in record["metrics"])
    counts = record["counts"]
    unit = UNITS[task]
    name = record.get("dataset", record.get("manifest"))
    split = f" [{record['split']}]" if record.get("split") else ""
    line = f"{name}{split}: {metrics} on {counts[f'{unit}_evaluated']}/{counts[unit]} {unit}"
    if unit != "videos":
        line += f", {counts['videos_evaluated']}/{counts['videos']} videos"
    if record["failed_videos"]:
        line += f" ({len(record['failed_videos'])} missing or undecodable, excluded: see failed_videos)"
    return line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.benchmark is not None:
            records = evaluate_benchmarks(args)
            results: Any = records[0] if args.benchmark != "all" else records
            default = f"eval_{args.benchmark}.json" if args.benchmark == "all" else None
            default = default or f"eval_{records[0]['benchmark']}_{records[0]['split']}.json"
        else:
            results = evaluate(args)
            records = [results]
            default = f"eval_{args.task}_{args.manifest.stem}.json"
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    output = args.output or Path(default)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    for record in records:
        if record["failed_videos"]:
            count = len(record["failed_videos"])
            print(f"warning: {count} video(s) missing or failed to decode and were excluded", file=sys.stderr)
        if args.benchmark is None:
            print(json.dumps({"metrics": record["metrics"], "counts": record["counts"]}, indent=2))
        print(summary_line(record))
    print(f"Results written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
