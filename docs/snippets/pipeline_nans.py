"""Hunting a NaN: check_finite names the component, endpoint and path where it first appears."""

import jax
import jax.numpy as jnp
import numpy as np

import chainrule as cr
import chainrule.jax as crj

jax.config.update("jax_enable_x64", True)  # this program computes in float64


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[(3,), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[(3,), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="torch")
def shift(inputs: Inputs) -> Outputs:
    return Outputs(y=inputs.x - 1.0)


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def root(inputs: Inputs) -> Outputs:
    with np.errstate(invalid="ignore"):
        return Outputs(y=np.sqrt(inputs.x))  # NaN for x < 0


@jax.jit
def total(x: jax.Array) -> jax.Array:
    y = crj.call(shift, {"x": x})["y"]
    return jnp.sum(crj.call(root, {"x": y})["y"])


x = jnp.array([2.0, 0.5, 3.0])
print(total(x))  # nan, and nothing says where it came from

try:
    with cr.check_finite(), crj.errors():
        total(x)
except cr.NonFiniteError as e:
    print(e)  # component 'root' produced a non-finite output 'y' in apply (1 NaN of 3; ...
    assert "component 'root'" in str(e)
else:
    raise AssertionError("expected a NonFiniteError")
