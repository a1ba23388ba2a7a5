"""The code's shape, checked over its syntax trees: no import circle in the engine, no engine
function over 60 lines, no ``sys.path`` edits anywhere, no branch on a method's mode name outside
the method registry, and light modules that stay light (no torch where it is not needed)."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from heterolora_core.methods import registry

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "heterolora_core"
MAX_FUNCTION_LINES = 60
SOURCE_DIRS = ("heterolora_core", "dashboard", "benchmarks", "heterolora_testing", "tests")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _runtime_imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module imported anywhere in ``tree`` (functions too), except under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the engine modules it imports; importing ``a.b.c`` also runs ``a`` and ``a.b``."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in _runtime_imports(ast.parse(path.read_text()), name, path.name == "__init__.py"):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                prefix = ".".join(parts[:i])
                if prefix in modules and prefix != name and not name.startswith(prefix + "."):
                    edges.add(prefix)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_engine_has_no_import_circle():
    graph = import_graph()
    assert graph["heterolora_core.training.trainer"] >= {"heterolora_core.methods.base", "heterolora_core.methods"}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_engine_function_is_longer_than_60_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert long == []


def _python_files():
    for folder in SOURCE_DIRS:
        yield from (ROOT / folder).rglob("*.py")


def test_no_file_edits_sys_path():
    offenders = []
    for path in _python_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "path" and ast.unparse(node.value) == "sys":
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def _mode_branches(path: Path, root: Path = ROOT) -> list[str]:
    """Comparisons of something named like a mode with a method's name (``mode == "dynamic"``,
    ``config.mode in ("static", "dynamic")``)."""
    names = set(registry.names())
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        constants = set()
        for operand in operands:
            if isinstance(operand, ast.Constant) and isinstance(operand.value, str):
                constants.add(operand.value)
            elif isinstance(operand, (ast.Tuple, ast.List, ast.Set)):
                constants.update(e.value for e in operand.elts if isinstance(e, ast.Constant))
        mentions_mode = any("mode" in ast.unparse(o) for o in operands if not isinstance(o, ast.Constant))
        if mentions_mode and constants & names:
            found.append(f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_branch_on_a_mode_name_outside_the_registry():
    offenders = []
    for folder in ("heterolora_core", "dashboard", "benchmarks", "heterolora_testing"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.parent.name != "methods":
                offenders += _mode_branches(path)
    assert offenders == []


def test_the_mode_branch_finder_finds_one(tmp_path):
    sample = tmp_path / "x.py"
    sample.write_text('if config.mode == "dynamic":\n    pass\nif mode in ("static", "lora"):\n    pass\nif group == "lora":\n    pass\n')
    assert [line.split(":")[1] for line in _mode_branches(sample, tmp_path)] == ["1", "3"]


@pytest.mark.parametrize("module", [
    "heterolora_core.records.store", "heterolora_core.records.worker", "heterolora_core.records.launchers",
    "heterolora_core.records.ray_executor", "heterolora_core.analysis.compare",
    "heterolora_core.analysis.allocation", "heterolora_core.sweeps", "heterolora_core.search.selection",
    "heterolora_core.training.run_config", "benchmarks.grid.report",
])
def test_light_modules_do_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
