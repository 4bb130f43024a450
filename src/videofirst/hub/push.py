"""Pushing an exported folder to the Hugging Face Hub as one commit.

```python
from videofirst import ModelCardOptions, export_run, push_to_hub

folder = export_run("runs/long_stage", "out/videofirst-long", results="eval/msrvtt.json",
                    card=ModelCardOptions(repo_id="me/videofirst-long", hardware="8x A100 80GB"))
push_to_hub(folder, "me/videofirst-long", private=True, commit_message="Long stage, 256 frames")
```
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.hf_api import CommitInfo

from videofirst.hub.cards import card_for_repo, check_repo_id

__all__ = ["push_to_hub"]

logger = logging.getLogger(__name__)

# Files left out of a push: caches and editor/OS debris that may sit in an export folder (`upload_folder` already
# leaves out `.git/` and `.cache/huggingface/`). fnmatch's `*` also matches `/`, so these hold at any depth.
PUSH_IGNORE_PATTERNS = ["*__pycache__*", "*.DS_Store", ".cache/*", "*/.cache/*"]


def push_to_hub(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    commit_description: str | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    delete_stale: bool = True,
    create_pr: bool = False,
) -> CommitInfo:
    """Upload an exported folder as one commit of the model repo `repo_id` (created if needed), with
    `HfApi.upload_folder`.

    `private` applies when the repo is created. A `revision` other than the default branch is created from the
    default branch's head if missing (a pull request, `create_pr`, always targets the default branch). Files of the
    repo that are not in `folder` are deleted in the same commit (`delete_stale`, except `.gitattributes`), so a
    re-pushed checkpoint never mixes with an older one; files whose content did not change are not uploaded again.
    The card's usage snippets are pointed at `repo_id`: a `README.md` rendered for another (or a placeholder) repo id
    is rewritten in `folder` before the upload, and the rewrite is logged.
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not an exported checkpoint (no config.json); export it first")
    check_repo_id(repo_id)
    if create_pr and revision not in (None, "main"):
        raise ValueError(f"a pull request targets the default branch; got revision={revision!r} with create_pr=True")
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model").repo_id or repo_id
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    _point_card_at(folder / "README.md", repo_id)
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        # Every repo file matches "*": those the folder holds are re-added, the rest deleted (.gitattributes kept).
        delete_patterns="*" if delete_stale else None,
        ignore_patterns=list(PUSH_IGNORE_PATTERNS),
        commit_message=commit_message or f"Upload VideoFirst checkpoint from {folder.name}",
        commit_description=commit_description,
        revision=revision,
        create_pr=create_pr,
    )


def _point_card_at(card_path: Path, repo_id: str) -> None:
    """Points the card's snippets at `repo_id`. `upload_folder` uploads files as they are on disk, so the card is
    rewritten in place: the folder then holds what the repo holds."""
    if not card_path.is_file():
        return
    card = card_path.read_text(encoding="utf-8")
    retargeted = card_for_repo(card, repo_id)
    if retargeted != card:
        card_path.write_text(retargeted, encoding="utf-8")
        logger.info("%s: usage snippets now name the repo %s", card_path, repo_id)
