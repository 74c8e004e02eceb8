"""The one place that flattens schema instances into array leaves (by path) and static rest.

A path joins field names, list indices and dict keys with dots: `"mesh.points"`,
`"layers.0.w"`. Everything else in chainrule addresses leaves through this module, so the
wire format, the backends and the bindings agree on what a path means.
"""

from __future__ import annotations

import functools
import json
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import numpy as np
from pydantic import BaseModel

from .errors import UnknownPathError, ValidationError
from .schema import ArraySpec, array_spec, describe_value, shape_matches

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

__all__ = [
    "Leaf",
    "bind_dims",
    "class_cache",
    "class_leaves",
    "flat_fields",
    "has_named_dims",
    "leaves",
    "replace_leaves",
    "signature",
    "static_values",
]


@dataclass(slots=True)  # not frozen: frozen dataclasses cost ~3x more to create (hot path)
class Leaf:
    """One array leaf of a schema instance (treat as read-only)."""

    path: str
    spec: ArraySpec
    value: Any


@dataclass(frozen=True)
class _Static:
    path: str
    value: Any


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


_ANNOTATIONS = 4096  # annotations a memo keeps at most (then it starts again)


def _cached(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Memoize a function of an annotation (walks run on every call; annotations repeat),
    bounded: schema classes built at run time (a remote component's) bring new ones."""
    memo: dict[Any, Any] = {}

    def wrapper(annotation: Any) -> Any:
        try:
            return memo[annotation]
        except KeyError:
            if len(memo) >= _ANNOTATIONS:
                memo.clear()
            result = memo[annotation] = fn(annotation)
            return result
        except TypeError:  # an unhashable annotation: compute every time
            return fn(annotation)

    return wrapper


def class_cache(fn: Callable[[Any], T]) -> Callable[[Any], T]:
    """Memoize a function of a schema class, weakly: the memo goes when the class does
    (classes built at run time, as a remote component's schemas are, are not kept alive).
    As fast as `functools.cache` (~0.1 µs a hit, measured)."""
    memo: weakref.WeakKeyDictionary[Any, T] = weakref.WeakKeyDictionary()

    def wrapper(cls: Any) -> T:
        try:
            return memo[cls]
        except KeyError:
            result = memo[cls] = fn(cls)
            return result

    functools.update_wrapper(wrapper, fn)
    return wrapper


def _field_annotation(model: type[BaseModel], name: str) -> Any:
    return _fields(model)[name]


@class_cache
def _fields(model: type[BaseModel]) -> dict[str, Any]:
    """Each field's annotation, with an array field's spec folded back into `Annotated`."""
    out = {}
    for name, info in model.model_fields.items():
        spec = array_spec(info.annotation, info.metadata)
        out[name] = Annotated[np.ndarray, spec] if spec else info.annotation
    return out


_spec = _cached(array_spec)


def _item_annotation(annotation: Any, value: Any, index: int = 0) -> Any:
    """Annotation of item `index` of a list/tuple/dict annotation (Any when unknown)."""
    args = get_args(annotation)
    if isinstance(value, dict):
        return args[1] if len(args) == 2 else Any
    if get_origin(annotation) is tuple and Ellipsis not in args:  # tuple[A, B]: one per item
        return args[index] if index < len(args) else Any
    return args[0] if args else Any


def _pick_union_arm(annotation: Any, value: Any) -> Any:
    for arm in get_args(annotation):
        spec = array_spec(arm)
        if spec is not None and hasattr(value, "shape") and _fits(spec, value):
            return arm
        if isinstance(arm, type) and isinstance(value, arm):
            return arm
        if get_origin(arm) in (list, tuple, dict) and isinstance(value, get_origin(arm)):
            return arm
    return Any


@_cached
def _is_union(annotation: Any) -> bool:
    return get_origin(annotation) is Union or type(annotation).__name__ == "UnionType"


def _resolve_union(annotation: Any, value: Any) -> Any:
    return _pick_union_arm(annotation, value) if _is_union(annotation) else annotation


def _fits(spec: ArraySpec, value: Any) -> bool:
    return shape_matches(spec.shape, tuple(value.shape))


def _walk(value: Any, annotation: Any, path: str) -> Iterator[Leaf | _Static]:
    annotation = _resolve_union(annotation, value)
    spec = _spec(annotation)
    if spec is not None and value is not None:
        yield Leaf(path, spec, value)
    elif isinstance(value, BaseModel):
        for name, ann in _fields(type(value)).items():
            yield from _walk(getattr(value, name), ann, _join(path, name))
    elif isinstance(value, list | tuple) and _has_arrays(annotation):
        for i, item in enumerate(value):
            yield from _walk(item, _item_annotation(annotation, value, i), _join(path, i))
    elif isinstance(value, dict) and _has_arrays(annotation):
        for key, item in value.items():
            _check_key(key, path)
            yield from _walk(item, _item_annotation(annotation, value), _join(path, key))
    else:
        yield _Static(path, value)


@_cached
def _has_arrays(annotation: Any) -> bool:
    """Whether a container annotation can hold arrays or models (else it is one static value)."""
    if array_spec(annotation) is not None:
        return True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return True
    return any(_has_arrays(a) for a in get_args(annotation) if a is not Ellipsis)


def _check_key(key: object, path: str) -> None:
    if not isinstance(key, str) or "." in key:
        raise ValidationError(
            f"dict key {key!r} at '{path}' cannot be part of a path: keys of dicts holding "
            "arrays must be strings without '.'",
            errors=[{"path": path, "expected": "str key without '.'", "got": repr(key)}],
        )


_PLAIN = (int, float, str, bool, bytes, type(None))


def flat_fields(model: type[BaseModel]) -> tuple[tuple[str, ArraySpec | None], ...] | None:
    """`(field, spec or None)` when every field is an array or a plain value, else None."""
    return _flat_fields(model)


@class_cache
def _flat_fields(model: Any) -> tuple[tuple[str, ArraySpec | None], ...] | None:
    """`(field, spec or None)` when every field is an array or a plain value, else None.

    Most schemas are flat; for them leaves are read off the fields directly instead of walking
    annotations, which matters on hot paths (every call validates and rebuilds instances).
    """
    out: list[tuple[str, ArraySpec | None]] = []
    for name, ann in _fields(model).items():
        spec = _spec(ann)
        if spec is None and not (isinstance(ann, type) and issubclass(ann, _PLAIN)):
            return None  # containers, unions, models, Any: the instance decides
        out.append((name, spec))
    return tuple(out)


def dump(instance: BaseModel) -> dict[str, Any]:
    """`instance.model_dump()`; for flat schemas without Pydantic's serializer, which returns
    their arrays and plain values unchanged anyway (a hot path: every remote call)."""
    if flat_fields(type(instance)) is not None:
        return dict(instance.__dict__)
    return instance.model_dump()


def has_named_dims(model: type[BaseModel]) -> bool:
    """Whether any array of the model (if its structure is fixed) has a named dimension."""
    return _has_named_dims(model)


@class_cache
def _has_named_dims(model: Any) -> bool:
    flat = flat_fields(model)
    return flat is None or any(spec is not None and spec.named_dims for _, spec in flat)


def leaves(instance: BaseModel) -> list[Leaf]:
    """Every array leaf of `instance`, in field order."""
    flat = flat_fields(type(instance))
    if flat is not None:
        values = instance.__dict__
        return [Leaf(n, s, values[n]) for n, s in flat if s is not None and values[n] is not None]
    return [x for x in _walk(instance, type(instance), "") if isinstance(x, Leaf)]


def static_values(instance: BaseModel) -> list[tuple[str, Any]]:
    """(path, value) of every non-array value of `instance`."""
    flat = flat_fields(type(instance))
    if flat is not None:
        return [(n, instance.__dict__[n]) for n, s in flat if s is None]
    return [
        (x.path, x.value) for x in _walk(instance, type(instance), "") if isinstance(x, _Static)
    ]


def _frozen(value: Any) -> Any:
    try:
        hash(value)
        return value
    except TypeError:
        return json.dumps(value, sort_keys=True, default=repr)


def signature(instance: BaseModel) -> tuple[Any, ...]:
    """A hashable key of everything but array values: static values, array shapes and dtypes.

    Two instances with the same signature trace to the same program (the jit cache key).
    """
    out: list[Any] = []
    flat = flat_fields(type(instance))
    if flat is not None:
        for name, spec in flat:
            value = instance.__dict__[name]
            if spec is not None and value is not None:
                out.append((name, tuple(value.shape), value.dtype))
            else:
                out.append((name, type(value).__name__, _frozen(value)))
        return tuple(out)
    for x in _walk(instance, type(instance), ""):
        if isinstance(x, Leaf):
            out.append((x.path, tuple(x.value.shape), x.value.dtype))
        else:
            out.append((x.path, type(x.value).__name__, _frozen(x.value)))
    return tuple(out)


def replace_leaves(instance: M, new: Mapping[str, Any]) -> M:
    """A copy of `instance` whose leaves at the paths of `new` are replaced, without validation.

    Used to hand framework arrays (tracers, tensors) to the author's function.
    """
    flat = flat_fields(type(instance))
    if flat is not None and all(_is_array_field(flat, k) for k in new):
        fields = {**instance.__dict__, **new}
        return type(instance).model_construct(instance.model_fields_set, **fields)
    used: set[str] = set()
    out: M = _rebuild(instance, type(instance), "", new, used)
    if len(used) != len(new):
        raise UnknownPathError(
            f"no array leaf at {sorted(set(new) - used)}; leaves are "
            f"{[x.path for x in leaves(instance)]}"
        )
    return out


def _is_array_field(flat: tuple[tuple[str, ArraySpec | None], ...], name: str) -> bool:
    return any(n == name and s is not None for n, s in flat)


def _rebuild(value: Any, annotation: Any, path: str, new: Mapping[str, Any], used: set[str]) -> Any:
    annotation = _resolve_union(annotation, value)
    if path in new and _spec(annotation) is not None and value is not None:
        used.add(path)
        return new[path]
    if isinstance(value, BaseModel):
        fields = {
            name: _rebuild(getattr(value, name), ann, _join(path, name), new, used)
            for name, ann in _fields(type(value)).items()
        }
        return type(value).model_construct(_fields_set=value.model_fields_set, **fields)
    if isinstance(value, list | tuple) and _has_arrays(annotation):
        return type(value)(
            _rebuild(v, _item_annotation(annotation, value, i), _join(path, i), new, used)
            for i, v in enumerate(value)
        )
    if isinstance(value, dict) and _has_arrays(annotation):
        item = _item_annotation(annotation, value)
        return {k: _rebuild(v, item, _join(path, k), new, used) for k, v in value.items()}
    return value


def bind_dims(
    groups: list[list[Leaf]], fail: Callable[[str, list[dict[str, Any]]], Exception]
) -> dict[str, int]:
    """Sizes of named dimensions across all leaves; `fail(message, errors)` on a mismatch."""
    sizes: dict[str, tuple[int, str]] = {}
    for group in groups:
        for leaf in group:
            for name, size in leaf.spec.bind(tuple(leaf.value.shape)).items():
                first = sizes.setdefault(name, (size, leaf.path))
                if first[0] != size:
                    msg = (
                        f"dimension '{name}' is {first[0]} in '{first[1]}' but {size} in "
                        f"'{leaf.path}' ({describe_value(leaf.value)}, expected {leaf.spec}); "
                        f"named dimensions must agree across all fields"
                    )
                    err = {"path": leaf.path, "expected": f"{name}={first[0]}", "got": size}
                    raise fail(msg, [err])
    return {k: v[0] for k, v in sizes.items()}


def class_leaves(model: type[BaseModel]) -> dict[str, ArraySpec] | None:
    """Array leaves known from the class alone, or None if they depend on the instance.

    Lists, dicts and optional fields of arrays make the set of leaves instance-dependent.
    """
    out: dict[str, ArraySpec] = {}
    for name in model.model_fields:
        ann = _field_annotation(model, name)
        spec = array_spec(ann)
        if spec is not None:
            out[name] = spec
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            sub = class_leaves(ann)
            if sub is None:
                return None
            out.update({_join(name, k): v for k, v in sub.items()})
        elif _has_arrays(ann):
            return None
    return out
