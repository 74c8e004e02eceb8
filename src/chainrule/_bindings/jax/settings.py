"""How the JAX binding emits its host callbacks: jaxlib's buffer callback, JAX's emitter, or
`jax.pure_callback` (`chainrule.jax` sets them from the environment at import)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import compat

__all__ = ["Settings", "configure", "emitter", "mode"]


@dataclass(frozen=True)
class Settings:
    """How the binding emits its host callbacks (see `configure`).

    Arguments:
        pure_callback: lower them with `jax.pure_callback` instead of JAX's own emitter (an
            escape hatch; `chainrule.jax` sets it from `CHAINRULE_JAX_PURE_CALLBACK=1`).
        buffers: lower them with JAX's buffer callback where this JAX has it (the host reads
            XLA's input buffers without a copy and fills its result buffers); else with JAX's
            emitter, which copies every input (`CHAINRULE_JAX_EMIT_CALLBACK=1` asks for it).
    """

    pure_callback: bool = False
    buffers: bool = True


_SETTINGS = [Settings()]


def configure(settings: Settings) -> None:
    """Use `settings` for every host callback lowered from now on."""
    _SETTINGS[0] = settings


def emitter() -> Callable[..., Any] | None:
    """JAX's own host-callback emitter (`compat`), unless `jax.pure_callback` is wanted or
    this JAX lacks the emitter known here."""
    return None if _SETTINGS[0].pure_callback else compat.EMIT_PYTHON_CALLBACK


def mode() -> str:
    """How host callbacks are lowered now: `"buffer"`, `"emit"` or `"pure_callback"`."""
    settings = _SETTINGS[0]
    if settings.pure_callback:
        return "pure_callback"
    if settings.buffers and compat.BUFFER_CALLBACK is not None:
        return "buffer"
    return "emit" if compat.EMIT_PYTHON_CALLBACK is not None else "pure_callback"
