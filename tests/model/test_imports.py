"""The model wing stands alone: every `engine.model` module imports without pydantic, xarray or
SciPy, and the package's public API still loads on first use."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import engine.model

ROOT = Path(__file__).resolve().parents[2]
BLOCKED = ("pydantic", "xarray", "scipy")


def _run(code: str) -> subprocess.CompletedProcess:
    env_code = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in BLOCKED) + code
    return subprocess.run(
        [sys.executable, "-c", env_code], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def test_every_model_module_imports_without_pydantic_xarray_scipy():
    names = sorted(m.name for m in pkgutil.iter_modules(engine.model.__path__))
    assert "kernel" in names and "relaxed" in names
    code = "import importlib\n" + "".join(f"importlib.import_module('engine.model.{n}')\n" for n in names)
    code += f"print(sorted(n for n, m in sys.modules.items() if m is not None and n.split('.')[0] in {BLOCKED}))\n"
    out = _run(code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_blocking_works():
    """The check above would pass vacuously if blocking did not make the import fail."""
    out = _run("import engine.config.schema\n")
    assert out.returncode != 0 and "pydantic" in out.stderr


def test_public_api_loads_on_first_use():
    out = _run("import engine\nprint(engine.__version__)\n")
    assert out.returncode == 0, out.stderr
    import engine as api
    from engine import simulate
    from engine.sim import simulate as module

    assert simulate is api.simulate is module.simulate and callable(simulate)
    assert set(api.__all__) == set(api._API) | {"__version__"}
    for name in api.__all__:
        assert getattr(api, name) is not None
