"""The crossing into JAX (issue 17): how host callbacks reach the component's host code.

Under the pinned JAX the primitives lower to JAX's buffer callback: where no author code gets
the arrays, the host reads XLA's input buffers themselves (no copy, read-only); elsewhere it
gets read-only copies (an author could keep an array past the call). It fills XLA's result
buffers. JAX's emitter (which
copies every input) stays as a fallback, and the transformation tests pass through it too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chainrule as cr
import chainrule.jax as crj
from chainrule._bindings.jax import primitives as _primitives

pytestmark = pytest.mark.usefixtures("x64")  # these JAX programs compute in float64

TESTS = Path(__file__).parent


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


def _spy(seen: list[Any], write: bool = False) -> cr.Component:
    @cr.component(inputs=In, outputs=Out, backend="numpy", name="spy")
    def spy(inputs: In) -> Out:
        x = inputs.x
        seen.append((x.__array_interface__["data"][0], x.flags.writeable))
        if write:
            x[0] = 99.0
        return Out(y=np.sin(x))

    @spy.def_vjp
    def _vjp(inputs: In, cotangents: dict[str, Any]) -> dict[str, Any]:
        seen.append((inputs.x.__array_interface__["data"][0], inputs.x.flags.writeable))
        return {"x": np.cos(inputs.x) * cotangents["y"]}

    return spy


def test_author_code_gets_copies_it_may_keep() -> None:
    """A NumPy function could keep its input past the call (a legacy solver caching its last
    point), when XLA reuses the memory: it gets a read-only copy, as from JAX's emitter."""
    assert _primitives.mode() == "buffer", "the buffer callback is not in use"
    seen: list[Any] = []
    kept: list[np.ndarray] = []

    @cr.component(inputs=In, outputs=Out, backend="numpy", name="cache")
    def cache(inputs: In) -> Out:
        seen.append((inputs.x.__array_interface__["data"][0], inputs.x.flags.writeable))
        kept.append(inputs.x)
        return Out(y=np.sin(inputs.x))

    x = jnp.linspace(0.0, 1.0, 50_000)
    f = jax.jit(lambda v: crj.call(cache, {"x": v})["y"])
    np.testing.assert_array_equal(f(x), np.sin(np.asarray(x)))
    assert seen[0][0] != x.unsafe_buffer_pointer() and seen[0][1] is False
    f(jnp.zeros(50_000))  # XLA's buffers come and go; the kept array stays as it was
    np.testing.assert_array_equal(kept[0], np.linspace(0.0, 1.0, 50_000))


def test_a_backward_hook_may_keep_its_gradient() -> None:
    """A torch backward hook is author code too: the gradient it keeps stays as it was after
    XLA reuses its buffers (it was given a copy)."""
    import torch

    kept: list[torch.Tensor] = []

    @cr.component(inputs=In, outputs=Out, backend="torch", name="logs")
    def logs(inputs: In) -> Out:
        y = torch.sin(inputs.x)
        if y.requires_grad:
            y.register_hook(kept.append)
        return Out(y=y)

    f = jax.jit(lambda v, w: jax.vjp(lambda u: crj.call(logs, {"x": u})["y"], v)[1](w))
    c = jnp.linspace(1.0, 2.0, 50_000)
    want = np.array(c)
    (g,) = f(jnp.zeros(50_000), c)
    np.testing.assert_allclose(g, want, rtol=1e-15)
    del c, g  # XLA may reuse their memory now
    f(jnp.ones(50_000), jnp.full(50_000, 7.0))
    np.testing.assert_array_equal(kept[0].numpy(), want)


def test_a_host_that_writes_into_its_input_fails_and_leaves_the_jax_array_as_it_was() -> None:
    comp = _spy([], write=True)
    x = jnp.linspace(0.0, 1.0, 8)
    f = jax.jit(lambda v: crj.call(comp, {"x": v})["y"])
    with pytest.raises(cr.ComponentError, match="read-only"), crj.errors():
        f(x)
    np.testing.assert_array_equal(x, np.linspace(0.0, 1.0, 8))


def test_gradients_through_zero_copy_buffers_match_finite_differences() -> None:
    """The forward keeps nothing that points into XLA's buffers (they are reused after the
    call): jit(grad) over many calls with fresh inputs stays right (float64, central FD).
    A component whose derivatives are all written keeps no linearization at all."""
    seen: list[Any] = []
    comp = _spy(seen)

    def loss(v: jax.Array) -> jax.Array:
        y = crj.call(comp, {"x": v * v})["y"]
        return jnp.sum(crj.call(comp, {"x": y + 1.0})["y"] ** 2)

    g = jax.jit(jax.grad(loss))
    eps = 1e-6
    g(jnp.ones(6))
    # its derivatives are all written: keeping a linearization would only cost copies
    assert len(comp.residuals) == 0
    for seed in range(3):
        x = jax.random.normal(jax.random.key(seed), (6,))
        d = jax.random.normal(jax.random.key(10 + seed), (6,))
        fd = (loss(x + eps * d) - loss(x - eps * d)) / (2 * eps)
        np.testing.assert_allclose(jnp.vdot(g(x), d), fd, rtol=1e-7, atol=1e-9)


def test_the_transformation_tests_pass_through_jaxs_emitter_too() -> None:
    """The fallback to JAX's emitter runs the transformation tests too (the one to
    jax.pure_callback: `test_jax_binding.test_host_callbacks_skip_pure_callback...`)."""
    env = "CHAINRULE_JAX_EMIT_CALLBACK"
    selection = (
        "value_and_grad or jvp_vjp or vmap or scan or errors_surface"
        " or writes_into_its_input or zero_copy_buffers or mode_follows or leaves_the_jax_array"
        " or writes_into_the_cotangent or shared_cotangents or without_it"
    )
    files = [str(TESTS / "test_jax_binding.py"), __file__]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, "-k", selection],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=TESTS.parent,
        env={**os.environ, env: "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "deselected" in done.stdout


def test_the_mode_follows_the_environment() -> None:
    emit = os.environ.get("CHAINRULE_JAX_EMIT_CALLBACK", "") not in ("", "0")
    pure = os.environ.get("CHAINRULE_JAX_PURE_CALLBACK", "") not in ("", "0")
    assert _primitives.mode() == ("pure_callback" if pure else "emit" if emit else "buffer")


# ---- torch: XLA's buffers as tensors without a copy ---------------------------------------------


def test_a_torch_component_that_writes_into_its_input_leaves_the_jax_array_as_it_was() -> None:
    """Torch has no read-only tensors: the forward's inputs stay copies of XLA's buffers."""

    @cr.component(inputs=In, outputs=Out, backend="torch", name="scribble")
    def scribble(inputs: In) -> Out:
        return Out(y=inputs.x.mul_(2.0))

    x = jnp.linspace(0.0, 1.0, 50_000)
    y = jax.jit(lambda v: crj.call(scribble, {"x": v})["y"])(x)
    np.testing.assert_array_equal(y, 2.0 * np.linspace(0.0, 1.0, 50_000))
    np.testing.assert_array_equal(x, np.linspace(0.0, 1.0, 50_000))


def test_a_backward_hook_that_writes_into_the_cotangent_is_refused() -> None:
    """Autograd only reads the cotangents, which are XLA's buffers; an author's hook writing
    into one would change a JAX value, so the vjp fails instead of answering wrong."""
    import torch

    @cr.component(inputs=In, outputs=Out, backend="torch", name="hooked")
    def hooked(inputs: In) -> Out:
        y = torch.sin(inputs.x)
        if y.requires_grad:
            y.register_hook(lambda g: g.mul_(3.0))
        return Out(y=y)

    c = jnp.ones(4)
    f = jax.jit(lambda v: jax.vjp(lambda u: crj.call(hooked, {"x": u})["y"], v)[1](c))
    with pytest.raises(cr.ComponentError, match="wrote in place into 'y'"), crj.errors():
        f(jnp.linspace(0.0, 1.0, 4))
    np.testing.assert_array_equal(c, np.ones(4))


def test_torch_gradients_through_shared_cotangents_match_finite_differences() -> None:
    import torch

    @cr.component(inputs=In, outputs=Out, backend="torch", name="cubic")
    def cubic(inputs: In) -> Out:
        return Out(y=torch.tanh(inputs.x) * inputs.x**2)

    def loss(v: jax.Array) -> jax.Array:
        return jnp.sum(jnp.cos(crj.call(cubic, {"x": v})["y"]))

    g = jax.jit(jax.grad(loss))
    eps = 1e-6
    for seed in range(3):
        x = jax.random.normal(jax.random.key(seed), (7,))
        d = jax.random.normal(jax.random.key(10 + seed), (7,))
        fd = (loss(x + eps * d) - loss(x - eps * d)) / (2 * eps)
        np.testing.assert_allclose(jnp.vdot(g(x), d), fd, rtol=1e-7, atol=1e-9)


def test_an_error_holding_an_input_view_crosses_without_it() -> None:
    """XLA frees its input buffers when the callback returns: where the host reads them in
    place, an error that still refers to one loses its chain of causes (its text kept); an
    error holding none keeps its cause."""
    from jax.experimental.buffer_callback import buffer_callback

    from chainrule._bindings.jax.buffers import buffer_host
    from chainrule._component.carried import original

    def holds(arrays: list[np.ndarray]) -> list[np.ndarray]:
        raise FloatingPointError("diverged", arrays[0][::2])  # a view of XLA's buffer

    def fails(arrays: list[np.ndarray]) -> list[np.ndarray]:
        raise FloatingPointError(f"diverged at {float(arrays[0][0])}")

    shape = [jax.ShapeDtypeStruct((50_000,), jnp.float64)]
    x = jnp.linspace(0.0, 1.0, 50_000)
    for host, kind in ((holds, RuntimeError), (fails, FloatingPointError)):
        f = jax.jit(buffer_callback(buffer_host(host, True, 1), shape))
        with pytest.raises(Exception, match="diverged") as info:
            f(x)
        carried = original(info.value)
        # holding a view, it crosses as its text alone; holding none, as itself
        assert type(carried) is kind and "diverged" in str(carried)
        assert not [a for a in carried.args if isinstance(a, np.ndarray)]
