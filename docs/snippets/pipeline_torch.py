"""chainrule.torch.call: components of any kind inside PyTorch code, with autograd."""

import jax.numpy as jnp
import numpy as np
import torch

import chainrule as cr
import chainrule.torch as crt


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="jax")
def simulator(inputs: Inputs) -> Outputs:  # JAX, called from PyTorch
    return Outputs(y=jnp.cumsum(jnp.sin(inputs.x)))


model = torch.nn.Linear(4, 4, dtype=torch.float64)
x = torch.linspace(0.0, 1.0, 4, dtype=torch.float64)

y = crt.call(simulator, {"x": model(x)})["y"]  # a torch tensor with a grad_fn
loss = (y**2).sum()
loss.backward()  # one apply and one vjp of the JAX simulator
print(model.weight.grad)

# The same gradient with the simulator written in PyTorch directly.
w = model.weight.detach().clone().requires_grad_(True)
reference = (torch.cumsum(torch.sin(torch.nn.functional.linear(x, w, model.bias)), 0) ** 2).sum()
reference.backward()
np.testing.assert_allclose(model.weight.grad.numpy(), w.grad.numpy(), rtol=1e-10)
