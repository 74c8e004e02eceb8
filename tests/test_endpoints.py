"""The derivation table: which implementation is chosen, and that derived ones are right."""

from __future__ import annotations

import numpy as np

from chainrule._endpoints import ENDPOINTS, RULES, Impl, resolve


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
