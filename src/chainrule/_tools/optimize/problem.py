"""The problem both optimize drivers work on: the objective and its compiled functions.

`_Problem` pairs the user's objective with the chosen method (and optax transformation) and
caches the jit-compiled functions built from it; `_scalar` checks at trace time that the
objective returns a scalar. Shared by the optax driver (`optimize`) and the scipy driver
(`scipy_driver`), so neither imports the other's module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp

from chainrule._schema.errors import ValidationError


def _scalar(objective: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The objective, checked (at trace time) to return a scalar."""

    def value(params: Any) -> Any:
        out = jnp.asarray(objective(params))
        if out.shape not in ((), (1,)):
            raise ValidationError(
                f"the objective must return a scalar, got {out.dtype}{list(out.shape)}; "
                "reduce it, e.g. with jnp.sum"
            )
        return out.reshape(())

    return value


@dataclass
class _Problem:
    """The objective with its method, and the compiled functions built for it."""

    objective: Callable[[Any], Any]
    method: str
    transform: Any  # optax transformation (None for scipy methods)
    jit: bool
    _cache: dict[Any, Any] = field(default_factory=dict)

    def compiled(self, key: Any, build: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
        if key not in self._cache:
            fn = build()
            self._cache[key] = jax.jit(fn) if self.jit else fn
        return self._cache[key]
