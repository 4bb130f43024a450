"""Where data comes from: source strings, manifests, tar shards and Hub datasets, read with `datasets`.

This is the one reader of manifests: pretraining, video-to-text training, tokenizer training and the evaluation
sets (`videofirst.evaluation.sets.read_manifest_rows`) all read their files through `load_manifest` /
`load_source`, so a manifest means the same thing everywhere. Turning rows into batches is
`videofirst.data.loading`.

Sources
-------
A *source* is named by one string, read with the `datasets` library:

* a manifest, ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet``: one row per clip with a ``video`` or ``image``
  column (or ``file_name``, modality from the extension) holding a path relative to the manifest's folder (or
  absolute), a ``caption`` or ``text`` column, and optional ``start`` / ``end`` seconds;
* a folder holding ``metadata.jsonl`` / ``.csv`` / ``.parquet`` (the layout of `datasets`' folder builders:
  ``file_name`` plus caption columns), read like a manifest;
* WebDataset-style tar shards (`videofirst.data.shards`: ``mp4`` or an image plus ``txt`` / ``json``): a folder of
  ``.tar`` files (searched recursively), one ``.tar``, a glob (``data/shard-*.tar``) or a brace pattern
  (``shard-{000000..000099}.tar``); ``hf://``, ``https://`` and other fsspec URLs are streamed;
* a Hub dataset id (``owner/name``): the snapshot in the local cache is used when there is one (offline-first),
  otherwise it is downloaded; then it is read as a folder or as shards.

Local sources are map-style (`load_source`): tar shards are indexed once (member byte ranges) and each sample
is read with one seek, so shuffling is global, and resuming skips batches without decoding them. With
``data.streaming`` (always for remote shards) sources are read front to back as `datasets.IterableDataset`s
(`stream_source`); see `build_dataloader` for what that means for shuffling, several processes and resuming.

Manifests
---------
Captions must be non-empty strings. A manifest row whose caption is missing, null, empty, whitespace-only or not
a string (a number), or a manifest that is not UTF-8, is refused when the manifest is loaded, with the file and
row named; so are a JSON line that is no JSON object and a manifest without rows. A row's caption is its
``caption``, else its ``text``. A row without a media path, with an unknown media extension or with a
``start`` / ``end`` that is no number carries an ``error`` and is a bad sample when read (see
`videofirst.data.loading`), as is a tar-shard sample with a bad caption (or a non-UTF-8 ``txt``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from videofirst.data.shards import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    caption_problem,
    expand_braces,
    index_tar_shard,
    iter_tar_samples,
)
from videofirst.recipe import DataSection

logger = logging.getLogger(__name__)

MEDIA_COLUMNS = ("video", "image", "file_name")
TEXT_COLUMNS = ("caption", "text")
MANIFEST_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet", "metadata.json")
ROW_COLUMNS = ("media", "modality", "caption", "start", "end", "offset", "size", "error")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


# ----------------------------------------------------------------------------------------------------------------
# Source specs
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSpec:
    source: str
    weight: float = 1.0


def parse_sources(spec: str | os.PathLike | dict | Sequence[str | os.PathLike | dict]) -> list[SourceSpec]:
    """One source string, a ``{"source": ..., "weight": ...}`` mapping, or a list of either, as `SourceSpec`s."""
    items = [spec] if isinstance(spec, (str, os.PathLike, dict)) else list(spec)
    if not items:
        raise ValueError("No data source given.")
    specs = []
    for item in items:
        if isinstance(item, dict):
            unknown = set(item) - {"source", "weight"}
            if unknown or "source" not in item:
                raise ValueError(f"A mixed source is {{source: ..., weight: ...}}; got {item!r}.")
            weight = item.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight > 0:
                raise ValueError(f"Source weight must be a positive number, got {weight!r} for {item['source']}.")
            specs.append(SourceSpec(os.fspath(item["source"]), float(weight)))
        else:
            specs.append(SourceSpec(os.fspath(item)))
    return specs


def is_remote(source: str) -> bool:
    return "://" in source and not source.startswith("file://")


@dataclass(frozen=True)
class ResolvedSource:
    kind: str  # "manifest" (a table file) or "shards"
    locations: tuple[str, ...]  # the table file, or the shard paths / URLs


def resolve_source(source: str) -> ResolvedSource:
    """What a source string names (see the module docstring)."""
    source = source.removeprefix("file://")
    if is_remote(source):
        return ResolvedSource("shards", tuple(_expand_remote(source)))
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return ResolvedSource("manifest", (str(path),))
        if path.suffix.lower() == ".tar":
            return ResolvedSource("shards", (str(path),))
        raise ValueError(f"{source} is neither a manifest ({', '.join(MANIFEST_SUFFIXES)}) nor a .tar shard.")
    if path.is_dir():
        for name in METADATA_FILES:
            if (path / name).is_file():
                return ResolvedSource("manifest", (str(path / name),))
        shards = sorted(str(shard) for shard in path.rglob("*.tar"))
        if shards:
            return ResolvedSource("shards", tuple(shards))
        raise FileNotFoundError(f"{source} holds neither a metadata file ({', '.join(METADATA_FILES)}) nor tar shards.")
    if any(char in source for char in "*?[{"):
        shards = sorted({match for name in expand_braces(source) for match in glob.glob(name)})
        if not shards:
            raise FileNotFoundError(f"No shards match {source}.")
        return ResolvedSource("shards", tuple(shards))
    if _HUB_ID.match(source):
        return resolve_source(str(_hub_snapshot(source)))
    raise FileNotFoundError(f"Data source not found: {source}")


def _expand_remote(url: str) -> list[str]:
    urls = expand_braces(url)
    if not any(char in url for char in "*?["):
        return urls
    import fsspec

    expanded = []
    for pattern in urls:
        fs, _, paths = fsspec.get_fs_token_paths(pattern)
        protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
        expanded.extend(f"{protocol}://{path}" for path in sorted(paths))
    if not expanded:
        raise FileNotFoundError(f"No shards match {url}.")
    return expanded


def _hub_snapshot(repo_id: str) -> Path:
    """The local snapshot of a Hub dataset repo: the cached one if any (no network), else a download."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except LocalEntryNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise FileNotFoundError(
                f"Dataset {repo_id} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set."
            ) from None
    try:
        return Path(snapshot_download(repo_id, repo_type="dataset"))
    except Exception as err:
        raise FileNotFoundError(f"Dataset {repo_id} is not cached locally and could not be downloaded: {err}") from err


# ----------------------------------------------------------------------------------------------------------------
# Map-style sources
# ----------------------------------------------------------------------------------------------------------------


def _modality_of(path: str) -> str | None:
    extension = path.rsplit(".", 1)[-1].lower() if "." in path else ""
    if extension in VIDEO_EXTENSIONS:
        return "video"
    if extension in IMAGE_EXTENSIONS:
        return "image"
    return None


def load_manifest(path: str | Path, *, require_captions: bool = True, keep_columns: bool = False) -> datasets.Dataset:
    """Read a manifest (or a folder's metadata file) with `datasets`, resolve media paths, and check columns.

    Rows follow the pipeline's schema: ``media`` (absolute path), ``modality``, ``caption``, ``start``, ``end``
    (seconds or None), and ``offset`` / ``size`` (None here; used by tar shards) / ``error`` (why the row cannot
    be read: no media file, an unknown extension, a ``start`` / ``end`` that is no number; such a row is a bad
    sample).

    The evaluation sets read their manifests here too: with ``require_captions=False`` a caption column is
    optional and not checked (multiple-choice and classification manifests have none, retrieval captions may be
    lists), and with ``keep_columns`` every other column (``caption`` / ``text``, ``options``, ``answer``,
    ``label``, ...) is kept as read instead of the normalised ``caption``.
    """
    path = Path(path)
    if path.is_dir():
        return load_source(str(path))
    if not path.is_file():
        raise FileNotFoundError(f"Manifest not found: {path}")
    rows = _read_table(path)
    media = [column for column in MEDIA_COLUMNS if column in rows.column_names]
    text = [column for column in TEXT_COLUMNS if column in rows.column_names]
    if len(media) != 1 or (require_captions and not text):
        wanted = f"one of the columns {MEDIA_COLUMNS}" + (f" and one of {TEXT_COLUMNS}" if require_captions else "")
        raise ValueError(f"Manifest {path} needs {wanted}; it has {rows.column_names}.")
    root = path.parent.resolve()
    media_column = media[0]
    if require_captions:
        _check_captions(path, _captions_of(rows, text), text)
    replaced = [column for column in rows.column_names if column in (media_column, "start", "end")]
    if keep_columns:
        reserved = sorted(set(rows.column_names) - set(replaced) & (set(ROW_COLUMNS) - {"caption"}))
        if reserved:
            raise ValueError(f"Manifest {path}: the columns {reserved} are the data pipeline's own; rename them.")

    def normalise(row: dict[str, Any]) -> dict[str, Any]:
        name = row[media_column]
        modality = media_column if media_column != "file_name" else _modality_of(str(name or ""))
        media_path = None if not name else Path(name)
        start, start_error = _seconds_of(row.get("start"), "start")
        end, end_error = _seconds_of(row.get("end"), "end")
        error = start_error or end_error
        if media_path is None:
            error = f"the row names no media file (`{media_column}`)"
        elif modality is None:
            error = f"cannot tell video from image by the extension of {name}"
        normalised = {
            "media": None if media_path is None else str(media_path if media_path.is_absolute() else root / media_path),
            "modality": modality or "video",
            "start": start,
            "end": end,
            "offset": None,
            "size": None,
            "error": error,
        }
        if not keep_columns:
            normalised["caption"] = next((row[column] for column in text if row[column] is not None), None)
        return normalised

    return rows.map(normalise, remove_columns=replaced if keep_columns else rows.column_names)


def _read_table(path: Path) -> datasets.Dataset:
    """A manifest file's rows as `datasets` reads them; unreadable files fail naming the file and line."""
    builder = MANIFEST_SUFFIXES.get(path.suffix.lower(), "json")
    try:
        rows = datasets.load_dataset(builder, data_files=str(path), split="train")
        # The JSON reader keeps invalid UTF-8 in string columns (it would fail later, in a worker): check now.
        rows.data.table.validate(full=True)
    except Exception as error:  # the readers' errors come wrapped in a DatasetGenerationError
        if _caused_by(error, UnicodeDecodeError) or "UTF8" in str(error):
            raise ValueError(_not_utf8(path)) from error
        if builder != "parquet" and (problem := _text_table_problem(path, builder)) is not None:
            raise ValueError(problem) from error
        raise
    if len(rows) == 0:
        raise ValueError(f"Manifest {path} has no rows.")
    return rows


def _text_table_problem(path: Path, builder: str) -> str | None:
    """Why a JSON-lines or CSV manifest cannot be read: no rows, or the first line that is not a JSON object."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(lines) <= (builder == "csv"):  # nothing, or a CSV header alone
        return f"Manifest {path} has no rows."
    if builder == "csv" or lines[0].lstrip().startswith("["):  # one JSON array (a .json file), not JSON lines
        return None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            return f"{path}:{number} is not valid JSON: {error}"
        if not isinstance(row, dict):
            return f"{path}:{number} must be a JSON object, got {type(row).__name__}."
    return None


def _seconds_of(value: Any, column: str) -> tuple[float | None, str | None]:
    """A ``start`` / ``end`` cell as seconds (None when empty), or the reason it is not a time."""
    if value is None or value == "":
        return None, None
    if isinstance(value, bool):
        return None, f"`{column}` is {value!r}, not a number of seconds"
    try:
        return float(value), None
    except (TypeError, ValueError):
        return None, f"`{column}` is {value!r}, not a number of seconds"


def _captions_of(rows: datasets.Dataset, columns: Sequence[str]) -> list[Any]:
    """Each row's caption: its first non-null caption column (a manifest may use `caption` in some rows and
    `text` in others)."""
    if len(columns) == 1:
        return rows[columns[0]]
    values = zip(*(rows[column] for column in columns), strict=True)
    return [next((value for value in row if value is not None), None) for row in values]


def _check_captions(path: Path, captions: Sequence[Any], columns: Sequence[str]) -> None:
    """Refuse a manifest whose captions are not all non-empty strings, naming the rows (counted from 1)."""
    problems = []
    for number, caption in enumerate(captions, start=1):
        problem = caption_problem(caption)
        if problem is not None:
            problems.append(f"row {number} ({problem})")
    if problems:
        shown = ", ".join(problems[:10]) + (f" and {len(problems) - 10} more" if len(problems) > 10 else "")
        names = " or ".join(f"`{column}`" for column in columns)
        raise ValueError(f"{path}: every {names} must be a non-empty string; {shown}.")


def _caused_by(error: BaseException | None, kind: type[BaseException]) -> bool:
    while error is not None:
        if isinstance(error, kind):
            return True
        error = error.__cause__ or error.__context__
    return False


def _not_utf8(path: Path) -> str:
    """Where a text manifest stops being UTF-8."""
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                return (
                    f"{path} is not UTF-8: line {number}, byte {error.start + 1} ({line[: error.end + 20]!r}); "
                    "save the manifest as UTF-8."
                )
    return f"{path} is not UTF-8; save the manifest as UTF-8."


def load_shards(paths: Sequence[str]) -> datasets.Dataset:
    """Index local tar shards into rows (one per sample, with the media member's byte range)."""
    rows: list[dict] = []
    for path in paths:
        shard_rows, error = index_tar_shard(path)
        if error is not None:
            # The damaged part cannot be counted sample by sample; one bad row stands for it.
            logger.warning("%s", error)
            shard_rows.append({**_error_row(path, error), "key": None})
        rows.extend(shard_rows)
    if not rows:
        raise ValueError(f"The shards {list(paths)[:3]}... hold no samples.")
    # The sample key names a bad sample in warnings (``shard.tar#key``).
    return datasets.Dataset.from_list([{column: row[column] for column in (*ROW_COLUMNS, "key")} for row in rows])


def _error_row(media: str, error: str) -> dict:
    return {"media": media, "modality": "video", "caption": "", "start": None, "end": None, "offset": None,
            "size": None, "error": error}  # fmt: skip


def load_source(source: str) -> datasets.Dataset:
    """The rows of a local source (manifest, folder, tar shards or cached Hub dataset), map-style."""
    resolved = resolve_source(source)
    if resolved.kind == "manifest":
        return load_manifest(resolved.locations[0])
    if any(is_remote(location) for location in resolved.locations):
        raise ValueError(f"{source} is remote; read it with streaming (data.streaming=true).")
    return load_shards(resolved.locations)


def source_captions(spec, limit: int | None = None) -> list[str]:
    """Captions of one source or a mix (e.g. to train a tokenizer), in source order."""
    captions: list[str] = []
    for item in parse_sources(spec):
        resolved = resolve_source(item.source)
        if any(is_remote(location) for location in resolved.locations):
            rows = (row for url in resolved.locations for row in iter_tar_samples(url))
            captions.extend(row["caption"] for row in rows if row["caption"] and not row["error"])
        else:
            captions.extend(caption for caption in load_source(item.source)["caption"] if caption)
        if limit is not None and len(captions) >= limit:
            return captions[:limit]
    return captions


def training_sources(data: DataSection) -> str | list[dict[str, Any]]:
    """The recipe's training data: the ``train_sources`` mix when given, else ``train_manifest``."""
    return list(data.train_sources) if data.train_sources else data.train_manifest


# ----------------------------------------------------------------------------------------------------------------
# Streaming sources
# ----------------------------------------------------------------------------------------------------------------


def _stream_rows(shards: list[str]) -> Iterator[dict]:
    for url in shards:
        for row in iter_tar_samples(url):
            yield {column: row.get(column) for column in (*ROW_COLUMNS, "data", "key")}


def stream_source(source: str) -> datasets.IterableDataset:
    """Raw rows of a source as a `datasets.IterableDataset`, one data shard per tar shard (local sources that
    are not tar shards become iterable with up to 64 shards)."""
    resolved = resolve_source(source)
    if resolved.kind == "shards":
        return datasets.IterableDataset.from_generator(_stream_rows, gen_kwargs={"shards": list(resolved.locations)})
    rows = load_manifest(resolved.locations[0])
    rows = rows.add_column("data", [None] * len(rows)).add_column("key", [None] * len(rows))
    return rows.to_iterable_dataset(num_shards=min(64, len(rows)))
