"""Wire format of request and response bodies when components are called over HTTP.

Two content types carry the same *trees* (nestings of `dict` with `str` keys, `list`,
`tuple`, `str`, `int`, `float`, `bool`, `None`, numpy arrays and numpy scalars):

- `application/x-chainrule` (`BINARY`): a magic string, a JSON header describing the tree and
  its arrays, then the raw little-endian bytes of every array at 64-byte-aligned offsets.
  Decoding is zero-copy: arrays are `np.frombuffer` views of the body.
- `application/json` (`JSON`): ordinary JSON; arrays become
  `{"$array": {"dtype": ..., "shape": ..., "data": "<base64>"}}`. Plain nested lists of
  numbers are accepted on decode and left as Python lists.

The byte-exact specification, precise enough for a client in another language, is
`docs/wire-format.md`. Nothing here imports or executes code on decode (no pickle): every
field of an untrusted body is checked before it is used, and every failure is a
`WireFormatError`.

This module encodes and is the format's public face; the constants, errors and content types
live in `format` and decoding in `decoder`, both re-exported here.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
import struct
from typing import Any

import numpy as np

from .decoder import decode
from .format import (
    _DTYPES,
    _MARKER,
    ALIGNMENT,
    BINARY,
    DTYPES,
    JSON,
    MAGIC,
    MAX_DEPTH,
    MAX_NDIM,
    ArrayHook,
    _align,
    _check_depth,
    _check_text,
    _child,
    _describe,
    _fail,
    _normalize,
    _remember,
    content_type_of,
)

__all__ = [
    "ALIGNMENT",
    "BINARY",
    "DTYPES",
    "JSON",
    "MAGIC",
    "MAX_DEPTH",
    "MAX_NDIM",
    "content_type_of",
    "decode",
    "encode",
    "encode_parts",
]


# --------------------------------------------------------------------------------------------
# Encoding


_ENCODE_FIX = "Remove or replace the surrogate code point before encoding."


def _escape_key(key: Any, path: str) -> str:
    """Wire form of a dict key: keys starting with `$` get one more `$` prepended.

    That way a user key can never be mistaken for the `$array` marker; decoding strips it.
    """
    if not isinstance(key, str):
        _fail(
            path,
            "dict key is not a string",
            "str keys only",
            f"{type(key).__name__} key {_describe(key)}",
            "Convert the key with `str(key)` before encoding.",
        )
    _check_text(key, path, "dict key", _ENCODE_FIX)
    return "$" + key if key.startswith("$") else key


# Wire name of every wire-ready dtype, keyed by the dtype itself: a dict lookup costs ~30 ns
# where `dtype.name` costs microseconds in numpy 2 (it is rebuilt on every access). A
# big-endian dtype is not equal to its little-endian key, so it takes the converting path.
_NAMES: dict[np.dtype[Any], str] = {dtype: name for name, dtype in _DTYPES.items()}


def _wire_array(value: np.ndarray | np.generic, path: str) -> np.ndarray:
    """Convert an array or numpy scalar to a C-contiguous little-endian array of a wire dtype.

    Copies only when needed (big-endian, non-contiguous or a scalar); otherwise returns the
    input's own memory.
    """
    array = np.asarray(value)
    if array.dtype in _NAMES and array.flags.c_contiguous and array.ndim <= MAX_NDIM:
        return array
    dtype = _DTYPES.get(array.dtype.name)
    if dtype is None:
        _fail(
            path,
            "unsupported array dtype",
            f"one of {', '.join(DTYPES)}",
            f"dtype {array.dtype.name!r} ({array.dtype.str})",
            "Convert it first, e.g. `arr.astype(np.float64)`; strings and objects go in the"
            " tree as `str`/`list`, not inside arrays.",
        )
    if array.ndim > MAX_NDIM:
        _fail(
            path,
            "array has too many dimensions",
            f"at most {MAX_NDIM}",
            f"{array.ndim}",
            "Reshape the array to fewer dimensions.",
        )
    return np.asarray(array, dtype=dtype, order="C")


def _lower(value: Any, path: str, depth: int, on_array: ArrayHook) -> Any:
    """Turn a tree into JSON-ready values, replacing each array by `on_array(array, path)`.

    Arguments:
        value: the (sub)tree.
        path: its path, for error messages.
        depth: how many containers enclose it.
        on_array: returns the JSON stand-in of a wire-ready array.

    Returns:
        Only `dict`, `list`, `str`, `int`, `float`, `bool` and `None`.
    """
    # Most common first (dicts, arrays); numpy scalars before int/float, which np.float64
    # subclasses; bool before int.
    if isinstance(value, dict):
        _check_depth(depth + 1, path)
        return {
            _escape_key(key, path): _lower(item, _child(path, key), depth + 1, on_array)
            for key, item in value.items()
        }
    if isinstance(value, (np.ndarray, np.generic)):
        return on_array(_wire_array(value, path), path)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        _check_text(value, path, "string", _ENCODE_FIX)
        return value
    if isinstance(value, int):
        return int(value)  # drops IntEnum and other subclasses to a plain JSON number
    if isinstance(value, float):
        if not math.isfinite(value):
            _fail(
                path,
                "non-finite float in the tree",
                "a finite number (JSON has no NaN or Infinity)",
                repr(value),
                "Wrap it in a numpy array, e.g. `np.float64(x)`, so it travels as raw bytes.",
            )
        return float(value)
    if isinstance(value, (list, tuple)):
        _check_depth(depth + 1, path)
        return [_lower(item, _child(path, i), depth + 1, on_array) for i, item in enumerate(value)]
    _fail(
        path,
        "unsupported value type",
        "dict, list, tuple, str, int, float, bool, None or a numpy array/scalar",
        f"{type(value).__module__}.{type(value).__qualname__}",
        "Convert it to one of the supported types (e.g. `np.asarray(x)` for array-likes).",
    )


# Built once: `json.dumps` with non-default options builds a new encoder on every call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _dump(document: Any) -> bytes:
    """Compact UTF-8 JSON; strings were already checked, floats are finite."""
    return _ENCODER.encode(document).encode("utf-8")


def _raw(array: np.ndarray) -> memoryview:
    """The array's bytes as a flat byte view, without copying (the array is C-contiguous)."""
    if array.size == 0:  # memoryview refuses to cast views with a zero in the shape
        return memoryview(b"")
    return memoryview(array).cast("B")  # type: ignore[arg-type]  # ndarray is a buffer


def _encode_binary(tree: Any) -> bytes:
    """Encode `tree` as `application/x-chainrule` (see `docs/wire-format.md`)."""
    # One b"".join of views: the array bytes are copied exactly once, into the result.
    return b"".join(_binary_parts(tree))


class _Uncached(Exception):
    """A tree `_layout_key` does not describe: encode it the general way."""


def _layout_key(value: Any, arrays: list[np.ndarray]) -> Any:
    """A hashable description of everything a binary header says about `value`: its keys,
    scalar values with their types, and each array's dtype and shape (the arrays themselves
    are collected into `arrays`, in the order the header lists them).

    Only the plain cases a component call makes: str-keyed dicts, lists and tuples,
    wire-ready arrays, None/bool/int/str scalars. Anything else (floats, numpy scalars, keys
    needing an escape, arrays needing a conversion) raises `_Uncached`.
    """
    kind = type(value)
    if kind is dict:
        items = []
        for key, item in value.items():
            if type(key) is not str or not key.isascii() or key.startswith("$"):
                raise _Uncached
            items.append((key, _layout_key(item, arrays)))
        return (dict, *items)
    if kind is np.ndarray:
        if value.dtype not in _NAMES or not value.flags.c_contiguous or value.ndim > MAX_NDIM:
            raise _Uncached
        arrays.append(value)
        return (np.ndarray, value.dtype, value.shape)
    if value is None or kind is bool or kind is int or (kind is str and value.isascii()):
        return (kind, value)
    if kind is list or kind is tuple:  # both travel as a JSON list
        return (list, *[_layout_key(item, arrays) for item in value])
    raise _Uncached


# Encoded headers by layout: an optimization loop sends the same layout on every call, which
# then costs one walk of the tree instead of lowering it and writing its JSON. Bounded.
_LAYOUTS: dict[Any, tuple[bytes, tuple[int, ...]]] = {}
_LAYOUT_CACHE_ENTRIES = 256


def _binary_parts(tree: Any) -> list[bytes | memoryview]:
    """The binary body as pieces: header bytes, padding, and views of the arrays' memory."""
    arrays: list[np.ndarray] = []
    try:
        key: Any = _layout_key(tree, arrays)
    except (_Uncached, RecursionError):
        key = None
    cached = _LAYOUTS.get(key) if key is not None else None
    if cached is not None:
        head, offsets = cached
    else:
        head, offsets, arrays = _binary_header(tree)  # the arrays as converted for the wire
        if key is not None and len(head) <= 4096:
            _remember(_LAYOUTS, key, (head, offsets), _LAYOUT_CACHE_ENTRIES)
    parts: list[bytes | memoryview] = [head]
    end = 0
    for array, offset in zip(arrays, offsets, strict=True):
        if offset != end:
            parts.append(bytes(offset - end))
        parts.append(_raw(array))
        end = offset + array.nbytes
    return parts


def _binary_header(tree: Any) -> tuple[bytes, tuple[int, ...], list[np.ndarray]]:
    """The header of `tree`'s binary body (magic, length, JSON, padding), the offset of each
    array in the data section, and the arrays (wire-ready) in header order."""
    arrays: list[np.ndarray] = []

    def add(array: np.ndarray, path: str) -> dict[str, int]:
        arrays.append(array)
        return {_MARKER: len(arrays) - 1}

    lowered = _lower(tree, "", 0, add)
    offsets: list[int] = []
    cursor = 0
    for array in arrays:
        offsets.append(cursor)
        cursor = _align(cursor + array.nbytes)
    descriptors = [
        {"dtype": _NAMES[a.dtype], "shape": list(a.shape), "offset": o, "nbytes": a.nbytes}
        for a, o in zip(arrays, offsets, strict=True)
    ]
    header = _dump({"tree": lowered, "arrays": descriptors})
    prefix = MAGIC + struct.pack("<Q", len(header)) + header
    return prefix + bytes(_align(len(prefix)) - len(prefix)), tuple(offsets), arrays


def encode_parts(
    tree: Any, content_type: str = BINARY, *, lists: bool = False
) -> list[bytes | memoryview]:
    """Like `encode`, but as pieces to send one after another without joining them.

    Binary bodies are returned as header bytes plus views of the arrays' own memory, so a
    large body is never copied in user space before it reaches the socket. The views are
    valid while the arrays are alive and unmodified. A JSON body's large arrays are written
    in pieces (see `_json_parts`); `lists` is `encode`'s.
    """
    if _normalize(content_type) == BINARY:
        return _binary_parts(tree)
    return _json_parts(tree, lists)


_CHUNK = 8192
"""Array elements per piece of a large array in a JSON body."""
_B64_CHUNK = 3 * 2**18  # array bytes per base64 piece (1 MiB of text; a multiple of 3)


def _listable(array: np.ndarray) -> bool:
    """Whether nested JSON lists carry `array` exactly: not complex, and finite (JSON has no
    NaN or Infinity). Other arrays stay `$array` objects in a lists answer."""
    kind = array.dtype.kind
    return kind in "biu" or (kind == "f" and bool(np.isfinite(array).all()))


def _json_parts(tree: Any, lists: bool) -> list[bytes | memoryview]:
    """Encode `tree` as `application/json`: arrays as base64 `$array` objects, or as nested
    lists where `lists` and `_listable`.

    Arrays over `_CHUNK` elements are encoded apart, in pieces, and spliced into the
    document's text at a placeholder: json's C encoder holds the GIL for a whole list (2.8 s
    for 10**6 floats on a busy machine), while between pieces the interpreter can switch
    threads, so a server encoding a large answer in a worker keeps answering the others.
    """
    large: list[list[bytes]] = []
    token = ""

    def add(array: np.ndarray, path: str) -> Any:
        nonlocal token
        as_list = lists and _listable(array)
        if array.size <= _CHUNK:
            return array.tolist() if as_list else _base64_object(array)
        large.append(_list_pieces(array) if as_list else _base64_pieces(array))
        token = token or secrets.token_hex(8)  # unguessable: no user string can pose as one
        return f"{token}:{len(large) - 1}"

    document = _ENCODER.encode(_lower(tree, "", 0, add))
    if not large:
        return [document.encode("utf-8")]
    parts: list[bytes | memoryview] = []
    for i, piece in enumerate(re.split(f'"{token}:([0-9]+)"', document)):
        parts.extend(large[int(piece)] if i % 2 else [piece.encode("utf-8")])
    return parts


def _base64_object(array: np.ndarray) -> dict[str, Any]:
    data = base64.b64encode(_raw(array)).decode("ascii")
    return {_MARKER: {"dtype": _NAMES[array.dtype], "shape": list(array.shape), "data": data}}


def _base64_pieces(array: np.ndarray) -> list[bytes]:
    """A large array's `$array` object as pieces: its head, base64 chunks, its tail."""
    head = _ENCODER.encode({"dtype": _NAMES[array.dtype], "shape": list(array.shape)})
    raw = _raw(array)
    chunks = [base64.b64encode(raw[i : i + _B64_CHUNK]) for i in range(0, len(raw), _B64_CHUNK)]
    return [f'{{"{_MARKER}":{head[:-1]},"data":"'.encode(), *chunks, b'"}}']


def _list_pieces(array: np.ndarray) -> list[bytes]:
    """A large array as nested JSON lists, in pieces of about `_CHUNK` elements."""
    if array.ndim == 0 or array.size <= _CHUNK:
        return [_ENCODER.encode(array.tolist()).encode()]
    rows = max(_CHUNK // (array[0].size or 1), 1)  # rows per piece
    pieces = [b"["]
    for start in range(0, len(array), rows):
        pieces.append(b"," if start else b"")
        if rows == 1:  # one row is itself large: split it
            pieces.extend(_list_pieces(array[start]))
        else:  # whole rows: "[..],[..]" is the block's list without its brackets
            pieces.append(_ENCODER.encode(array[start : start + rows].tolist())[1:-1].encode())
    pieces.append(b"]")
    return pieces


def _encode_json(tree: Any, lists: bool = False) -> bytes:
    """Encode `tree` as `application/json` (see `_json_parts`)."""
    return b"".join(_json_parts(tree, lists))


def encode(tree: Any, content_type: str = BINARY, *, lists: bool = False) -> bytes:
    """Encode a tree as a request or response body.

    Arguments:
        tree: nesting of `dict` (str keys), `list`, `tuple` (sent as a list), `str`, `int`,
            finite `float`, `bool`, `None`, numpy arrays and numpy scalars (sent as 0-d
            arrays) of a dtype in `DTYPES`.
        content_type: `BINARY`, `JSON`, or a raw `Content-Type`/`Accept` header value.
        lists: JSON only: arrays as nested lists of numbers (what a person reads), except
            complex arrays and arrays holding NaN or inf, which JSON numbers cannot carry:
            those stay base64 `$array` objects.

    Returns:
        The body bytes.

    Raises:
        WireFormatError: the tree holds an unsupported type or dtype, a non-str key, a
            non-finite Python float, an invalid string, or nests deeper than `MAX_DEPTH`.
    """
    if _normalize(content_type) == BINARY:
        return _encode_binary(tree)
    return _encode_json(tree, lists)
