"""Errors under jit: a component's exception surfaces as itself inside chainrule.jax.errors()."""

import jax
import jax.numpy as jnp
import numpy as np

import chainrule as cr
import chainrule.jax as crj

jax.config.update("jax_enable_x64", True)  # this program computes in float64


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[(3,), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[(3,), cr.Float64]]  # fixed shapes: known under jit


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def checked_log(inputs: Inputs) -> Outputs:
    if np.any(inputs.x <= 0):
        raise ValueError(f"log needs x > 0, got min {inputs.x.min()}")
    return Outputs(y=np.log(inputs.x))


@jax.jit
def total(x: jax.Array) -> jax.Array:
    return jnp.sum(crj.call(checked_log, {"x": x})["y"])


try:  # without the context manager: JAX's own error type, carrying the message
    total(-jnp.ones(3))
except jax.errors.JaxRuntimeError as e:
    assert "log needs x > 0" in str(e)

try:
    with crj.errors():  # re-raised as the component's own error
        total(-jnp.ones(3))
except cr.ComponentError as e:
    print(e)  # component 'checked_log' raised in apply: ValueError: log needs x > 0, ...
    assert "log needs x > 0" in str(e)
else:
    raise AssertionError("expected a ComponentError")

print(total(jnp.ones(3)))  # 0.0
