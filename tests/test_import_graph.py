"""The package's shape: imports run one way (entry points -> train -> hub -> evaluation -> data -> recipe ->
adaptation/registration -> modeling), with no cycle, and `modeling/` (shipped as remote code) imports nothing of
`videofirst`. Read from the source with `ast`, so a function-local import counts like a top-level one."""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "videofirst"
MODELING = REPO / "modeling"

# Lower floors never import higher ones; a module may import its own floor (no cycle allowed there either).
FLOORS = {
    "videofirst.modeling": 0,
    "videofirst.adaptation": 1,
    "videofirst.registration": 1,
    "videofirst.recipe": 2,
    "videofirst.data": 3,
    "videofirst.evaluation": 4,
    "videofirst.metrics": 4,
    "videofirst.hub": 5,
    "videofirst.train": 6,
    "videofirst": 7,  # the package's __init__: the public names
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every `videofirst...` module `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("videofirst"))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("videofirst"):
            found.add(node.module)
    return found


def floor(module: str) -> int:
    for prefix in sorted(FLOORS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return FLOORS[prefix]
    raise AssertionError(f"{module} has no floor in this test's FLOORS: place it")


def package_graph() -> dict[str, set[str]]:
    return {module_name(path): imported_modules(path) for path in PACKAGE.rglob("*.py")}


def test_every_module_has_a_floor():
    for module in package_graph():
        floor(module)


def test_imports_run_one_way():
    upward = [
        f"{module} (floor {floor(module)}) imports {target} (floor {floor(target)})"
        for module, targets in package_graph().items()
        for target in targets
        if floor(target) > floor(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    graph = package_graph()

    def resolve(target: str) -> str | None:
        # `from videofirst.evaluation import x` names the package; its __init__ is the module.
        return target if target in graph else None

    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(filter(None, map(resolve, graph[module]))):
            if state.get(target) == "open":
                cycle = path[path.index(target) :] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rule above would pass vacuously if the parser missed imports: a function-local upward import is found."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from videofirst.train.loop import TrainingRun\n")
    assert imported_modules(sample) == {"videofirst.train.loop"}
    assert floor("videofirst.train.loop") > floor("videofirst.data.loading")


@pytest.mark.parametrize("path", sorted(MODELING.glob("*.py")), ids=lambda path: path.name)
def test_modeling_imports_nothing_of_videofirst(path):
    """`modeling/` ships as remote code: only siblings (relative imports) and third-party packages."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            assert not any(alias.name.startswith("videofirst") for alias in node.names), path.name
        elif isinstance(node, ast.ImportFrom):
            assert node.level in (0, 1), f"{path.name}: only sibling relative imports ship as remote code"
            assert node.level == 1 or not (node.module or "").startswith("videofirst"), path.name
