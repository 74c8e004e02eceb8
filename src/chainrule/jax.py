"""`chainrule.jax`: components inside JAX code, under every JAX transformation.

`call(component, inputs)` calls any component from JAX code (jit, grad, jvp, vmap, scan, ...);
`errors()` re-raises component errors from jitted code as themselves. How the binding works
(its primitives, their rules, the host callbacks) is told in `chainrule._bindings.jax`.
"""

from chainrule._bindings.jax.call import call, errors, original_error
from chainrule._bindings.jax.primitives import call_p, hvp_p, jvp_p, vjp_p

__all__ = ["call", "call_p", "errors", "hvp_p", "jvp_p", "original_error", "vjp_p"]
