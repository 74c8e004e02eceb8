"""A soft `while`: a bounded loop whose number of steps is (softly) differentiable.

Newton's method for √a stops when the step is small; `soft.while_` runs at most `max_steps`
bodies under `lax.scan` and blends each one in by a "still running" weight, so it can be
reverse-differentiated (a hard `lax.while_loop` cannot) and, cold, equals the hard loop.
"""

import jax
import jax.numpy as jnp

from chainrule import soft

jax.config.update("jax_enable_x64", True)  # this program computes in float64


def sqrt(a: jax.Array) -> jax.Array:
    def still_going(x: jax.Array) -> jax.Array:
        return jnp.abs(x * x - a) - 1e-10  # margin > 0 while the residual is large

    def newton(x: jax.Array) -> jax.Array:
        return 0.5 * (x + a / x)

    return soft.while_(still_going, newton, a, max_steps=30, temperature=1e-12)


a = jnp.array(2.0)
hard = jax.lax.while_loop(lambda x: jnp.abs(x * x - a) > 1e-10, lambda x: 0.5 * (x + a / x), a)
assert float(sqrt(a)) == float(hard)  # the same iterates as the hard loop
assert abs(float(sqrt(a)) - 2**0.5) < 1e-10
grad = jax.grad(sqrt)(a)  # reverse mode through the loop
assert abs(float(grad) - 0.5 / 2**0.5) < 1e-8
print(f"sqrt(2) = {float(sqrt(a)):.12f}, d/da = {float(grad):.12f}")
