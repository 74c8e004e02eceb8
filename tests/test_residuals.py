"""Residual reuse: a kept linearization skips the forward pass, and never changes answers."""

from __future__ import annotations

import gc
import re
import time
import weakref
from typing import Any

import numpy as np
import pydantic
import pytest

import chainrule as cr
from chainrule._component.residuals import fingerprint


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
    assert comp.residuals.get(first, In(x=x)) is None
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


def _kept(cache: cr.ResidualCache, nbytes: int, x: np.ndarray) -> tuple[Any, Any]:
    from chainrule._component.residuals import Residual

    point = In(x=x)
    return cache.put("c", Residual(None, nbytes, None, fingerprint(point))), point


def test_lru_budget_and_release() -> None:
    cache = cr.ResidualCache(max_bytes=100)
    kept = [_kept(cache, 40, np.zeros(1) + i) for i in range(3)]
    assert len(cache) == 2 and cache.evictions == 1 and cache.nbytes == 80
    assert cache.get(kept[0][0], kept[0][1]) is None
    assert cache.get(kept[2][0], kept[2][1]) is not None
    cache.release(kept[2][0])
    assert cache.get(kept[2][0], kept[2][1]) is None and cache.nbytes == 40
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_ttl_holds_for_a_handle_that_was_used() -> None:
    """`ttl` is a lifetime from creation: using a handle (which makes it the most recently
    used) does not extend it (on main, a used entry went to the end of the LRU order and the
    expiry scan, from the front, stopped at the first younger entry)."""
    cache = cr.ResidualCache(ttl=0.6)
    used, at = _kept(cache, 8, np.zeros(1))
    time.sleep(0.4)
    young, young_at = _kept(cache, 8, np.ones(1))
    assert cache.get(used, at) is not None  # used: now the most recently used
    time.sleep(0.35)  # `used` is 0.75 s old, `young` 0.35 s
    assert cache.get(young, young_at) is not None
    assert cache.get(used, at) is None, "a used handle outlived the ttl"
    assert len(cache) == 1 and cache.nbytes == 8


def test_ttl_holds_for_a_used_handle_of_a_component() -> None:
    comp, calls = counted("numpy")
    comp.residuals.ttl = 0.6
    x, c = np.array([0.5, 0.7]), np.array([1.0, 2.0])
    _, used = comp.apply({"x": x}, keep=True)
    time.sleep(0.4)
    comp.apply({"x": x + 1}, keep=True)
    comp.vjp({"x": x}, {"y": c}, handle=used)
    time.sleep(0.35)
    calls.clear()
    misses = comp.residuals.misses
    got = comp.vjp({"x": x}, {"y": c}, handle=used)
    assert comp.residuals.misses == misses + 1 and calls, "the expired handle was used"
    np.testing.assert_allclose(got["x"], _exact_vjp(x, c), rtol=1e-6)


def test_handles_are_random_128_bit_ids() -> None:
    cache = cr.ResidualCache()
    ids = {_kept(cache, 0, np.zeros(1))[0].id for _ in range(200)}
    assert len(ids) == 200
    assert all(re.fullmatch(r"h[0-9a-f]{32}", i) for i in ids)
    assert min(int(i[1:], 16) for i in ids) > 2**100  # not a counter
    handle, point = _kept(cache, 0, np.zeros(1))
    assert 0 < handle.number < 2**31  # an int32 token for chainrule.jax (any 64-bit mode)
    assert cache.get(handle.number, point) is not None
    # Another id with the same 63-bit number is not the handle.
    forged = cr.Handle(handle.id[:-1] + ("0" if handle.id[-1] != "0" else "1"), "c")
    assert forged.number == handle.number and cache.get(forged, point) is None


def test_fingerprint_compares_every_leaf_by_value() -> None:
    class Nested(cr.Schema):
        a: cr.Differentiable[cr.Array[(None,), cr.Float64]]
        options: dict[str, Any] = pydantic.Field(default_factory=dict)
        mode: Any = None
        layers: list[In] = pydantic.Field(default_factory=list)

    x = np.linspace(0.0, 1.0, 6)
    base = Nested(a=x, options={"k": 1, "t": [0.5, "s"]}, mode=2.0, layers=[In(x=x[:2])])
    same = Nested(
        a=x.copy(), options={"k": 1, "t": [0.5, "s"]}, mode=2.0, layers=[In(x=x[:2].copy())]
    )
    assert fingerprint(base) == fingerprint(same) is not None
    others = [
        base.model_copy(update={"a": x + 1e-300}),  # one bit of one element
        base.model_copy(update={"a": x.astype(np.float32).astype(np.float64)}),
        base.model_copy(update={"options": {"k": 1.0, "t": [0.5, "s"]}}),  # 1 vs 1.0
        base.model_copy(update={"options": {"k": True, "t": [0.5, "s"]}}),  # 1 vs True
        base.model_copy(update={"options": {"t": [0.5, "s"], "k": 1}}),  # key order
        base.model_copy(update={"mode": -0.0}),
        base.model_copy(update={"mode": 2}),
        base.model_copy(update={"mode": np.arange(2000.0)}),  # numpy repr would elide it
        base.model_copy(update={"layers": [In(x=x[:2] + 1)]}),
    ]
    prints = {fingerprint(o) for o in others}
    assert len(prints) == len(others) and fingerprint(base) not in prints
    a, b = np.arange(2000.0), np.arange(2000.0)
    b[1000] += 1
    assert fingerprint(base.model_copy(update={"mode": a})) != fingerprint(
        base.model_copy(update={"mode": b})
    )
    # A non-contiguous array and its contiguous copy are the same values.
    wide = np.linspace(0.0, 1.0, 12)
    assert fingerprint(Nested(a=wide[::2])) == fingerprint(Nested(a=wide[::2].copy()))
    # A static value that cannot be compared by value matches nothing, not even itself.
    assert fingerprint(base.model_copy(update={"mode": object()})) is None


def test_a_kept_residual_pins_none_of_the_callers_arrays() -> None:
    """What a residual keeps is its own (and counted): the caller's input arrays (on a server,
    views of the request body) are freed once the caller lets them go (on main the residual
    held the validated point, so a server pinned every kept request's whole body)."""
    for backend in ("jax", "torch", "numpy"):
        comp, _ = counted(backend)
        x = np.linspace(0.1, 1.0, 1000)
        alive = weakref.ref(x)
        out, handle = comp.apply({"x": x}, keep=True)
        del x, out
        gc.collect()
        assert alive() is None, f"{backend}: the kept residual pins the caller's input"
        assert comp.residuals.get(handle, In(x=np.linspace(0.1, 1.0, 1000))) is not None


def test_kept_torch_outputs_are_read_only_and_the_graph_is_counted() -> None:
    import torch

    def fn(inputs: In) -> Out:
        return Out(y=torch.exp(inputs.x))  # exp's backward reads its own output

    comp = cr.component(fn, inputs=In, outputs=Out, backend="torch")
    x = np.linspace(0.0, 1.0, 1000)
    out, handle = comp.apply({"x": x}, keep=True)
    with pytest.raises(ValueError, match="read-only"):
        out.y *= 2  # would change what the kept graph's backward pass reads
    # inputs + output (exp saves its result: counted once)
    assert comp.residuals.nbytes == 2 * x.nbytes
    got = comp.vjp({"x": x}, {"y": np.ones(1000)}, handle=handle)
    np.testing.assert_allclose(got["x"], np.exp(x), rtol=1e-15)


def test_finite_difference_memo_is_counted_in_the_budget() -> None:
    comp, _ = counted("numpy", residual_bytes=5_000)
    x = np.linspace(0.1, 1.0, 30)
    _, handle = comp.apply({"x": x}, keep=True)
    assert comp.residuals.nbytes == x.nbytes
    comp.vjp({"x": x}, {"y": np.ones(30)}, handle=handle)  # memoizes a 30x30 Jacobian
    assert comp.residuals.nbytes == 0 and len(comp.residuals) == 0, "memo beyond the budget"
    comp.residuals.max_bytes = 100_000
    _, handle = comp.apply({"x": x}, keep=True)
    comp.vjp({"x": x}, {"y": np.ones(30)}, handle=handle)
    assert comp.residuals.nbytes == x.nbytes + 30 * 30 * 8


def test_release_through_component() -> None:
    comp, calls = counted("torch")
    x = np.array([1.0])
    _, handle = comp.apply({"x": x}, keep=True)
    comp.release(handle)
    calls.clear()
    comp.vjp({"x": x}, {"y": [1.0]}, handle=handle)
    assert len(calls) == 1
