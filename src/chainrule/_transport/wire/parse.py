"""What decoding binary and JSON bodies shares: the JSON text parser (strict: no NaN
constants, no duplicate keys), the checks of shapes, dtypes and objects, and `_raise`, which
turns a parsed JSON tree back into a request tree (keys unescaped, `$array` markers resolved).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any, NamedTuple, NoReturn

import numpy as np

from chainrule._schema.errors import WireFormatError

from .format import (
    _DTYPES,
    _INTP_MAX,
    _MARKER,
    BINARY,
    DTYPES,
    MAGIC,
    MAX_DEPTH,
    MAX_NDIM,
    MarkerHook,
    _check_depth,
    _check_text,
    _child,
    _describe,
    _fail,
)

__all__ = ["Decoded", "declared_elements"]


def declared_elements(shape: tuple[int, ...]) -> int:
    """The elements an array's shape asks for, a 0-length dimension counted as 1: what bounds
    the work a request can ask for, since a shape of (2**40, 0) costs no body bytes but a
    loop over 2**40 empty rows."""
    return math.prod(max(d, 1) for d in shape)


class Decoded(NamedTuple):
    """A decoded body and what a server needs to know of it to bound the work it asks for."""

    tree: Any
    elements: int
    """Declared elements of the arrays the body carries as arrays (binary, or `$array`
    objects), each counted by `declared_elements`; plain JSON lists are not counted (every
    number in them costs body bytes)."""
    arrays: int
    """How many arrays the body carries as arrays: 0 for a JSON body of plain lists."""


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
