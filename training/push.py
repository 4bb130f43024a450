"""Publish an exported checkpoint (or a training run, exported on the way) to the Hugging Face Hub.

    python training/push.py out/videofirst-demo --repo-id me/videofirst-demo --private
    python training/push.py runs/long --repo-id me/videofirst-long --revision v2 --commit-message "256 frames"

Creates the repo if needed (`--private` applies then), commits the whole folder in one commit (files no longer in
the folder are removed from the repo unless `--keep-stale`; unchanged files are not re-uploaded) and points the
card's usage snippets at the repo. The token comes from `--token`, `HF_TOKEN` or `hf auth login`; `HF_ENDPOINT`
selects another Hub endpoint. A run folder or training checkpoint is first exported to a temporary folder with the
model-card options below.
"""

import argparse
import sys
import tempfile
from pathlib import Path

from videofirst.hub.cli import add_card_arguments, card_options_from_args, results_from_cli
from videofirst.hub.files import HANDLER_FILE
from videofirst.hub.push import push_to_hub
from videofirst.train.run_export import export_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="exported folder, run folder, or <run>/checkpoints/step_N")
    parser.add_argument("--repo-id", required=True, help="namespace/name of the model repo")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", help="branch to commit to (created from main if missing)")
    parser.add_argument("--commit-message", help="commit title")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    parser.add_argument("--keep-stale", action="store_true", help="keep repo files that are not in the folder")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the saved login)")
    parser.add_argument("--endpoint", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    add_card_arguments(parser)
    return parser


def _is_export(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "README.md").is_file() and (folder / HANDLER_FILE).is_file()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="videofirst-push-") as scratch:
            folder = args.source
            if not _is_export(folder):
                folder = export_run(
                    args.source,
                    Path(scratch) / "export",
                    results=results_from_cli(args.results),
                    card=card_options_from_args(args, repo_id=args.repo_id),
                    include_run_eval=not args.no_run_eval,
                )
            info = push_to_hub(
                folder,
                args.repo_id,
                private=True if args.private else None,
                revision=args.revision,
                commit_message=args.commit_message,
                token=args.token,
                endpoint=args.endpoint,
                delete_stale=not args.keep_stale,
                create_pr=args.create_pr,
            )
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Pushed {args.source} to {args.repo_id}: {info.commit_url}")
    if info.pr_url:
        print(f"Pull request: {info.pr_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
