"""Bad derivative requests: each raises the documented error naming the field (all backends)."""

from __future__ import annotations

import numpy as np
import pytest

import chainrule as cr
from cases import CASES, build

MATRIX = CASES[1]


@pytest.fixture(params=["jax", "torch", "numpy"])
def comp(request: pytest.FixtureRequest) -> cr.Component:
    return build(MATRIX, request.param)


def test_tangent_on_non_differentiable_input(comp: cr.Component) -> None:
    x = MATRIX.point()
    with pytest.raises(cr.NotDifferentiableError, match=r"input 'offset'.*not differentiable"):
        comp.jvp(x, {"offset": np.ones(3)})
    with pytest.raises(cr.NotDifferentiableError, match="Differentiable inputs: \\['a', 'b'\\]"):
        comp.vjp(x, {"y": np.ones(3)}, wrt=["offset"])


def test_unknown_paths(comp: cr.Component) -> None:
    x = MATRIX.point()
    with pytest.raises(cr.UnknownPathError, match="'z' is not an array input"):
        comp.jvp(x, {"z": np.ones(3)})
    with pytest.raises(cr.UnknownPathError, match="'z' is not an array output"):
        comp.vjp(x, {"z": np.ones(3)})
    with pytest.raises(cr.UnknownPathError, match="'q' is not an array output"):
        comp.jacobian(x, of=["q"])
    with pytest.raises(cr.UnknownPathError):
        comp.jacobian(x, wrt="q")


def test_derivative_of_non_differentiable_output(comp: cr.Component) -> None:
    with pytest.raises(cr.NotDifferentiableError, match="output 'count'"):
        comp.vjp(MATRIX.point(), {"count": np.ones(())})


def test_tangent_shape_and_dtype(comp: cr.Component) -> None:
    x = MATRIX.point()
    with pytest.raises(
        cr.ValidationError,
        match=r"tangents for 'b'.*expected float64\[2\], got "
        r"float64\[3\]",
    ) as info:
        comp.jvp(x, {"b": np.ones(3)})
    assert info.value.errors[0]["path"] == "tangents.b"
    with pytest.raises(cr.ValidationError, match=r"cotangents for 'y'.*expected float64\[3\]"):
        comp.vjp(x, {"y": np.ones(4)})
    with pytest.raises(cr.ValidationError, match="complex128"):
        comp.jvp(x, {"b": np.ones(2) * 1j})
    ints = comp.jvp(x, {"b": np.array([1, 0])})  # int tangents are promoted, like inputs
    assert ints["y"].dtype == np.float64


def test_batched_sizes_must_agree(comp: cr.Component) -> None:
    x = MATRIX.point()
    with pytest.raises(cr.ValidationError, match="different batch sizes"):
        comp.batched_jvp(x, {"a": np.ones((2, 3, 2)), "b": np.ones((3, 2))})
    with pytest.raises(cr.ValidationError, match=r"expected float64\[\?,2\]"):
        comp.batched_jvp(x, {"b": np.ones(2)})


def test_tangents_must_be_a_dict(comp: cr.Component) -> None:
    with pytest.raises(cr.ValidationError, match=r"tangents must be a dict \{input path"):
        comp.jvp(MATRIX.point(), [np.ones(2)])  # type: ignore[arg-type]


def test_bad_inputs_name_the_field(comp: cr.Component) -> None:
    x = MATRIX.point()
    with pytest.raises(cr.ValidationError, match=r"'b': expected float64\[m\], got float64\[2,2\]"):
        comp.apply({**x, "b": np.ones((2, 2))})
    with pytest.raises(cr.ValidationError, match="dimension 'm' is 2 in 'a' but 3 in 'b'"):
        comp.apply({**x, "b": np.ones(3)})
    with pytest.raises(cr.ValidationError, match="'offset' is required"):
        comp.apply({"a": x["a"], "b": x["b"]})
    with pytest.raises(cr.ValidationError, match="'extra' is not a field"):
        comp.apply({**x, "extra": 1})


def test_wrong_outputs_are_output_validation_errors() -> None:
    class In(cr.Schema):
        x: cr.Differentiable[cr.Array[("n",), cr.Float64]]

    class Out(cr.Schema):
        y: cr.Differentiable[cr.Array[("n",), cr.Float64]]

    for backend in ("numpy", "jax", "torch"):
        bad = cr.component(
            lambda i: {"y": i.x[:1]}, inputs=In, outputs=Out, backend=backend, name="bad"
        )
        with pytest.raises(
            cr.OutputValidationError, match=r"'n' is 3 in 'inputs.x' but 1 in 'outputs.y'"
        ):
            bad.apply({"x": [1.0, 2.0, 3.0]})
        wrong = cr.component(lambda i: 3, inputs=In, outputs=Out, backend=backend, name="w")
        with pytest.raises(cr.OutputValidationError, match="returned int"):
            wrong.apply({"x": [1.0]})
