"""examples/closure: a torch closure trained through the JAX Burgers component (small size)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import jax  # noqa: F401 (a required test dependency)
import numpy as np
import pytest
import torch  # noqa: F401 (a required test dependency)

CLOSURE = Path(__file__).parents[1] / "examples" / "closure"


@pytest.fixture(scope="module")
def train() -> ModuleType:
    """examples/closure/train.py, loaded as when run (it puts its folder on sys.path)."""
    spec = importlib.util.spec_from_file_location("closure_train", CLOSURE / "train.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_solver_gradients_match_finite_differences(train: ModuleType) -> None:
    import chainrule as cr

    rng = np.random.default_rng(0)
    u = np.sin(np.linspace(0, 2 * np.pi, 16, endpoint=False))[None] + 0.1 * rng.normal(size=(2, 16))
    inputs = {"u": u, "flux": 0.01 * rng.normal(size=(2, 16)), "steps": 3}
    report = cr.check_gradients(train.burgers, inputs, endpoints=["jvp", "vjp"], n_random=1)
    assert report.ok, report


def test_untrained_closure_is_the_plain_coarse_model(train: ModuleType) -> None:
    setup = train.Setup(steps=5, train=2)
    data = train.Data.make(setup, 2, seed=3)
    errors, plain, corrected = train.evaluate(setup, data, train.Closure())
    np.testing.assert_array_equal(plain, corrected)  # the last layer starts at zero
    assert errors.coarse == errors.corrected


def test_training_cuts_the_error(train: ModuleType, tmp_path: Path) -> None:
    # Small: 20 coarse steps, 8 training and 4 held-out initial conditions, 150 epochs.
    # Established on this size: 2.2x smaller on the training set, 1.6x held out; require 1.4x.
    setup = train.Setup(steps=20, train=8, test=4)
    result = train.run(setup, epochs=150, out=tmp_path)
    assert result.training.loss[-1] < 0.7 * result.training.loss[0]
    assert result.train.factor > 1.4, result.train
    assert result.test.factor > 1.4, result.test
    for name in ("solutions", "error_in_time", "loss"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000
