"""Opt-in NaN/inf hunting: find the component, endpoint and path where a non-finite value
first appears in a pipeline.

With the check on, every component call looks at what goes in (inputs, tangents,
cotangents) and what comes out (outputs, derivatives). A non-finite value coming *out* of a
call whose inputs were finite was made by that component: `NonFiniteError` names it, the
endpoint and the output path. One going *in* came from the caller's code (or a component
that is not checked, such as an in-process JAX component traced inline: use JAX's own
`jax_debug_nans` there) and is reported as such, before the component runs.

Turn it on with `chainrule.check_finite()` (also a context manager), or for a whole process,
including servers, with the environment variable `CHAINRULE_CHECK_FINITE=1` (read once, at
the edge: when `chainrule` is imported). A remote
component's client asks its server to check too (a request header), so the error names the
component inside the server where the value first appeared.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import numpy as np

from chainrule._schema.errors import NonFiniteError

__all__ = ["active", "check_finite", "check_values", "scoped"]

HEADER = "X-Chainrule-Check-Finite"

_STATE = {"on": False}  # process-wide; `chainrule/__init__.py` sets it from the environment
_LOCAL = threading.local()  # a server's per-request override, in the worker thread running it
_SCOPES = [0]  # how many `scoped` blocks are open, in any thread
_SCOPES_LOCK = threading.Lock()


def active() -> bool:
    """Whether calls in this thread check for non-finite values now."""
    # The thread-local override is looked at only while some thread has one (a server's
    # request asking for the check): this runs in every host callback of a jitted program.
    return bool(_STATE["on"] or (_SCOPES[0] and getattr(_LOCAL, "on", None)))


class check_finite:  # lower case: used like a function (a setting, as jax.debug_nans)
    """Check every component call for NaN/inf (process-wide) until turned off.

    `chainrule.check_finite()` turns the check on, `chainrule.check_finite(False)` off;
    `with chainrule.check_finite(): ...` turns it on for the block and then restores the
    previous setting.

    Example:
        ```python
        with cr.check_finite():
            jax.grad(loss)(x)   # NonFiniteError names the component and path of the first NaN
        ```
    """

    def __init__(self, enabled: bool = True) -> None:
        self._previous = _STATE["on"]
        _STATE["on"] = bool(enabled)

    def __enter__(self) -> check_finite:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _STATE["on"] = self._previous


class scoped:
    """Turn the check on for the current thread while a server runs one request."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        self._previous = getattr(_LOCAL, "on", None)
        _LOCAL.on = self.enabled or None
        with _SCOPES_LOCK:
            _SCOPES[0] += 1

    def __exit__(self, *exc: object) -> None:
        _LOCAL.on = self._previous
        with _SCOPES_LOCK:
            _SCOPES[0] -= 1


def _first_bad(value: Any) -> tuple[int, int, tuple[int, ...]] | None:
    """(NaN count, inf count, index of the first) if `value` holds non-finite numbers."""
    array = np.asarray(value)
    if array.dtype.kind not in "fc":
        return None
    finite = np.isfinite(array)
    if finite.all():
        return None
    nan = int(np.isnan(array).sum())
    bad = int(array.size - finite.sum())
    first = tuple(int(i) for i in np.argwhere(~finite)[0]) if array.ndim else ()
    return nan, bad - nan, first


def check_values(
    component: str, endpoint: str, role: str, items: Iterable[tuple[str, Any]], made: bool
) -> None:
    """Raise `NonFiniteError` at the first non-finite leaf of `items` (`(path, array)` pairs).

    Arguments:
        component, endpoint: who is being called, for the message.
        role: what the items are ("input", "output", "cotangent", ...).
        made: True for results (the component made them), False for what it was given.
    """
    for path, value in items:
        found = _first_bad(value)
        if found is None:
            continue
        nan, inf, first = found
        counts = ", ".join(f"{n} {what}" for n, what in ((nan, "NaN"), (inf, "inf")) if n)
        detail = f"({counts} of {np.size(value)}; first at index {list(first)})"
        if made:
            message = (
                f"component '{component}' produced a non-finite {role} '{path}' in {endpoint} "
                f"{detail} from finite values: this is where it first appeared"
            )
        else:
            message = (
                f"a non-finite value reached component '{component}' ({endpoint}) through "
                f"{role} '{path}' {detail}: it was made before this call, by the caller's "
                "code or an unchecked component"
            )
        raise NonFiniteError(
            message,
            errors=[{"path": path, "expected": "finite values", "got": counts}],
        )
