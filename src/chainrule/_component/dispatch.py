"""Running an endpoint implementation: the error guard, the author's functions adapted to the
implementation shape, the NaN checks around a call, and numpy results.

`guard` turns what an author's code raises into chainrule's errors (a `ComponentError`
chaining the original, an `OutputValidationError` for outputs Pydantic refused); an error a
nested component carried across a foreign runtime (`carried`) is raised as itself.
"""

from __future__ import annotations

import inspect
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic

from chainrule._schema.errors import (
    ChainruleError,
    ComponentError,
    EndpointUnavailableError,
    OutputValidationError,
)
from chainrule._schema.messages import format_pydantic

from . import finite
from .carried import original

if TYPE_CHECKING:
    from .point import Point

__all__ = ["check_given", "check_results", "guard", "numpy_tree", "written_impl"]


class guard:  # lower case: used like the function it replaced (a context manager)
    """Count a call of `endpoint`; turn what the author's code raises inside the block into
    chainrule's errors: a ComponentError chaining the original, an OutputValidationError for
    outputs Pydantic refused; a ChainruleError passes as it is.

    A class, not a generator: entered on every call, it costs a third of one (measured).
    """

    __slots__ = ("endpoint", "name")

    def __init__(self, name: str, calls: Counter[str], endpoint: str) -> None:
        calls[endpoint] += 1
        self.name, self.endpoint = name, endpoint

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if error is None or isinstance(error, ChainruleError) or not isinstance(error, Exception):
            return
        if isinstance(error, pydantic.ValidationError):
            message, errors = format_pydantic(error, f"component '{self.name}' built bad outputs")
            raise OutputValidationError(message, errors=errors) from error
        carried = original(error)
        if carried is not None:  # a nested component failed inside jitted code
            raise carried.with_traceback(None)  # keeps the author's cause
        raise ComponentError(
            f"component '{self.name}' raised in {self.endpoint}: {type(error).__name__}: {error}"
        ) from error


def check_given(name: str, endpoint: str, p: Point, request: Mapping[str, Any]) -> None:
    """With `check_finite` on: refuse NaN/inf in what a call is given."""
    finite.check_values(name, endpoint, "input", p.values.items(), made=False)
    for role in ("tangents", "cotangents"):
        given = request.get(role)
        if isinstance(given, Mapping):
            finite.check_values(name, endpoint, role[:-1], given.items(), made=False)


def check_results(name: str, endpoint: str, result: Any) -> None:
    """With `check_finite` on: name the first NaN/inf a call made."""
    finite.check_values(name, endpoint, "result", _flat_items(result), made=True)


def _flat_items(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, array) of a nested result dict, e.g. a Jacobian's `{out: {in: block}}`."""
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flat_items(v, f"{prefix}{k}" if not prefix else f"{prefix}/{k}")
    else:
        yield prefix, tree


def numpy_tree(value: Any) -> Any:
    """A result tree with numpy arrays at its leaves (a backend may answer jax or lists)."""
    if isinstance(value, Mapping):
        return {k: numpy_tree(v) for k, v in value.items()}
    return value if isinstance(value, np.ndarray) else np.asarray(value)


def written_impl(fn: Callable[..., Any], endpoint: str) -> Callable[..., Any]:
    """Adapt an author's function `fn(inputs, <request>...)` to the implementation shape."""
    accepted = set(inspect.signature(fn).parameters)
    if endpoint == "hvp" and "cotangents" not in accepted:
        return _written_scalar_hvp(fn, accepted)

    def impl(p: Point, res: Any, **request: Any) -> Any:
        kwargs = {k: v for k, v in request.items() if k in accepted}
        return fn(p.inputs, **kwargs)

    impl.__name__ = f"written_{endpoint}"
    return impl


def _written_scalar_hvp(fn: Callable[..., Any], accepted: set[str]) -> Callable[..., Any]:
    """An author's hvp of one scalar output, `fn(inputs, tangents[, of, wrt])`, as the weighted
    form: the sum of its answers for each weighted output, each weight a scalar."""

    def impl(p: Any, res: Any, tangents: Any, cotangents: Any, wrt: Any) -> Any:
        total: dict[str, np.ndarray] = {}
        for o, weight in cotangents.items():
            if np.size(weight) != 1:
                raise EndpointUnavailableError(
                    f"the hvp written for component '{p.component.name}' is of one scalar "
                    f"output (it takes no cotangents=), but output '{o}' has shape "
                    f"{np.shape(weight)}; give it a `cotangents` parameter (output weights: "
                    "the Hessian of the weighted sum of outputs) to serve vector outputs"
                )
            given = {"tangents": tangents, "of": o, "wrt": wrt}
            kwargs = {k: v for k, v in given.items() if k in accepted}
            answer = fn(p.inputs, **kwargs)
            for w in wrt:
                term = float(np.reshape(weight, ())) * np.asarray(answer[w])
                total[w] = total[w] + term if w in total else term
        return {w: total[w] if w in total else np.zeros_like(p.values[w]) for w in wrt}

    impl.__name__ = "written_hvp"
    return impl
