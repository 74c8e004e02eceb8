"""A pipeline of components, wrapped with cr.component, is a component again: servable, nestable."""

import jax
import jax.numpy as jnp
import numpy as np

import chainrule as cr
import chainrule.jax as crj

jax.config.update("jax_enable_x64", True)  # this program computes in float64


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Total(cr.Schema):
    t: cr.Differentiable[cr.Array[(), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def legacy(inputs: Inputs) -> Outputs:
    return Outputs(y=np.exp(inputs.x))


@cr.component(inputs=Inputs, outputs=Total, backend="jax")
def pipeline(inputs: Inputs) -> Total:  # plain JAX code calling components
    y = crj.call(legacy, {"x": inputs.x})["y"]
    return Total(t=jnp.sum(y * inputs.x))


x = np.array([0.1, 0.2, 0.3])
# First-order endpoints only: `legacy` (finite differences) has no hvp to chain through.
report = cr.check_gradients(pipeline, {"x": x}, endpoints=["jvp", "vjp", "jacobian"])
assert report.ok, report
with cr.serve(pipeline, port=0) as server:  # served like any other component
    remote = cr.connect(server.url)
    grad = remote.vjp({"x": x}, {"t": 1.0})["x"]
    np.testing.assert_allclose(grad, np.exp(x) * (1 + x), rtol=1e-6)
    print(grad)
    remote.close()
