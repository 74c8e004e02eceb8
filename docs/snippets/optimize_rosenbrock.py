"""chainrule.optimize: minimize a pipeline objective, with its history and call counts."""

import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import chainrule as cr
import chainrule.jax as crj


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Outputs(cr.Schema):
    r: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def curvature(inputs: Inputs) -> Outputs:  # legacy NumPy code: finite-difference derivatives
    return Outputs(r=10 * (inputs.y - inputs.x**2))


def rosenbrock(x):  # a JAX function of the parameters, calling the component
    r = crj.call(curvature, {"x": x[:-1], "y": x[1:]})["r"]
    return jnp.sum(r**2 + (1 - x[:-1]) ** 2)


x0 = np.array([-1.2, 1.0, 0.5])
result = cr.optimize(rosenbrock, x0, method="L-BFGS-B", components=[curvature])
print(result)  # OptimizeResult(L-BFGS-B, converged at step ...: CONVERGENCE: ...)
np.testing.assert_allclose(result.x, 1.0, atol=1e-4)

history = result.history  # one entry per iterate: objective, gradient norm, x, time, calls
print(history.objective[:3], history.grad_norm[-1], history.calls[-1])
assert all(c["curvature"]["vjp"] >= 1 for c in history.calls[1:])  # a gradient per step

# Stop after 20 steps, save the history, and resume: optax methods restore their state, so the
# resumed run ends exactly where an uninterrupted one would.
full = cr.optimize(rosenbrock, x0, method="adam", learning_rate=0.05, max_steps=60, tol=None)
part = cr.optimize(rosenbrock, x0, method="adam", learning_rate=0.05, max_steps=20, tol=None)
with tempfile.TemporaryDirectory() as tmp:
    saved = part.history.save(Path(tmp) / "run.npz")
    resumed = cr.optimize(
        rosenbrock, x0, method="adam", learning_rate=0.05, max_steps=60, tol=None, resume=saved
    )
np.testing.assert_array_equal(resumed.x, full.x)
