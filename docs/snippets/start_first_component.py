"""Getting started: a first component, its derivatives, and a gradient check."""

import numpy as np

import chainrule as cr


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def square(inputs: Inputs) -> Outputs:
    return Outputs(y=inputs.x**2)


x = np.array([1.0, 2.0, 3.0])
print(square.apply({"x": x}).y)  # [1. 4. 9.]
print(square.vjp({"x": x}, cotangents={"y": np.ones(3)}))  # {'x': 2x}, by finite differences

report = cr.check_gradients(square, {"x": x})  # every derivative endpoint vs finite differences
assert report.ok, report

np.testing.assert_allclose(square.apply({"x": x}).y, [1.0, 4.0, 9.0])
np.testing.assert_allclose(square.vjp({"x": x}, {"y": np.ones(3)})["x"], 2 * x, rtol=1e-6)
