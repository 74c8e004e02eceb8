"""A soft `if`: both branches run, blended by how sure the comparison is.

The hard `x² if x > 1 else −x` has derivative 2x or −1 and a jump at x = 1 that gradients
never see; `soft.if_` blends the two by σ((x − 1)/temperature), so the derivative also feels
the switch. Cold temperatures give back the hard program.
"""

import jax
import jax.numpy as jnp

from chainrule import soft


def f(x: jax.Array, temperature: float) -> jax.Array:
    # pred is a signed margin: > 0 means "true" (here x > 1)
    return soft.if_(x - 1.0, lambda x: x**2, lambda x: -x, x, temperature)


x = jnp.array(1.05)
cold, warm = f(x, 1e-4), f(x, 0.1)
assert abs(float(cold) - 1.05**2) < 1e-6  # cold: the hard branch x² (x > 1)
assert -1.05 < float(warm) < 1.05**2  # warm: partly the other branch (−x = −1.05)
slope = jax.grad(f)(x, 0.1)  # includes d(weight)/dx · (x² − (−x))
assert float(slope) > 2 * 1.05  # steeper than the true branch alone: it sees the jump
print(f"cold {float(cold):.4f}, warm {float(warm):.4f}, d/dx warm {float(slope):.3f}")
