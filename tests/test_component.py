"""Every endpoint × backend × case against finite differences, the dot-product test and the
JAX reference; plus the component's own behaviour (eval_shape, derivations, errors)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import chainrule as cr
from cases import CASES, Case, VecIn, VecOut, build


def _flat(tree: Any) -> dict[str, np.ndarray]:
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            sub = _flat(v)
            out.update({f"{k}/{s}" if s else k: a for s, a in sub.items()})
        return out
    return {"": np.asarray(tree)}


def test_gradients_match_finite_differences(case: Case, backend: str, over: Any) -> None:
    comp = over(build(case, backend))
    report = cr.check_gradients(comp, case.point(), n_random=2)
    assert report.ok, str(report)
    expected = {"jvp", "vjp", "jacobian", "batched_jvp", "batched_vjp", "dot product"}
    assert expected <= {c.endpoint for c in report.checks}


def test_endpoints_agree_with_jax_reference(case: Case, backend: str, over: Any) -> None:
    comp, ref = over(build(case, backend)), build(case, "jax")
    x = case.point()
    p = ref.point(x)
    rng = np.random.default_rng(1)
    t = {k: rng.standard_normal(p.values[k].shape) for k in p.diff}
    out = {leaf: np.asarray(v) for leaf, v in _flat(ref.jvp(x, t)).items()}
    ct = {k: rng.standard_normal(v.shape) for k, v in out.items()}
    tol = {"rtol": 1e-6, "atol": 1e-8} if backend in ("numpy",) else {"rtol": 1e-12, "atol": 1e-12}
    for endpoint, args in (("jvp", (t,)), ("vjp", (ct,))):
        got, want = getattr(comp, endpoint)(x, *args), getattr(ref, endpoint)(x, *args)
        for k, v in _flat(want).items():
            np.testing.assert_allclose(_flat(got)[k], v, **tol, err_msg=f"{endpoint} {k}")
    for k, v in _flat(ref.jacobian(x)).items():
        np.testing.assert_allclose(_flat(comp.jacobian(x))[k], v, **tol, err_msg=k)


def test_apply_and_eval_shape_agree(case: Case, backend: str, over: Any) -> None:
    comp = over(build(case, backend))
    out = comp.apply(case.point())
    assert isinstance(out, comp.outputs)  # a remote component's own (rebuilt) output class
    try:
        shapes = comp.eval_shape(case.point())
    except cr.EndpointUnavailableError as e:
        assert backend in ("numpy", "written"), e
        assert "needs apply" in str(e)
        return
    from chainrule._schema.tree import leaves

    got = {x.path: (tuple(x.value.shape), np.dtype(x.value.dtype)) for x in leaves(shapes)}
    want = {x.path: (x.value.shape, x.value.dtype) for x in leaves(out)}
    assert got == want
    assert shapes.model_dump(exclude={x.split(".")[0] for x in got}) == out.model_dump(
        exclude={x.split(".")[0] for x in got}
    )


def test_numpy_eval_shape_from_named_dims() -> None:
    class In(cr.Schema):
        x: cr.Differentiable[cr.Array[("n", 2), cr.Float64]]

    class Out(cr.Schema):
        y: cr.Differentiable[cr.Array[("n",), cr.Float64]]

    calls = []

    @cr.component(inputs=In, outputs=Out, backend="numpy")
    def rowsum(inputs: In) -> Out:
        calls.append(1)
        return Out(y=inputs.x.sum(axis=1))

    shapes = rowsum.eval_shape({"x": np.ones((5, 2))})
    assert shapes.y == cr.ShapeDtype((5,), np.dtype("float64"))
    assert calls == []


def test_static_arguments_select_programs() -> None:
    comp = build(CASES[3], "jax")
    a = comp.apply({"x": [1.0, 2.0], "power": 2, "mode": "sum"})
    b = comp.apply({"x": [1.0, 2.0], "power": 3, "mode": "sum"})
    c = comp.apply({"x": [1.0, 2.0], "power": 2, "mode": "cumulative"})
    np.testing.assert_allclose(a.y, [1, 4])
    np.testing.assert_allclose(b.y, [1, 8])
    np.testing.assert_allclose(c.y, [5, 20])
    assert (a.label, b.label, c.label) == ("sum-2", "sum-3", "cumulative-2")
    d = comp.apply({"x": [1.0, 2.0, 3.0], "power": 2, "mode": "sum"})
    assert d.y.shape == (3,)


def _written_vector() -> cr.Component:
    @cr.component(inputs=VecIn, outputs=VecOut, backend="numpy")
    def vec(inputs: VecIn) -> VecOut:
        x = inputs.x
        return VecOut(y=inputs.scale * np.sin(x) + x**2, s=(x**3).sum(), n=x.shape[0])

    return vec


def test_written_vjp_and_jvp_derive_the_rest() -> None:
    vec = _written_vector()

    @vec.def_vjp
    def vjp(inputs: VecIn, cotangents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs.x
        dy = (inputs.scale * np.cos(x) + 2 * x) * cotangents.get("y", 0.0)
        return {"x": dy + 3 * x**2 * cotangents.get("s", 0.0)}

    @vec.def_jvp
    def jvp(inputs: VecIn, tangents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x, t = inputs.x, tangents["x"]
        return {"y": (inputs.scale * np.cos(x) + 2 * x) * t, "s": np.sum(3 * x**2 * t)}

    assert vec.endpoints["vjp"] == "written"
    assert vec.endpoints["jvp"] == "written"
    assert vec.endpoints["jacobian"].startswith("derived")
    assert "hvp" not in vec.endpoints
    report = cr.check_gradients(vec, {"x": [0.2, 0.9, 1.4]})
    assert report.ok, str(report)


def test_check_gradients_catches_wrong_vjp() -> None:
    vec = _written_vector()

    @vec.def_vjp
    def vjp(inputs: VecIn, cotangents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs.x  # wrong on purpose: the sin term's derivative is missing
        return {"x": 2 * x * cotangents.get("y", 0.0) + 3 * x**2 * cotangents.get("s", 0.0)}

    report = cr.check_gradients(vec, {"x": [0.2, 0.9, 1.4]})
    assert not report.ok
    assert {c.endpoint for c in report.failures} >= {"vjp", "batched_vjp"}
    assert "FAIL" in str(report)


def test_hvp_matches_analytic() -> None:
    for backend in ("jax", "torch"):
        comp = build(CASES[0], backend)
        x = np.array([0.3, 1.1])
        hv = comp.hvp({"x": x}, {"x": np.array([1.0, -2.0])}, of="s")
        np.testing.assert_allclose(hv["x"], 6 * x * np.array([1.0, -2.0]), rtol=1e-12)


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_jacobian_of_zero_size_input(backend: str) -> None:
    jac = build(CASES[0], backend).jacobian({"x": np.zeros(0)})
    assert {o: {w: b.shape for w, b in row.items()} for o, row in jac.items()} == {
        "y": {"x": (0, 0)},
        "s": {"x": (0,)},
    }


def test_hvp_of_weighted_vector_outputs() -> None:
    """H·t of Σ⟨w_o, y_o⟩: y = 1.5·sin(x) + x² (elementwise), s = Σx³."""
    x, t = np.array([0.3, 1.1, -0.4]), np.array([1.0, -2.0, 0.5])
    w, c = np.array([0.7, -1.3, 2.0]), 0.25
    want = w * (2 - 1.5 * np.sin(x)) * t + c * 6 * x * t
    for backend in ("jax", "torch"):
        comp = build(CASES[0], backend)
        point = {"x": x, "scale": 1.5}
        hv = comp.hvp(point, {"x": t}, cotangents={"y": w, "s": c})
        np.testing.assert_allclose(hv["x"], want, rtol=1e-12)
        # weights on a scalar output alone are the `of` shorthand, scaled
        np.testing.assert_allclose(
            comp.hvp(point, {"x": t}, cotangents={"s": 2.0})["x"],
            2 * comp.hvp(point, {"x": t}, of="s")["x"],
            rtol=1e-12,
        )
        with pytest.raises(cr.ValidationError, match="not both"):
            comp.hvp(point, {"x": t}, cotangents={"s": 1.0}, of="s")


def test_written_hvp_of_one_scalar_output() -> None:
    """An author's hvp taking `of` (the older form) serves weights on scalar outputs."""
    comp = build(CASES[0], "numpy")

    @comp.def_hvp
    def hvp(inputs: Any, tangents: Any, of: str, wrt: Any) -> Any:
        assert of == "s"
        return {"x": 6 * inputs.x * tangents["x"]}

    x, t = np.array([0.3, 1.1]), np.array([1.0, -2.0])
    hv = comp.hvp({"x": x}, {"x": t}, cotangents={"s": 0.5})
    np.testing.assert_allclose(hv["x"], 3 * x * t)
    np.testing.assert_allclose(comp.hvp({"x": x}, {"x": t})["x"], 6 * x * t)
    with pytest.raises(cr.EndpointUnavailableError, match="give it a `cotangents` parameter"):
        comp.hvp({"x": x}, {"x": t}, cotangents={"y": np.ones(2)})


def test_hvp_unavailable_for_finite_differences() -> None:
    comp = build(CASES[0], "numpy")
    with pytest.raises(cr.EndpointUnavailableError, match="def_hvp"):
        comp.hvp({"x": [1.0, 2.0]}, {"x": [1.0, 0.0]}, of="s")


def test_hvp_requires_scalar_output() -> None:
    comp = build(CASES[0], "jax")
    with pytest.raises(cr.ValidationError, match="expected a scalar"):
        comp.hvp({"x": [1.0, 2.0]}, {"x": [1.0, 0.0]}, of="y")


def test_component_error_chains_the_authors_exception() -> None:
    class In(cr.Schema):
        x: cr.Differentiable[cr.Array[(None,), cr.Float64]]

    class Out(cr.Schema):
        y: cr.Differentiable[cr.Array[(None,), cr.Float64]]

    for backend in ("numpy", "jax", "torch"):

        @cr.component(inputs=In, outputs=Out, backend=backend, name="broken")
        def broken(inputs: In) -> Out:
            raise ZeroDivisionError("the solver diverged")

        with pytest.raises(cr.ComponentError, match="the solver diverged") as info:
            broken.apply({"x": [1.0]})
        assert isinstance(info.value.__cause__, ZeroDivisionError)
        assert "broken" in str(info.value) and "apply" in str(info.value)


def test_unknown_backend_and_bad_schema_are_definition_errors() -> None:
    with pytest.raises(cr.SchemaDefinitionError, match="unknown backend"):
        cr.component(lambda i: i, inputs=VecIn, outputs=VecOut, backend="tensorflow")
    with pytest.raises(cr.SchemaDefinitionError, match="Schema subclass"):
        cr.component(lambda i: i, inputs=dict, outputs=VecOut, backend="numpy")  # type: ignore[arg-type]


def test_forward_differences_option() -> None:
    fd = cr.FiniteDifferences(method="forward")
    comp = cr.component(CASES[0].make(np), inputs=VecIn, outputs=VecOut, backend=fd)
    report = cr.check_gradients(comp, {"x": [0.5, 1.0]}, rtol=1e-5)
    assert report.ok, str(report)
    step = cr.FiniteDifferences(step={"x": 1e-2})
    coarse = cr.component(CASES[0].make(np), inputs=VecIn, outputs=VecOut, backend=step)
    exact = 3 * 0.25
    got = coarse.jvp({"x": [0.5]}, {"x": [1.0]})["s"]
    assert abs(got - exact) > 1e-6  # the step was honoured (central error ~ h²)
    with pytest.raises(cr.SchemaDefinitionError, match="central"):
        cr.FiniteDifferences(method="backward")  # type: ignore[arg-type]


def test_derived_jacobian_takes_the_cheaper_direction() -> None:
    class Few(cr.Schema):
        x: cr.Differentiable[cr.Array[(2,), cr.Float64]]

    class Many(cr.Schema):
        y: cr.Differentiable[cr.Array[(50,), cr.Float64]]

    k = np.arange(50.0)
    calls = {"jvp": 0, "vjp": 0}

    @cr.component(inputs=Few, outputs=Many, backend="numpy")
    def wide(inputs: Few) -> Many:
        return Many(y=inputs.x[0] * k + inputs.x[1] ** 2)

    @wide.def_jvp
    def _jvp(inputs: Few, tangents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls["jvp"] += 1
        t = tangents["x"]
        return {"y": t[0] * k + 2 * inputs.x[1] * t[1]}

    @wide.def_vjp
    def _vjp(inputs: Few, cotangents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls["vjp"] += 1
        c = cotangents["y"]
        return {"x": np.array([c @ k, 2 * inputs.x[1] * c.sum()])}

    jac = wide.jacobian({"x": [1.0, 3.0]})["y"]["x"]
    np.testing.assert_allclose(jac, np.stack([k, np.full(50, 6.0)], axis=1))
    assert calls == {"jvp": 2, "vjp": 0}  # two columns, not fifty rows
