"""The layering rule (docs/architecture.md, Layers): the core never imports a backend, not even by
name.

Read from the source with `ast`, so a backend import anywhere in `shared/` (inside a function,
through importlib, or as a package-name string built for it) fails here whether or not a test
happens to run that line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
BACKEND_NAME = re.compile(r"^(t2s_torch|t2s_mlx)(\.|$)")
# The launcher above both (`text2sign`) is not imported either; the name alone is the
# distribution's (click's version option) and the loggers', so only its import counts.
ABOVE = re.compile(r"^(t2s_torch|t2s_mlx|text2sign)(\.|$)")
DYNAMIC_IMPORTS = {"import_module", "__import__"}


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def backend_references(source: str) -> list[str]:
    """Each way `source` reaches a backend: `line: what`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] if not node.level else []
        else:
            names = []
        found += [f"{node.lineno}: import {n}" for n in names if ABOVE.match(n)]
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                BACKEND_NAME.match(node.value):
            found.append(f"{node.lineno}: the package name {node.value!r}")
        if isinstance(node, ast.Call) and _called_name(node) in DYNAMIC_IMPORTS and node.args \
                and not isinstance(node.args[0], ast.Constant):
            found.append(f"{node.lineno}: {_called_name(node)} of a computed name")
    return sorted(found, key=lambda f: int(f.split(":")[0]))


def test_the_check_sees_each_way_of_naming_a_backend():
    old = """
import importlib
import t2s_mlx.doctor
from text2sign.demo import default_backend

def backend_module(name):
    return importlib.import_module(f"{ctx.obj}.{name}")

def default_backend():
    return "t2s_mlx"

def loader():
    return __import__("t2s_torch.sample")
"""
    found = backend_references(old)
    assert [f.split(": ", 1)[0] for f in found] == ["3", "4", "7", "10", "13"], found
    harmless = ('from .cli import make_group\nimport shared.model.text_cache\n'
                'log = getLogger("text2sign.data")\n')
    assert backend_references(harmless) == []


def test_the_core_imports_no_backend():
    files = sorted(SHARED.rglob("*.py"))
    assert len(files) > 30
    found = [f"{path.relative_to(SHARED.parent)}:{ref}" for path in files
             for ref in backend_references(path.read_text(encoding="utf-8"))]
    assert found == [], "shared/ must not import a backend (docs/architecture.md, Layers):\n" + \
        "\n".join(found)


# shared/'s own layers, bottom first: what each subpackage may import besides itself.
# io_atomic (write beside, rename over) is the very bottom, below config: every layer writes files.
LAYERS = {
    "io_atomic": set(),
    "config": {"io_atomic"},
    "diffusion": {"config", "io_atomic"},
    "data": {"config", "io_atomic"},
    "model": {"config", "diffusion", "io_atomic"},
    "evaluation": {"config", "diffusion", "data", "model", "io_atomic"},
    "app": {"config", "diffusion", "data", "model", "evaluation", "io_atomic"},
}


def shared_imports(source: str) -> list[tuple[int, str]]:
    """Each `shared.<layer>` that `source` imports, with its line (absolute imports only)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
            if node.module == "shared":
                names = [f"shared.{alias.name}" for alias in node.names]
        else:
            continue
        found += [(node.lineno, n.split(".")[1]) for n in names
                  if n.startswith("shared.")]
    return sorted(found)


def test_the_layer_check_sees_an_upward_import():
    source = ("from shared.config import Config\nimport shared.data.video\n"
              "def f():\n    from shared.app.cli_common import run_script\n"
              "from shared import evaluation\n")
    assert shared_imports(source) == [(1, "config"), (2, "data"), (4, "app"), (5, "evaluation")]


def test_each_layer_imports_only_the_layers_below_it():
    files = sorted(SHARED.rglob("*.py"))
    layers = {p.relative_to(SHARED).parts[0].removesuffix(".py") for p in files} - {"__init__"}
    assert layers == set(LAYERS), "a new folder in shared/ needs its place in LAYERS"
    upward = []
    for path in files:
        parts = path.relative_to(SHARED).parts
        if parts == ("__init__.py",):
            continue
        layer = parts[0].removesuffix(".py")
        upward += [f"{path.relative_to(SHARED.parent)}:{line}: {layer} imports shared.{other}"
                   for line, other in shared_imports(path.read_text(encoding="utf-8"))
                   if other != layer and other not in LAYERS[layer]]
    assert upward == [], "shared/'s layers import downward only:\n" + "\n".join(upward)
