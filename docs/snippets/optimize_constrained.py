"""chainrule.optimize with bounds and constraints (scipy's SLSQP or trust-constr), multi-start."""

import jax.numpy as jnp
import numpy as np

import chainrule as cr


def cost(p):  # parameters are any pytree: here a dict
    return (p["a"][0] - 2) ** 2 + (p["a"][1] - 1) ** 2 + (p["b"] - 3) ** 2


p0 = {"a": np.array([0.5, 0.5]), "b": np.array(0.5)}
result = cr.optimize(
    cost,
    p0,
    method="SLSQP",  # or "trust-constr"
    # (lower, upper): pytrees shaped like p0 (or prefixes of it: one number for a subtree)
    bounds=({"a": 0.0, "b": None}, 1.5),
    constraints=[
        {"type": "eq", "fun": lambda p: jnp.sum(p["a"]) + p["b"] - 3},  # f(p) == 0
        {"type": "ineq", "fun": lambda p: 0.5 - (p["a"][0] - p["a"][1])},  # f(p) >= 0
    ],
)
print(result.x)  # {'a': array([1. , 0.5]), 'b': array(1.5)}
np.testing.assert_allclose(result.x["a"], [1.0, 0.5], atol=1e-6)
np.testing.assert_allclose(result.x["b"], 1.5, atol=1e-6)


# Local minima are real: start from several points and keep the best.
def double_well(x):
    return jnp.sum((x**2 - 1) ** 2 + 0.3 * x)


starts = [np.array([1.5]), np.array([0.4]), np.array([-0.2])]
best = cr.optimize(double_well, starts, method="L-BFGS-B", multistart=True)
print([float(r.fun) for r in best.runs])  # two runs end in the upper well
np.testing.assert_allclose(best.x, [-1.0356], atol=1e-4)
