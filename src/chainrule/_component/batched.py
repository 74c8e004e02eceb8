"""`batched_apply`: the outputs at B points that differ only in some inputs, in one call.

The request's `inputs` carry a leading batch axis B on the leaves named in `batched` (the
others are shared by every point). The first point is validated like any call's inputs; every
batched leaf must then have that point's shape after its batch axis (and is cast to its
dtype). A backend that can map its function answers through its own `batched_apply(p, stacks)`
(jax, torch: vmap; a remote component: one request), or None if it cannot (a torch function
vmap cannot map, a server without the endpoint); then, as for any other backend, a loop over
the points, each an ordinary `apply`. The answer is `{output path: array}` for every array
output, the batch axis first.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from chainrule._schema import tree as _tree
from chainrule._schema.errors import ValidationError
from chainrule._schema.schema import Schema

if TYPE_CHECKING:
    from .component import Component
    from .point import Point

__all__ = ["conform", "provenance", "row", "run", "stacks"]

Stacks = dict[str, np.ndarray]


def run(c: Component, inputs: Any, batched: Sequence[str]) -> dict[str, np.ndarray]:
    """The outputs of `c` at each point of the batch (see the module docstring)."""
    tree = _tree.dump(inputs) if isinstance(inputs, Schema) else inputs
    if not isinstance(tree, Mapping):
        raise _invalid(c, "(body)", "an object of inputs", type(tree).__name__)
    found = stacks(c, tree, batched)
    first = c.point(row(tree, found, 0))
    found = conform(c, first, found)
    native = getattr(c.backend, "batched_apply", None)
    with c.errors("batched_apply"):
        answer = native(first, found) if native is not None else None
        return answer if answer is not None else _loop(c, tree, found)


def provenance(c: Component) -> str:
    """How `c` answers `batched_apply`: its backend's own way, or a loop of applies."""
    own = getattr(c.backend, "batched_provenance", None)
    return own if isinstance(own, str) else "loop"


def row(tree: Mapping[str, Any], stacks: Stacks, b: int) -> dict[str, Any]:
    """The inputs tree of point `b`: `tree` with each batched leaf replaced by its row `b`."""
    out = copy.copy(dict(tree))
    for path, stack in stacks.items():
        _set(out, path.split("."), stack[b])
    return out


def _set(tree: Any, keys: list[str], value: Any) -> None:
    key: Any = int(keys[0]) if isinstance(tree, list) else keys[0]
    if len(keys) == 1:
        tree[key] = value
        return
    inner = copy.copy(tree[key])  # copy the path down, never the caller's containers
    tree[key] = inner
    _set(inner, keys[1:], value)


def stacks(
    c: Component, tree: Mapping[str, Any], batched: Sequence[str], endpoint: str = "batched_apply"
) -> Stacks:
    """The batched leaves of `tree` by path, each with the same leading batch size (>= 1)."""
    if not batched:
        raise _invalid(c, "batched", "at least one input path", "[]", endpoint)
    found: Stacks = {}
    for path in batched:
        try:
            value: Any = tree
            for key in path.split("."):
                value = value[int(key)] if isinstance(value, list) else value[key]
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise _invalid(c, "batched", "paths of array inputs", repr(path), endpoint) from e
        found[path] = np.asarray(value)
    sizes = {p: s.shape[0] if s.ndim else None for p, s in found.items()}
    first = next(iter(sizes.values()))
    for path, size in sizes.items():
        if size is None or size != first or size == 0:
            got = "no axis" if size is None else f"{size} rows"
            want = f"a leading batch axis of {first} rows" if first else "a leading batch axis"
            raise _invalid(c, f"inputs.{path}", want, got, endpoint)
    return found


def conform(c: Component, first: Point, stacks: Stacks, endpoint: str = "batched_apply") -> Stacks:
    """Each stack cast to the first point's dtype, its rows checked against that shape."""
    out = {}
    for path, stack in stacks.items():
        leaf = first.values.get(path)
        if leaf is None:
            raise _invalid(c, "batched", "paths of array inputs", repr(path), endpoint)
        want = np.asarray(leaf)
        if stack.shape[1:] != want.shape:
            got = f"rows of shape {list(stack.shape[1:])}"
            want_rows = f"rows of shape {list(want.shape)}"
            raise _invalid(c, f"inputs.{path}", want_rows, got, endpoint)
        out[path] = np.asarray(stack, want.dtype)
    return out


def _loop(c: Component, tree: Mapping[str, Any], stacks: Stacks) -> dict[str, np.ndarray]:
    size = len(next(iter(stacks.values())))
    rows = []
    for b in range(size):
        out = c.apply(row(tree, stacks, b))
        rows.append({leaf.path: np.asarray(leaf.value) for leaf in _tree.leaves(out)})
    return {path: np.stack([r[path] for r in rows]) for path in rows[0]}


def _invalid(
    c: Component, path: str, expected: str, got: str, endpoint: str = "batched_apply"
) -> ValidationError:
    return ValidationError(
        f"{endpoint} of component '{c.name}': '{path}' must be {expected}, got {got}",
        errors=[{"path": path, "expected": expected, "got": got}],
    )
