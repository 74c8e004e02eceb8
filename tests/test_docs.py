"""Docs cannot drift: every ```python block of the README runs, in order, in one namespace."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("x64")  # these JAX programs compute in float64

ROOT = Path(__file__).parents[1]


def _blocks(path: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.M | re.S)


@pytest.mark.parametrize("doc", ["README.md"])
def test_python_blocks_run(doc: str, capsys: pytest.CaptureFixture[str]) -> None:
    blocks = _blocks(ROOT / doc)
    assert blocks, f"no python blocks in {doc}"
    namespace: dict[str, object] = {"__name__": "__doc_test__"}
    for i, code in enumerate(blocks):
        exec(compile(code, f"{doc}[block {i}]", "exec", dont_inherit=True), namespace)
    out = capsys.readouterr().out
    assert "expected float64[?], got float64[2,2]" in out
    assert "written" in out
