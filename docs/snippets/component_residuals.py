"""Residual reuse: keep the linearization made by apply, so the vjp is a backward pass only."""

import jax.numpy as jnp
import numpy as np

import chainrule as cr


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="jax", residual_bytes=64 * 2**20)
def smooth(inputs: Inputs) -> Outputs:
    return Outputs(y=jnp.tanh(inputs.x) ** 2)


x, c = np.linspace(-1.0, 1.0, 5), np.ones(5)
out, handle = smooth.apply({"x": x}, keep=True)  # outputs and a handle to the linearization
grad = smooth.vjp({"x": x}, {"y": c}, handle=handle)  # reuses it: no second forward pass
smooth.release(handle)  # or let the LRU cache (64 MiB here) evict it

# A handle can make a call cheaper, never change its answer: same result without it.
np.testing.assert_allclose(grad["x"], smooth.vjp({"x": x}, {"y": c})["x"])
# After release (or eviction) the handle is still accepted; the endpoint recomputes.
np.testing.assert_allclose(smooth.vjp({"x": x}, {"y": c}, handle=handle)["x"], grad["x"])
# The handle is used only where the inputs equal the kept ones by value (a fingerprint, not
# object identity): after changing x in place, the vjp recomputes at the new values.
_, handle = smooth.apply({"x": x}, keep=True)
x *= 2.0
np.testing.assert_allclose(
    smooth.vjp({"x": x}, {"y": c}, handle=handle)["x"], smooth.vjp({"x": x}, {"y": c})["x"]
)
print(out.y, grad["x"])
