"""Backends: the same component in JAX, PyTorch and NumPy; where each endpoint comes from."""

import jax.numpy as jnp
import numpy as np
import torch

import chainrule as cr


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="jax")
def with_jax(inputs: Inputs) -> Outputs:
    return Outputs(y=jnp.sin(inputs.x) * inputs.x)


@cr.component(inputs=Inputs, outputs=Outputs, backend="torch")
def with_torch(inputs: Inputs) -> Outputs:
    return Outputs(y=torch.sin(inputs.x) * inputs.x)  # inputs arrive as torch tensors


@cr.component(inputs=Inputs, outputs=Outputs, backend=cr.FiniteDifferences(method="forward"))
def with_numpy(inputs: Inputs) -> Outputs:
    return Outputs(y=np.sin(inputs.x) * inputs.x)


x, c = np.array([0.5, 1.0, 2.0]), np.array([1.0, -1.0, 0.5])
exact = (np.cos(x) * x + np.sin(x)) * c
for comp in (with_jax, with_torch, with_numpy):
    print(comp.name, comp.endpoints)  # {'apply': ..., 'vjp': 'native (jax)', ...}
    grad = comp.vjp({"x": x}, cotangents={"y": c})["x"]
    np.testing.assert_allclose(grad, exact, rtol=1e-6 if comp is not with_numpy else 1e-4)

assert with_jax.endpoints["vjp"].startswith("native")
assert "hvp" in with_jax.endpoints  # JAX and PyTorch also give second order
