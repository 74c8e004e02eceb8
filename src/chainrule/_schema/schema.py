"""Schemas: Pydantic models whose array fields carry shape, dtype and a differentiable mark.

`Array[(None, 3), Float64]` is an annotation for a numpy array with any number of rows and 3
columns; `Differentiable[...]` marks it as a leaf that derivatives flow through. Dimensions are
ints (fixed), `None` (free), strings (named: tied across every leaf of the inputs and outputs of
one call) or `...` (any number of dimensions).
"""

from __future__ import annotations

import functools
from contextvars import ContextVar
from dataclasses import dataclass, replace
from types import EllipsisType
from typing import Annotated, Any, Literal, get_args, get_origin

import numpy as np
from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

from .errors import SchemaDefinitionError

__all__ = [
    "Array",
    "ArraySpec",
    "Bool",
    "Complex64",
    "Complex128",
    "Differentiable",
    "Float16",
    "Float32",
    "Float64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "Schema",
    "ShapeDtype",
    "UInt8",
    "UInt16",
    "UInt32",
    "UInt64",
    "array_spec",
    "describe",
    "passthrough",
]

Float16 = np.dtype("float16")
Float32 = np.dtype("float32")
Float64 = np.dtype("float64")
Int8 = np.dtype("int8")
Int16 = np.dtype("int16")
Int32 = np.dtype("int32")
Int64 = np.dtype("int64")
UInt8 = np.dtype("uint8")
UInt16 = np.dtype("uint16")
UInt32 = np.dtype("uint32")
UInt64 = np.dtype("uint64")
Bool = np.dtype("bool")
Complex64 = np.dtype("complex64")
Complex128 = np.dtype("complex128")

Dim = int | str | None | EllipsisType
Casting = Literal["safe", "same_kind", "unsafe"]
_CASTINGS = ("safe", "same_kind", "unsafe")

# While a backend traces the author's function, schema models are built from framework arrays
# (jax tracers, torch tensors); those must pass through untouched instead of being converted.
_PASSTHROUGH: ContextVar[bool] = ContextVar("chainrule_passthrough", default=False)


class passthrough:  # lower case: used like the function it was (a context manager)
    """Within this block, schema validation accepts framework arrays as they are.

    A class, not a generator: it is entered on every host call of a torch component.
    """

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _PASSTHROUGH.set(True)

    def __exit__(self, *exc: object) -> None:
        _PASSTHROUGH.reset(self._token)


@dataclass(frozen=True)
class ShapeDtype:
    """Shape and dtype of an array, without its values (what `eval_shape` returns)."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __repr__(self) -> str:
        return describe_value(self)


def _dim_str(d: Dim) -> str:
    return "?" if d is None else "..." if d is Ellipsis else str(d)


def describe_value(value: Any) -> str:
    """`float64[3,2]` for anything with `shape` and `dtype`; the type name otherwise."""
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None:
        return type(value).__name__
    name = getattr(dtype, "name", None) or str(dtype).removeprefix("torch.")
    return f"{name}[{','.join(str(int(s)) for s in shape)}]"


@dataclass(frozen=True)
class ArraySpec:
    """What an array field accepts: shape pattern, dtype, differentiability, allowed casts."""

    shape: tuple[Dim, ...]
    dtype: np.dtype
    differentiable: bool = False
    casting: Casting = "safe"

    def __str__(self) -> str:
        return f"{self.dtype.name}[{','.join(_dim_str(d) for d in self.shape)}]"

    @functools.cached_property
    def named_dims(self) -> tuple[str, ...]:
        return tuple(d for d in self.shape if isinstance(d, str))

    @functools.cached_property
    def _rank_only(self) -> int | None:
        """The rank, when a shape fits this pattern exactly if its rank does (no fixed
        sizes, no `...`, no repeated names); else None."""
        names = self.named_dims
        plain = all(d is None or isinstance(d, str) for d in self.shape)
        return len(self.shape) if plain and len(set(names)) == len(names) else None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self.validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                _to_jsonable, when_used="json"
            ),
        )

    def __get_pydantic_json_schema__(
        self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> dict[str, Any]:
        return {
            "title": str(self),
            "description": "array (nested lists, or an encoded array on the wire)",
            "x-chainrule-array": {
                # `...` is spelled "..." so a client can rebuild the exact pattern.
                "shape": ["..." if d is Ellipsis else d for d in self.shape],
                "dtype": self.dtype.name,
                "differentiable": self.differentiable,
                "casting": self.casting,
            },
        }

    def validate(self, value: Any) -> Any:
        """Coerce `value` to an array of this spec, or raise a Pydantic error naming both."""
        # The usual case first (an array of this dtype and rank), at a cost that matters
        # inside a jitted program's host callback (every author builds outputs this way).
        if (
            type(value) is np.ndarray
            and value.ndim == self._rank_only
            and value.dtype == self.dtype
        ):
            return value
        if _PASSTHROUGH.get() and _is_framework_array(value):
            self.check_shape(tuple(value.shape), value)
            return value
        arr, weak = _as_numpy(value, self)
        if arr.dtype != self.dtype:
            # (`dtype.name` costs microseconds in numpy 2: only looked at off the exact path.)
            if arr.dtype.name == "bfloat16":  # jax's (ml_dtypes) bfloat16: float32 holds it
                arr = arr.astype(np.float32)
            if arr.dtype != self.dtype:
                arr = self._cast(arr, weak)
        self.check_shape(arr.shape, arr)
        return arr

    def _cast(self, arr: np.ndarray, weak: bool) -> np.ndarray:
        # Python scalars and lists are weakly typed (as in JAX): they may move to any dtype of
        # the same or a wider kind (bool -> int/uint -> float -> complex) if their values fit.
        numeric = arr.dtype.kind in _KINDS
        ok = numeric and (
            np.can_cast(arr.dtype, self.dtype, self.casting) or (weak and _weak_ok(arr, self.dtype))
        )
        if not ok:
            raise self._dtype_error(arr, weak)
        with np.errstate(all="ignore"):  # overflow is reported below, not as a warning
            out = arr.astype(self.dtype)
        if weak and self.casting != "unsafe" and not _values_fit(arr, out):
            raise PydanticCustomError(
                "chainrule_dtype",
                "expected {expected}, got {got}: some values do not fit in {dtype}",
                {"expected": str(self), "got": describe_value(arr), "dtype": self.dtype.name},
            )
        return out

    def _dtype_error(self, arr: np.ndarray, weak: bool) -> PydanticCustomError:
        ctx = {"expected": str(self), "got": describe_value(arr), "dtype": self.dtype.name}
        if arr.dtype.kind not in _KINDS:
            why = f"{arr.dtype.name} values are not numbers"
            return PydanticCustomError(
                "chainrule_dtype", "expected {expected}, got {got}: {why}", {**ctx, "why": why}
            )
        # The casting rule that would accept it ('same_kind' or 'unsafe'), to suggest as a fix.
        fix = "same_kind" if np.can_cast(arr.dtype, self.dtype, "same_kind") else "unsafe"
        rule = "a cast allowed for Python numbers" if weak else f"a {self.casting} cast"
        why = f"{arr.dtype.name} -> {self.dtype.name} is not {rule}"
        return PydanticCustomError(
            "chainrule_dtype",
            "expected {expected}, got {got}: {why}; convert it first (e.g. "
            "x.astype('{dtype}')) or declare the field as Array[..., {dtype}, '{fix}']",
            {**ctx, "why": why, "fix": fix},
        )

    def check_shape(self, shape: tuple[int, ...], value: Any) -> None:
        """Raise unless `shape` fits this spec (fixed dims, rank, repeated names)."""
        if not shape_matches(self.shape, shape):
            raise PydanticCustomError(
                "chainrule_shape",
                "expected {expected}, got {got}",
                {"expected": str(self), "got": describe_value(value)},
            )

    def bind(self, shape: tuple[int, ...]) -> dict[str, int]:
        """Sizes of the named dimensions in `shape` (assumes `check_shape` passed)."""
        if not self.named_dims:
            return {}
        pairs = (
            zip(self.shape, shape, strict=False)
            if Ellipsis not in self.shape
            else (_align(self.shape, shape))
        )
        return {d: s for d, s in pairs if isinstance(d, str)}


# Numeric dtype kinds, ranked in the order weakly typed values (Python numbers) may widen.
_KINDS = {"b": 0, "i": 1, "u": 1, "f": 2, "c": 3}


def _weak_ok(arr: np.ndarray, dtype: np.dtype) -> bool:
    # An empty list has no dtype of its own (numpy says float64).
    return arr.size == 0 or _KINDS[arr.dtype.kind] <= _KINDS.get(dtype.kind, -1)


def _values_fit(arr: np.ndarray, out: np.ndarray) -> bool:
    """Whether a weak cast kept every value (ints in range, floats finite where they were)."""
    if out.dtype.kind in "biu":
        return bool(np.array_equal(arr, out))
    return bool(np.array_equal(np.isinf(arr), np.isinf(out)))


def _align(pattern: tuple[Dim, ...], shape: tuple[int, ...]) -> list[tuple[Dim, int]]:
    if Ellipsis not in pattern:
        return list(zip(pattern, shape, strict=False))
    i = pattern.index(Ellipsis)
    head, tail = pattern[:i], pattern[i + 1 :]
    pairs = list(zip(head, shape[: len(head)], strict=False))
    return pairs + list(zip(tail, shape[len(shape) - len(tail) :], strict=False))


def shape_matches(pattern: tuple[Dim, ...], shape: tuple[int, ...]) -> bool:
    if Ellipsis not in pattern:  # the common case, checked without building pairs
        if len(pattern) != len(shape):
            return False
        named: dict[str, int] | None = None
        for d, s in zip(pattern, shape, strict=True):
            if d is None:
                continue
            if type(d) is int:
                if d != s:
                    return False
            else:  # a named dimension: repeats within one array must agree
                named = {} if named is None else named
                if named.setdefault(d, s) != s:  # type: ignore[arg-type]
                    return False
        return True
    fixed = [d for d in pattern if d is not Ellipsis]
    if len(shape) < len(fixed) or (Ellipsis not in pattern and len(shape) != len(fixed)):
        return False
    seen: dict[str, int] = {}
    for d, s in _align(pattern, shape):
        if isinstance(d, int) and d != s:
            return False
        if isinstance(d, str) and seen.setdefault(d, s) != s:
            return False
    return True


def _is_framework_array(value: Any) -> bool:
    return (
        not isinstance(value, np.ndarray | np.generic)
        and hasattr(value, "shape")
        and hasattr(value, "dtype")
    )


def _as_numpy(value: Any, spec: ArraySpec) -> tuple[np.ndarray, bool]:
    """(array, weakly typed?) for numpy, jax, torch arrays, scalars and nested lists."""
    if isinstance(value, np.ndarray):
        return value, False
    if isinstance(value, np.generic):
        return np.asarray(value), False
    if type(value).__module__.startswith("torch"):
        return _torch_numpy(value, spec), False
    if hasattr(value, "__array__"):
        return np.asarray(value), False
    if isinstance(value, bool | int | float | complex | list | tuple):
        try:
            return np.asarray(value), True
        except ValueError as e:  # ragged nested lists
            raise PydanticCustomError(
                "chainrule_array",
                "expected {expected}, got a ragged nested list ({err})",
                {"expected": str(spec), "err": str(e).split("\n")[0]},
            ) from e
    raise PydanticCustomError(
        "chainrule_array",
        "expected {expected} (an array, nested list or number), got {got}",
        {"expected": str(spec), "got": type(value).__name__},
    )


def _torch_numpy(tensor: Any, spec: ArraySpec) -> np.ndarray:
    tensor = tensor.detach().cpu().resolve_conj()
    if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16; float32 holds it exactly
        tensor = tensor.float()
    try:
        return np.asarray(tensor.numpy())
    except TypeError as e:  # float8 and other dtypes numpy lacks
        raise PydanticCustomError(
            "chainrule_dtype",
            "expected {expected}, got {got}: numpy has no such dtype; convert it first",
            {"expected": str(spec), "got": describe_value(tensor)},
        ) from e


def _to_jsonable(value: Any) -> Any:
    return np.asarray(value).tolist()


def _parse_shape(shape: Any) -> tuple[Dim, ...]:
    if shape is Ellipsis:
        return (Ellipsis,)
    if not isinstance(shape, tuple):
        raise SchemaDefinitionError(
            f"Array shape must be a tuple such as (None, 3), got {shape!r}; write "
            "Array[(n,), dtype] for 1-d (note the comma) or Array[..., dtype] for any rank"
        )
    for d in shape:
        ok = d is None or d is Ellipsis or isinstance(d, str) or (type(d) is int and d >= 0)
        if not ok:
            raise SchemaDefinitionError(
                f"Array dimension {d!r} is not valid: use an int >= 0, None (free), a name "
                "such as 'n' (tied across leaves) or ... (any number of dimensions)"
            )
    if shape.count(Ellipsis) > 1:
        raise SchemaDefinitionError(f"Array shape {shape!r} has more than one '...'")
    return shape


def _parse_dtype(dtype: Any) -> np.dtype:
    try:
        parsed = None if dtype is None else np.dtype(dtype)
    except (TypeError, ValueError):
        parsed = None
    if parsed is None or parsed.kind not in _KINDS:
        raise SchemaDefinitionError(
            f"Array dtype {dtype!r} is not a numeric dtype; use one of chainrule's Float16/32/64, "
            "Int8/16/32/64, UInt8/16/32/64, Bool, Complex64/128 (or another numpy numeric dtype)"
        )
    return parsed


class Array:
    """Annotation for an array field: `Array[(None, 3), Float64]` (optionally a casting rule).

    The third item, if given, is the numpy casting rule allowed on input: `"safe"` (default:
    int -> float fine, float64 -> float32 refused), `"same_kind"` or `"unsafe"`.

    Example:
        ```python
        class Inputs(cr.Schema):
            points: cr.Array[("n", 3), cr.Float64]
        ```
    """

    def __class_getitem__(cls, item: Any) -> Any:
        if not isinstance(item, tuple) or len(item) not in (2, 3):
            raise SchemaDefinitionError(
                f"write Array[shape, dtype] or Array[shape, dtype, casting], got Array[{item!r}]"
            )
        shape, dtype = _parse_shape(item[0]), _parse_dtype(item[1])
        casting: Casting = item[2] if len(item) == 3 else "safe"
        if casting not in _CASTINGS:
            raise SchemaDefinitionError(f"casting must be one of {_CASTINGS}, got {casting!r}")
        return Annotated[np.ndarray, ArraySpec(shape, dtype, casting=casting)]


class Differentiable:
    """Marks an array annotation (or `float`) as a leaf that derivatives flow through.

    Example:
        ```python
        x: cr.Differentiable[cr.Array[(None,), cr.Float64]]
        t: cr.Differentiable[float]          # a 0-d float64 array
        ```
    """

    def __class_getitem__(cls, item: Any) -> Any:
        spec = ArraySpec((), Float64) if item is float else array_spec(item)
        if spec is None:
            raise SchemaDefinitionError(
                f"Differentiable[...] takes an Array[...] annotation or float, got {item!r}"
            )
        if spec.dtype.kind not in "fc":
            raise SchemaDefinitionError(
                f"Differentiable leaves must have a float or complex dtype, got {spec}; "
                "integer and boolean arrays have no derivative, leave them unmarked"
            )
        return Annotated[np.ndarray, replace(spec, differentiable=True)]


def array_spec(annotation: Any, metadata: tuple[Any, ...] | list[Any] = ()) -> ArraySpec | None:
    """The `ArraySpec` carried by an annotation (or by a field's metadata), if any."""
    extra = get_args(annotation)[1:] if get_origin(annotation) is Annotated else ()
    for m in (*metadata, *extra):
        if isinstance(m, ArraySpec):
            return m
    return None


def describe(spec: ArraySpec) -> str:
    """`float64[?,3]`: how a spec is shown in messages."""
    return str(spec)


class Schema(BaseModel):
    """Base class of component input and output schemas (a Pydantic v2 model).

    Unknown fields are refused; array fields are declared with `Array` and `Differentiable`.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
