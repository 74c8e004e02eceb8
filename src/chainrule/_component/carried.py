"""Exceptions carried across a foreign runtime by a tag in their text.

A component's exception cannot cross XLA: under `jax.jit`, JAX re-raises an exception from a
host callback as a `JaxRuntimeError` carrying only its text. `carry` keeps the original here
under a number, and gives the text to raise instead (`[chainrule error #N] ...`); `original`
finds the original again from any exception whose text holds that tag. The JAX binding
carries, and a component's error guard (a JAX component whose function calls a nested one
under jit) and `chainrule.jax.errors()` find the original again. The store is bounded: the
last `KEPT` carried exceptions.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections import OrderedDict

__all__ = ["KEPT", "Carried", "carry", "original"]

KEPT = 256

_ERRORS: OrderedDict[int, BaseException] = OrderedDict()
_IDS = itertools.count(1)
_LOCK = threading.Lock()
_TAG = re.compile(r"\[chainrule error #(\d+)\]")


class Carried(RuntimeError):
    """Raised in place of an exception that cannot cross; its text names the original."""


def carry(error: BaseException) -> Carried:
    """Keep `error` and return the exception to raise in its place (raise it `from error`)."""
    with _LOCK:
        number = next(_IDS)
        _ERRORS[number] = error
        while len(_ERRORS) > KEPT:
            _ERRORS.popitem(last=False)
    return Carried(f"[chainrule error #{number}] {type(error).__name__}: {error}")


def original(error: BaseException) -> BaseException | None:
    """The carried exception `error`'s text names, if it is still kept."""
    match = _TAG.search(str(error))
    return _ERRORS.get(int(match.group(1))) if match else None
