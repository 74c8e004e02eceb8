"""Every private JAX API chainrule uses, in one place (checked with JAX 0.10.2).

- `jax._src.callback.emit_python_callback`: emits a host callback that hands the host the
  numpy arrays XLA has, where `jax.pure_callback` would first put every argument on a device
  as a `jax.Array` (~50-100 µs each, measured) only for the host to turn it back into numpy.
  Used only when its signature is the one known here; any other JAX falls back to
  `jax.pure_callback`.
- `jax._src.core.to_concrete_value`: the value of a tracer when it is known at trace time
  (outside jit), so a call site can learn its output shapes early. No public spelling yet.
- jaxlib's CPU custom call `xla_buffer_python_cpu_callback` with a module host callback
  (`ctx.module_context.add_host_callback`): what `jax.experimental.buffer_callback` lowers
  to, emitted directly (`lower_buffer_callback`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["BUFFER_CALLBACK", "EMIT_PYTHON_CALLBACK", "concrete_value", "lower_buffer_callback"]


def _emit_python_callback() -> Callable[..., Any] | None:
    """JAX's own host-callback emitter, if this JAX has the one we know."""
    try:
        from jax._src.callback import emit_python_callback
    except ImportError:  # pragma: no cover - depends on the JAX version
        return None
    params = inspect.signature(emit_python_callback).parameters
    wanted = ("ctx", "callback", "token", "operands", "operand_avals", "result_avals")
    if tuple(params)[:6] != wanted or not {"has_side_effect", "returns_token"} <= set(params):
        return None  # pragma: no cover - depends on the JAX version
    return emit_python_callback


EMIT_PYTHON_CALLBACK = _emit_python_callback()


def _buffer_callback() -> Callable[..., Any] | None:
    """`jax.experimental.buffer_callback.buffer_callback` (public but experimental), if this
    JAX has it: the host gets XLA's buffers themselves, no copy in and none out but its own."""
    try:
        from jax.experimental.buffer_callback import buffer_callback
    except ImportError:  # pragma: no cover - depends on the JAX version
        return None
    return buffer_callback


BUFFER_CALLBACK = _buffer_callback()

# The custom call behind `buffer_callback` on CPU: jaxlib's handler calls a host callback of
# the module with XLA's buffers, `callback(exec_ctx, *inputs, *results)`. Lowering to it
# directly skips `buffer_callback`'s own Python wrapper per call (two pytree rebuilds and a
# list split: about 1.5 µs of a 10 µs crossing, measured). Only where `buffer_callback`
# exists (the handler is registered with it) and on CPU alone; elsewhere, `BUFFER_CALLBACK`.
_BUFFER_TARGET = "xla_buffer_python_cpu_callback"


def lower_buffer_callback(ctx: Any, callback: Callable[..., None], args: Any) -> Any | None:
    """Emit `callback(exec_ctx, *input buffers, *result buffers)` as jaxlib's CPU buffer
    callback in lowering context `ctx`; None where that is not possible here (another
    platform, or a JAX without `buffer_callback`): then use `BUFFER_CALLBACK`."""
    if BUFFER_CALLBACK is None or tuple(ctx.module_context.platforms) != ("cpu",):
        return None
    import jax
    import numpy as np

    ctx.module_context.add_host_callback(callback)
    index = np.uint64(len(ctx.module_context.host_callbacks) - 1)
    return jax.ffi.ffi_lowering(_BUFFER_TARGET, has_side_effect=False)(ctx, *args, index=index)


def concrete_value(x: Any) -> Any | None:
    """The value of tracer `x` if it is known now (not under jit), else None."""
    from jax._src import core

    return core.to_concrete_value(x)
