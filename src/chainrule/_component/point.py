"""Points: validated inputs of one component call, their array leaves by path.

A `Point` asks its component only for its `name`, `known_shapes` and `apply_at` (the
`Owner` protocol), so this module imports no component: the backends, which receive points,
and the component, which makes them, both import it.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Protocol

from chainrule._schema import tree as _tree
from chainrule._schema.errors import ValidationError
from chainrule._schema.messages import prefixed
from chainrule._schema.schema import ArraySpec, Schema, ShapeDtype

from .residuals import Residual, fingerprint

if TYPE_CHECKING:
    from .residuals import Handle


class Owner(Protocol):
    """What a point needs of its component."""

    name: str

    def known_shapes(self, p: Point) -> Schema | None: ...

    def apply_at(
        self, p: Point, keep: bool = False, fingerprint: bytes | None = None
    ) -> tuple[Schema, Handle | None]: ...


__all__ = ["Owner", "Point", "shape_leaves"]


class Point:
    """A validated input point: the inputs instance and its array leaves by path."""

    def __init__(
        self, component: Owner, inputs: Schema, dims: dict[str, int] | None = None
    ) -> None:
        """`dims`: the named dimensions, when the caller knows them already (a framework
        binding, whose call site fixes every shape); else bound (and checked) here."""
        self.component = component
        self.inputs = inputs
        self.leaves = {leaf.path: leaf for leaf in _tree.leaves(inputs)}
        self.values: dict[str, Any] = {p: leaf.value for p, leaf in self.leaves.items()}
        self.diff = tuple(p for p, leaf in self.leaves.items() if leaf.spec.differentiable)
        self.dims: dict[str, int] = {} if dims is None else dims
        if dims is None and _tree.has_named_dims(type(inputs)):
            fail = prefixed(ValidationError, f"invalid inputs to component '{component.name}'")
            self.dims = _tree.bind_dims([list(self.leaves.values())], fail)
        self.outputs: Schema | None = None  # filled when some endpoint had to run apply

    @functools.cached_property
    def signature(self) -> tuple[Any, ...]:
        """Static values, shapes and dtypes of the inputs (the key of compiled programs)."""
        return _tree.signature(self.inputs)

    def fingerprint(self) -> bytes | None:
        """The fingerprint of the point's values now (see `residuals.fingerprint`).

        Computed afresh on each call, not cached: a Point can outlive a call while the
        caller changes its arrays in place.
        """
        return fingerprint(self.inputs)

    def out_leaves(self, residual: Residual | None, run: bool) -> dict[str, _tree.Leaf] | None:
        """Output leaves (values or ShapeDtype) if known without running apply, or if `run`."""
        if residual is not None and residual.outputs is not None:
            if not isinstance(residual.outputs, dict):  # leaves made once, on first use
                residual.outputs = shape_leaves(residual.outputs)
            return dict(residual.outputs)
        outputs = self.outputs if residual is None else None
        if outputs is None:
            outputs = self.component.known_shapes(self)
        if outputs is None and run:
            outputs = self.outputs = self.component.apply_at(self)[0]
        return None if outputs is None else {x.path: x for x in _tree.leaves(outputs)}

    def out_shapes(self, paths: tuple[str, ...], residual: Any) -> dict[str, tuple[int, ...]]:
        leaves = self.out_leaves(residual, run=True) or {}
        return {p: tuple(leaves[p].value.shape) for p in paths}


def shape_leaves(shapes: list[tuple[str, ArraySpec, Any, Any]]) -> dict[str, _tree.Leaf]:
    return {p: _tree.Leaf(p, s, ShapeDtype(tuple(shape), dtype)) for p, s, shape, dtype in shapes}
