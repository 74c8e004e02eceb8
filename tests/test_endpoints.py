"""The derivation table: which implementation is chosen, and that derived ones are right."""

from __future__ import annotations

import numpy as np
import pytest

import chainrule as cr
from cases import VecIn, VecOut
from chainrule._component.endpoints import ENDPOINTS
from chainrule._component.rules import RULES, Impl, resolve


def _impl(name: str, cost: float) -> Impl:
    return Impl(lambda *a, **k: name, name, cost)


def test_every_rule_names_known_endpoints() -> None:
    for rule in RULES:
        assert rule.target in ENDPOINTS and rule.source in ENDPOINTS


def test_written_beats_native_and_exact_beats_finite_differences() -> None:
    fd = {n: _impl("finite-difference", 10.0) for n in ("jvp", "vjp", "jacobian")}
    best = resolve({**fd, "jacobian": _impl("written", 0.0)})
    assert best["jacobian"].provenance == "written"
    assert best["jvp"].provenance.startswith("derived: jvp <- jacobian")
    assert best["vjp"].provenance.startswith("derived: vjp <- jacobian")
    native = {n: _impl("native (jax)", 1.0) for n in ("jvp", "vjp", "jacobian")}
    best = resolve({**native, "vjp": _impl("written", 0.0)})
    assert best["jvp"].provenance == "native (jax)"  # a cheap native jvp beats an O(n) detour
    assert best["batched_vjp"].provenance == "derived: batched_vjp <- vjp <- written"


def test_nothing_derives_hvp_or_from_nothing() -> None:
    assert resolve({}) == {}
    best = resolve({"vjp": _impl("written", 0.0)})
    assert "hvp" not in best
    assert set(best) == {"vjp", "batched_vjp", "jacobian", "jvp", "batched_jvp"}


class _Point:
    def __init__(self) -> None:
        self.values = {"x": np.array([1.0, 2.0, 3.0])}
        self.a = np.array([[1.0, 2.0, 0.0], [0.0, -1.0, 4.0]])

    def out_shapes(self, paths: tuple[str, ...], residual: object) -> dict[str, tuple[int, ...]]:
        return {"y": (2,)}


def test_derived_jacobian_from_batched_vjp_is_one_call() -> None:
    p = _Point()
    calls = []

    def batched_vjp(point: _Point, res: object, cotangents: dict, wrt: tuple) -> dict:
        calls.append(1)
        return {"x": cotangents["y"] @ point.a}

    rule = next(r for r in RULES if (r.target, r.source) == ("jacobian", "batched_vjp"))
    jac = rule.build(batched_vjp)(p, None, wrt=("x",), of=("y",))
    np.testing.assert_array_equal(jac["y"]["x"], p.a)
    assert calls == [1]


def test_derived_jacobian_from_batched_jvp() -> None:
    p = _Point()

    def batched_jvp(point: _Point, res: object, tangents: dict, of: tuple) -> dict:
        return {"y": tangents["x"] @ point.a.T}

    rule = next(r for r in RULES if (r.target, r.source) == ("jacobian", "batched_jvp"))
    jac = rule.build(batched_jvp)(p, None, wrt=("x",), of=("y",))
    np.testing.assert_array_equal(jac["y"]["x"], p.a)


# ---- derivations at empty arrays -------------------------------------------------------------


def _jacobians(x: np.ndarray, scale: float) -> dict[str, np.ndarray]:
    """The exact Jacobian blocks of `cases.vector`: y = scale·sin x + x², s = Σ x³."""
    return {"y": np.diag(scale * np.cos(x) + 2 * x), "s": 3 * x**2}


def _written_only(endpoint: str) -> cr.Component:
    """`cases.vector` on the numpy backend with exactly one derivative written by hand."""

    def fn(inputs: VecIn) -> VecOut:
        x = inputs.x
        return VecOut(y=inputs.scale * np.sin(x) + x**2, s=(x**3).sum(), n=x.shape[0])

    comp = cr.component(fn, inputs=VecIn, outputs=VecOut, backend="numpy", name="one_written")

    def jac(inputs: VecIn) -> dict[str, np.ndarray]:
        return _jacobians(inputs.x, inputs.scale)

    written = {
        "jvp": lambda inputs, tangents: {o: j @ tangents["x"] for o, j in jac(inputs).items()},
        "vjp": lambda inputs, cotangents: {
            "x": sum(np.tensordot(c, jac(inputs)[o], np.ndim(c)) for o, c in cotangents.items())
        },
        "jacobian": lambda inputs: {o: {"x": j} for o, j in jac(inputs).items()},
        "batched_jvp": lambda inputs, tangents: {
            o: tangents["x"] @ j.T for o, j in jac(inputs).items()
        },
        "batched_vjp": lambda inputs, cotangents: {
            "x": sum(np.tensordot(c, jac(inputs)[o], np.ndim(c) - 1) for o, c in cotangents.items())
        },
    }
    comp.define(endpoint, written[endpoint])
    return comp


@pytest.mark.parametrize("n", [0, 3], ids=["empty", "three"])
@pytest.mark.parametrize("written", ["jvp", "vjp", "jacobian", "batched_jvp", "batched_vjp"])
def test_every_derivation_answers_at_empty_arrays(written: str, n: int) -> None:
    """With one derivative written, every other one is derived from it, and right, also when
    the input is empty (x = []): a derived Jacobian then has no rows or columns, and the
    batched endpoint it is derived from gets a batch of 0 (once a KeyError blamed on the
    author)."""
    comp = _written_only(written)
    x = np.linspace(0.3, 1.2, n)
    exact = _jacobians(x, 2.0)
    t, c = np.linspace(1.0, 2.0, n), {"y": np.linspace(-1.0, 1.0, n), "s": np.float64(0.5)}
    jac = comp.jacobian({"x": x})
    for o in ("y", "s"):
        np.testing.assert_allclose(jac[o]["x"], exact[o])
        assert jac[o]["x"].shape == exact[o].shape
    # of y alone: with x empty no output has an element, so no row either
    np.testing.assert_allclose(comp.jacobian({"x": x}, of="y")["y"]["x"], exact["y"])
    np.testing.assert_allclose(comp.jvp({"x": x}, {"x": t}, of="y")["y"], exact["y"] @ t)
    assert comp.batched_jvp({"x": x}, {"x": t[None]}, of="y")["y"].shape == (1, n)
    assert comp.vjp({"x": x}, {"y": c["y"]})["x"].shape == (n,)
    jvp = comp.jvp({"x": x}, {"x": t})
    np.testing.assert_allclose(jvp["y"], exact["y"] @ t)
    np.testing.assert_allclose(jvp["s"], exact["s"] @ t)
    vjp = comp.vjp({"x": x}, c)
    np.testing.assert_allclose(vjp["x"], c["y"] @ exact["y"] + c["s"] * exact["s"])
    assert vjp["x"].shape == (n,)
    bjvp = comp.batched_jvp({"x": x}, {"x": np.stack([t, 2 * t])})
    np.testing.assert_allclose(bjvp["y"], np.stack([exact["y"] @ t, 2 * exact["y"] @ t]))
    assert bjvp["y"].shape == (2, n) and bjvp["s"].shape == (2,)
    bvjp = comp.batched_vjp({"x": x}, {"y": np.stack([c["y"], -c["y"]]), "s": np.ones(2)})
    np.testing.assert_allclose(bvjp["x"][1], -c["y"] @ exact["y"] + exact["s"])
    assert bvjp["x"].shape == (2, n)
