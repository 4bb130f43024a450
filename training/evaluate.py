"""Zero-shot evaluation of a VideoFirst checkpoint (local folder or Hub id) on a manifest.

    python training/evaluate.py runs/demo/export --task retrieval --manifest runs/demo/data/test.jsonl
    python training/evaluate.py CKPT --task mcq --manifest egoschema.jsonl --num-frames 256 --output ego.json
    python training/evaluate.py CKPT --task classification --manifest k400_val.csv --class-names classes.txt \\
        --template "a video of {}." --template "{}"
    python training/evaluate.py CKPT --task retrieval --manifest test.jsonl --segment-frames 16   # baseline
    python training/evaluate.py CKPT ... --embeddings-cache ~/.cache/videofirst/embeddings          # reuse

Manifests are JSONL or CSV with a `video` path (relative to the manifest's folder, or absolute) and optional
`start` / `end` seconds, plus, per task:

* `retrieval`: `caption` (or `text`), a string or a list of strings. Rows with the same video are one video with
  several captions.
* `mcq` (EgoSchema format): `question`, `options` (a list, or `option 0` ... `option 4` columns), `answer` (the
  0-based index of the correct option). Each option is scored as `--qa-template` filled with question and option.
* `classification`: `label`, a class name, or a 0-based index into `--class-names` (a text file, one name per
  line, or a JSON list). Classes default to the sorted distinct labels of the manifest.

Frames are sampled with the checkpoint's processor settings unless `--fps`, `--num-frames` or `--sampling` say
otherwise. A video that fails to decode is reported (a warning, and `failed_videos` in the JSON) and excluded
together with the captions / questions / samples that refer to it, so no text is ever scored against another
video; `--strict` turns any such failure into an error. The results JSON records the metrics, the counts, the
failures and every argument.
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
from transformers import AutoModel, AutoProcessor

import videofirst
from videofirst.evaluation import (
    DEFAULT_CLASS_TEMPLATES,
    DEFAULT_QA_TEMPLATE,
    ClipEmbeddings,
    EmbeddingCache,
    checkpoint_fingerprint,
    classification_metrics,
    embed_answer_options,
    embed_class_prompts,
    embed_texts,
    embed_video_clips,
    load_classification_manifest,
    load_multiple_choice_manifest,
    load_retrieval_manifest,
    multiple_choice_metrics,
    retrieval_metrics,
)

TASKS = ("retrieval", "mcq", "classification")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="exported checkpoint folder or Hub id (loaded with trust_remote_code)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--manifest", required=True, type=Path, help="JSONL or CSV manifest")
    parser.add_argument("--output", type=Path, help="results JSON (default: eval_<task>_<manifest name>.json)")
    parser.add_argument("--revision", help="Hub revision (branch, tag or commit)")
    sampling = parser.add_argument_group("frame sampling (default: the checkpoint's processor settings)")
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
    args = parser.parse_args(argv)
    if args.segment_frames is not None and args.segment_frames <= 0:
        parser.error("--segment-frames must be positive")
    if args.batch_size <= 0 or args.text_batch_size <= 0 or args.num_workers < 0:
        parser.error("batch sizes must be positive and --num-workers non-negative")
    if args.templates and any("{}" not in template for template in args.templates):
        parser.error("every --template needs a {} for the class name")
    if "{question}" not in args.qa_template or "{answer}" not in args.qa_template:
        parser.error("--qa-template needs {question} and {answer}")
    return args


def read_class_names(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        return [str(name) for name in json.loads(text)]
    return [line.strip() for line in text.splitlines() if line.strip()]


def keep_items(items: list, keep: list[bool]) -> list:
    return [item for item, kept in zip(items, keep, strict=True) if kept]


def score(args: argparse.Namespace, model: Any, tokenizer: Any, dataset: Any, videos: ClipEmbeddings) -> dict:
    """Metrics and item counts of one task; items whose video failed are dropped (see `ClipEmbeddings.rows_of`)."""
    if args.task == "retrieval":
        # Failed videos are neither targets nor distractors: the gallery is the decoded videos only.
        row_of_clip = {clip: row for row, clip in enumerate(videos.indices)}
        keep = [clip in row_of_clip for clip in dataset.video_ids_of_texts]
        texts = keep_items(dataset.texts, keep)
        targets = [row_of_clip[clip] for clip in keep_items(dataset.video_ids_of_texts, keep)]
        text_embeds = embed_texts(model, tokenizer, texts, args.text_batch_size)
        metrics = retrieval_metrics(text_embeds @ videos.embeddings.t(), targets, args.recall_at)
        return {"metrics": metrics, "counts": {"texts": len(dataset.texts), "texts_evaluated": len(texts)}}
    if args.task == "mcq":
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


def evaluate(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    if args.task == "retrieval":
        dataset = load_retrieval_manifest(args.manifest)
    elif args.task == "mcq":
        dataset = load_multiple_choice_manifest(args.manifest)
    else:
        class_names = read_class_names(args.class_names) if args.class_names else None
        dataset = load_classification_manifest(args.manifest, class_names)

    model = AutoModel.from_pretrained(args.checkpoint, trust_remote_code=True, revision=args.revision)
    model = model.to(args.device).eval()
    processor = AutoProcessor.from_pretrained(args.checkpoint, trust_remote_code=True, revision=args.revision)
    video_processor = processor.video_processor
    named = args.fps is not None or args.num_frames is not None  # a rate or a count replaces both defaults
    settings = {
        "fps": args.fps if named else video_processor.fps,
        "num_frames": args.num_frames if named else video_processor.num_frames,
        "sampling": args.sampling or (None if named else video_processor.sampling),
        "segment_frames": args.segment_frames,
    }
    cache = None
    if args.embeddings_cache is not None:
        # The processor's full config (resize, crop, normalisation) is part of the key, beside the sampling.
        key = {**settings, "video_processor": json.loads(video_processor.to_json_string())}
        cache = EmbeddingCache(args.embeddings_cache, checkpoint_fingerprint(args.checkpoint, args.revision), key)

    videos = embed_video_clips(
        model,
        video_processor,
        dataset.clips,
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
    failed = [{"video": dataset.clips[index].path, "error": error} for index, error in sorted(videos.failures.items())]
    if failed and args.strict:
        raise RuntimeError(f"{len(failed)} video(s) could not be decoded (--strict); first: {failed[0]}")
    scored = score(args, model, processor.tokenizer, dataset, videos)
    return {
        "task": args.task,
        "checkpoint": str(args.checkpoint),
        "manifest": str(args.manifest),
        "metrics": scored["metrics"],
        "counts": {"videos": len(dataset.clips), "videos_evaluated": len(videos.indices), **scored["counts"]},
        "failed_videos": failed,
        "sampling": settings,
        "embeddings_cache": None
        if cache is None
        else {"file": str(cache.path), "hits": videos.cache_hits, "embedded": len(videos.indices) - videos.cache_hits},
        "seconds": round(time.perf_counter() - started, 3),
        "videofirst_version": videofirst.__version__,
        "arguments": {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        results = evaluate(args)
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    output = args.output or Path(f"eval_{args.task}_{args.manifest.stem}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    if results["failed_videos"]:
        print(f"warning: {len(results['failed_videos'])} video(s) failed to decode and were excluded", file=sys.stderr)
    print(json.dumps({"metrics": results["metrics"], "counts": results["counts"]}, indent=2))
    print(f"Results written to {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
