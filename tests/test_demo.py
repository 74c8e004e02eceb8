"""The cross-framework demo (examples/bands) reaches docs/design.md's optimum with Snell's law."""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import jax
import numpy as np
import pytest
import torch  # noqa: F401 (a required test dependency)

pytestmark = pytest.mark.usefixtures("x64")  # these JAX programs compute in float64

BANDS = Path(__file__).parents[1] / "examples" / "bands"


@pytest.fixture
def demo(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """examples/bands/demo.py, importable with its sibling `plots` module as when run."""
    monkeypatch.syspath_prepend(str(BANDS))
    return importlib.import_module("demo")


def _remote_band_in_process() -> ModuleType:
    """The launched band's module, loaded here (it imports only numpy and chainrule)."""
    path = BANDS / "remote_band" / "component.py"
    spec = importlib.util.spec_from_file_location("bands_remote_band", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pipeline_gradient_matches_pure_jax(demo: ModuleType) -> None:
    import jax.numpy as jnp

    # Band 3 called in-process instead of over HTTP: the same component, no server needed.
    total_time = demo.pipeline(_remote_band_in_process().remote_band)
    x = jnp.array([4.0, 9.0])
    value, grad = jax.jit(jax.value_and_grad(total_time))(x)
    np.testing.assert_allclose(value, demo.reference_time(x), rtol=1e-12)
    np.testing.assert_allclose(grad, jax.grad(demo.reference_time)(x), atol=1e-8)


@pytest.mark.slow
def test_demo_end_to_end(
    demo: ModuleType,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A fresh environment cache: the test also covers building band 3's environment.
    cache = tmp_path_factory.mktemp("bands-envs")
    assert demo.main(["--out", str(tmp_path), "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    spread = re.search(r"Snell's law: spread (\S+)", out)
    assert spread and float(spread.group(1)) < 1e-6
    assert "optimum: matches docs/design.md" in out
    assert re.search(r"server at http://127\.0\.0\.1:\d+ stopped", out)
    # declared output shapes: no eval_shape request before the first jitted call
    assert re.search(r"band 3 +remote_band +apply \d+, vjp \d+", out)
    for name in ("objective", "landscape", "paths"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
