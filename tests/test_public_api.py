"""The public namespace: `__all__` matches the documented names, and optional stacks stay
optional (`import chainrule` needs only numpy, pydantic and xxhash)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import chainrule as cr

ROOT = Path(__file__).parents[1]


def test_all_names_import() -> None:
    for name in cr.__all__:
        assert hasattr(cr, name), name


def test_every_error_class_is_exported() -> None:
    """Every class of the exception tree can reach users (raised, or re-raised by a client),
    so each is importable from `chainrule` (ShapesUnknownError was not)."""
    from chainrule._schema import errors as _errors

    for name, cls in _errors._CLASSES.items():
        assert getattr(cr, name, None) is cls, name
        assert name in cr.__all__ and name in _errors.__doc__, name  # and in the drawn tree


def test_the_design_the_docs_point_at_exists() -> None:
    """The README and the examples refer to the design: it is docs/design.md, in the docs site."""
    assert (ROOT / "docs" / "design.md").is_file()
    assert "design.md" in (ROOT / "mkdocs.yml").read_text()
    texts = [ROOT / "README.md", *ROOT.glob("examples/**/*.md"), *ROOT.glob("examples/**/*.py")]
    for path in texts:
        assert "DESIGN.md" not in path.read_text(), f"{path} names a DESIGN.md that is not there"
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", path.read_text()):
            assert (path.parent / target).is_file(), f"{path}: link to {target} goes nowhere"


def test_documented_names_match_all() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^\| `([A-Za-z_0-9]+)`", text, flags=re.M))
    assert documented == set(cr.__all__)


BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"jax", "jaxlib", "torch", "fastapi", "uvicorn", "ray", "rich",
                                  "matplotlib", "httpx", "typer", "scipy", "optax"}:
            raise ModuleNotFoundError(f"blocked {name}", name=name)
sys.meta_path.insert(0, Block())
"""

USE = """
import numpy as np
import chainrule as cr

class In(cr.Schema):
    x: cr.Differentiable[cr.Array[(None,), cr.Float64]]

class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[(None,), cr.Float64]]

@cr.component(inputs=In, outputs=Out, backend="numpy")
def square(inputs):
    return Out(y=inputs.x ** 2)

assert np.allclose(square.vjp({"x": [1.0, 2.0]}, {"y": [1.0, 1.0]})["x"], [2.0, 4.0])
report = cr.check_gradients(square, {"x": [1.0, 2.0]})
assert report.ok
str(report)
try:
    cr.component(square.fn, inputs=In, outputs=Out, backend="jax")
except cr.SchemaDefinitionError as e:
    assert "pip install 'chainrule[jax]'" in str(e), e
else:
    raise AssertionError("jax backend loaded although jax is blocked")
print("ok")
"""


def test_core_imports_without_optional_stacks() -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER + USE], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
