"""The package's architecture, checked from its source with `ast` (nothing is imported).

Wings and the import rule (docs/architecture.md): model < config < sim < {runs, fit} < report < cli.
A module may import its own wing and the wings below it; `runs` and `fit` stand side by side and
do not import each other. Every import counts, also one inside a function. `engine/__init__.py`
is the public facade: it may import anything, and no module below the cli imports it.

Sizes: a module has at most `MAX_MODULE_LINES` lines and a function at most `MAX_FUNCTION_LINES`
(a signature of typer options aside), unless the module's docstring, or the function's text with
the comment lines right above it, says why with the words `stays whole`.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "engine"
RANK = {"model": 0, "config": 1, "sim": 2, "runs": 3, "fit": 3, "report": 4, "cli": 5}
TOP_LEVEL_CLI = {"cli", "__main__"}
FACADE = "engine"
MODEL_MAY_IMPORT = {"jax", "numpy"}
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80
WHY = "stays whole"


def _modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def wing(module: str) -> str | None:
    """The wing of a dotted module name of the package (None: the facade `engine`)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    if parts[1] in TOP_LEVEL_CLI:
        return "cli"
    if parts[1] in RANK:
        return parts[1]
    raise AssertionError(f"{module}: not in a wing; wings are {sorted(RANK)} (cli: engine/cli/, __main__.py)")


def _is_package(module: str) -> bool:
    return MODULES.get(module, Path()).name == "__init__.py"


def imports(module: str, top_level_only: bool = False) -> list[tuple[int, str]]:
    """(line, imported module) of every import in `module`, relative ones resolved; `from m import
    n` counts as an import of `m.n` where that is a module of the package."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if _is_package(module) else module.split(".")[:-1]
                anchor = here[: len(here) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.append((node.lineno, sub if sub in MODULES else base))
    return out


def _inside(module: str) -> list[tuple[int, str]]:
    return [(n, m) for n, m in imports(module) if m == FACADE or m.startswith(FACADE + ".")]


def test_every_module_is_in_a_wing():
    for module in MODULES:
        if module != FACADE:
            wing(module)


def layer_violations(module: str) -> list[str]:
    """One line per import of `module` that breaks the rule of the wings."""
    mine, path, wrong = wing(module), MODULES[module], []
    for line, target in _inside(module):
        theirs = wing(target)
        if theirs is None:
            if mine != "cli":  # the facade imports the wings: only the shell above them may use it
                wrong.append(f"{path}:{line}: imports the facade `engine`; import the wing's module instead")
        elif theirs != mine and RANK[theirs] >= RANK[mine]:
            wrong.append(f"{path}:{line}: {mine} imports {target} ({theirs}), which is not below it")
    return wrong


def test_imports_run_down_the_wings():
    wrong = [w for module in MODULES if module != FACADE for w in layer_violations(module)]
    assert not wrong, "\n".join(wrong)


def test_model_imports_only_jax_numpy_and_the_standard_library():
    wrong = []
    for module, path in MODULES.items():
        if module == FACADE or wing(module) != "model":
            continue
        for line, target in imports(module):
            root = target.split(".")[0]
            inside_model = target == "engine.model" or target.startswith("engine.model.")
            allowed = root in MODEL_MAY_IMPORT or root in sys.stdlib_module_names or root == "__future__"
            if not (inside_model or (root != FACADE and allowed)):
                wrong.append(f"{path}:{line}: model imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_at_import_time():
    graph = {
        m: sorted({t for _, t in imports(m, top_level_only=True) if t in MODULES and t != FACADE})
        for m in MODULES
    }
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(t) :], t]))
            if t not in state:
                visit(t, [*path, t])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])


def _says_why(lines: list[str], first: int, last: int) -> bool:
    """Whether lines first..last (1-based), or the comment lines right above, say `WHY`."""
    above = first - 1
    while above >= 1 and lines[above - 1].lstrip().startswith(("#", "@")):
        above -= 1
    return any(WHY in line for line in lines[above:last])


def _length(fn: ast.FunctionDef | ast.AsyncFunctionDef, source: str) -> int:
    """Lines of a function; a signature that declares typer options does not count."""
    n = fn.end_lineno - fn.lineno + 1
    signature = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
    if any(
        "typer." in (ast.get_source_segment(source, a.annotation) or "") for a in signature if a.annotation
    ):
        n -= fn.body[0].lineno - fn.lineno
    return n


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_and_function_sizes(module):
    path = MODULES[module]
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    wrong = []
    if len(lines) > MAX_MODULE_LINES and WHY not in (ast.get_docstring(ast.parse(source)) or ""):
        wrong.append(f"{path}: {len(lines)} lines (at most {MAX_MODULE_LINES}, or say why it {WHY})")
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = _length(fn, source)
            if n > MAX_FUNCTION_LINES and not _says_why(lines, fn.lineno, fn.end_lineno):
                wrong.append(f"{path}:{fn.lineno}: {fn.name} has {n} lines (at most {MAX_FUNCTION_LINES})")
    assert not wrong, "\n".join(wrong)


def test_the_rule_sees_a_wrong_import_inside_a_function(tmp_path, monkeypatch):
    """A lower wing importing higher ones, absolutely and relatively, inside a function, and runs
    importing fit: each is one violation."""
    files = {
        "engine.model.bad": "def f():\n    from engine.report import summary\n    from ..sim import devices\n",
        "engine.runs.bad": "import engine.fit.calibrate\nfrom engine import simulate\n",
    }
    for module, text in files.items():
        path = tmp_path / f"{module.replace('.', '_')}.py"
        path.write_text(text)
        monkeypatch.setitem(MODULES, module, path)
    assert [t for _, t in imports("engine.model.bad")] == ["engine.report.summary", "engine.sim.devices"]
    assert len(layer_violations("engine.model.bad")) == 2
    assert len(layer_violations("engine.runs.bad")) == 2  # fit beside runs, and the facade
