"""Faults: a killed server mid-optimization, a hung component, a raising component.

(A component returning NaN is `tests/test_finite.py`; bad input is `tests/test_server.py`
and `tests/test_fuzz.py`.)
"""

from __future__ import annotations

import os
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chainrule as cr
import chainrule.jax as crj

FIXTURES = Path(__file__).parent / "fixtures"


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


def _descend(square: cr.Component, steps: int, on_step: Any = None) -> np.ndarray:
    """Gradient descent on Σ(x² - t)² through a remote component under jit(value_and_grad)."""
    target = jnp.array([2.0, 3.0, 0.5])

    def loss(x: jax.Array) -> jax.Array:
        return jnp.sum((crj.call(square, {"x": x})["y"] - target) ** 2)

    step = jax.jit(jax.value_and_grad(loss))
    x = jnp.array([1.0, 1.0, 1.0])
    for i in range(steps):
        _, g = step(x)
        x = x - 0.05 * g
        if on_step is not None:
            on_step(i)
    return np.asarray(x)


@pytest.mark.usefixtures("x64")  # a JAX program in float64
@pytest.mark.slow
def test_a_server_killed_mid_optimization_is_restarted_and_the_answer_is_unchanged(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cache = tmp_path_factory.mktemp("fault-envs")
    launched = cr.launch(FIXTURES / "numpy2", cache_dir=cache, quiet=True)
    with launched as square:
        crj.call(square, {"x": jnp.ones(3)})  # one eager call: output shapes, for jit
        undisturbed = _descend(square, 30)
        killed = threading.Event()

        def kill_soon(i: int) -> None:
            if i == 10:  # kill from another thread, so it lands mid-call or between calls

                def kill() -> None:
                    time.sleep(0.01)
                    assert launched.process is not None
                    os.killpg(launched.process.pid, signal.SIGKILL)
                    killed.set()

                threading.Thread(target=kill).start()

        disturbed = _descend(square, 30, kill_soon)
    assert killed.is_set() and launched.restarts == 1
    assert "restarting it on port" in launched.log
    # kept linearizations died with the server: the next vjp recomputed, same numbers
    np.testing.assert_array_equal(disturbed, undisturbed)


def test_a_hung_component_hits_the_client_timeout_and_the_server_keeps_serving() -> None:
    release = threading.Event()

    def maybe_hang(inputs: In) -> Out:
        if inputs.x[0] > 0:
            release.wait(60)  # hangs until the test lets it go
        return Out(y=inputs.x)

    comp = cr.component(maybe_hang, inputs=In, outputs=Out, backend="numpy", name="hangs")
    try:
        with cr.serve(comp) as server:
            remote = cr.connect(server.url, timeout=0.5)
            start = time.monotonic()
            with pytest.raises(cr.TransportError, match=r"did not answer within 0.5 s"):
                remote.apply({"x": np.ones(2)})
            assert time.monotonic() - start < 5, "the timeout did not stop the wait"
            # the hung call holds one worker thread; everything else is still answered
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as answer:
                assert answer.status == 200
            np.testing.assert_array_equal(remote.apply({"x": -np.ones(2)}).y, -np.ones(2))
    finally:
        release.set()


@pytest.mark.usefixtures("x64")  # a JAX program in float64
def test_a_raising_component_returns_its_message_and_keeps_serving() -> None:
    def fragile(inputs: In) -> Out:
        if inputs.x[0] < 0:
            raise ArithmeticError(f"the model is undefined at x = {inputs.x[0]}")
        return Out(y=inputs.x * 2)

    comp = cr.component(fragile, inputs=In, outputs=Out, backend="numpy", name="fragile")
    with cr.serve(comp) as server:
        remote = cr.connect(server.url)
        for _ in range(3):
            with pytest.raises(cr.ComponentError) as caught:
                remote.apply({"x": [-1.5, 0.0]})
            assert "component 'fragile' raised in apply" in str(caught.value)
            assert "ArithmeticError: the model is undefined at x = -1.5" in str(caught.value)
            np.testing.assert_array_equal(remote.apply({"x": [1.0]}).y, [2.0])
        # and inside jitted JAX code, as itself
        with pytest.raises(cr.ComponentError, match=r"undefined at x = -1\.5"), crj.errors():
            remote.apply({"x": [1.0, 1.0]})  # shapes for jit
            jax.jit(lambda x: crj.call(remote, {"x": x})["y"])(jnp.array([-1.5, 1.0]))
