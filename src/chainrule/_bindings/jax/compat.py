"""Every private JAX API chainrule uses, in one place (checked with JAX 0.10.2).

- `jax._src.callback.emit_python_callback`: emits a host callback that hands the host the
  numpy arrays XLA has, where `jax.pure_callback` would first put every argument on a device
  as a `jax.Array` (~50-100 µs each, measured) only for the host to turn it back into numpy.
  Used only when its signature is the one known here; any other JAX falls back to
  `jax.pure_callback`.
- `jax._src.core.to_concrete_value`: the value of a tracer when it is known at trace time
  (outside jit), so a call site can learn its output shapes early. No public spelling yet.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["BUFFER_CALLBACK", "EMIT_PYTHON_CALLBACK", "concrete_value"]


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


def concrete_value(x: Any) -> Any | None:
    """The value of tracer `x` if it is known now (not under jit), else None."""
    from jax._src import core

    return core.to_concrete_value(x)
