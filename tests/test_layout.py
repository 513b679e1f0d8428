"""The layout's rules, checked on the source: the flow's packages, one home per shared concern.

Each rule names the file and line that breaks it, so a new module that slips (a library module
importing the CLI, an import cycle between modules or between packages, a private atomic writer, a second Dask client) fails here
with the place to fix.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "scanstream"
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

#: calls that only the shared homes may make: (call name, the modules allowed to make it)
ONE_HOME = {
    "os.replace": {"scanstream.atomic"},  # files and directories, the store writer's too (atomic.exchange_dirs)
    # process-level parallelism is Dask's (scanstream.executor). The pools beside it say why in
    # their module docstrings: simulate's processes and ingest's decoding threads (measured by
    # benchmarks/pools.py), inference's read-ahead threads and training's local loader (threads
    # inside one Dask task)
    "ProcessPoolExecutor": {"scanstream.simulate.dataset"},
    "ThreadPoolExecutor": {"scanstream.ingest.images", "scanstream.inference.engine", "scanstream.training.dataload"},
    "Pool": set(),  # multiprocessing.Pool, get_context(...).Pool
    "Process": set(),  # multiprocessing.Process
    "Client": {"scanstream.executor"},
    "LocalCluster": {"scanstream.executor"},
    "tomllib.loads": {"scanstream.config"},
    "tqdm": {"scanstream.progress"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
TREES = {name: ast.parse(p.read_text(), filename=str(p)) for name, p in MODULES.items()}


def imported(name: str, node: ast.AST) -> list[str]:
    """The scanstream modules an import statement of module ``name`` loads (submodules resolved)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "scanstream"]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base.split(".")[0] != "scanstream":
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        out.append(sub if sub in MODULES else base)
    return out


def imports(name: str) -> list[tuple[str, int, bool]]:
    """(module imported, line, inside a function) for every scanstream import of ``name``."""
    tree = TREES[name]
    top = set(map(id, tree.body))
    out = []
    for node in ast.walk(tree):
        for target in imported(name, node):
            out.append((target, node.lineno, id(node) not in top and not _in_type_checking(tree, node)))
    return out


def _in_type_checking(tree: ast.Module, node: ast.AST) -> bool:
    return any(
        isinstance(stmt, ast.If) and "TYPE_CHECKING" in ast.unparse(stmt.test) and any(n is node for n in ast.walk(stmt))
        for stmt in tree.body
    )


def where(name: str, line: int) -> str:
    return f"{MODULES[name].relative_to(ROOT.parent)}:{line}"


def test_the_library_never_imports_the_cli():
    bad = [
        f"{where(name, line)} imports {target}"
        for name in MODULES
        if not name.startswith("scanstream.cli") and name != "scanstream.__main__"
        for target, line, _ in imports(name)
        if target == "scanstream.cli" or target.startswith("scanstream.cli.")
    ]
    assert not bad, "library modules import the CLI (take a progress callable or a value instead):\n" + "\n".join(bad)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    return {name: {t for t, _, _ in imports(name) if t in MODULES and t != name} for name in MODULES}


def test_no_two_modules_import_each_other():
    """Imports inside functions count: a cycle hidden in a function body is still a cycle."""
    cycles = strongly_connected(import_graph())
    assert not cycles, "import cycles (each line: modules that reach each other):\n" + "\n".join(map(" <-> ".join, cycles))


def test_the_cycle_check_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def package_of(name: str, depth: int) -> str:
    """The package ``depth`` levels below scanstream that holds module ``name`` (``name`` itself when shallower).

    >>> package_of("scanstream.a.b.c", 1), package_of("scanstream.a.b.c", 2), package_of("scanstream.metrics", 1)
    ('scanstream.a', 'scanstream.a.b', 'scanstream.metrics')
    """
    parts = name.split(".")
    return ".".join(parts[: depth + 1]) if len(parts) > depth + 1 else name


def package_cycles(graph: dict[str, set[str]], depth: int) -> list[list[str]]:
    """The import cycles between packages once every module is collapsed to its package at ``depth``."""
    collapsed: dict[str, set[str]] = {}
    for name, targets in graph.items():
        node = package_of(name, depth)
        collapsed.setdefault(node, set()).update(package_of(t, depth) for t in targets)
        collapsed[node].discard(node)
    return strongly_connected(collapsed)


#: How deep packages nest below scanstream (1: scanstream.a/; 2: scanstream.a.b/ exists too).
PACKAGE_DEPTH = max(len(name.split(".")) - 1 for name, path in MODULES.items() if path.name == "__init__.py")


@pytest.mark.parametrize("depth", range(1, PACKAGE_DEPTH + 1))
def test_no_two_packages_import_each_other(depth):
    """Sub-packages form layers: shared pieces sit below the stages that share them, never inside one of them."""
    cycles = package_cycles(import_graph(), depth)
    lines = []
    for component in cycles:
        lines.append(" <-> ".join(component) + ":")
        lines += [
            f"  {where(name, line)} imports {target}"
            for name in MODULES
            if package_of(name, depth) in component
            for target, line, _ in imports(name)
            if target in MODULES and package_of(target, depth) in component and package_of(target, depth) != package_of(name, depth)
        ]
    assert not cycles, "packages that import each other (move the shared piece below both):\n" + "\n".join(lines)


def test_the_package_check_finds_a_planted_cycle():
    # two sub-packages reach each other through different modules: no module cycle, one package cycle
    planted = {"scanstream.a.x": {"scanstream.b.y"}, "scanstream.b.z": {"scanstream.a.w"}, "scanstream.a.w": set(),
               "scanstream.b.y": {"scanstream.metrics"}, "scanstream.metrics": set()}
    assert strongly_connected(planted) == []
    assert package_cycles(planted, 1) == [["scanstream.a", "scanstream.b"]]
    # the same one level down, inside scanstream.p: seen at depth 2, one package at depth 1
    deeper = {"scanstream.p.a.x": {"scanstream.p.b.y"}, "scanstream.p.b.z": {"scanstream.p.a.w"}}
    assert package_cycles(deeper, 1) == []
    assert package_cycles(deeper, 2) == [["scanstream.p.a", "scanstream.p.b"]]
    # one import planted in the real tree: the store importing a stage that imports the store
    graph = import_graph()
    graph["scanstream.store.crops"] = graph["scanstream.store.crops"] | {"scanstream.inference.classify"}
    assert any({"scanstream.store", "scanstream.inference"} <= set(c) for c in package_cycles(graph, 1))
    assert PACKAGE_DEPTH >= 1


#: Third-party packages a module needs torch for; the light install (docs/install.md) has none of them.
TORCH = ("torch", "torchvision")


def imports_torch_at_the_top(name: str) -> bool:
    """Whether module ``name`` imports torch in its own body (an import inside ``try`` is optional, not counted)."""
    for node in TREES[name].body:
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] in TORCH for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] in TORCH:
            return True
    return False


def torch_bound(graph: dict[str, set[str]] | None = None, direct: set[str] | None = None) -> set[str]:
    """The modules that cannot be imported without torch: those importing it at the top, and every
    module importing one of them at the top (``graph``: top-level scanstream imports per module)."""
    if graph is None:
        graph = {name: {t for t, _, inner in imports(name) if not inner and t in MODULES} for name in MODULES}
    bound = set(direct if direct is not None else (n for n in MODULES if imports_torch_at_the_top(n)))
    grew = True
    while grew:
        new = {name for name, targets in graph.items() if name not in bound and targets & bound}
        bound |= new
        grew = bool(new)
    return bound


def test_library_modules_import_scanstream_at_the_top():
    """Only the CLI imports lazily (so ``scanstream --help`` stays fast); elsewhere a scanstream module that
    needs torch may be imported inside a function, so that its caller runs without torch (the light install)."""
    bound = torch_bound()
    bad = [
        f"{where(name, line)} imports {target} inside a function"
        for name in MODULES
        if not name.startswith("scanstream.cli")
        for target, line, inner in imports(name)
        if inner and target not in bound
    ]
    assert not bad, "\n".join(bad)


#: What a scanning PC or Dask worker without torch runs: classify and watch with ONNX exports, the
#: reading verbs, the review page and the gallery (docs/install.md).
LIGHT_MODULES = ("scanstream.cli", "scanstream.inference.classify", "scanstream.inference.watch",
                 "scanstream.inference.engine", "scanstream.inference.onnx_model", "scanstream.inference.scoring",
                 "scanstream.candidates.query", "scanstream.review.server", "scanstream.review.gallery",
                 "scanstream.store", "scanstream.devices", "scanstream.network.header", "scanstream.network.arrays")


def test_the_light_install_imports_no_torch_at_the_top():
    """The modules the light install runs import torch only inside functions (tests/test_light_install.py runs them)."""
    bound = torch_bound()
    assert not bound & set(LIGHT_MODULES), f"need torch to import: {sorted(bound & set(LIGHT_MODULES))}"
    assert {"scanstream.network.model", "scanstream.network.checkpoint", "scanstream.training.loop"} <= bound


def test_torch_bound_follows_top_level_imports():
    graph = {"a": {"b"}, "b": {"c"}, "c": set(), "d": set(), "e": {"d"}}
    assert torch_bound(graph, {"c"}) == {"a", "b", "c"}
    assert torch_bound(graph, set()) == set()


def test_modules_and_functions_stay_readable():
    bad = []
    for name, path in MODULES.items():
        lines = path.read_text().count("\n")
        if lines > MAX_MODULE_LINES:
            bad.append(f"{path.relative_to(ROOT.parent)}: {lines} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(TREES[name]):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    bad.append(f"{where(name, node.lineno)} {node.name}: {n} lines (at most {MAX_FUNCTION_LINES})")
    assert not bad, "\n".join(bad)


def test_every_exception_class_lives_in_errors():
    bad = [
        f"{where(name, node.lineno)} class {node.name}"
        for name in MODULES
        if name != "scanstream.errors"
        for node in ast.walk(TREES[name])
        if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith(("Error", "Exception")) for b in node.bases)
    ]
    assert not bad, "exception classes outside scanstream/errors.py:\n" + "\n".join(bad)


def calls(name: str) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(TREES[name]):
        if isinstance(node, ast.Call):
            out.append((ast.unparse(node.func), node.lineno))
    return out


@pytest.mark.parametrize("call", sorted(ONE_HOME))
def test_shared_concerns_have_one_home(call):
    """Atomic writes, Dask clients, TOML and progress bars are made in one module each."""
    bad = [
        f"{where(name, line)} calls {call}"
        for name in MODULES
        if name not in ONE_HOME[call]
        for func, line in calls(name)
        if func == call or func.endswith("." + call) and call[0].isupper()
    ]
    assert not bad, f"{call} outside {sorted(ONE_HOME[call])}:\n" + "\n".join(bad)


def test_the_rules_see_the_whole_package():
    """The checks above read every module (a parse failure or an empty walk would pass them all)."""
    assert {"scanstream.store.crops", "scanstream.training.loop", "scanstream.inference.classify", "scanstream.cli"} <= set(MODULES)
    assert sum(len(imports(n)) for n in MODULES) > 100
