"""Residual reuse: a kept linearization skips the forward pass, and never changes answers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import chainrule as cr


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[(None,), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[(None,), cr.Float64]]


def counted(backend: str, fd: Any = None, **options: Any) -> tuple[cr.Component, list[int]]:
    """A component `y = sin(x)·x` that counts how often its forward pass runs."""
    calls: list[int] = []
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def fn(inputs: In) -> Out:
            # Counted when the compiled program runs, not when it is traced.
            jax.debug.callback(lambda: calls.append(1))
            return Out(y=jnp.sin(inputs.x) * inputs.x)
    elif backend == "torch":
        import torch

        def fn(inputs: In) -> Out:
            calls.append(1)
            return Out(y=torch.sin(inputs.x) * inputs.x)
    else:

        def fn(inputs: In) -> Out:
            calls.append(1)
            return Out(y=np.sin(inputs.x) * inputs.x)

    chosen = fd if fd is not None else backend
    return cr.component(fn, inputs=In, outputs=Out, backend=chosen, **options), calls


def _exact_vjp(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (np.cos(x) * x + np.sin(x)) * c


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_kept_handle_runs_forward_once(backend: str) -> None:
    comp, calls = counted(backend)
    x, c = np.array([0.3, 1.2, 2.0]), np.array([1.0, -1.0, 0.5])
    comp.apply({"x": x})  # warm up (compilation) outside the count
    calls.clear()
    _, handle = comp.apply({"x": x}, keep=True)
    grad = comp.vjp({"x": x}, {"y": c}, handle=handle)
    tangent = comp.jvp({"x": x}, {"x": c}, handle=handle)
    batched = comp.batched_vjp({"x": x}, {"y": np.stack([c, 2 * c])}, handle=handle)
    assert len(calls) == 1, "apply(keep=True) + vjp/jvp with the handle ran the forward again"
    np.testing.assert_allclose(grad["x"], _exact_vjp(x, c), rtol=1e-12)
    np.testing.assert_allclose(tangent["y"], _exact_vjp(x, c), rtol=1e-12)
    np.testing.assert_allclose(batched["x"][1], 2 * _exact_vjp(x, c), rtol=1e-12)
    calls.clear()
    comp.apply({"x": x})
    comp.vjp({"x": x}, {"y": c})
    assert len(calls) == 2  # without a handle: forward for apply, forward again for vjp


def test_finite_difference_handle_reuses_base_point() -> None:
    comp, calls = counted("numpy", fd=cr.FiniteDifferences(method="forward"))
    x, t = np.array([0.3, 1.2]), np.array([1.0, 0.0])
    _, handle = comp.apply({"x": x}, keep=True)
    calls.clear()
    comp.jvp({"x": x}, {"x": t}, handle=handle)
    assert len(calls) == 1  # only x + h·t: the base point came from the handle
    calls.clear()
    comp.vjp({"x": x}, {"y": t}, handle=handle)
    comp.vjp({"x": x}, {"y": 2 * t}, handle=handle)
    assert len(calls) == 2  # one column per input element, the Jacobian memoized on the handle


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_evicted_handle_recomputes(backend: str) -> None:
    comp, _ = counted(backend, residual_bytes=1)  # every residual exceeds the budget
    x, c = np.array([0.5, 0.7]), np.array([1.0, 2.0])
    _, first = comp.apply({"x": x}, keep=True)
    comp.apply({"x": 2 * x}, keep=True)
    assert comp.residuals.get(first, {"x": x}) is None
    got = comp.vjp({"x": x}, {"y": c}, handle=first)
    np.testing.assert_allclose(got["x"], _exact_vjp(x, c), rtol=1e-6)


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_handle_at_other_point_is_not_used(backend: str) -> None:
    comp, _ = counted(backend)
    x, c = np.array([0.5, 0.7]), np.array([1.0, 2.0])
    _, handle = comp.apply({"x": x}, keep=True)
    other = x + 1.0
    got = comp.vjp({"x": other}, {"y": c}, handle=handle)
    np.testing.assert_allclose(got["x"], _exact_vjp(other, c), rtol=1e-6)
    assert comp.residuals.misses >= 1


def test_lru_budget_and_release() -> None:
    cache = cr.ResidualCache(max_bytes=100)
    from chainrule._residuals import Residual

    handles = [cache.put("c", Residual(None, 40, None, {"x": np.zeros(1) + i})) for i in range(3)]
    assert len(cache) == 2 and cache.evictions == 1 and cache.nbytes == 80
    assert cache.get(handles[0], {"x": np.zeros(1)}) is None
    assert cache.get(handles[2], {"x": np.zeros(1) + 2}) is not None
    cache.release(handles[2])
    assert cache.get(handles[2], {"x": np.zeros(1) + 2}) is None and cache.nbytes == 40
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_release_through_component() -> None:
    comp, calls = counted("torch")
    x = np.array([1.0])
    _, handle = comp.apply({"x": x}, keep=True)
    comp.release(handle)
    calls.clear()
    comp.vjp({"x": x}, {"y": [1.0]}, handle=handle)
    assert len(calls) == 1
