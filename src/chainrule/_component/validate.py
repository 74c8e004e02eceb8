"""Validation at a point: the keywords of a request, and what a component's function returned.

`request(component, row, p, residual, given)` checks the keywords of one endpoint row by their
role (`endpoints.Role`), in the row's order, so an endpoint always runs on checked numpy:
tangents and cotangents by known, differentiable paths, cast to their leaf's dtype (a
`same_kind` cast) and shaped like it (after a batch axis, for batched endpoints); `wrt` and
`of` known and differentiable (all differentiable leaves when not given); an hvp's output
weights. `outputs` is the one check of what an author's function returned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic
from pydantic_core import PydanticCustomError

from chainrule._schema import tree as _tree
from chainrule._schema.errors import (
    NotDifferentiableError,
    OutputValidationError,
    UnknownPathError,
    ValidationError,
)
from chainrule._schema.messages import format_pydantic, prefixed
from chainrule._schema.schema import ArraySpec, Schema, passthrough
from chainrule._schema.schema import shape_matches as _shape_ok

from .endpoints import Endpoint
from .shapes import bound, output_specs

if TYPE_CHECKING:
    from .component import Component
    from .point import Point
    from .residuals import Residual

__all__ = [
    "Paths",
    "as_paths",
    "construct_exact",
    "cotangents",
    "inputs",
    "of",
    "outputs",
    "request",
    "tangents",
    "traced_inputs",
    "weights",
    "wrt",
]

Paths = str | Sequence[str] | None
Given = Mapping[str, Any]


def as_paths(sel: Paths) -> tuple[str, ...] | None:
    """`"a"`, `["a", "b"]` or None as a tuple of paths (or None)."""
    if sel is None:
        return None
    return (sel,) if isinstance(sel, str) else tuple(sel)


def request(
    c: Component, row: Endpoint, p: Point, res: Residual | None, given: Given
) -> dict[str, Any]:
    """The keywords of a request for `row`, validated at `p` (`res`: the kept residual)."""
    out = {}
    for keyword in row.keywords:
        check = _ROLES.get(keyword.role)
        if check is not None:
            out[keyword.name] = check(c, row, p, res, given)
    return out


def _tangents_role(c: Component, row: Endpoint, p: Point, res: Any, given: Given) -> Any:
    return tangents(c, p, given["tangents"], row.batched)


def _cotangents_role(c: Component, row: Endpoint, p: Point, res: Any, given: Given) -> Any:
    return cotangents(c, p, given["cotangents"], row.batched, res)


def _wrt_role(c: Component, row: Endpoint, p: Point, res: Any, given: Given) -> Any:
    return wrt(c, p, given.get("wrt"))


def _of_role(c: Component, row: Endpoint, p: Point, res: Any, given: Given) -> Any:
    return of(c, p, given.get("of"), res)


def _weights_role(c: Component, row: Endpoint, p: Point, res: Any, given: Given) -> Any:
    return weights(c, p, given.get("cotangents"), given.get("of"))


# Roles not listed (keep, handle, scalar) are taken as given, or used by another role.
_ROLES: dict[str, Callable[..., Any]] = {
    "tangents": _tangents_role,
    "cotangents": _cotangents_role,
    "wrt": _wrt_role,
    "of": _of_role,
    "weights": _weights_role,
}


# ---- inputs ---------------------------------------------------------------------------------


def inputs(c: Component, given: Any) -> Schema:
    """`given` (a dict, or an instance of the input schema) as a validated input instance:
    built without Pydantic when nothing needs converting (`construct_exact`)."""
    if isinstance(given, pydantic.BaseModel) and not isinstance(given, c.inputs):
        given = given.model_dump()
    if not isinstance(given, c.inputs | Mapping):
        got, expected = type(given).__name__, f"dict or {c.inputs.__name__}"
        raise ValidationError(
            f"invalid inputs to component '{c.name}': expected a {expected}, got {got}",
            errors=[{"path": "(root)", "expected": expected, "got": got}],
        )
    exact = construct_exact(c.inputs, given)
    if exact is not None:
        return exact
    try:
        return c.inputs.model_validate(given)
    except pydantic.ValidationError as e:
        message, errors = format_pydantic(e, f"invalid inputs to component '{c.name}'")
        raise ValidationError(message, errors=errors) from None


def traced_inputs(c: Component, given: Any, binding: str) -> Schema:
    """`inputs` for a framework binding: framework arrays pass through, shapes checked."""
    if isinstance(given, Schema):
        given = {name: getattr(given, name) for name in type(given).model_fields}
    if not isinstance(given, dict):
        raise ValidationError(
            f"{binding}({c.name}): inputs must be a dict, got {type(given).__name__}",
            errors=[{"path": "(root)", "expected": "dict", "got": type(given).__name__}],
        )
    try:
        with passthrough():
            return c.inputs.model_validate(given)
    except pydantic.ValidationError as e:
        message, errors = format_pydantic(e, f"invalid inputs to component '{c.name}'")
        raise ValidationError(message, errors=errors) from None


# ---- paths ----------------------------------------------------------------------------------


def input_leaf(c: Component, p: Point, path: str, role: str) -> _tree.Leaf:
    """The differentiable input leaf at `path`, or an error naming the differentiable ones."""
    if path not in p.leaves:
        raise UnknownPathError(
            f"{role}: '{path}' is not an array input of component '{c.name}'; "
            f"differentiable inputs are {list(p.diff)}",
            errors=[{"path": path, "expected": list(p.diff), "got": path}],
        )
    if path not in p.diff:
        raise NotDifferentiableError(
            f"{role}: input '{path}' of component '{c.name}' is not differentiable "
            f"({p.leaves[path].spec}); mark it Differentiable[...] in "
            f"{c.inputs.__name__}, or leave it out. Differentiable inputs: {list(p.diff)}",
            errors=[{"path": path, "expected": "a Differentiable input", "got": path}],
        )
    return p.leaves[path]


def output_leaf(c: Component, path: str, role: str, specs: Mapping[str, Any]) -> Any:
    """(spec, shape) of the differentiable output at `path`, or an error naming them."""
    diff = [k for k, (s, _) in specs.items() if s.differentiable]
    if path not in specs:
        raise UnknownPathError(
            f"{role}: '{path}' is not an array output of component '{c.name}'; "
            f"differentiable outputs are {diff}",
            errors=[{"path": path, "expected": diff, "got": path}],
        )
    if path not in diff:
        raise NotDifferentiableError(
            f"{role}: output '{path}' of component '{c.name}' is not differentiable "
            f"({specs[path][0]}); differentiable outputs are {diff}",
            errors=[{"path": path, "expected": "a Differentiable output", "got": path}],
        )
    return specs[path]


def wrt(c: Component, p: Point, sel: Paths, role: str = "wrt") -> tuple[str, ...]:
    """Input paths to differentiate with respect to (all differentiable ones by default)."""
    paths = as_paths(sel)
    if paths is None:
        return p.diff
    for path in paths:
        input_leaf(c, p, path, role)
    return paths


def of(c: Component, p: Point, sel: Paths, res: Residual | None, role: str = "of") -> tuple:
    """Output paths to differentiate (all differentiable ones by default)."""
    specs = output_specs(c.outputs, p, res)
    paths = as_paths(sel)
    if paths is None:
        return tuple(k for k, (s, _) in specs.items() if s.differentiable)
    for path in paths:
        output_leaf(c, path, role, specs)
    return paths


# ---- tangents and cotangents ----------------------------------------------------------------


def _array(c: Component, value: Any, spec: ArraySpec, role: str, path: str) -> np.ndarray:
    try:
        return np.asarray(spec.validate(value))
    except PydanticCustomError as e:
        msg = f"{role} for '{path}' of component '{c.name}': {e}"
        raise ValidationError(
            msg, errors=[{"path": f"{role}.{path}", **(e.context or {}), "message": msg}]
        ) from None


def tangents(c: Component, p: Point, given: Any, batched: bool) -> dict[str, np.ndarray]:
    """`{input path: tangent}`, each shaped and typed like its input (after a batch axis)."""
    role = "batched tangents" if batched else "tangents"
    _require_mapping(given, role, "input", p.diff)
    out = {}
    for path, t in given.items():
        leaf = input_leaf(c, p, path, role)
        shape = tuple(leaf.value.shape)
        spec = ArraySpec(
            ((None,) if batched else ()) + shape, leaf.value.dtype, casting="same_kind"
        )
        out[path] = _array(c, t, spec, role, path)
    _check_batch(out, role)
    return out


def cotangents(
    c: Component, p: Point, given: Any, batched: bool, res: Residual | None
) -> dict[str, np.ndarray]:
    """`{output path: cotangent}`, each shaped and typed like its output (after a batch axis)."""
    role = "batched cotangents" if batched else "cotangents"
    specs = output_specs(c.outputs, p, res)
    _require_mapping(given, role, "output", [k for k, (s, _) in specs.items() if s.differentiable])
    out = {}
    for path, ct in given.items():
        spec, shape = output_leaf(c, path, role, specs)
        pattern = shape if shape is not None else bound(spec.shape, p.dims)
        full = ArraySpec(
            ((None,) if batched else ()) + tuple(pattern), spec.dtype, casting="same_kind"
        )
        out[path] = _array(c, ct, full, role, path)
    _check_batch(out, role)
    return out


def weights(
    c: Component, p: Point, given: Mapping[str, Any] | None, scalar: str | None
) -> dict[str, np.ndarray]:
    """The output weights of an hvp: the cotangents given, or 1 on the scalar output `of`."""
    if given is not None and scalar is not None:
        raise ValidationError(
            f"hvp of component '{c.name}': give cotangents= (output weights) or of= "
            "(one scalar output), not both",
            errors=[{"path": "of", "expected": "of or cotangents", "got": "both"}],
        )
    if given is not None:
        return cotangents(c, p, given, batched=False, res=None)
    path = scalar_output(c, p, scalar)
    spec, shape = output_specs(c.outputs, p, None)[path]
    if shape is None:
        shape = p.out_shapes((path,), None)[path]
    return {path: np.ones(shape, spec.dtype)}


def scalar_output(c: Component, p: Point, scalar: str | None) -> str:
    """The one scalar differentiable output an hvp is of (`scalar`, or the only one)."""
    specs = output_specs(c.outputs, p, None)
    if scalar is None:
        declared = {
            k: shape if shape is not None else bound(s.shape, p.dims)
            for k, (s, shape) in specs.items()
        }
        scalars = [
            k
            for k, (s, _) in specs.items()
            if s.differentiable
            and all(type(d) is int for d in declared[k])
            and int(np.prod(declared[k])) == 1
        ]
        if len(scalars) != 1:
            raise ValidationError(
                f"hvp of component '{c.name}' needs cotangents={{output path: weights}} "
                f"or of=<a scalar differentiable output>; scalar differentiable outputs: "
                f"{scalars}"
            )
        return scalars[0]
    _, shape = output_leaf(c, scalar, "hvp of", specs)
    if shape is not None and int(np.prod(shape)) != 1:
        raise ValidationError(
            f"hvp of component '{c.name}': output '{scalar}' has shape {shape}, expected a "
            "scalar for of=; for a vector output pass cotangents={"
            f"'{scalar}': weights}} (the Hessian of the weighted sum)"
        )
    return scalar


def _require_mapping(value: Any, role: str, kind: str, paths: Sequence[str]) -> None:
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"{role} must be a dict {{{kind} path: array}} over {list(paths)}, "
            f"got {type(value).__name__}"
        )


def _check_batch(arrays: Mapping[str, np.ndarray], role: str) -> None:
    sizes = {p: a.shape[0] for p, a in arrays.items() if "batched" in role}
    if "batched" in role and not sizes:
        raise ValidationError(
            f"{role} are empty; a batched call takes its batch size from them: give at least "
            "one leaf, with a leading batch axis",
            errors=[{"path": role, "expected": "at least one leaf", "got": "{}"}],
        )
    if 0 in sizes.values():
        raise ValidationError(
            f"{role} have batch size 0; send at least one row along the leading axis",
            errors=[
                {"path": f"{role}.{p}", "expected": "batch size >= 1", "got": n}
                for p, n in sizes.items()
                if n == 0
            ],
        )
    if len(set(sizes.values())) > 1:
        first = next(iter(sizes.values()))
        raise ValidationError(
            f"{role} have different batch sizes {sizes}; give every leaf the same leading axis",
            errors=[
                {"path": f"{role}.{p}", "expected": f"batch size {first}", "got": n}
                for p, n in sizes.items()
            ],
        )


# ---- outputs --------------------------------------------------------------------------------


def outputs(c: Component, raw: Any, p: Point) -> Schema:
    """What `c`'s function returned at `p` as a validated output instance, named dimensions
    checked against the inputs' (the one output check: every path to an output takes it)."""
    # An instance the author's own Outputs(...) call validated needs no second pass.
    out = raw if _validated_numpy(raw, c.outputs) else _validate_outputs(c, raw)
    if _dims_agree(p.dims, out):  # the usual case, checked without building labels
        return out
    if _tree.has_named_dims(type(p.inputs)) or _tree.has_named_dims(c.outputs):
        # Label the two sides so a mismatch says which field is an input, which an output.
        ins = [_tree.Leaf(f"inputs.{x.path}", x.spec, x.value) for x in p.leaves.values()]
        outs = [_tree.Leaf(f"outputs.{x.path}", x.spec, x.value) for x in _tree.leaves(out)]
        what = f"component '{c.name}' returned bad outputs"
        _tree.bind_dims([ins, outs], prefixed(OutputValidationError, what))
    return out


def _validate_outputs(c: Component, raw: Any) -> Schema:
    if isinstance(raw, pydantic.BaseModel):
        raw = raw.model_dump()
    if not isinstance(raw, Mapping):
        raise OutputValidationError(
            f"component '{c.name}' returned {type(raw).__name__}; return an "
            f"{c.outputs.__name__} instance or a dict of its fields"
        )
    exact = construct_exact(c.outputs, raw)
    if exact is not None:
        return exact
    try:
        return c.outputs.model_validate(raw)
    except pydantic.ValidationError as e:
        message, errors = format_pydantic(e, f"component '{c.name}' returned bad outputs")
        raise OutputValidationError(message, errors=errors) from None


def construct_exact(model: type[Schema], data: Any) -> Schema | None:
    """`data` as a `model` instance without Pydantic, when nothing needs converting: a flat
    schema, every array already a numpy array of the exact dtype and a fitting shape, every
    other value of exactly its annotated type, no unknown keys. Else None (validate normally).

    Arrays that crossed the wire or came from another component are usually exact already;
    this skips a validation pass that costs more than a small call itself.
    """
    plan = _exact_plan(model)
    if plan is None or type(data) is not dict:
        return None
    steps, names = plan
    if not names.issuperset(data):  # unknown keys
        return None
    for name, spec, kind, required in steps:
        value = data.get(name, _MISSING)
        if value is _MISSING:
            if required or spec is not None:  # an array's default must be validated (cast)
                return None
        elif spec is None:
            if type(value) is not kind:
                return None
        elif not (
            type(value) is np.ndarray and value.dtype == kind and _shape_ok(spec.shape, value.shape)
        ):
            return None
    return model.model_construct(**data)


_MISSING = object()


@_tree.class_cache
def _exact_plan(model: type[Schema]) -> tuple[tuple[Any, ...], frozenset[str]] | None:
    """Per flat schema: `(field, spec, dtype or annotation, required)` for each field, and
    the field names: what `construct_exact` checks, looked up once per class."""
    flat = _tree.flat_fields(model)
    if flat is None:
        return None
    fields = model.model_fields
    steps = tuple(
        (name, spec, spec.dtype if spec is not None else fields[name].annotation,
         fields[name].is_required())
        for name, spec in flat
    )  # fmt: skip
    return steps, frozenset(fields)


def _dims_agree(dims: Mapping[str, int], out: Schema) -> bool:
    """Whether the outputs' named dimensions agree with each other and with the inputs'."""
    if not _tree.has_named_dims(type(out)):
        return True
    seen = dict(dims)
    for leaf in _tree.leaves(out):
        for name, size in leaf.spec.bind(tuple(leaf.value.shape)).items():
            if seen.setdefault(name, size) != size:
                return False
    return True


def _validated_numpy(raw: Any, outputs: type[Schema]) -> bool:
    """Whether `raw` is a flat outputs instance whose arrays already match their specs exactly
    (as when the author's code built it with validation): then it needs no second pass."""
    if type(raw) is not outputs or _tree.flat_fields(outputs) is None:
        return False
    for leaf in _tree.leaves(raw):
        value = leaf.value
        if not (isinstance(value, np.ndarray) and value.dtype == leaf.spec.dtype):
            return False
        if not _shape_ok(leaf.spec.shape, value.shape):
            return False
    return True
