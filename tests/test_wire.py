"""Tests of the HTTP wire format (`chainrule._transport.wire`, spec in docs/wire-format.md)."""

from __future__ import annotations

import contextlib
import json
import struct
from typing import Any, cast

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from chainrule._schema.errors import ValidationError, WireFormatError
from chainrule._transport.wire import (
    ALIGNMENT,
    BINARY,
    DTYPES,
    JSON,
    MAGIC,
    MAX_DEPTH,
    content_type_of,
    decode,
    encode,
)
from chainrule._transport.wire import encoder as _wire_encode

BOTH = pytest.mark.parametrize("content_type", [BINARY, JSON])
# database=None: no .hypothesis/ folder in the work tree; examples stay fast and reproducible.
FAST = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


# --------------------------------------------------------------------------------------------
# Helpers


def normalized(tree: Any) -> Any:
    """What a tree decodes to: tuples become lists, numpy scalars 0-d little-endian arrays."""
    if isinstance(tree, (np.ndarray, np.generic)):
        array = np.asarray(tree)
        return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")
    if isinstance(tree, dict):
        return {key: normalized(value) for key, value in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [normalized(value) for value in tree]
    return tree


def assert_same(got: Any, want: Any) -> None:
    """Structural equality; arrays must match dtype, shape and bytes exactly (NaN-safe)."""
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        assert got.tobytes() == want.tobytes()
    elif isinstance(want, dict):
        assert isinstance(got, dict)
        assert list(got) == list(want)
        for key in want:
            assert_same(got[key], want[key])
    elif isinstance(want, list):
        assert isinstance(got, list)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)
    else:
        assert type(got) is type(want)
        assert got == want


def roundtrip(tree: Any, content_type: str) -> Any:
    """Encode then decode, checking the result equals the normalized input."""
    out = decode(encode(tree, content_type), content_type)
    assert_same(out, normalized(tree))
    return out


def craft(header: Any, data: bytes = b"", *, raw_header: bytes | None = None) -> bytes:
    """A binary body from an arbitrary header (possibly invalid) and data section."""
    text = raw_header if raw_header is not None else json.dumps(header).encode()
    prefix = MAGIC + struct.pack("<Q", len(text)) + text
    return prefix + bytes(-len(prefix) % ALIGNMENT) + data


def descriptor(
    dtype: Any = "float64", shape: Any = (2,), offset: Any = 0, nbytes: Any = 16
) -> dict[str, Any]:
    """One array descriptor of a binary header, any field possibly invalid."""
    return {"dtype": dtype, "shape": list(shape), "offset": offset, "nbytes": nbytes}


def wire_error(body: bytes, content_type: str = BINARY, **kwargs: Any) -> WireFormatError:
    with pytest.raises(WireFormatError) as info:
        decode(body, content_type, **kwargs)
    return info.value


def decodes_or_wire_error(body: bytes, content_type: str = BINARY) -> None:
    """The robustness contract: a value or a WireFormatError, never anything else."""
    # Any other exception type propagates and fails the test.
    with contextlib.suppress(WireFormatError):
        decode(body, content_type)


def sample_values(dtype: str) -> np.ndarray:
    """A few values per dtype, including extremes and non-finite floats."""
    info: Any
    if dtype == "bool":
        return np.array([True, False, True])
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        return np.array([info.min, 0, 1, info.max], dtype=dtype)
    if dtype.startswith("float"):
        info = np.finfo(dtype)
        return np.array([0.0, -1.5, info.max, info.tiny, np.nan, np.inf, -np.inf], dtype=dtype)
    return np.array([1 + 2j, complex(np.nan, np.inf), 0], dtype=dtype)


# --------------------------------------------------------------------------------------------
# Round-trips


@BOTH
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_dtype_roundtrips(dtype: str, content_type: str) -> None:
    values = sample_values(dtype)
    out = roundtrip({"x": values, "m": values.reshape(1, -1, 1)}, content_type)
    assert out["x"].dtype.name == dtype


@BOTH
@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_scalars_become_0d_arrays(dtype: str, content_type: str) -> None:
    scalar = sample_values(dtype)[0]
    assert isinstance(scalar, np.generic)
    out = roundtrip(scalar, content_type)
    assert out.shape == ()
    assert out.dtype.name == dtype


@BOTH
def test_0d_and_empty_arrays(content_type: str) -> None:
    tree = {
        "zero_d": np.array(2.5),
        "empty": np.zeros((0, 3)),
        "empty_int": np.zeros((4, 0, 2), dtype=np.int8),
        "after": np.arange(3, dtype=np.uint16),
    }
    roundtrip(tree, content_type)
    roundtrip([np.zeros((0,))], content_type)  # an empty array as the last one in the body


@BOTH
def test_nested_trees(content_type: str) -> None:
    tree = {
        "mesh": {"points": np.ones((5, 3), np.float32), "ids": [np.arange(2), np.arange(3)]},
        "meta": {"name": "terrain ✓", "n": 3, "scale": 0.5, "on": True, "none": None},
        "pairs": ((1, 2), [3, {"deep": [[]]}]),
        "": "empty key",
        "big": 2**80,
    }
    out = roundtrip(tree, content_type)
    assert out["pairs"] == [[1, 2], [3, {"deep": [[]]}]]


@BOTH
@pytest.mark.parametrize("tree", [1, 2.5, "s", None, True, [], {}, np.float64(1)])
def test_top_level_scalars_and_empties(tree: Any, content_type: str) -> None:
    roundtrip(tree, content_type)


@BOTH
def test_marker_keys_are_escaped(content_type: str) -> None:
    tree = {
        "$array": 0,  # a user dict that looks like a binary marker
        "nested": {"$array": np.arange(3)},  # ... and one that looks like a JSON marker
        "$$x": {"$": 1, "$$": 2, "$array$": 3, "a$": 4},
        "only": {"$array": {"dtype": "float64", "shape": [1], "data": "AAAAAAAA8D8="}},
    }
    body = encode(tree, content_type)
    assert b'"$$array"' in body
    assert b'"$$$x"' in body
    roundtrip(tree, content_type)


def test_escaping_in_the_header_is_as_documented() -> None:
    body = encode({"$array": 1, "a": np.zeros(1)})
    (length,) = struct.unpack_from("<Q", body, 8)
    header = json.loads(body[16 : 16 + length])
    assert header["tree"] == {"$$array": 1, "a": {"$array": 0}}


@BOTH
def test_big_endian_and_non_contiguous_inputs_are_converted(content_type: str) -> None:
    big = np.arange(6, dtype=">f8").reshape(2, 3)
    strided = np.arange(20, dtype=np.int32).reshape(4, 5)[::2, ::-2]
    fortran = np.asfortranarray(np.arange(6.0).reshape(2, 3))
    out = decode(encode({"b": big, "s": strided, "f": fortran}, content_type), content_type)
    assert out["b"].dtype == np.dtype("<f8")
    np.testing.assert_array_equal(out["b"], big)
    np.testing.assert_array_equal(out["s"], strided)
    np.testing.assert_array_equal(out["f"], fortran)


@BOTH
def test_subclasses_of_int_float_and_ndarray(content_type: str) -> None:
    from enum import IntEnum

    class Color(IntEnum):
        RED = 1

    out = decode(
        encode({"c": Color.RED, "m": np.ma.masked_array([1.0, 2.0])}, content_type), content_type
    )
    assert type(out["c"]) is int
    np.testing.assert_array_equal(out["m"], [1.0, 2.0])


# --------------------------------------------------------------------------------------------
# Zero-copy and alignment


def test_binary_decode_is_zero_copy() -> None:
    body = encode({"a": np.arange(1000.0), "b": np.ones((3, 4), np.int16)})
    out = decode(body, BINARY)
    whole = np.frombuffer(body, np.uint8)
    for array in (out["a"], out["b"]):
        assert np.shares_memory(array, whole)
        assert not array.flags.writeable  # `bytes` is immutable, so the view is read-only


def test_bytearray_and_memoryview_bodies_are_viewed_too() -> None:
    body = bytearray(encode({"a": np.arange(10.0)}))
    out = decode(body, BINARY)
    assert np.shares_memory(out["a"], np.frombuffer(body, np.uint8))
    out_mv = decode(memoryview(body), BINARY)
    assert np.shares_memory(out_mv["a"], np.frombuffer(body, np.uint8))


def test_every_array_is_64_byte_aligned_in_the_body() -> None:
    tree: dict[str, Any] = {f"x{i}": np.arange(i, dtype=np.uint8) for i in range(0, 70, 7)}
    tree["header_padding"] = "z" * 37
    body = encode(tree)
    start = np.frombuffer(body, np.uint8).__array_interface__["data"][0]
    for array in decode(body, BINARY).values():
        if isinstance(array, np.ndarray) and array.size:
            assert (array.__array_interface__["data"][0] - start) % ALIGNMENT == 0


def test_layout_matches_the_spec() -> None:
    body = encode({"x": np.array([1.0, 2.0]), "y": np.array([7], np.uint8)})
    assert body[:8] == MAGIC
    (length,) = struct.unpack_from("<Q", body, 8)
    header = json.loads(body[16 : 16 + length].decode("utf-8"))
    data_start = -(-(16 + length) // 64) * 64
    assert set(body[16 + length : data_start]) <= {0}
    assert header["arrays"] == [
        {"dtype": "float64", "shape": [2], "offset": 0, "nbytes": 16},
        {"dtype": "uint8", "shape": [1], "offset": 64, "nbytes": 1},
    ]
    assert body[data_start : data_start + 16] == struct.pack("<2d", 1.0, 2.0)
    assert len(body) == data_start + 65


def test_worked_example_from_the_docs() -> None:
    body = encode({"x": np.array([1.0, 2.0], dtype=np.float32)})
    expected = (
        b"CHRULE01"
        + struct.pack("<Q", 92)
        + b'{"tree":{"x":{"$array":0}},"arrays":[{"dtype":"float32","shape":[2],'
        + b'"offset":0,"nbytes":8}]}'
        + bytes(20)
        + struct.pack("<2f", 1.0, 2.0)
    )
    assert body == expected
    assert len(body) == 136


def test_overlapping_arrays_are_allowed() -> None:
    data = struct.pack("<2d", 1.0, 2.0)
    header = {
        "tree": [{"$array": 0}, {"$array": 1}, {"$array": 0}],
        "arrays": [descriptor(), descriptor()],
    }
    out = decode(craft(header, data), BINARY)
    assert all(np.array_equal(a, [1.0, 2.0]) for a in out)


def test_unreferenced_arrays_are_allowed() -> None:
    header = {"tree": None, "arrays": [descriptor()]}
    assert decode(craft(header, bytes(16)), BINARY) is None


# --------------------------------------------------------------------------------------------
# Encode errors


@BOTH
@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (np.array(["a"]), "dtype"),
        (np.array([object()]), "dtype"),
        (np.zeros(2, dtype=[("a", "f8")]), "dtype"),
        (np.array(["2024-01-01"], dtype="datetime64[D]"), "dtype"),
        (np.longdouble(1), "dtype"),
        ({1: 2}, "key"),
        (float("nan"), "non-finite"),
        (float("inf"), "non-finite"),
        (b"bytes", "unsupported value type"),
        ({1, 2}, "unsupported value type"),
        (1j, "unsupported value type"),
        ("\ud800", "surrogate"),
        ({"\udc80": 1}, "surrogate"),
        (np.zeros((1,) * 33), "dimensions"),
    ],
)
def test_encode_refuses_unsupported_values(value: Any, needle: str, content_type: str) -> None:
    with pytest.raises(WireFormatError, match=needle) as info:
        encode({"field": [value]}, content_type)
    assert info.value.errors[0]["path"] == "field[0]"


@BOTH
def test_encode_bounds_depth_and_cycles(content_type: str) -> None:
    ok: Any = 1
    for _ in range(MAX_DEPTH):
        ok = [ok]
    roundtrip(ok, content_type)
    with pytest.raises(WireFormatError, match="nested too deeply"):
        encode([ok], content_type)
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(WireFormatError, match="cycle"):
        encode(cycle, content_type)


def test_error_messages_say_what_expected_got_and_fix() -> None:
    with pytest.raises(ValidationError) as info:
        encode({"a": {"b": np.array(["s"])}})
    error = info.value
    assert isinstance(error, WireFormatError)
    (detail,) = error.errors
    assert detail["path"] == "a.b"
    assert "float64" in detail["expected"]
    assert "<U1" in detail["got"]
    assert "astype" in error.message
    assert error.to_dict()["type"] == "WireFormatError"


# --------------------------------------------------------------------------------------------
# Binary decode errors


GOOD = struct.pack("<2d", 1.0, 2.0)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"", "truncated"),
        (b"CHRU", "truncated"),
        (b"NOTMAGIC" + bytes(56), "wrong magic"),
        (b'{"a": 1}', "looks like JSON"),
        (MAGIC + struct.pack("<Q", 2**64 - 1), "header length"),
        (MAGIC + struct.pack("<Q", 10) + b"{}", "header length"),
        (MAGIC + struct.pack("<Q", 2) + b"{}", "truncated inside the header padding"),
        (craft(None, raw_header=b"{not json"), "invalid JSON"),
        (craft(None, raw_header=b'{"tree":"\xff"}'), "invalid UTF-8"),
        (craft(None, raw_header=b'{"tree":NaN,"arrays":[]}'), "non-standard"),
        (craft(None, raw_header=b'{"tree":1,"tree":2,"arrays":[]}'), "duplicate"),
        (craft([]), "malformed header"),
        (craft({"tree": 1}), "malformed header"),
        (craft({"tree": 1, "arrays": [], "extra": 0}), "malformed header"),
        (craft({"tree": 1, "arrays": {}}), "invalid array list"),
        (craft({"tree": 1, "arrays": [{"dtype": "float64"}]}, GOOD), "malformed array"),
        (craft({"tree": 1, "arrays": [descriptor(dtype="float128")]}, GOOD), "unknown dtype"),
        (craft({"tree": 1, "arrays": [descriptor(dtype="object")]}, GOOD), "unknown dtype"),
        (craft({"tree": 1, "arrays": [descriptor(dtype=7)]}, GOOD), "unknown dtype"),
        (craft({"tree": 1, "arrays": [descriptor(shape=[-2])]}, GOOD), "invalid shape"),
        (craft({"tree": 1, "arrays": [descriptor(shape=[2.0])]}, GOOD), "invalid shape"),
        (craft({"tree": 1, "arrays": [descriptor(shape=[True, 2])]}, GOOD), "invalid shape"),
        (craft({"tree": 1, "arrays": [descriptor(shape="2")]}, GOOD), "invalid shape"),
        (craft({"tree": 1, "arrays": [descriptor(shape=[1] * 33)]}, GOOD), "dimensions"),
        (craft({"tree": 1, "arrays": [descriptor(shape=[2**62, 2**62])]}, GOOD), "too large"),
        (craft({"tree": 1, "arrays": [descriptor(shape=[0, 2**62])]}, GOOD), "too large"),
        (craft({"tree": 1, "arrays": [descriptor(shape=[3])]}, GOOD), "does not match"),
        (craft({"tree": 1, "arrays": [descriptor(nbytes=-16)]}, GOOD), "invalid nbytes"),
        (craft({"tree": 1, "arrays": [descriptor(nbytes=16.0)]}, GOOD), "invalid nbytes"),
        (craft({"tree": 1, "arrays": [descriptor(offset=8)]}, GOOD), "invalid offset"),
        (craft({"tree": 1, "arrays": [descriptor(offset=-64)]}, GOOD), "invalid offset"),
        (craft({"tree": 1, "arrays": [descriptor(offset="0")]}, GOOD), "invalid offset"),
        (craft({"tree": 1, "arrays": [descriptor(offset=64)]}, GOOD), "past the end"),
        (craft({"tree": 1, "arrays": [descriptor(offset=2**70)]}, GOOD), "past the end"),
        (craft({"tree": 1, "arrays": [descriptor()]}, GOOD[:8]), "past the end"),
        (craft({"tree": 1, "arrays": [descriptor()]}, GOOD + b"\0"), "trailing"),
        (craft({"tree": 1, "arrays": []}, b"\0" * 64), "trailing"),
        (craft({"tree": {"$array": 1}, "arrays": [descriptor()]}, GOOD), "out of range"),
        (craft({"tree": {"$array": -1}, "arrays": [descriptor()]}, GOOD), "out of range"),
        (craft({"tree": {"$array": True}, "arrays": [descriptor()]}, GOOD), "out of range"),
        (craft({"tree": {"$array": "0"}, "arrays": [descriptor()]}, GOOD), "out of range"),
        (craft({"tree": {"$array": 0, "b": 1}, "arrays": [descriptor()]}, GOOD), "only key"),
        (craft({"tree": {"$x": 1}, "arrays": []}), "reserved"),
        (craft(None, raw_header=b'{"tree":1e400,"arrays":[]}'), "float64 range"),
        (craft({"tree": 1, "arrays": "x"}), "invalid array list"),
    ],
)
def test_binary_decode_errors(body: bytes, needle: str) -> None:
    error = wire_error(body)
    assert needle in error.message
    assert "expected" in error.message and "got" in error.message
    assert error.errors[0]["path"]


def test_nonzero_header_padding_is_refused() -> None:
    body = bytearray(encode({"a": 1}))
    body[-1] = 1  # no arrays: the last byte is header padding
    assert "padding" in wire_error(bytes(body)).message


def test_depth_bound_on_decode() -> None:
    deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    raw = ('{"tree":' + deep + ',"arrays":[]}').encode()
    assert "nested too deeply" in wire_error(craft(None, raw_header=raw)).message
    very_deep = "[" * 100_000 + "]" * 100_000
    assert "nested too deeply" in wire_error(very_deep.encode(), JSON).message
    raw = ('{"tree":' + very_deep + ',"arrays":[]}').encode()
    assert "nested too deeply" in wire_error(craft(None, raw_header=raw)).message


@BOTH
def test_max_bytes_is_checked_first(content_type: str) -> None:
    body = encode({"a": np.zeros(100)}, content_type)
    error = wire_error(body, content_type, max_bytes=len(body) - 1)
    assert "too large" in error.message
    assert str(len(body)) in error.message
    decode(body, content_type, max_bytes=len(body))
    # The limit applies before parsing: garbage over the limit says "too large", not "invalid".
    assert "too large" in wire_error(b"x" * 100, content_type, max_bytes=10).message


def test_every_truncation_of_a_small_body_is_refused() -> None:
    body = encode({"a": np.arange(3.0), "b": [1, "two"], "c": np.zeros((0, 2))})
    for cut in range(len(body)):
        wire_error(body[:cut])


def test_non_bytes_body_is_refused() -> None:
    with pytest.raises(WireFormatError, match="not bytes"):
        decode(cast(Any, "a string"), JSON)


def test_unusual_memoryviews_are_accepted() -> None:
    body = encode({"a": np.arange(3.0)})
    assert len(body) % 8 == 0
    view = np.frombuffer(body, np.float64).data  # format "d", not "B": cast, no copy
    assert view.format == "d"
    out = decode(view, BINARY)
    assert np.shares_memory(out["a"], np.frombuffer(body, np.uint8))
    strided = np.frombuffer(body * 2, np.uint8)[::2].data  # non-contiguous: copied
    assert not strided.c_contiguous
    decodes_or_wire_error(strided.tobytes())
    with pytest.raises(WireFormatError):
        decode(strided, BINARY)
    two_d = np.frombuffer(body, np.uint8).reshape(-1, 8).data
    assert_same(decode(two_d, BINARY), {"a": np.arange(3.0)})


# --------------------------------------------------------------------------------------------
# JSON decode


def test_plain_json_lists_stay_lists() -> None:
    out = decode(b'{"x": [[1, 2.5], [3, 4]], "n": -0.0, "s": "\\u00e9"}', JSON)
    assert out == {"x": [[1, 2.5], [3, 4]], "n": -0.0, "s": "é"}
    assert isinstance(out["x"], list)


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_json_non_finite_tokens_are_refused(token: bytes) -> None:
    error = wire_error(b'{"x": [1, ' + token + b"]}", JSON)
    assert "$array" in error.message
    assert "base64" in error.message


def test_json_number_overflow_is_refused() -> None:
    assert "$array" in wire_error(b"[1e400]", JSON).message


def test_json_arrays_carry_non_finite_values() -> None:
    values = np.array([np.nan, np.inf, -np.inf])
    body = encode({"x": values}, JSON)
    json.loads(body)  # strictly standard JSON
    assert_same(decode(body, JSON)["x"], values)


def spec(dtype: Any = "float64", shape: Any = (1,), data: Any = "AAAAAAAA8D8=") -> bytes:
    return json.dumps(
        {"x": {"$array": {"dtype": dtype, "shape": list(shape), "data": data}}}
    ).encode()


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"\xff\xfe{}", "invalid UTF-8"),
        ('{"a": 1}'.encode("utf-16"), "invalid UTF-8"),
        (b"\xef\xbb\xbf{}", "invalid JSON"),  # UTF-8 BOM
        (b"", "invalid JSON"),
        (b"{'a': 1}", "invalid JSON"),
        (b"{} {}", "invalid JSON"),
        (b"1" * 5000, "invalid JSON"),  # beyond Python's int digit limit
        (encode({"a": 1}), "looks binary"),
        (b'{"a": 1, "a": 2}', "duplicate"),
        (b'{"$ref": 1}', "reserved"),
        (b'{"$array": 0}', "malformed `$array` object"),
        (b'{"$array": {"dtype": "float64"}}', "malformed `$array` object"),
        (spec(dtype="float128"), "unknown dtype"),
        (spec(dtype="<f8"), "unknown dtype"),
        (spec(shape=[-1]), "invalid shape"),
        (spec(shape=[10**30]), "too large"),
        (spec(shape=[2**61, 2**61]), "too large"),
        (spec(shape=[2]), "does not match"),
        (spec(data=5), "does not match"),
        (spec(data="AAAAAAAA8D8"), "does not match"),
        (spec(data="AAAAAAAA8D8!"), "invalid base64"),
        (spec(data="AAAA AAA8D8="), "invalid base64"),
        (spec(data="AAAAAAAA8D=="), "wrong size"),
        (spec(data="AAAAAAAA8D9é"), "invalid base64"),
    ],
)
def test_json_decode_errors(body: bytes, needle: str) -> None:
    error = wire_error(body, JSON)
    assert needle in error.message


def test_json_array_decode_is_exact() -> None:
    out = decode(spec(), JSON)
    assert out["x"].dtype == np.float64
    assert out["x"].tolist() == [1.0]


# --------------------------------------------------------------------------------------------
# Content types


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, JSON),
        ("", JSON),
        ("   ", JSON),
        ("application/json", JSON),
        ("application/json; charset=utf-8", JSON),
        ("Application/JSON", JSON),
        ("application/x-chainrule", BINARY),
        (" application/x-chainrule ; v=1", BINARY),
        ("*/*", JSON),
        ("application/*", JSON),
        ("text/html, application/x-chainrule", BINARY),
        ("application/json, application/x-chainrule", JSON),
        ("application/json;q=0.5, application/x-chainrule", BINARY),
        ("application/x-chainrule;q=0, application/json", JSON),
        ("application/x-chainrule;q=abc, application/json;q=0.9", BINARY),
        ("text/html, */*;q=0.1", JSON),
    ],
)
def test_content_type_of(header: str | None, expected: str) -> None:
    assert content_type_of(header) == expected


@pytest.mark.parametrize(
    "header", ["text/html", "application/octet-stream", "application/json;q=0", "json"]
)
def test_content_type_of_refuses_unsupported(header: str) -> None:
    with pytest.raises(WireFormatError) as info:
        content_type_of(header)
    assert BINARY in info.value.message
    assert JSON in info.value.message


def test_raw_header_values_are_accepted_as_content_type() -> None:
    body = encode({"a": np.ones(2)}, "application/x-chainrule; q=1")
    assert body.startswith(MAGIC)
    assert decode(body, "application/x-chainrule")["a"].tolist() == [1.0, 1.0]
    with pytest.raises(WireFormatError, match="unsupported content type"):
        decode(body, "text/plain")


# --------------------------------------------------------------------------------------------
# Property tests


wire_dtypes = st.sampled_from(DTYPES).map(np.dtype)
arrays = hnp.arrays(wire_dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
keys = st.text(alphabet=st.sampled_from("$ab\u00e9_"), max_size=4)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))
    | arrays
)
trees = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3)
        | st.tuples(children, children)
        | st.dictionaries(keys, children, max_size=3)
    ),
    max_leaves=10,
)


@FAST
@given(tree=trees, content_type=st.sampled_from([BINARY, JSON]))
def test_any_tree_roundtrips(tree: Any, content_type: str) -> None:
    roundtrip(tree, content_type)


# Trees of the kind a component call sends: the encoder caches their headers by layout.
plain_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.text(alphabet=st.sampled_from("abxy01"), max_size=3)
    | hnp.arrays(
        st.sampled_from(["float64", "float32", "int64"]).map(np.dtype),
        hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=3),
    )
)
plain_trees = st.recursive(
    plain_leaves,
    lambda children: (
        st.dictionaries(st.sampled_from(["a", "b", "x", "$y"]), children, max_size=3)
        | st.lists(children, max_size=2)
        | st.tuples(children)
    ),
    max_leaves=8,
)


@FAST
@given(first=plain_trees, second=plain_trees)
def test_cached_headers_encode_like_the_general_path(first: Any, second: Any) -> None:
    """A body built from a cached header is byte-identical to one built from scratch, and
    layouts that differ only in types (1 vs True, shapes, dtypes) never share a header."""
    for tree in (first, second, first):
        cached = encode(tree)
        _wire_encode._LAYOUTS.clear()
        assert encode(tree) == cached
        roundtrip(tree, BINARY)


def test_header_cache_keeps_types_and_shapes_apart() -> None:
    _wire_encode._LAYOUTS.clear()
    trees = [
        {"a": 1}, {"a": True}, {"a": "1"}, {"a": None}, {"b": 1},
        {"a": np.zeros(2)}, {"a": np.zeros((1, 2))}, {"a": np.zeros(2, np.float32)},
        {"a": np.zeros(2), "b": np.ones(3)}, {"b": np.ones(3), "a": np.zeros(2)},
        {"a": []}, {"a": {}}, {"a": ["x"]}, {"a": [["x"]]}, {"a": [{}]},
    ]  # fmt: skip
    for _ in range(2):  # the second round answers every header from the cache
        for tree in trees:
            assert_same(decode(encode(tree), BINARY), tree)
    assert len(_wire_encode._LAYOUTS) == len(trees)


SMALL_BODY = encode({"a": np.arange(4.0), "b": [np.int8(3), {"$array": "x"}], "c": "text"})


@FAST
@given(
    flips=st.lists(st.tuples(st.integers(0, len(SMALL_BODY) - 1), st.integers(1, 255)), max_size=4),
    cut=st.integers(0, len(SMALL_BODY)),
    tail=st.binary(max_size=80),
)
def test_mutated_bodies_decode_or_raise_wire_format_error(
    flips: list[tuple[int, int]], cut: int, tail: bytes
) -> None:
    body = bytearray(SMALL_BODY)
    for index, mask in flips:
        body[index] ^= mask
    decodes_or_wire_error(bytes(body))
    decodes_or_wire_error(bytes(body[:cut]) + tail)
    decodes_or_wire_error(bytes(body), JSON)


@FAST
@given(length=st.integers(0, 2**64 - 1), rest=st.binary(max_size=200))
def test_random_header_lengths(length: int, rest: bytes) -> None:
    decodes_or_wire_error(MAGIC + struct.pack("<Q", length) + rest)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=8,
)
fields = json_values | st.sampled_from(DTYPES) | st.integers(-64, 256)
shapes = st.lists(st.integers(-3, 2**64), max_size=4) | fields
descriptors = (
    st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(DTYPES) | fields,
            "shape": shapes,
            "offset": fields,
            "nbytes": fields,
        }
    )
    | json_values
)
marker_trees = st.recursive(
    json_values | st.builds(lambda i: {"$array": i}, json_values | st.integers(-2, 4)),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=6,
)


@FAST
@given(
    tree=marker_trees,
    arrays=st.lists(descriptors, max_size=3),
    data=st.binary(max_size=200),
    extra=st.dictionaries(st.text(max_size=3), json_values, max_size=1),
)
def test_random_headers_decode_or_raise_wire_format_error(
    tree: Any, arrays: list[Any], data: bytes, extra: dict[str, Any]
) -> None:
    decodes_or_wire_error(craft({"tree": tree, "arrays": arrays, **extra}, data))


@FAST
@given(
    dtype=st.sampled_from(DTYPES) | st.text(max_size=8),
    shape=shapes,
    data=st.text(alphabet="AB+/=\n8", max_size=24) | json_values,
)
def test_random_json_arrays_decode_or_raise_wire_format_error(
    dtype: Any, shape: Any, data: Any
) -> None:
    body = json.dumps({"$array": {"dtype": dtype, "shape": shape, "data": data}}).encode()
    decodes_or_wire_error(body, JSON)


@FAST
@given(body=st.binary(max_size=100), content_type=st.sampled_from([BINARY, JSON]))
def test_random_bytes_decode_or_raise_wire_format_error(body: bytes, content_type: str) -> None:
    decodes_or_wire_error(body, content_type)


def test_header_caches_under_concurrent_eviction() -> None:
    """Threads encoding and decoding more layouts than the caches hold, at once: every body
    still round-trips (the bounded caches evict while other threads read and fill them)."""
    import threading

    failures: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(400):
                tree = {f"k{(seed * 1000 + i) % 700}": np.arange(i % 7, dtype=np.float64)}
                assert_same(decode(encode(tree), BINARY), tree)
        except BaseException as e:  # reported below, with the thread's own traceback
            failures.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[0]
