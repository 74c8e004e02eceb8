"""Derivatives at B points in one call: the `batched` keyword of a derivative row.

`jvp`, `vjp`, `batched_jvp` and `batched_vjp` take `batched`, the input paths that carry a
leading axis of B points, as `batched_apply`'s do (the other inputs are shared by every
point). The tangents or cotangents then carry that axis first too (before a batched row's own
batch axis), and so does the answer: `{path: array [B, ...]}`, its row b the endpoint's answer
at point b. The first point and its request are validated like any call's; the other points
have its shapes (checked) and dtypes (cast). A backend that maps its own derivative answers
through `points(endpoint, p, stacks, request)` (jax: vmap; a remote component: one request),
or None if it cannot (a server without the keyword); then, as for every other backend and for
an author's derivatives, a loop over the points, each an ordinary `run`. A kept linearization
is of one point, so `handle` must be null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from chainrule._schema import tree as _tree
from chainrule._schema.schema import Schema

from . import batched, validate

if TYPE_CHECKING:
    from .component import Component
    from .endpoints import Endpoint
    from .point import Point

__all__ = ["run"]

Stacks = dict[str, np.ndarray]


def run(c: Component, row: Endpoint, inputs: Any, request: Mapping[str, Any]) -> Any:
    """The answer of derivative `row` at each point of the batch (see the module docstring)."""
    tree = _tree.dump(inputs) if isinstance(inputs, Schema) else inputs
    if not isinstance(tree, Mapping):
        raise batched._invalid(c, "(body)", "an object of inputs", type(tree).__name__, row.name)
    found = batched.stacks(c, tree, request["batched"], row.name)
    first = c.point(batched.row(tree, found, 0))
    found = batched.conform(c, first, found, row.name)
    if request.get("handle") is not None:
        want = "null when 'batched' is given (a kept linearization is of one point)"
        raise batched._invalid(c, "handle", want, "a handle", row.name)
    if row.name not in c.impls:
        c._unavailable(row.name)
    key = _linear(row)
    given = _checked(c, row, first, request, key, len(next(iter(found.values()))))
    answer = None
    if _native(c, row.name):
        with c.errors(row.name):
            answer = c.backend.points(row.name, first, found, given)  # type: ignore[attr-defined]
    if answer is not None:
        return {k: np.asarray(v) for k, v in answer.items()}
    return _loop(c, row.name, first, found, given, key)


def _native(c: Component, endpoint: str) -> bool:
    """Whether the backend's own `points` may answer: it has one, and the endpoint is its own
    (an author's derivative, or one derived from it, is honoured by the loop)."""
    own = getattr(c.backend, "points", None) is not None
    return own and c.impls[endpoint].provenance == c.backend.provenance_of(endpoint)


def _linear(row: Endpoint) -> str:
    """The keyword holding the row's tangents or cotangents."""
    return next(k.name for k in row.keywords if k.role in ("tangents", "cotangents"))


def _checked(
    c: Component, row: Endpoint, first: Point, request: Mapping[str, Any], key: str, size: int
) -> dict[str, Any]:
    """The request validated at the first point, its tangents or cotangents with every row."""
    given = request.get(key)
    stacked: Stacks = {}
    if isinstance(given, Mapping):
        for path, value in given.items():
            stacked[path] = _leading(c, row, f"{key}.{path}", value, size)
    one = {k: v for k, v in request.items() if k not in ("batched", "handle")}
    one[key] = {p: a[0] for p, a in stacked.items()} if isinstance(given, Mapping) else given
    checked = validate.request(c, row, first, None, one)
    checked[key] = {p: np.asarray(stacked[p], v.dtype) for p, v in checked[key].items()}
    return checked


def _leading(c: Component, row: Endpoint, path: str, value: Any, size: int) -> np.ndarray:
    """`value` as an array with a leading axis of `size` points (else a ValidationError)."""
    try:
        array = np.asarray(value)
    except ValueError as e:
        raise batched._invalid(c, path, "an array", "a ragged value", row.name) from e
    if array.ndim == 0 or array.shape[0] != size or array.dtype == object:
        got = "no axis" if array.ndim == 0 else f"{array.shape[0]} rows"
        want = f"a leading axis of {size} points, as the batched inputs have"
        raise batched._invalid(c, path, want, got, row.name)
    return array


def _loop(
    c: Component, endpoint: str, first: Point, found: Stacks, given: dict[str, Any], key: str
) -> dict[str, np.ndarray]:
    """Each point an ordinary `run` (its inputs the first point's, with the batched rows)."""
    rows = []
    for b in range(len(next(iter(found.values())))):
        values = {path: stack[b] for path, stack in found.items()}
        p = c.at(_tree.replace_leaves(first.inputs, values), first.dims)
        linear = {path: v[b] for path, v in given[key].items()}
        rows.append(c.run(endpoint, p, None, **{**given, key: linear}))
    return {path: np.stack([r[path] for r in rows]) for path in rows[0]}
