"""`load_backend`: the backend a component names, its framework imported only now."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from chainrule._schema.errors import SchemaDefinitionError
from chainrule._schema.schema import Schema

from .base import Backend, FiniteDifferences
from .numpy import NumpyBackend

__all__ = ["load_backend"]

_BACKENDS = {"jax": ".jax", "torch": ".torch", "numpy": ".numpy"}
_EXTRAS = {"jax": "jax", "torch": "torch"}


def load_backend(
    spec: str | FiniteDifferences | Backend,
    fn: Callable[[Any], Any],
    inputs: type[Schema],
    outputs: type[Schema],
) -> Backend:
    """Instantiate the backend named by `spec`, importing its framework only now."""
    if isinstance(spec, Backend):
        return spec
    if isinstance(spec, FiniteDifferences):
        return NumpyBackend(fn, inputs, outputs, spec)
    if spec not in _BACKENDS:
        raise SchemaDefinitionError(
            f"unknown backend {spec!r}; use one of {sorted(_BACKENDS)} or "
            "chainrule.FiniteDifferences(...)"
        )
    try:
        module = importlib.import_module(_BACKENDS[spec], __package__)
    except ModuleNotFoundError as e:
        raise SchemaDefinitionError(
            f"backend {spec!r} needs {e.name}, which is not installed; "
            f"pip install 'chainrule[{_EXTRAS.get(spec, spec)}]'"
        ) from e
    backend: Backend = module.BACKEND(fn, inputs, outputs)
    return backend
