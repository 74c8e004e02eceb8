"""Tests of the schema layer (`chainrule._schema`): array annotations, coercion, messages."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import Field

import chainrule as cr
from chainrule._schema.schema import ArraySpec, array_spec, describe, describe_value, passthrough

ALL_DTYPES = [
    cr.Float16,
    cr.Float32,
    cr.Float64,
    cr.Int8,
    cr.Int16,
    cr.Int32,
    cr.Int64,
    cr.UInt8,
    cr.Bool,
    cr.Complex64,
    cr.Complex128,
]


def spec_of(annotation: Any) -> ArraySpec:
    spec = array_spec(annotation)
    assert spec is not None
    return spec


def model(annotation: Any) -> type[cr.Schema]:
    """A schema with one field `x` of the given annotation."""

    class M(cr.Schema):
        x: annotation  # type: ignore[valid-type]

    return M


def accepts(annotation: Any, value: Any) -> np.ndarray:
    out: np.ndarray = model(annotation)(x=value).x
    assert isinstance(out, np.ndarray)
    return out


def refuses(annotation: Any, value: Any) -> str:
    """The pydantic message for `value` (which must be refused)."""
    import pydantic

    with pytest.raises(pydantic.ValidationError) as info:
        model(annotation)(x=value)
    (err,) = info.value.errors()
    return str(err["msg"])


# --------------------------------------------------------------------------------------------
# Shapes


SHAPES = [
    # (shape pattern, str, accepted shapes, refused shapes)
    ((3,), "[3]", [(3,)], [(2,), (3, 1), ()]),
    ((None, 3), "[?,3]", [(0, 3), (5, 3)], [(3,), (3, 2), (1, 3, 1)]),
    ((None, None), "[?,?]", [(1, 2), (0, 0)], [(1,), (1, 2, 3)]),
    (("n",), "[n]", [(0,), (7,)], [(), (2, 2)]),
    (("n", "n"), "[n,n]", [(2, 2), (0, 0)], [(2, 3), (2,)]),
    (("n", "m", "n"), "[n,m,n]", [(2, 5, 2)], [(2, 5, 3)]),
    ((...,), "[...]", [(), (2,), (1, 2, 3)], []),
    ((..., 2), "[...,2]", [(2,), (4, 2), (1, 3, 2)], [(), (2, 1), (3,)]),
    ((2, ...), "[2,...]", [(2,), (2, 4), (2, 1, 3)], [(), (1, 2), (3,)]),
    ((None, ..., "k"), "[?,...,k]", [(1, 4), (1, 2, 3, 4)], [(4,), ()]),
    (("n", ..., "n"), "[n,...,n]", [(3, 3), (3, 1, 3)], [(3, 1, 2)]),
    ((), "[]", [()], [(1,), (1, 1)]),
]


@pytest.mark.parametrize(("shape", "text", "good", "bad"), SHAPES)
def test_shape_patterns(shape: Any, text: str, good: list[Any], bad: list[Any]) -> None:
    ann = cr.Array[shape, cr.Float64]
    assert str(spec_of(ann)) == f"float64{text}"
    for s in good:
        assert accepts(ann, np.zeros(s)).shape == s
    for s in bad:
        msg = refuses(ann, np.zeros(s))
        assert msg == f"expected float64{text}, got {describe_value(np.zeros(s))}"


def test_bare_ellipsis_is_any_rank() -> None:
    ann = cr.Array[..., cr.Int32]
    assert spec_of(ann).shape == (...,)
    assert accepts(ann, 5).shape == ()
    assert accepts(ann, np.zeros((1, 2, 3, 4), np.int32)).shape == (1, 2, 3, 4)


def test_named_dims_and_bind() -> None:
    spec = spec_of(cr.Array[("n", ..., "m", 3), cr.Float64])
    assert spec.named_dims == ("n", "m")
    assert spec.bind((2, 7, 7, 5, 3)) == {"n": 2, "m": 5}
    assert spec_of(cr.Array[("n", "n"), cr.Float64]).bind((4, 4)) == {"n": 4}


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_every_dtype(dtype: np.dtype) -> None:
    ann = cr.Array[(None, 2), dtype]
    assert spec_of(ann).dtype == dtype
    assert str(spec_of(ann)) == f"{dtype.name}[?,2]"
    out = accepts(ann, np.ones((3, 2), dtype))
    assert out.dtype == dtype
    assert out.shape == (3, 2)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_every_dtype_from_python_numbers(dtype: np.dtype) -> None:
    value = [True, False] if dtype.kind == "b" else [1, 0]
    out = accepts(cr.Array[(2,), dtype], value)
    assert out.dtype == dtype
    assert out.tolist() == [1, 0]


def test_dtype_given_as_python_type_or_string() -> None:
    assert spec_of(cr.Array[(), float]).dtype == cr.Float64
    assert spec_of(cr.Array[(), "int32"]).dtype == cr.Int32
    assert spec_of(cr.Array[(), np.float32]).dtype == cr.Float32


# --------------------------------------------------------------------------------------------
# Casting


def test_default_casting_is_safe() -> None:
    assert spec_of(cr.Array[(), cr.Float64]).casting == "safe"
    assert accepts(cr.Array[(2,), cr.Float64], np.array([1, 2])).dtype == cr.Float64
    assert accepts(cr.Array[(2,), cr.Float64], np.array([1, 2], np.float32)).dtype == cr.Float64
    msg = refuses(cr.Array[(None,), cr.Float32], np.zeros(3))
    assert msg == (
        "expected float32[?], got float64[3]: float64 -> float32 is not a safe cast; convert it "
        "first (e.g. x.astype('float32')) or declare the field as "
        "Array[..., float32, 'same_kind']"
    )


def test_same_kind_casting() -> None:
    ann = cr.Array[(None,), cr.Float32, "same_kind"]
    assert spec_of(ann).casting == "same_kind"
    out = accepts(ann, np.array([1.5, 2.5]))
    assert out.dtype == cr.Float32
    assert out.tolist() == [1.5, 2.5]
    msg = refuses(ann, np.array([1j]))
    assert "complex128 -> float32 is not a same_kind cast" in msg
    assert "'unsafe'" in msg  # the fix suggested is one that would work


def test_unsafe_casting() -> None:
    out = accepts(cr.Array[(None,), cr.Int8, "unsafe"], np.array([1.7, -2.2]))
    assert out.dtype == cr.Int8
    assert out.tolist() == [1, -2]


def test_suggested_casting_fixes_the_problem() -> None:
    # float -> int is not same_kind: suggesting 'same_kind' would not help.
    msg = refuses(cr.Array[(None,), cr.Int32], np.array([1.0]))
    assert "Array[..., int32, 'unsafe']" in msg
    msg = refuses(cr.Array[(None,), cr.Int32], np.array([1], np.int64))
    assert "int64 -> int32 is not a safe cast" in msg
    assert "Array[..., int32, 'same_kind']" in msg
    for suggested in ("same_kind", "unsafe"):
        ann = cr.Array[(None,), cr.Int32, suggested]
        if suggested == "unsafe":
            assert accepts(ann, np.array([1.0])).dtype == cr.Int32
        assert accepts(ann, np.array([1], np.int64)).dtype == cr.Int32


@pytest.mark.parametrize("casting", ["no", "equiv", "SAFE", None])
def test_bad_casting_is_a_definition_error(casting: Any) -> None:
    with pytest.raises(cr.SchemaDefinitionError, match="casting must be one of"):
        cr.Array[(), cr.Float64, casting]


# --------------------------------------------------------------------------------------------
# Differentiable


def test_differentiable_marks_the_spec() -> None:
    plain = spec_of(cr.Array[(None, 3), cr.Float64])
    diff = spec_of(cr.Differentiable[cr.Array[(None, 3), cr.Float64]])
    assert not plain.differentiable
    assert diff.differentiable
    assert (diff.shape, diff.dtype, diff.casting) == (plain.shape, plain.dtype, plain.casting)
    same_kind = spec_of(cr.Differentiable[cr.Array[(), cr.Float32, "same_kind"]])
    assert same_kind.casting == "same_kind"


def test_differentiable_float_is_0d_float64() -> None:
    spec = spec_of(cr.Differentiable[float])
    assert (spec.shape, spec.dtype, spec.differentiable) == ((), cr.Float64, True)
    out = accepts(cr.Differentiable[float], 2)
    assert (out.shape, out.dtype, float(out)) == ((), cr.Float64, 2.0)


@pytest.mark.parametrize("dtype", [cr.Float16, cr.Float32, cr.Complex64, cr.Complex128])
def test_differentiable_float_and_complex(dtype: np.dtype) -> None:
    assert spec_of(cr.Differentiable[cr.Array[(2,), dtype]]).differentiable


@pytest.mark.parametrize("dtype", [cr.Int8, cr.Int32, cr.Int64, cr.UInt8, cr.Bool])
def test_differentiable_int_or_bool_is_refused(dtype: np.dtype) -> None:
    with pytest.raises(cr.SchemaDefinitionError) as info:
        cr.Differentiable[cr.Array[(2,), dtype]]
    assert str(info.value) == (
        f"Differentiable leaves must have a float or complex dtype, got {dtype.name}[2]; "
        "integer and boolean arrays have no derivative, leave them unmarked"
    )


@pytest.mark.parametrize("item", [int, str, np.ndarray, (3,), "x"])
def test_differentiable_of_non_array_is_refused(item: Any) -> None:
    with pytest.raises(cr.SchemaDefinitionError, match=r"takes an Array\[...\] annotation"):
        cr.Differentiable[item]


# --------------------------------------------------------------------------------------------
# Definition-time errors


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ((3, cr.Float64), "Array shape must be a tuple such as (None, 3), got 3"),
        (("n", cr.Float64), "Array shape must be a tuple"),
        ([3], "Array shape must be a tuple"),
        (((-1,), cr.Float64), "Array dimension -1 is not valid"),
        (((2, -3), cr.Float64), "Array dimension -3 is not valid"),
        (((1.5,), cr.Float64), "Array dimension 1.5 is not valid"),
        (((True,), cr.Float64), "Array dimension True is not valid"),
        (((..., ...), cr.Float64), "has more than one '...'"),
        (((..., 3, ...), cr.Float64), "has more than one '...'"),
        (((3,),), "write Array[shape, dtype]"),
        (((3,), cr.Float64, "safe", 1), "write Array[shape, dtype]"),
        (((3,), "notadtype"), "Array dtype 'notadtype' is not a numeric dtype"),
        (((3,), object), "is not a numeric dtype"),
        (((3,), str), "is not a numeric dtype"),
        (((3,), None), "Array dtype None is not a numeric dtype"),
        (((3,), "datetime64[s]"), "is not a numeric dtype"),
    ],
)
def test_definition_errors(item: Any, fragment: str) -> None:
    if isinstance(item, list):
        item = (item, cr.Float64)
    with pytest.raises(cr.SchemaDefinitionError) as info:
        cr.Array[item]
    assert fragment in str(info.value)
    assert isinstance(info.value, TypeError)  # SchemaDefinitionError is also a TypeError


def test_shape_error_explains_the_one_tuple() -> None:
    with pytest.raises(cr.SchemaDefinitionError, match=r"Array\[\(n,\), dtype\] for 1-d"):
        cr.Array[3, cr.Float64]


def test_schema_forbids_extra_fields() -> None:
    class M(cr.Schema):
        x: cr.Array[(), cr.Float64]

    import pydantic

    with pytest.raises(pydantic.ValidationError, match="extra"):
        M(x=1.0, y=2.0)  # type: ignore[call-arg]


# --------------------------------------------------------------------------------------------
# Inputs accepted and refused


F64 = cr.Array[(None,), cr.Float64]
F32 = cr.Array[(None,), cr.Float32]
I32 = cr.Array[(None,), cr.Int32]
SCALAR = cr.Array[(), cr.Float64]


def test_numpy_arrays_nested_lists_and_tuples() -> None:
    assert accepts(F64, np.arange(3.0)).tolist() == [0.0, 1.0, 2.0]
    m = accepts(cr.Array[(2, 2), cr.Float64], [[1, 2], [3, 4.5]])
    assert m.tolist() == [[1.0, 2.0], [3.0, 4.5]]
    assert accepts(F64, (1.0, 2.0)).tolist() == [1.0, 2.0]
    assert accepts(F64, [np.float64(1), np.float64(2)]).tolist() == [1.0, 2.0]


def test_numpy_array_is_not_copied_when_dtype_matches() -> None:
    x = np.arange(3.0)
    assert accepts(F64, x) is x


@pytest.mark.parametrize("value", [3, 3.0, True, np.float64(3.0), np.int64(3), np.float32(3)])
def test_scalars(value: Any) -> None:
    out = accepts(SCALAR, value)
    assert out.shape == ()
    assert out.dtype == cr.Float64
    assert float(out) == float(value)


def test_scalar_into_1d_field_is_a_shape_error() -> None:
    assert refuses(F64, 1.0) == "expected float64[?], got float64[]"


def test_int_to_float_accepted() -> None:
    assert accepts(F64, np.array([1, 2], np.int32)).dtype == cr.Float64
    assert accepts(F64, [1, 2]).dtype == cr.Float64
    assert accepts(F32, np.array([1, 2], np.int8)).dtype == cr.Float32


def test_float64_array_into_float32_refused_unless_same_kind() -> None:
    assert "float64 -> float32 is not a safe cast" in refuses(F32, np.zeros(2))
    assert "float64 -> float32 is not a safe cast" in refuses(F32, np.float64(1.0))
    out = accepts(cr.Array[(None,), cr.Float32, "same_kind"], np.zeros(2))
    assert out.dtype == cr.Float32


def test_python_numbers_are_weakly_typed() -> None:
    # As in JAX: a Python float list fits a float32 field, a Python int list a uint8 field.
    assert accepts(F32, [1.0, 2.5]).dtype == cr.Float32
    assert accepts(cr.Array[(), cr.Float16], 0.5).dtype == cr.Float16
    assert accepts(cr.Array[(None,), cr.UInt8], [0, 255]).tolist() == [0, 255]
    assert accepts(cr.Array[(None,), cr.Int8], [-128, 127]).dtype == cr.Int8
    assert accepts(cr.Array[(None,), cr.Complex64], [1, 2.5]).dtype == cr.Complex64
    assert accepts(I32, [True, False]).tolist() == [1, 0]


def test_weakly_typed_values_must_fit() -> None:
    assert (
        refuses(I32, [10**10]) == "expected int32[?], got int64[1]: some values do not fit in int32"
    )
    msg = refuses(cr.Array[(None,), cr.UInt8], [-1])
    assert msg == "expected uint8[?], got int64[1]: some values do not fit in uint8"
    assert "do not fit in float32" in refuses(F32, [1e300])
    assert accepts(F32, [float("inf"), float("nan")]).dtype == cr.Float32  # inf stays inf
    unsafe = accepts(cr.Array[(None,), cr.UInt8, "unsafe"], [-1])  # asked for it
    assert unsafe.tolist() == [255]


def test_empty_list_fits_any_dtype() -> None:
    for dtype in ALL_DTYPES:
        out = accepts(cr.Array[(None,), dtype], [])
        assert (out.dtype, out.shape) == (dtype, (0,))


def test_float_list_into_int_field_refused() -> None:
    msg = refuses(I32, [1.0, 2.5])
    assert msg.startswith("expected int32[?], got float64[2]: float64 -> int32 is not a cast")
    assert "Array[..., int32, 'unsafe']" in msg
    assert "complex128 -> float64" in refuses(F64, [1j])
    assert "int64 -> bool" in refuses(cr.Array[(None,), cr.Bool], [0, 1])


def test_ragged_lists_refused() -> None:
    msg = refuses(F64, [[1.0], [1.0, 2.0]])
    assert msg.startswith("expected float64[?], got a ragged nested list (")
    assert "\n" not in msg
    assert "ragged nested list" in refuses(F64, [1.0, [1.0, 2.0]])


@pytest.mark.parametrize(
    ("value", "got"),
    [("abc", "str"), (b"ab", "bytes"), (None, "NoneType"), ({"a": 1}, "dict"), ({1.0}, "set")],
)
def test_non_arrays_refused(value: Any, got: str) -> None:
    msg = refuses(F64, value)
    assert msg == f"expected float64[?] (an array, nested list or number), got {got}"


@pytest.mark.parametrize(
    ("value", "got"),
    [
        (["a", "b"], "str32[2]"),
        ([1.0, None], "object[2]"),
        (np.array([1, "a"], dtype=object), "object[2]"),
    ],
)
def test_non_numeric_arrays_refused(value: Any, got: str) -> None:
    assert (
        refuses(F64, value) == f"expected float64[?], got {got}: {got[:-3]} values are not numbers"
    )


def test_jax_arrays() -> None:
    import jax.numpy as jnp

    out = accepts(F32, jnp.ones(3, jnp.float32))
    assert type(out) is np.ndarray
    assert (out.dtype, out.tolist()) == (cr.Float32, [1.0, 1.0, 1.0])
    assert accepts(F64, jnp.arange(3)).dtype == cr.Float64  # int32 -> float64
    assert accepts(SCALAR, jnp.float32(2.0)).shape == ()
    assert "float32 -> int32 is not a safe cast" in refuses(I32, jnp.ones(2, jnp.float32))
    # bfloat16 (no numpy equivalent) arrives as float32, which holds it exactly.
    assert accepts(F32, jnp.ones(2, jnp.bfloat16)).dtype == cr.Float32


def test_torch_tensors() -> None:
    import torch

    out = accepts(F64, torch.arange(3, dtype=torch.float64))
    assert type(out) is np.ndarray
    assert out.tolist() == [0.0, 1.0, 2.0]
    grad = torch.ones(2, dtype=torch.float64, requires_grad=True)
    assert accepts(F64, grad * 2).tolist() == [2.0, 2.0]
    assert accepts(F64, grad).tolist() == [1.0, 1.0]
    assert accepts(SCALAR, torch.tensor(3.0)).dtype == cr.Float64  # float32 -> float64
    assert accepts(cr.Array[(2,), cr.Complex64], torch.ones(2, dtype=torch.complex64).conj())[
        0
    ] == (1 - 0j)
    msg = refuses(F32, torch.zeros(2, dtype=torch.float64))
    assert msg.startswith("expected float32[?], got float64[2]: float64 -> float32")
    assert refuses(F32, torch.zeros((2, 2))) == "expected float32[?], got float32[2,2]"


def test_torch_dtypes_numpy_lacks() -> None:
    import torch

    assert accepts(F32, torch.ones(2, dtype=torch.bfloat16)).dtype == cr.Float32
    float8 = getattr(torch, "float8_e4m3fn", None)
    if float8 is not None:
        msg = refuses(F32, torch.ones(2).to(float8))
        assert msg == "expected float32[?], got float8_e4m3fn[2]: numpy has no such dtype; " + (
            "convert it first"
        )


def test_passthrough_keeps_framework_arrays_and_checks_shape() -> None:
    import torch

    t = torch.ones(2, 3, dtype=torch.float64, requires_grad=True)
    M = model(cr.Array[(None, 3), cr.Float64])
    with passthrough():
        assert M(x=t).x is t
        with pytest.raises(Exception, match=r"expected float64\[\?,3\], got float64\[3,2\]"):
            M(x=torch.ones(3, 2, dtype=torch.float64))
        assert type(M(x=[[1.0, 2.0, 3.0]]).x) is np.ndarray  # lists are still converted
    assert type(M(x=t).x) is np.ndarray


# --------------------------------------------------------------------------------------------
# Small pieces: describe, ShapeDtype, JSON schema, serialization


def test_describe_value() -> None:
    assert describe_value(np.zeros((3, 2))) == "float64[3,2]"
    assert describe_value(np.int8(1)) == "int8[]"
    assert describe_value([1, 2]) == "list"
    assert describe(spec_of(cr.Array[(None, ..., "n", 3), cr.UInt8])) == "uint8[?,...,n,3]"
    assert repr(cr.ShapeDtype((4, 1), cr.Complex64)) == "complex64[4,1]"
    import torch

    assert describe_value(torch.zeros(2, 1)) == "float32[2,1]"


def test_json_schema_and_json_dump() -> None:
    class M(cr.Schema):
        x: cr.Differentiable[cr.Array[("n", ..., 3), cr.Float32]]
        k: int = 1

    prop = M.model_json_schema()["properties"]["x"]
    assert prop["title"] == "float32[n,...,3]"
    assert prop["x-chainrule-array"] == {
        "shape": ["n", "...", 3],
        "dtype": "float32",
        "differentiable": True,
        "casting": "safe",
    }
    m = M(x=np.ones((2, 3), np.float32))
    assert m.model_dump_json() == '{"x":[[1.0,1.0,1.0],[1.0,1.0,1.0]],"k":1}'
    assert isinstance(m.model_dump()["x"], np.ndarray)  # python mode keeps arrays


# --------------------------------------------------------------------------------------------
# Error messages through a real component


class Mesh(cr.Schema):
    points: cr.Differentiable[cr.Array[(None, 3), cr.Float64]]


class Inputs(cr.Schema):
    mesh: Mesh
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    y: cr.Array[("n",), cr.Float32]
    layers: list[Mesh] = Field(default_factory=list)


class Outputs(cr.Schema):
    z: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    count: cr.Array[(), cr.Int64]


GOOD: dict[str, Any] = {"mesh": {"points": np.zeros((4, 3))}, "x": np.ones(2), "y": [1.0, 2.0]}


def _echo(inputs: Inputs) -> dict[str, Any]:
    return {"z": 2 * inputs.x, "count": inputs.mesh.points.shape[0]}


ECHO = cr.component(_echo, inputs=Inputs, outputs=Outputs, backend="numpy", name="echo")


def invalid(inputs: dict[str, Any]) -> cr.ValidationError:
    with pytest.raises(cr.ValidationError) as info:
        ECHO.apply(inputs)
    assert type(info.value) is cr.ValidationError
    assert info.value.__cause__ is None  # pydantic's own traceback is not shown to the user
    return info.value


def test_good_inputs_apply() -> None:
    out = ECHO.apply(GOOD)
    assert isinstance(out, Outputs)
    assert out.z.tolist() == [2.0, 2.0]
    assert int(out.count) == 4


def test_message_wrong_shape() -> None:
    err = invalid({**GOOD, "mesh": {"points": np.zeros((3, 2))}})
    assert str(err) == (
        "invalid inputs to component 'echo': 'mesh.points': expected float64[?,3], got float64[3,2]"
    )
    (entry,) = err.errors
    assert entry["path"] == "mesh.points"
    assert entry["expected"] == "float64[?,3]"
    assert entry["got"] == "float64[3,2]"
    assert entry["type"] == "chainrule_shape"


def test_message_wrong_shape_in_list() -> None:
    layers = [{"points": np.zeros((1, 3))}, {"points": np.zeros((1, 2))}]
    err = invalid({**GOOD, "layers": layers})
    assert "'layers.1.points': expected float64[?,3], got float64[1,2]" in str(err)
    assert err.errors[0]["path"] == "layers.1.points"


def test_message_wrong_dtype() -> None:
    err = invalid({**GOOD, "y": np.ones(2)})
    assert str(err) == (
        "invalid inputs to component 'echo': 'y': expected float32[n], got float64[2]: "
        "float64 -> float32 is not a safe cast; convert it first (e.g. x.astype('float32')) "
        "or declare the field as Array[..., float32, 'same_kind']"
    )
    (entry,) = err.errors
    assert (entry["path"], entry["expected"], entry["got"]) == ("y", "float32[n]", "float64[2]")
    assert entry["type"] == "chainrule_dtype"


def test_message_missing_field() -> None:
    err = invalid({"mesh": GOOD["mesh"], "y": GOOD["y"]})
    assert str(err) == "invalid inputs to component 'echo': 'x' is required but missing; add it"
    assert err.errors[0]["path"] == "x"
    assert err.errors[0]["type"] == "missing"
    nested = invalid({**GOOD, "mesh": {}})
    assert "'mesh.points' is required but missing" in str(nested)


def test_message_extra_field() -> None:
    err = invalid({**GOOD, "xx": 1.0})
    assert str(err) == (
        "invalid inputs to component 'echo': "
        "'xx' is not a field of this schema; remove it or check its spelling"
    )
    assert err.errors[0]["path"] == "xx"
    nested = invalid({**GOOD, "mesh": {"points": np.zeros((1, 3)), "pts": 0}})
    assert "'mesh.pts' is not a field of this schema" in str(nested)


def test_message_named_dim_mismatch_names_both_paths() -> None:
    err = invalid({**GOOD, "y": [1.0, 2.0, 3.0]})
    assert "dimension 'n' is 2 in 'x' but 3 in 'y'" in str(err)
    assert "float32[3], expected float32[n]" in str(err)
    (entry,) = err.errors
    assert (entry["path"], entry["expected"], entry["got"]) == ("y", "n=2", 3)


def test_message_lists_every_problem() -> None:
    err = invalid({"mesh": {"points": 1.0}, "x": "abc"})
    assert [e["path"] for e in err.errors] == ["mesh.points", "x", "y"]
    assert [e["type"] for e in err.errors] == ["chainrule_shape", "chainrule_array", "missing"]
    assert str(err).count(";") >= 2


def test_message_non_mapping_inputs() -> None:
    err = invalid([1, 2])  # type: ignore[arg-type]
    assert str(err) == "invalid inputs to component 'echo': expected a dict or Inputs, got list"


def test_inputs_from_frameworks_through_a_component() -> None:
    import jax.numpy as jnp
    import torch

    inputs = {
        "mesh": {"points": torch.zeros(4, 3, dtype=torch.float64, requires_grad=True)},
        "x": jnp.ones(2),
        "y": np.ones(2, np.float32),
    }
    assert ECHO.apply(inputs).z.tolist() == [2.0, 2.0]


@pytest.mark.parametrize(
    ("returned", "path", "fragment"),
    [
        ({"z": np.zeros((2, 1)), "count": 1}, "z", "'z': expected float64[n], got float64[2,1]"),
        (
            {"z": np.zeros(2, np.complex128), "count": 1},
            "z",
            "expected float64[n], got complex128[2]",
        ),
        ({"z": np.zeros(2), "count": 1.5}, "count", "'count': expected int64[], got float64[]"),
        ({"z": np.zeros(2)}, "count", "'count' is required but missing"),
        ({"z": np.zeros(2), "count": 1, "w": 0}, "w", "'w' is not a field of this schema"),
    ],
)
def test_bad_outputs(returned: dict[str, Any], path: str, fragment: str) -> None:
    c = cr.component(
        lambda inputs: returned, inputs=Inputs, outputs=Outputs, backend="numpy", name="bad"
    )
    with pytest.raises(cr.OutputValidationError) as info:
        c.apply(GOOD)
    assert str(info.value).startswith("component 'bad' returned bad outputs: ")
    assert fragment in str(info.value)
    assert info.value.errors[0]["path"] == path
    assert isinstance(info.value, cr.ComponentError)


def test_bad_output_named_dim() -> None:
    c = cr.component(
        lambda inputs: {"z": np.zeros(3), "count": 1},
        inputs=Inputs,
        outputs=Outputs,
        backend="numpy",
    )
    with pytest.raises(cr.OutputValidationError) as info:
        c.apply(GOOD)
    assert "dimension 'n' is 2 in 'inputs.x' but 3 in 'outputs.z'" in str(info.value)
    assert info.value.errors == [{"path": "outputs.z", "expected": "n=2", "got": 3}]


def test_bad_output_type() -> None:
    c = cr.component(lambda inputs: (1, 2), inputs=Inputs, outputs=Outputs, backend="numpy")
    with pytest.raises(cr.OutputValidationError, match="returned tuple; return an Outputs"):
        c.apply(GOOD)
