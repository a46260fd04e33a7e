"""The package's shape (docs/ARCHITECTURE.md): layers that import only downwards, no import circle (imports inside
functions count), no module over about 400 lines, the UI never imports the CLI, and one place that names backends."""

import ast
import re
from pathlib import Path

from phi3space.jobs.spec import BACKENDS

PACKAGE = Path(__file__).resolve().parent.parent / "phi3space"

# Each layer may import its own and the ones after it in this list, never one before it.
LAYERS = ["ui", "cli", "jobs", "chat", "engine", "hub", "floor"]
FLOOR = {"config", "run", "state", "datadir", "report", "generation", "ranges", "refs", "errors"}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)] if node.level else []
            module = ".".join(base + ([node.module] if node.module else [])) if node.level else (node.module or "")
            for alias in node.names:
                full = f"{module}.{alias.name}"
                out.add(full if full in modules else module)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
    return {m for m in out if m in modules and m != name}


def _graph():
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself, __main__
    top = parts[1]
    if top in FLOOR:
        return "floor"
    return top if top in LAYERS else None


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle():
    assert _circles(_graph()) == []


def test_the_circle_check_finds_one():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_layers_import_only_downwards():
    wrong = []
    for module, deps in _graph().items():
        mine = _layer(module)
        for dep in deps:
            theirs = _layer(dep)
            if mine and theirs and LAYERS.index(theirs) < LAYERS.index(mine):
                wrong.append(f"{module} imports {dep}")
    assert wrong == []


def test_floor_modules_are_small_and_modules_stay_under_about_400_lines():
    sizes = {name: sum(1 for _ in path.open()) for name, path in _modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def _backend_names(tree: ast.AST) -> list[int]:
    """Lines where a backend's name is spelled as a value: 'hf-jobs' anywhere; 'local' where it is compared, or put
    in a tuple, list, set or mapping (where a backend would be; 'local' elsewhere is an owner or a word)."""
    names = set(BACKENDS)
    found = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in names - {"local"}]
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            values = [node.left, *node.comparators]
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            values = node.elts
        elif isinstance(node, ast.Dict):
            values = [*node.keys, *node.values]
        else:
            continue
        found += [node.lineno for v in values if isinstance(v, ast.Constant) and v.value in names]
    return sorted(set(found))


def test_only_the_jobs_spell_a_backend_name():
    """Backends are named in their registry (phi3space.jobs.spec.BACKENDS) and their own modules; everything else
    (config, engine, CLI, the page) reads their descriptions (label, billed, options, limits), and inside the jobs
    nothing compares a backend's name."""
    spelled = []
    for name, path in _modules().items():
        tree = ast.parse(path.read_text())
        if not name.startswith("phi3space.jobs"):
            spelled += [f"{name}:{line}" for line in _backend_names(tree)]
        elif name != "phi3space.jobs.spec":
            spelled += [f"{name}:{node.lineno}" for node in ast.walk(tree) if isinstance(node, ast.Compare) and any(
                isinstance(c, ast.Constant) and c.value in BACKENDS for c in [node.left, *node.comparators])]
    assert spelled == []


def test_the_backend_name_check_finds_them():
    found = _backend_names(ast.parse('a = ("local", "x")\nb = x == "local"\nc = "hf-jobs"\nowner = "local"\n'))
    assert found == [1, 2, 3]


def test_words_for_the_page_live_in_the_ui():
    outside = [f"{name}" for name, path in _modules().items() if not name.startswith("phi3space.ui")
               and re.search(r"Press 'Sign in|Sign in with Hugging Face'", path.read_text())]
    assert outside == []
