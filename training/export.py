"""Turn a training run, its export or one of its checkpoints into a folder ready for the Hugging Face Hub.

    python training/export.py runs/demo out/videofirst-demo
    python training/export.py runs/long/checkpoints/step_00001000 out/long-1000 --results eval/msrvtt.json \
        --repo-id me/videofirst-long --hardware "8x A100 80GB" --dataset me/howto-summaries

The folder holds the weights (safetensors), config, processor and tokenizer, the model code (remote code), the
pipelines, a model card (README.md) and the Inference Endpoints handler with its requirements.txt. Publish it with
`python training/push.py`.
"""

import argparse
import sys
from pathlib import Path

from videofirst.hub.cli import add_card_arguments, card_options_from_args, results_from_cli
from videofirst.train.run_export import export_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="run folder, exported checkpoint, or <run>/checkpoints/step_N")
    parser.add_argument("output_dir", type=Path, help="folder to write (must be empty unless --overwrite)")
    parser.add_argument("--repo-id", help="Hub repo the card's usage snippets point to (default: a placeholder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in output_dir")
    add_card_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        folder = export_run(
            args.source,
            args.output_dir,
            results=results_from_cli(args.results),
            card=card_options_from_args(args, repo_id=args.repo_id),
            include_run_eval=not args.no_run_eval,
            overwrite=args.overwrite,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Exported to {folder}")
    print(f"  load it:    AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)")
    print(f"  publish it: python training/push.py {folder} --repo-id <namespace>/<name>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
