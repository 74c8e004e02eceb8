"""Errors: one exception tree; each message names the field, what was expected and what came."""

import numpy as np

import chainrule as cr


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    steps: cr.Array[(), cr.Int64]  # an array, but not differentiable


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def stepper(inputs: Inputs) -> Outputs:
    if inputs.steps < 0:
        raise ValueError("steps must be >= 0")
    return Outputs(y=inputs.x * float(inputs.steps))


x = np.ones(3)
cases = [
    (cr.ValidationError, lambda: stepper.apply({"x": np.ones((2, 2)), "steps": 1})),
    (cr.ValidationError, lambda: stepper.apply({"steps": 1})),  # 'x' is missing
    (cr.UnknownPathError, lambda: stepper.vjp({"x": x, "steps": 1}, {"z": x})),
    (cr.NotDifferentiableError, lambda: stepper.jacobian({"x": x, "steps": 1}, wrt="steps")),
    (cr.ComponentError, lambda: stepper.apply({"x": x, "steps": -1})),  # the author's raise
]
for cls, call in cases:
    try:
        call()
    except cr.ChainruleError as e:  # the base of every error chainrule raises
        assert isinstance(e, cls), (type(e), cls)
        print(f"{type(e).__name__}: {e}")
    else:
        raise AssertionError(f"expected {cls.__name__}")

# Structured detail for programs (also what a server sends back): path, expected, got.
try:
    stepper.apply({"x": np.ones((2, 2)), "steps": 1})
except cr.ValidationError as e:
    detail = e.errors[0]
    print(detail["path"], detail["expected"], detail["got"])
    assert detail["path"] == "x"

# The component's own exception is chained as __cause__.
try:
    stepper.apply({"x": x, "steps": -1})
except cr.ComponentError as e:
    assert isinstance(e.__cause__, ValueError)
