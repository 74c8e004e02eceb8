"""examples/legacy: finite differences of the NumPy solver match the JAX twin's gradient, and
their cost grows with the size of the input (two solver runs per parameter)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import jax  # noqa: F401 (a required test dependency)
import pytest
import scipy  # noqa: F401 (a required test dependency)

pytestmark = pytest.mark.usefixtures("x64")  # these JAX programs compute in float64

EXAMPLE = Path(__file__).parents[1] / "examples" / "legacy" / "compare.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("legacy_compare", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_fd_matches_jax_and_cost_grows(example: ModuleType) -> None:
    rows = [example.measure(n, steps=100, repeats=1) for n in (6, 12, 24)]
    for row in rows:
        assert row.rel_error < 1e-6  # the accuracy the example states
        assert row.fd_runs == 2 * row.n + 1  # one apply, two probes per entry of κ
        assert row.fd_calls == "apply 1, vjp 1"
    assert [r.fd_runs for r in rows] == sorted({r.fd_runs for r in rows})


def test_main_prints_table_and_calibrates(
    example: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert example.main(["--sizes", "6,12", "--steps", "100", "--calibrate", "6"]) == 0
    out = capsys.readouterr().out
    assert "rel. error FD vs JAX" in out and "FD solver runs" in out
    assert "13 → 25 solver runs per gradient" in out
    assert "max |κ_FD − κ_JAX|" in out
