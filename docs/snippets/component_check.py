"""check_gradients: every derivative endpoint against finite differences, plus the dot test."""

import numpy as np

import chainrule as cr


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def cube(inputs: Inputs) -> Outputs:
    return Outputs(y=inputs.x**3)


@cube.def_vjp
def cube_vjp(inputs: Inputs, cotangents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"x": 2 * inputs.x**2 * cotangents["y"]}  # wrong: the derivative is 3x²


report = cr.check_gradients(cube, {"x": np.array([0.5, 1.0, 2.0])}, n_random=2, seed=0)
print(report)  # a table: endpoint, point, relative error, tolerance, ok
assert not report.ok
assert {check.endpoint for check in report.failures} >= {"vjp"}
