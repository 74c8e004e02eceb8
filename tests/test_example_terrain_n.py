"""examples/terrain_n: the N-band crossing reaches the optimum, where Snell's law holds in
every band; the optimum is checked independently against scipy on the plain formula."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import jax  # noqa: F401 (a required test dependency)
import numpy as np
import pytest
import scipy.optimize as scipy_optimize
import torch  # noqa: F401 (a required test dependency)

pytestmark = pytest.mark.usefixtures("x64")  # these JAX programs compute in float64

EXAMPLE = Path(__file__).parents[1] / "examples" / "terrain_n" / "optimize.py"


@pytest.fixture(scope="module")
def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("terrain_n_optimize", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _scipy_optimum(terrain: object) -> np.ndarray:
    """The optimum of the plain NumPy formula by BFGS with its exact gradient."""

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        legs = terrain.legs(x)  # type: ignore[attr-defined]
        w, v = terrain.widths, terrain.speeds  # type: ignore[attr-defined]
        d = legs / np.hypot(legs, w) / v
        return float(np.sum(np.hypot(legs, w) / v)), d[:-1] - d[-1]

    x0 = terrain.straight_line()  # type: ignore[attr-defined]
    result = scipy_optimize.minimize(fun, x0, jac=True, method="BFGS", options={"gtol": 1e-12})
    return np.asarray(result.x)


@pytest.mark.parametrize("bands, seed", [(4, 1), (5, 7)])
def test_snell_holds_in_every_band(example: ModuleType, bands: int, seed: int) -> None:
    terrain = example.Terrain.random(bands, seed)
    history, components, ok = example.run(terrain)
    x = history.x[-1]
    assert ok and example.snell_spread(terrain, x) < 1e-6
    assert [c.backend.name for c in components] == ["jax", "torch", "numpy", "jax", "torch"][:bands]
    reference = _scipy_optimum(terrain)
    np.testing.assert_allclose(x, reference, atol=1e-6)
    assert history.objective[-1] == pytest.approx(terrain.time(reference), abs=1e-9)


def test_main_prints_table_and_saves_plots(
    example: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--bands", "3", "--widths", "10,10,10", "--speeds", "0.7,0.3,0.45", "--h", "20"]
    assert example.main([*args, "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Snell's law" in out and "holds in every band" in out
    t = re.search(r"^t = (\S+)", out, flags=re.M)
    assert t and abs(float(t.group(1)) - 81.911688) < 1e-6  # docs/design.md's three-band optimum
    for band in ("band1  jax", "band2  torch", "band3  numpy"):
        assert band in out
    for name in ("objective", "pipeline", "paths", "landscape"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
