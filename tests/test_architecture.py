"""The shape of the package: layers as folders, each importing only the layers above it; no
import circle; small modules; bindings and tools on the component's public interface only.

The imports are read from the source (AST), not by importing: every `import` and
`from ... import` that runs, at module level or inside a function (a lazy import is still a
dependency). Imports under `if TYPE_CHECKING:` are left out: they never run, they only name
types for the checker.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "src" / "chainrule"

# The layers, in order: a module may import its own layer and the layers before it. The
# public namespace (`chainrule`, `chainrule.jax`, ...) re-exports them all, so it comes last.
LAYERS = ("_schema", "_component", "_transport", "_bindings", "_tools", "_scale", "_cli")
PUBLIC = len(LAYERS)
MAX_LINES = 500


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if _is_type_checking(node):
            assert isinstance(node, ast.If)
            for other in node.orelse:
                yield from _runtime_imports(ast.Module(body=[other], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _runtime_imports(node)


def _package_of(module: str) -> str:
    is_package = MODULES[module].name == "__init__.py"
    return module if is_package else module.rsplit(".", 1)[0]


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[tuple[str, str]]:
    """(imported chainrule module, name imported from it or "") for one import statement."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == "chainrule":
                yield alias.name, ""
        return
    base = node.module or ""
    if node.level:
        package = _package_of(module).split(".")
        package = package[: len(package) - node.level + 1]
        base = ".".join([*package, *([base] if base else [])])
    if base.split(".")[0] != "chainrule":
        return
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        yield (submodule, "") if submodule in MODULES else (base, alias.name)


def _edges() -> dict[str, set[tuple[str, str]]]:
    found: dict[str, set[tuple[str, str]]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        found[module] = {t for node in _runtime_imports(tree) for t in _targets(module, node)}
    return found


EDGES = _edges()


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else PUBLIC


def test_every_import_names_a_module_of_the_package() -> None:
    missing = {(m, t) for m, targets in EDGES.items() for t, _ in targets if t not in MODULES}
    assert not missing, f"imports of modules that do not exist: {sorted(missing)}"


def test_each_layer_is_a_folder() -> None:
    for layer in LAYERS:
        assert (PACKAGE / layer / "__init__.py").is_file(), layer
    top = {p.name for p in PACKAGE.iterdir() if p.suffix == ".py"}
    assert top == {
        "__init__.py",
        "__main__.py",
        "jax.py",
        "torch.py",
        "soft.py",
        "plot.py",
        "ray.py",
    }


def test_no_import_circle() -> None:
    """Tarjan's strongly connected components of the import graph: each must be one module."""
    graph = {m: sorted({t for t, _ in targets if t in MODULES}) for m, targets in EDGES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                circles.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


def test_each_layer_imports_only_the_layers_above_it() -> None:
    upward = [
        f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
        for m, targets in EDGES.items()
        for t, _ in targets
        if _layer(t) > _layer(m)
    ]
    assert not upward, "\n".join(upward)


def test_no_module_is_over_500_lines() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


def _component_private_members() -> set[str]:
    tree = ast.parse((PACKAGE / "_component" / "component.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Component")
    names = {n.name for n in cls.body if isinstance(n, ast.FunctionDef)}
    for node in ast.walk(cls):
        owner = node.value if isinstance(node, ast.Attribute) else None
        if isinstance(owner, ast.Name) and owner.id == "self" and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_no_private_member_of_component_is_used_outside_the_component_layer() -> None:
    """Bindings, transports and tools use the component's documented interface (`point`,
    `run`, `apply_at`, `written`, `errors`, `validate_outputs`, `paths`, ...), so the
    component's insides can change without breaking them."""
    private = _component_private_members()
    assert "_guard" in private or "_impls" in private  # the scan finds what it looks for
    used = []
    for module, path in MODULES.items():
        if module.startswith("chainrule._component"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in private:
                owner = node.value
                if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                    used.append(f"{module}:{node.lineno}: .{node.attr}")
    assert not used, "private members of Component used outside it:\n" + "\n".join(used)


def test_no_private_name_of_the_component_layer_is_imported_outside_it() -> None:
    used = [
        f"{m} imports {name} from {t}"
        for m, targets in EDGES.items()
        if not m.startswith("chainrule._component")
        for t, name in targets
        if t.startswith("chainrule._component") and name.startswith("_")
    ]
    assert not used, "\n".join(used)


# Where the environment may be read: the public namespace, the CLI, and what starts servers
# (the factory of --workers processes, launch and the environments it builds).
EDGES_OF_THE_ENVIRONMENT = ("chainrule", "chainrule.jax", "chainrule._cli")
EDGE_PREFIXES = ("chainrule._cli.", "chainrule._transport.launch.")
EDGE_MODULES = {"chainrule._transport.http.serving"}


def _reads_environment(tree: ast.AST) -> bool:
    return any(
        isinstance(node, ast.Attribute)
        and node.attr in ("environ", "getenv", "environb")
        and isinstance(node.value, ast.Name)
        and node.value.id == "os"
        for node in ast.walk(tree)
    )


def test_only_the_edges_read_the_environment() -> None:
    """Environment variables are read where chainrule meets its user (the public namespace,
    the CLI, the code that starts servers), never deep inside, at import or per call."""
    deep = [
        m
        for m, path in MODULES.items()
        if m not in EDGES_OF_THE_ENVIRONMENT
        and m not in EDGE_MODULES
        and not m.startswith(EDGE_PREFIXES)
        and _reads_environment(ast.parse(path.read_text()))
    ]
    assert not deep, f"modules reading os.environ away from the edges: {deep}"


def test_importing_the_package_installs_no_exit_hook() -> None:
    """`import chainrule` registers nothing with atexit (the first launch does)."""
    code = (
        "import atexit, numpy, pydantic, xxhash; before = atexit._ncallbacks(); "
        "import chainrule; print(atexit._ncallbacks() - before)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "0", done.stderr + done.stdout


def test_importing_the_package_leaves_jax_x64_as_it_was() -> None:
    """`import chainrule` (and every public module) leaves JAX's 64-bit mode alone."""
    code = (
        "import jax; before = jax.config.read('jax_enable_x64'); "
        "import chainrule, chainrule.jax, chainrule.torch, chainrule.soft, chainrule.plot; "
        "assert jax.config.read('jax_enable_x64') == before; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
