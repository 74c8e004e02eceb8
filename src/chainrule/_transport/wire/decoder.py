"""Decoding of request and response bodies (`decode`), binary and JSON.

Every body reaching here is untrusted: each header field, descriptor and `$array` object is
checked before it is used, nothing is imported or executed (no pickle), and every failure is a
`WireFormatError` naming the offending path. Binary arrays are zero-copy `np.frombuffer`
views of the body. Split from `encoder` (encoding) because validation is most of the format's
code; `chainrule._wire` re-exports `decode`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections import Counter
from typing import Any, NamedTuple, NoReturn

import numpy as np

from chainrule._schema.errors import WireFormatError

from .format import (
    _DESCRIPTOR_KEYS,
    _DTYPES,
    _HEADER_KEYS,
    _INTP_MAX,
    _JSON_ARRAY_KEYS,
    _MARKER,
    _PREFIX,
    ALIGNMENT,
    BINARY,
    DTYPES,
    JSON,
    MAGIC,
    MAX_DEPTH,
    MAX_NDIM,
    MarkerHook,
    _align,
    _check_depth,
    _check_text,
    _child,
    _describe,
    _fail,
    _normalize,
    _remember,
)

__all__ = ["Decoded", "declared_elements", "decode", "decode_counted"]


# --------------------------------------------------------------------------------------------
# Decoding: shared pieces


def _is_int(value: Any) -> bool:
    """A JSON integer (bool is an int subclass in Python but not a number on the wire)."""
    return isinstance(value, int) and not isinstance(value, bool)


_DECODE_FIX = (
    "Send well-formed Unicode: a character beyond U+FFFF is a surrogate pair (\\ud83d\\ude00),"
    " never half of one."
)


def _unescape_key(key: str, path: str) -> str:
    """Undo `_escape_key`: `$$x` -> `$x`; any other `$`-key is reserved and refused."""
    _check_text(key, path, "dict key", _DECODE_FIX)
    if not key.startswith("$"):
        return key
    if key.startswith("$$"):
        return key[1:]
    _fail(
        _child(path, key),
        "reserved dict key",
        "keys starting with `$` escaped by one more `$` (`$$` + key)",
        _describe(key),
        f"Write the key as {'$' + key!r}; `{_MARKER}` alone as the only key marks an array.",
    )


def _parse_constant(token: str) -> NoReturn:
    """`json.loads` hook for the non-standard `NaN`, `Infinity` and `-Infinity` tokens."""
    _fail(
        "body",
        "non-standard JSON number",
        "standard JSON (no NaN or Infinity tokens)",
        token,
        "Send non-finite values inside a base64 `$array` object, which carries raw floats.",
    )


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`json.loads` object hook that refuses duplicate keys instead of keeping the last."""
    result = dict(pairs)
    if len(result) != len(pairs):  # found in one pass: a flood of keys costs linear time
        counts = Counter(key for key, _ in pairs)
        duplicates = sorted(key for key, count in counts.items() if count > 1)
        _fail(
            "body",
            "duplicate key in a JSON object",
            "unique keys",
            _describe(duplicates),
            "Send each key once per object.",
        )
    return result


def _float(text: str) -> float:
    return float(text)


def _int(text: str) -> int:
    return int(text)


# Built once (`json.loads` with options builds a decoder per call).
_DECODER = json.JSONDecoder(parse_constant=_parse_constant, object_pairs_hook=_pairs)
# For large bodies: json's C parser holds the GIL for a whole list of numbers (1.7 s for a
# 20 MB body, measured), so a server decoding it in a worker thread still froze /health.
# A Python hook per number lets the interpreter switch threads (stalls of <0.1 s measured),
# at ~1.5x the parse time; small bodies keep the plain parser (their stall is under 1 ms).
_YIELDING_DECODER = json.JSONDecoder(
    parse_constant=_parse_constant, object_pairs_hook=_pairs, parse_float=_float, parse_int=_int
)
YIELDING_BYTES = 64 * 1024
"""JSON texts longer than this are parsed with the decoder that lets other threads run."""


def _load_json(data: memoryview, where: str) -> Any:
    """Parse strict UTF-8 JSON from untrusted bytes, turning every failure into our error."""
    try:
        text = str(data, "utf-8")
    except UnicodeDecodeError as exc:
        _fail(
            where,
            "invalid UTF-8",
            "UTF-8 text",
            f"byte {_describe(bytes(data[exc.start : exc.start + 1]))} at offset {exc.start}",
            "Encode the JSON text as UTF-8.",
        )
    try:
        return (_DECODER if len(text) <= YIELDING_BYTES else _YIELDING_DECODER).decode(text)
    except WireFormatError:  # from a hook (a duplicate key): already says what and where
        raise
    except RecursionError:
        _fail(
            where,
            "JSON is nested too deeply",
            f"at most {MAX_DEPTH} nested dicts/lists",
            "nesting beyond the parser's recursion limit",
            "Flatten the structure, or pack deep numeric data into an array.",
        )
    except ValueError as exc:  # JSONDecodeError, or an integer with too many digits
        hint = ""
        if bytes(data[: len(MAGIC)]) == MAGIC:
            hint = f" The body looks binary: send it with `Content-Type: {BINARY}`."
        _fail(where, "invalid JSON", "a valid JSON document", str(exc), "Fix the JSON." + hint)


def _check_shape(shape: Any, dtype: np.dtype[Any], path: str) -> tuple[int, ...]:
    """Validate a shape field; returns it as a tuple of non-negative ints numpy can hold."""
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        _fail(
            path,
            "invalid shape",
            "a list of non-negative integers",
            _describe(shape),
            "Send the shape as a JSON list of integers, e.g. [3, 2]; [] for a scalar.",
        )
    if len(shape) > MAX_NDIM:
        _fail(
            path,
            "shape has too many dimensions",
            f"at most {MAX_NDIM}",
            str(len(shape)),
            "Reshape the array to fewer dimensions.",
        )
    # numpy refuses shapes whose byte size overflows intp even when a dimension is 0.
    if math.prod(max(d, 1) for d in shape) * dtype.itemsize > _INTP_MAX:
        _fail(
            path,
            "shape is too large",
            f"a byte size of at most {_INTP_MAX}",
            _describe(shape),
            "Send a realistic shape.",
        )
    return tuple(shape)


def _check_dtype(name: Any, path: str) -> np.dtype[Any]:
    """Look up a dtype name from the wire; anything outside `DTYPES` is refused."""
    dtype = _DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        _fail(
            path,
            "unknown dtype",
            f"one of {', '.join(DTYPES)}",
            _describe(name),
            "Use one of the listed names (numpy's `dtype.name`); data is little-endian.",
        )
    return dtype


def _check_keys(node: Any, keys: frozenset[str], path: str, what: str) -> dict[str, Any]:
    """Require a JSON object with exactly `keys` (strict, so typos are caught, not ignored)."""
    if not isinstance(node, dict) or set(node) != keys:
        got = sorted(node) if isinstance(node, dict) else type(node).__name__
        _fail(
            path,
            f"malformed {what}",
            f"an object with exactly the keys {sorted(keys)}",
            _describe(got),
            f"Send the {what} as documented in docs/wire-format.md.",
        )
    return node


def _view(buffer: Any, dtype: np.dtype[Any], shape: tuple[int, ...], offset: int) -> np.ndarray:
    """Zero-copy array of `shape` at `buffer[offset:]` (bounds already checked; numpy
    checks them again). Read-only when `buffer` is. The ndarray constructor costs a third of
    `np.frombuffer(...).reshape(...)`."""
    return np.ndarray(shape, dtype, buffer, offset)


def _raise(node: Any, path: str, depth: int, on_marker: MarkerHook) -> Any:
    """Turn decoded JSON back into a tree: unescape keys, resolve `$array` markers.

    Arguments:
        node: parsed JSON value.
        path: its tree path, for error messages.
        depth: how many containers enclose it.
        on_marker: builds the array from the value of a `{"$array": value}` object.

    Returns:
        The tree, with arrays in place of markers.
    """
    if isinstance(node, dict):
        if _MARKER in node:
            if len(node) != 1:
                _fail(
                    path,
                    f"`{_MARKER}` marker with other keys",
                    f"`{_MARKER}` as the only key of its object",
                    _describe(sorted(node)),
                    f"Escape a user key `{_MARKER}` as `${_MARKER}`, or drop the extra keys.",
                )
            return on_marker(node[_MARKER], path)
        _check_depth(depth + 1, path)
        result: dict[str, Any] = {}
        for key, value in node.items():
            name = _unescape_key(key, path)
            result[name] = _raise(value, _child(path, name), depth + 1, on_marker)
        return result
    if isinstance(node, list):
        _check_depth(depth + 1, path)
        return [_raise(item, _child(path, i), depth + 1, on_marker) for i, item in enumerate(node)]
    if isinstance(node, str):
        _check_text(node, path, "string", _DECODE_FIX)
    elif isinstance(node, float) and not math.isfinite(node):  # e.g. 1e400 overflows to inf
        _fail(
            path,
            "number out of float64 range",
            "a finite number",
            repr(node),
            "Send non-finite or huge values inside a base64 `$array` object.",
        )
    return node


# --------------------------------------------------------------------------------------------
# Decoding: binary


Descriptor = tuple[np.dtype[Any], tuple[int, ...], int, int]


def _check_descriptor(descriptor: Any, index: int) -> Descriptor:
    """Validate one entry of `header.arrays` (its fit in the body is `_check_fits`).

    Returns:
        `(dtype, shape, offset, nbytes)`, safe to hand to `np.frombuffer`.
    """
    path = f"header.arrays[{index}]"
    fields = _check_keys(descriptor, _DESCRIPTOR_KEYS, path, "array descriptor")
    dtype = _check_dtype(fields["dtype"], f"{path}.dtype")
    shape = _check_shape(fields["shape"], dtype, f"{path}.shape")
    offset, nbytes = fields["offset"], fields["nbytes"]
    if not _is_int(nbytes) or nbytes < 0:
        _fail(
            f"{path}.nbytes",
            "invalid nbytes",
            "a non-negative integer",
            _describe(nbytes),
            "Send the array's byte length.",
        )
    expected = math.prod(shape) * dtype.itemsize
    if nbytes != expected:
        _fail(
            f"{path}.nbytes",
            "nbytes does not match shape and dtype",
            f"{expected} (product of shape {list(shape)} x itemsize {dtype.itemsize})",
            str(nbytes),
            "Make nbytes equal the product of the shape times the dtype's item size.",
        )
    if not _is_int(offset) or offset < 0 or offset % ALIGNMENT:
        _fail(
            f"{path}.offset",
            "invalid offset",
            f"a non-negative integer multiple of {ALIGNMENT}",
            _describe(offset),
            f"Start every array at a {ALIGNMENT}-byte-aligned offset within the data section.",
        )
    return dtype, shape, offset, nbytes


def _check_fits(checked: list[Descriptor], data_size: int) -> None:
    """Every array within the data section, and the section ending with the last one.
    (Both hold exactly when the data section ends where the furthest array ends.)"""
    for index, (_, _, offset, nbytes) in enumerate(checked):
        if offset + nbytes > data_size:
            _fail(
                f"header.arrays[{index}].offset",
                "array extends past the end of the body (truncated body?)",
                f"offset + nbytes <= {data_size} (the data section's size)",
                f"{offset} + {nbytes} = {offset + nbytes}",
                "Send the whole body; check that offsets are relative to the data section.",
            )
    end = max((offset + nbytes for _, _, offset, nbytes in checked), default=0)
    if end != data_size:
        _fail(
            "body",
            "trailing bytes after the last array",
            f"the data section to end at byte {end}",
            f"{data_size} bytes",
            "Do not pad after the last array; check header lengths and offsets.",
        )


def _read_prefix(body: memoryview) -> tuple[int, int]:
    """Check magic, header length and header padding.

    Returns:
        `(header_length, data_start)`.
    """
    head = bytes(body[: len(MAGIC)])
    if head != MAGIC[: len(head)]:
        hint = ""
        if head[:1] in (b"{", b"["):
            hint = f" The body looks like JSON: send it with `Content-Type: {JSON}`."
        _fail(
            "body",
            "not a chainrule binary body (wrong magic)",
            f"the first 8 bytes to be {MAGIC!r}",
            _describe(head),
            "Encode with `chainrule._transport.wire.encode`, or follow docs/wire-format.md." + hint,
        )
    if len(body) < _PREFIX:
        _fail(
            "body",
            "body truncated inside the fixed prefix (empty body?)",
            f"at least {_PREFIX} bytes (magic + uint64 header length)",
            f"{len(body)} bytes",
            "Send the whole body.",
        )
    (header_length,) = struct.unpack_from("<Q", body, len(MAGIC))
    if header_length > len(body) - _PREFIX:
        _fail(
            "body",
            "header length runs past the end of the body (truncated body?)",
            f"at most {len(body) - _PREFIX} bytes",
            str(header_length),
            "Send the whole body; the length is a little-endian uint64 at byte 8.",
        )
    data_start = _align(_PREFIX + header_length)
    if data_start > len(body):
        _fail(
            "body",
            "body truncated inside the header padding",
            f"at least {data_start} bytes",
            f"{len(body)} bytes",
            f"Pad the header with zero bytes to a multiple of {ALIGNMENT}.",
        )
    if any(bytes(body[_PREFIX + header_length : data_start])):
        _fail(
            "body",
            "non-zero header padding",
            "zero bytes between the header and the data section",
            _describe(bytes(body[_PREFIX + header_length : data_start])),
            "Pad with zero bytes (a byte flip or wrong header length is the usual cause).",
        )
    return header_length, data_start


def _read_header(data: bytes) -> tuple[Any, list[Descriptor]]:
    """The tree and the checked array descriptors of a header."""
    header = _load_json(memoryview(data), "header")
    fields = _check_keys(header, _HEADER_KEYS, "header", "header")
    descriptors = fields["arrays"]
    if not isinstance(descriptors, list):
        _fail(
            "header.arrays",
            "invalid array list",
            "a list of array descriptors",
            _describe(descriptors),
            "Send `arrays` as a JSON list ([] when there are none).",
        )
    return fields["tree"], [_check_descriptor(d, i) for i, d in enumerate(descriptors)]


class _Slot:
    """Where an array goes in a header's tree template: its checked descriptor."""

    __slots__ = ("descriptor",)

    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor


def _template(tree: Any, checked: list[Descriptor]) -> Any:
    """The header's tree with keys unescaped, scalars checked and each `$array` marker
    replaced by the `_Slot` of its checked descriptor: what every body with this header
    decodes to, arrays aside."""

    def resolve(index: Any, path: str) -> _Slot:
        if not _is_int(index) or not 0 <= index < len(checked):
            _fail(
                path,
                "array reference out of range",
                f"an integer index in [0, {len(checked)})",
                _describe(index),
                "Point each `$array` marker at an entry of `header.arrays`.",
            )
        return _Slot(checked[index])

    return _raise(tree, "", 0, resolve)


def _fill(node: Any, body: memoryview, start: int) -> Any:
    """A fresh tree from a template: new containers, a view of `body` for each slot."""
    kind = type(node)
    if kind is dict:
        return {key: _fill(value, body, start) for key, value in node.items()}
    if kind is _Slot:
        dtype, shape, offset, _ = node.descriptor
        return _view(body, dtype, shape, start + offset)
    if kind is list:
        return [_fill(item, body, start) for item in node]
    return node  # str, int, float, bool, None: immutable, shared


# Checked headers by their exact bytes: a peer making the same call again sends the same
# header, which then costs a dict lookup instead of a JSON parse, a check of every field and
# a walk resolving markers. (The header's fit in each body is still checked per body.)
# Small headers only, bounded.
_HEADERS: dict[bytes, tuple[Any, list[Descriptor], int, int]] = {}
_HEADER_CACHE_ENTRIES = 256
_HEADER_CACHE_BYTES = 4096


def declared_elements(shape: tuple[int, ...]) -> int:
    """The elements an array's shape asks for, a 0-length dimension counted as 1: what bounds
    the work a request can ask for, since a shape of (2**40, 0) costs no body bytes but a
    loop over 2**40 empty rows."""
    return math.prod(max(d, 1) for d in shape)


def _cached_header(data: bytes) -> tuple[Any, list[Descriptor], int, int]:
    """(tree template, checked descriptors, end of the furthest array, declared elements of
    all arrays) of a header."""
    found = _HEADERS.get(data)
    if found is None:
        tree, checked = _read_header(data)
        end = max((offset + nbytes for _, _, offset, nbytes in checked), default=0)
        declared = sum(declared_elements(shape) for _, shape, _, _ in checked)
        found = _template(tree, checked), checked, end, declared
        if len(data) <= _HEADER_CACHE_BYTES:
            _remember(_HEADERS, data, found, _HEADER_CACHE_ENTRIES)
    return found


def _decode_binary(body: memoryview) -> Decoded:
    """Decode an `application/x-chainrule` body; arrays are read-only views of `body`."""
    header_length, data_start = _read_prefix(body)
    found = _cached_header(bytes(body[_PREFIX : _PREFIX + header_length]))
    template, checked, end, declared = found
    if end != len(body) - data_start:
        _check_fits(checked, len(body) - data_start)  # raises, saying which array or bytes
    return Decoded(_fill(template, body, data_start), declared, len(checked))


# --------------------------------------------------------------------------------------------
# Decoding: JSON


def _json_array(spec: Any, path: str) -> np.ndarray:
    """Build the array of a JSON-format `{"$array": {dtype, shape, data}}` object."""
    fields = _check_keys(spec, _JSON_ARRAY_KEYS, path, "`$array` object")
    dtype = _check_dtype(fields["dtype"], f"{path}.dtype")
    shape = _check_shape(fields["shape"], dtype, f"{path}.shape")
    data = fields["data"]
    nbytes = math.prod(shape) * dtype.itemsize
    # Compare encoded lengths first: a huge shape is refused without decoding anything.
    if not isinstance(data, str) or len(data) != 4 * -(-nbytes // 3):
        _fail(
            f"{path}.data",
            "data length does not match shape and dtype",
            f"a base64 string of {4 * -(-nbytes // 3)} characters ({nbytes} bytes, padded)",
            f"{len(data)} characters" if isinstance(data, str) else type(data).__name__,
            "Base64-encode (standard alphabet, with `=` padding) the array's little-endian"
            " C-order bytes.",
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        _fail(
            f"{path}.data",
            "invalid base64",
            "standard base64 with `=` padding and no whitespace",
            str(exc),
            "Encode the bytes with RFC 4648 base64 (alphabet A-Z a-z 0-9 + /).",
        )
    if len(raw) != nbytes:  # padding can make a well-sized string decode short
        _fail(
            f"{path}.data",
            "decoded data has the wrong size",
            f"{nbytes} bytes",
            f"{len(raw)} bytes",
            "Base64-encode exactly the array's bytes.",
        )
    return _view(raw, dtype, shape, 0)


def _decode_json(body: memoryview) -> Decoded:
    """Decode an `application/json` body."""
    declared: list[int] = []

    def array(spec: Any, path: str) -> np.ndarray:
        built = _json_array(spec, path)
        declared.append(declared_elements(built.shape))
        return built

    tree = _raise(_load_json(body, "body"), "", 0, array)
    return Decoded(tree, sum(declared), len(declared))


# --------------------------------------------------------------------------------------------
# Decoding: entry point


def _byte_view(body: Any, max_bytes: int | None) -> memoryview:
    """A flat unsigned-byte view of `body`, copying only if it is not contiguous.

    Arguments:
        body: the raw body; anything but bytes, bytearray or memoryview is refused.
        max_bytes: refuse bodies larger than this many bytes; `None` for no limit.

    Returns:
        A 1-D memoryview of format `B` over the same memory when possible.
    """
    if not isinstance(body, (bytes, bytearray, memoryview)):
        _fail(
            "body",
            "body is not bytes",
            "bytes, bytearray or memoryview",
            type(body).__name__,
            "Pass the raw request/response body bytes.",
        )
    view = memoryview(body)
    # Size first, before any copy below: a hostile body over the limit costs nothing.
    if max_bytes is not None and view.nbytes > max_bytes:
        _fail(
            "body",
            "body too large",
            f"at most {max_bytes} bytes",
            f"{view.nbytes} bytes",
            "Send less data per call, or raise the server's body size limit.",
        )
    if view.format == "B" and view.ndim == 1:
        return view
    if view.c_contiguous:
        try:
            return view.cast("B")
        except TypeError:  # formats memoryview cannot cast (e.g. complex): copy instead
            pass
    return memoryview(view.tobytes())


class Decoded(NamedTuple):
    """A decoded body and what a server needs to know of it to bound the work it asks for."""

    tree: Any
    elements: int
    """Declared elements of the arrays the body carries as arrays (binary, or `$array`
    objects), each counted by `declared_elements`; plain JSON lists are not counted (every
    number in them costs body bytes)."""
    arrays: int
    """How many arrays the body carries as arrays: 0 for a JSON body of plain lists."""


def decode_counted(body: bytes | bytearray | memoryview, content_type: str) -> Decoded:
    """`decode`, with the declared size of the body's arrays (see `Decoded`)."""
    kind = _normalize(content_type)
    view = _byte_view(body, None)
    try:
        return _decode_binary(view) if kind == BINARY else _decode_json(view)
    except WireFormatError:
        raise
    except (ValueError, TypeError, OverflowError, IndexError, KeyError, RecursionError) as exc:
        # Defence in depth: every field is validated above, but an untrusted body must
        # never surface as anything but a WireFormatError.
        _fail(
            "body",
            "malformed body",
            f"a valid `{kind}` body",
            f"{type(exc).__name__}: {_describe(str(exc))}",
            "Follow docs/wire-format.md.",
        )


def decode(
    body: bytes | bytearray | memoryview, content_type: str, *, max_bytes: int | None = None
) -> Any:
    """Decode a request or response body into a tree.

    Binary bodies decode zero-copy: their arrays are `np.frombuffer` views of `body`
    (read-only when `body` is `bytes`), so keep `body` alive and unmodified while they are in
    use. JSON bodies leave plain nested lists as Python lists.

    Arguments:
        body: the raw body.
        content_type: `BINARY`, `JSON`, or a raw `Content-Type` header value.
        max_bytes: refuse bodies larger than this before doing any work; `None` for no limit.

    Returns:
        The tree: `dict`, `list`, `str`, `int`, `float`, `bool`, `None` and numpy arrays.

    Raises:
        WireFormatError: for every malformed, truncated, unsupported or oversized body;
            never another exception type.
    """
    if max_bytes is not None:
        _byte_view(body, max_bytes)  # refuses an oversized body before any work
    return decode_counted(body, content_type).tree
