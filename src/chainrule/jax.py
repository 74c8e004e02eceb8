"""`chainrule.jax`: components inside JAX code, under every JAX transformation.

`call(component, inputs)` calls any component from JAX code (jit, grad, jvp, vmap, scan, ...);
`errors()` re-raises component errors from jitted code as themselves. How the binding works
(its primitives, their rules, the host callbacks) is told in `chainrule._bindings.jax`.

Environment (read once, when this module is imported): `CHAINRULE_JAX_PURE_CALLBACK=1` lowers
every host callback with `jax.pure_callback` instead of JAX's own emitter (an escape hatch;
slower: `pure_callback` puts each argument on a device before the host sees it);
`CHAINRULE_JAX_EMIT_CALLBACK=1` lowers them with JAX's emitter instead of its buffer callback
(the emitter copies every input array before the host sees it).
"""

import os

from chainrule._bindings.jax import primitives as _primitives
from chainrule._bindings.jax.call import call, errors, original_error
from chainrule._bindings.jax.primitives import call_p, hvp_p, jvp_p, vjp_p

__all__ = ["call", "call_p", "errors", "hvp_p", "jvp_p", "original_error", "vjp_p"]

_primitives.configure(
    _primitives.Settings(
        pure_callback=os.environ.get("CHAINRULE_JAX_PURE_CALLBACK", "") not in ("", "0"),
        buffers=os.environ.get("CHAINRULE_JAX_EMIT_CALLBACK", "") in ("", "0"),
    )
)
