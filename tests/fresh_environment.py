"""A fresh Python environment holding only what a `requirements.txt` declares, built from the installed packages.

The stranger who finds a checkpoint on the Hub has installed the export's `requirements.txt` and nothing else. This
module reproduces that environment without a network: it resolves the requirements to the installed distributions
they name plus everything those depend on (their `Requires-Dist`, markers evaluated for this platform, extras
ignored), then links exactly those distributions' top-level modules and `.dist-info` folders into one folder.
Python started with `-S` (no site-packages) and that folder on `PYTHONPATH` sees nothing else: `videofirst`, PyAV
or any other undeclared package is simply not installed there, for `import` statements, `importlib.util.find_spec`,
`importlib.metadata` and therefore for transformers' remote-code import check alike.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

from packaging.requirements import Requirement


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def dependency_closure(requirements: list[Requirement]) -> dict[str, metadata.Distribution]:
    """The installed distributions `requirements` need, by normalised name; a missing declared one is an error."""
    installed = {_normalize(dist.metadata["Name"]): dist for dist in metadata.distributions()}
    closure: dict[str, metadata.Distribution] = {}
    pending = [(requirement, True) for requirement in requirements]
    while pending:
        requirement, declared = pending.pop()
        name = _normalize(requirement.name)
        if name in closure:
            continue
        dist = installed.get(name)
        if dist is None:
            if declared:
                raise LookupError(f"requirement {requirement} is not installed in this environment")
            continue  # an optional platform dependency (e.g. CUDA wheels of torch) that this machine lacks
        if declared and dist.version not in requirement.specifier:
            raise LookupError(f"installed {name} {dist.version} does not satisfy {requirement}")
        closure[name] = dist
        for line in dist.requires or []:
            dependency = Requirement(line)
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                pending.append((dependency, False))
    return closure


def _top_level_entries(dist: metadata.Distribution) -> set[Path]:
    root = Path(dist.locate_file(""))
    entries = set()
    for file in dist.files or []:
        parts = Path(file).parts
        if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth"):
            continue
        entries.add(root / parts[0])
    return entries


def build(requirements_file: Path, target: Path) -> dict[str, str]:
    """Links the closure of `requirements_file` into `target`; returns the distributions' versions by name."""
    closure = dependency_closure(read_requirements(requirements_file))
    owners: dict[Path, set[str]] = defaultdict(set)
    for dist in metadata.distributions():
        for entry in _top_level_entries(dist):
            owners[entry].add(_normalize(dist.metadata["Name"]))
    target.mkdir(parents=True, exist_ok=True)
    for dist in closure.values():
        root = Path(dist.locate_file(""))
        for entry in _top_level_entries(dist):
            if not entry.exists():
                continue
            if entry.is_dir() and len(owners[entry]) > 1:
                # A namespace folder shared with other distributions: link only this distribution's children.
                (target / entry.name).mkdir(exist_ok=True)
                children = {root.joinpath(*Path(file).parts[:2]) for file in dist.files if len(Path(file).parts) > 2}
                for child in children & set(entry.iterdir()):
                    link = target / entry.name / child.name
                    if not link.exists():
                        link.symlink_to(child)
            elif not (target / entry.name).exists():
                (target / entry.name).symlink_to(entry)
    return {name: dist.version for name, dist in closure.items()}


def python_command(target: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """Command and environment that run this interpreter inside the fresh environment `target`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PYTHONPATH"] = str(target)
    env["PYTHONNOUSERSITE"] = "1"
    return [sys.executable, "-S", *args], env


def run(target: Path, args: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    command, base_env = python_command(target, *args)
    return subprocess.run(command, env={**base_env, **(env or {})}, capture_output=True, text=True, **kwargs)
