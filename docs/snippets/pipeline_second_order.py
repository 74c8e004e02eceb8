"""Second order through a component's hvp: a PyTorch component with a vector output."""

import jax
import jax.numpy as jnp
import numpy as np
import torch

import chainrule as cr
import chainrule.jax as crj

jax.config.update("jax_enable_x64", True)  # this program computes in float64


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="torch")
def waves(inputs: Inputs) -> Outputs:
    return Outputs(y=torch.sin(inputs.x) * inputs.x.sum())


x = np.array([0.3, -0.7, 1.2])

# The hvp endpoint: H·t, H the Hessian of Σ w·y (the output weighted by cotangents w).
w, t = np.array([1.0, -2.0, 0.5]), np.array([0.1, 0.2, 0.3])
print(waves.hvp({"x": x}, {"x": t}, cotangents={"y": w})["x"])


def loss(x):
    y = crj.call(waves, {"x": x})["y"]
    return jnp.sum(jnp.cos(y) * y)


def twin(x):  # the same in plain JAX
    y = jnp.sin(x) * jnp.sum(x)
    return jnp.sum(jnp.cos(y) * y)


# hessian, grad(grad), jvp(grad), jacfwd(jacrev): each uses the component's hvp.
np.testing.assert_allclose(jax.hessian(loss)(x), jax.hessian(twin)(x), rtol=1e-10)
np.testing.assert_allclose(
    jax.jacfwd(jax.jacrev(lambda x: crj.call(waves, {"x": x})["y"]))(x),
    jax.hessian(lambda x: jnp.sin(x) * jnp.sum(x))(x),
    rtol=1e-10,
    atol=1e-12,
)
