"""chainrule leaves JAX's configuration alone: it never turns 64-bit mode on for the process.
Float64 components still compute in float64 when called in process (a thread-local scope), and
a JAX program in 32-bit mode gets a clear error rather than a float64 label on float32 numbers.

The tests here run in 32-bit mode (`jax.enable_x64(False)`, thread-local), whatever other test
modules set."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import chainrule as cr
import chainrule.jax as crj

pytestmark = pytest.mark.jax

X = np.array([1e-10, 1e-3, 0.5])  # exp(x) - 1 at 1e-10: float32 gives 0 (relative error 1)


def _expm1(backend: str, x: Any = cr.Float64, y: Any = cr.Float64) -> cr.Component:
    """exp(x) - 1 written naively: catastrophic cancellation shows the precision used."""

    class In(cr.Schema):
        x: cr.Differentiable[cr.Array[("n",), x]]

    class Out(cr.Schema):
        y: cr.Differentiable[cr.Array[("n",), y]]

    xp = {"jax": jnp, "numpy": np, "torch": torch}[backend]
    return cr.component(
        lambda i: Out(y=xp.exp(i.x) - 1), inputs=In, outputs=Out, backend=backend, name="expm1"
    )


def _relative_error(got: Any) -> float:
    return float(np.max(np.abs(np.asarray(got) - np.expm1(X)) / np.expm1(X)))


# ---- the process's configuration is the user's -----------------------------------------------

_LEAVES_CONFIG_ALONE = """
import jax
jax.config.update("jax_enable_x64", {start})

def check(what):
    assert jax.config.read("jax_enable_x64") is {start}, f"{{what}} changed jax_enable_x64"

import numpy as np
import jax.numpy as jnp
import chainrule as cr
check("import chainrule")
import chainrule.jax as crj
check("import chainrule.jax")

class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float32]]

class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float32]]

comp = cr.component(lambda i: Out(y=jnp.sin(i.x)), inputs=In, outputs=Out, backend="jax")
check("defining a JAX component")
comp.apply({{"x": [1.0, 2.0]}}), comp.vjp({{"x": [1.0, 2.0]}}, {{"y": [1.0, 1.0]}})
check("calling a JAX component")
jax.jit(jax.grad(lambda x: crj.call(comp, {{"x": x}})["y"].sum()))(np.ones(2, np.float32))
check("chainrule.jax.call")
for method in ("L-BFGS-B", "adam"):
    cr.optimize(lambda x: jnp.sum((x - 1.0) ** 2), np.zeros(2), method=method, max_steps=3)
    check(f"cr.optimize(method={{method!r}})")
print("ok")
"""


@pytest.mark.parametrize("start", [False, True])
def test_importing_defining_calling_and_optimizing_leave_x64_as_it_was(start: bool) -> None:
    script = _LEAVES_CONFIG_ALONE.format(start=start)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


# ---- in process: float64 answers whatever the mode ---------------------------------------------


def test_a_float64_jax_component_computes_in_float64_with_x64_off() -> None:
    comp = _expm1("jax")
    c = np.array([1.0, -2.0, 0.5])
    with jax.enable_x64(False):
        out = comp.apply({"x": X})
        grad = comp.vjp({"x": X}, {"y": c})["x"]
        from_a_thread = ThreadPoolExecutor(1).submit(comp.apply, {"x": X}).result()
        assert not jax.config.read("jax_enable_x64")
    assert out.y.dtype == np.float64 and _relative_error(out.y) < 1e-6  # float32: 1.0
    assert _relative_error(from_a_thread.y) < 1e-6
    np.testing.assert_allclose(grad, np.exp(X) * c, rtol=1e-15)


def test_a_served_float64_jax_component_computes_in_float64_with_x64_off() -> None:
    with jax.enable_x64(False), cr.serve(_expm1("jax")) as server:
        remote = cr.connect(server.url)
        out = remote.apply({"x": X})
        remote.close()
    assert _relative_error(out.y) < 1e-6


def test_optimize_computes_in_float64_with_x64_off() -> None:
    target = 1.0 + 1e-9  # float32 cannot tell it from 1.0
    with jax.enable_x64(False):
        result = cr.optimize(
            lambda x: jnp.sum((x - target) ** 2), np.zeros(2), method="L-BFGS-B", tol=None
        )
        assert not jax.config.read("jax_enable_x64")
    assert np.asarray(result.x).dtype == np.float64
    assert np.max(np.abs(np.asarray(result.x) - target)) < 1e-12


# ---- inside a user's JAX program: its mode rules -------------------------------------------------


@pytest.mark.parametrize("backend", ["jax", "numpy", "torch"])
@pytest.mark.parametrize("role", ["input", "output"])
def test_a_float64_leaf_refuses_a_32_bit_jax_program(backend: str, role: str) -> None:
    """In a program in 32-bit mode, JAX would carry float64 leaves as float32 under a float64
    label: the call says so and how to fix it."""
    if role == "input":
        comp, path = _expm1(backend, x=cr.Float64, y=cr.Float32), "x"
    else:
        comp, path = _expm1(backend, x=cr.Float32, y=cr.Float64), "y"
    program = jax.jit(lambda v: crj.call(comp, {"x": v})["y"])
    with jax.enable_x64(False), pytest.raises(cr.ValidationError) as info:
        program(jnp.ones(3, jnp.float32))
    message = info.value.message
    assert (
        f"{role} '{path}' of component 'expm1' is declared float64[n], but JAX's 64-bit" in message
    )
    assert "so JAX would carry it as float32" in message
    assert (
        'Fix: turn 64-bit mode on for the program, `jax.config.update("jax_enable_x64", True)`'
        in message
    )
    assert "or declare the field Float32 if that is the precision you want" in message


@pytest.mark.parametrize("backend", ["jax", "numpy", "torch"])
def test_a_float64_component_gives_float64_in_a_64_bit_jax_program(backend: str) -> None:
    comp = _expm1(backend)
    with jax.enable_x64(True):
        y = jax.jit(lambda v: crj.call(comp, {"x": v})["y"])(X)
        grad = jax.grad(lambda v: crj.call(comp, {"x": v})["y"].sum())(X)
    assert y.dtype == jnp.float64 and _relative_error(y) < 1e-6
    rtol = 1e-15 if backend != "numpy" else 1e-6  # numpy: finite differences
    np.testing.assert_allclose(grad, np.exp(X), rtol=rtol)


@pytest.mark.parametrize("backend", ["jax", "numpy", "torch"])
def test_a_float64_output_reaches_a_64_bit_jax_program_as_float64(backend: str) -> None:
    """The output's declared dtype, not the one its code computed in (float32 here)."""
    comp = _expm1(backend, x=cr.Float32, y=cr.Float64)
    with jax.enable_x64(True):
        y = jax.jit(lambda v: crj.call(comp, {"x": v})["y"])(np.ones(3, np.float32))
    assert y.dtype == jnp.float64
    assert comp.eval_shape({"x": np.ones(3, np.float32)}).y.dtype == np.float64


@pytest.mark.parametrize("backend", ["jax", "numpy", "torch"])
def test_a_float32_component_works_in_a_32_bit_jax_program(backend: str) -> None:
    """Nothing 64-bit crosses: value, jit(grad) and vmap(grad) (the kept linearization's token
    included) work in 32-bit mode."""
    comp = _expm1(backend, x=cr.Float32, y=cr.Float32)
    x = np.array([0.5, 1.5, -0.25], np.float32)

    def total(v: Any) -> Any:
        return crj.call(comp, {"x": v})["y"].sum()

    with jax.enable_x64(False):
        value = jax.jit(total)(x)
        grad = jax.jit(jax.grad(total))(x)
        grads = jax.vmap(jax.grad(total))(np.stack([x, 2 * x]))
    assert value.dtype == grad.dtype == grads.dtype == jnp.float32
    np.testing.assert_allclose(value, np.sum(np.expm1(x)), rtol=1e-6)
    rtol = 1e-6 if backend != "numpy" else 1e-2  # numpy: finite differences in float32
    np.testing.assert_allclose(grad, np.exp(x), rtol=rtol)
    np.testing.assert_allclose(grads, np.exp(np.stack([x, 2 * x])), rtol=rtol)
