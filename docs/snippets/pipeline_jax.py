"""chainrule.jax.call: components of any kind inside JAX code, under jit, grad, vmap, ..."""

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


@cr.component(inputs=Inputs, outputs=Outputs, backend="jax")
def warp(inputs: Inputs) -> Outputs:  # traced inline: no callback, no copy
    return Outputs(y=jnp.sin(inputs.x))


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def legacy(inputs: Inputs) -> Outputs:  # a JAX primitive calling NumPy on the host
    return Outputs(y=np.tanh(inputs.x))  # (PyTorch and remote components work the same way)


@legacy.def_vjp
def legacy_vjp(inputs: Inputs, cotangents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"x": (1 - np.tanh(inputs.x) ** 2) * cotangents["y"]}


def loss(x: jax.Array) -> jax.Array:
    y = crj.call(warp, {"x": x})["y"]
    y = crj.call(legacy, {"x": y})["y"]
    return jnp.sum(y**2)


def reference(x: jax.Array) -> jax.Array:  # the same pipeline in plain JAX
    return jnp.sum(jnp.tanh(jnp.sin(x)) ** 2)


x = jnp.linspace(0.1, 1.0, 4)
g = jax.jit(jax.grad(loss))(x)  # one apply and one vjp of `legacy`
print(g)
np.testing.assert_allclose(g, jax.grad(reference)(x), rtol=1e-5)

# Forward mode, Jacobians and vmap work too.
_, tangent = jax.jvp(loss, (x,), (jnp.ones(4),))
np.testing.assert_allclose(tangent, jnp.sum(g), rtol=1e-5)
batch = jnp.stack([x, 2 * x])
np.testing.assert_allclose(jax.vmap(loss)(batch), jax.vmap(reference)(batch), rtol=1e-12)
jac = jax.jacrev(lambda x: crj.call(legacy, {"x": x})["y"])(x)  # one batched vjp request
np.testing.assert_allclose(jac, np.diag(1 - np.tanh(x) ** 2), rtol=1e-10)
