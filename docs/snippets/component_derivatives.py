"""Author-written derivatives: write one endpoint, the others are derived from it."""

import numpy as np

import chainrule as cr


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    scale: float = 2.0


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def legacy(inputs: Inputs) -> Outputs:
    return Outputs(y=inputs.scale * np.sin(inputs.x))


@legacy.def_vjp
def legacy_vjp(inputs: Inputs, cotangents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"x": inputs.scale * np.cos(inputs.x) * cotangents["y"]}


for name, provenance in legacy.endpoints.items():
    print(f"{name:12} {provenance}")
# vjp          written
# jvp          derived: jvp <- jacobian <- batched_vjp <- vjp <- written
# ...

assert legacy.endpoints["vjp"] == "written"
assert legacy.endpoints["jacobian"].startswith("derived")

x = np.array([0.1, 0.2, 0.3])
jac = legacy.jacobian({"x": x})["y"]["x"]  # built from the written vjp, exactly
np.testing.assert_allclose(jac, np.diag(2.0 * np.cos(x)))
assert cr.check_gradients(legacy, {"x": x}).ok

# Derivatives at B points in one call: `batched` names the inputs carrying a leading axis of
# points, and the cotangents carry it too (a served component answers in one request).
xs = np.stack([x, 2 * x])
at_points = legacy.call("vjp", {"x": xs}, cotangents={"y": np.ones((2, 3))}, batched=["x"])
np.testing.assert_allclose(at_points["x"], 2.0 * np.cos(xs))  # row b: the vjp at xs[b]
