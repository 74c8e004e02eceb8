"""examples/lorenz96: 4D-Var with the Lorenz-96 solver launched in its own environment."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("x64")  # these JAX programs compute in float64

L96 = Path(__file__).parents[1] / "examples" / "lorenz96"


def _load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def solver() -> ModuleType:
    """The launched component's module, loaded in-process (it imports only numpy, chainrule)."""
    return _load(L96 / "l96_solver" / "component.py", "l96_solver_component")


@pytest.mark.parametrize("seed", [0, 1])
def test_adjoint_and_tangent_linear_pass_check_gradients(solver: ModuleType, seed: int) -> None:
    import chainrule as cr

    rng = np.random.default_rng(seed)
    x0 = 8.0 + 2.0 * rng.normal(size=40)
    inputs = {"x0": x0, "steps": 20, "dt": 0.01, "forcing": 8.0}
    # jvp and vjp are written; the derived jacobian would cost one vjp per output element.
    report = cr.check_gradients(solver.l96, inputs, endpoints=["jvp", "vjp"], seed=seed)
    assert report.ok, report
    assert solver.l96.endpoints["vjp"] == "written"


def test_adjoint_matches_jax_autodiff_of_the_same_rk4(solver: ModuleType) -> None:
    import jax
    import jax.numpy as jnp

    def rk4(x: jax.Array) -> jax.Array:
        f = lambda y: (jnp.roll(y, -1) - jnp.roll(y, 2)) * jnp.roll(y, 1) - y + 8.0  # noqa: E731
        k1 = f(x)
        k2 = f(x + 0.005 * k1)
        k3 = f(x + 0.005 * k2)
        k4 = f(x + 0.01 * k3)
        return x + 0.01 / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    x = 8.0 + np.random.default_rng(2).normal(size=40)
    c = np.random.default_rng(3).normal(size=40)
    expected = jax.vjp(rk4, jnp.asarray(x))[1](jnp.asarray(c))[0]
    np.testing.assert_allclose(solver.rk4_step_transpose(x, c, 0.01, 8.0), expected, rtol=1e-12)


@pytest.mark.slow
def test_4dvar_recovers_the_initial_state(
    tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jax  # noqa: F401 (a required test dependency)
    import scipy  # noqa: F401 (a required test dependency)

    monkeypatch.syspath_prepend(str(L96))  # its plots module, as when run as a script
    assimilate = _load(L96 / "assimilate.py", "l96_assimilate")
    cache = tmp_path_factory.mktemp("l96-envs")  # a fresh cache: also covers building the env
    # Small: a 40-step window. Established: background RMS 1.12, analysis 0.41 (2.8x).
    result = assimilate.run(assimilate.Setup(window=40), tmp_path, cache, maxiter=100)
    assert result.analysis_rms < result.background_rms / 2, result
    assert result.analysis_window_rms < result.background_window_rms / 2
    assert result.analysis.costs[-1] < 0.5 * result.analysis.costs[0]
    for name in ("states", "cost", "errors"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
