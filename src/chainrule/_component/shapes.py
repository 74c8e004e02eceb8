"""Output shapes: fixed by the output schema, remembered from an earlier call, or found by
running the component.

A shape that is known cheaply spares a call: an hvp of one scalar output, a cotangent's
expected shape, a derived Jacobian's rows, a JAX program's abstract outputs. In order of cost:
the output schema and the inputs' named dimensions (`static_leaves`, `bound`); shapes a
component remembers by static signature (`Component.known_shapes`, for backends whose shapes
depend on nothing else); `eval_shape`; and last `apply`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from chainrule._schema import tree as _tree
from chainrule._schema.schema import ArraySpec, Schema, ShapeDtype

if TYPE_CHECKING:
    from .point import Point
    from .residuals import Residual

__all__ = ["bound", "output_shapes", "output_specs", "shapes_of", "static_leaves"]


def bound(shape: tuple[Any, ...], dims: Mapping[str, int]) -> tuple[Any, ...]:
    """`shape` with its named dimensions replaced by their sizes in `dims` (when known)."""
    return tuple(dims.get(d, d) if isinstance(d, str) else d for d in shape)


@_tree.class_cache
def static_leaves(model: type[Schema]) -> tuple[tuple[str, ArraySpec], ...] | None:
    """The array leaves a schema class fixes (None when the instance decides), cached."""
    found = _tree.class_leaves(model)
    return None if found is None else tuple(found.items())


def output_shapes(out: Schema) -> list[tuple[str, ArraySpec, Any, Any]]:
    """What a residual keeps of its outputs: (path, spec, shape, dtype) of each leaf, no data
    (plain tuples: cheap to make on every keep; `point.shape_leaves` builds leaves when
    needed)."""
    return [(x.path, x.spec, x.value.shape, x.value.dtype) for x in _tree.leaves(out)]


def shapes_of(out: Schema) -> Schema:
    """`out` with `ShapeDtype` leaves: its shapes, dtypes and static values, no array data."""
    shapes = {x.path: ShapeDtype(tuple(x.value.shape), x.value.dtype) for x in _tree.leaves(out)}
    return _tree.replace_leaves(out, shapes)


def output_specs(
    outputs: type[Schema], p: Point, res: Residual | None
) -> dict[str, tuple[ArraySpec, Any]]:
    """{output path: (spec, shape or None)} at point `p`: exact shapes when known cheaply."""
    static = static_leaves(outputs)
    if static is not None:  # shapes fixed by the declaration and the inputs' named dims
        fixed = {k: (s, bound(s.shape, p.dims)) for k, s in static}
        if all(type(d) is int for _, shape in fixed.values() for d in shape):
            return fixed
    known = p.out_leaves(res, run=static is None)
    if known is not None:
        return {k: (x.spec, tuple(x.value.shape)) for k, x in known.items()}
    return {k: (s, None) for k, s in static or ()}
