"""Tesseract's JSON bodies: array leaves as `{"object_type": "array", "shape", "dtype",
"data": {"buffer", "encoding"}}` (base64 of little-endian C-order bytes, or nested lists for
`json`), everything else plain JSON; and its error answers as chainrule's exceptions.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np

from chainrule._schema.errors import (
    ChainruleError,
    ComponentError,
    EndpointUnavailableError,
    TransportError,
    ValidationError,
)

from .paths import loc_path

__all__ = [
    "b64decode",
    "decode",
    "dumps",
    "encoding_of",
    "error",
    "loads",
    "read_array",
    "shapes_only",
]

# Large arrays are base64 in JSON: use the SIMD base64 and the fast JSON that
# tesseract-core's runtime installs when they are here (measured: 2-5x faster on 1e6
# float64); the standard library's otherwise. Both give the same bytes.
try:
    import pybase64 as _b64
except ImportError:  # not installed here: the standard library
    _b64 = base64
try:
    import orjson as _orjson
except ImportError:  # not installed here: the standard library
    _orjson = None


def b64decode(text: str | bytes) -> bytes:
    return _b64.b64decode(text)


def _b64encode(data: bytes) -> str:
    return _b64.b64encode(data).decode("ascii")


def loads(data: bytes | bytearray) -> Any:
    return json.loads(bytes(data)) if _orjson is None else _orjson.loads(data)


def dumps_json(tree: Any) -> bytes:
    """A JSON body (no NaN: the peer's JSON has none)."""
    if _orjson is None:
        return json.dumps(tree, allow_nan=False).encode()
    return _orjson.dumps(tree)


def _array(a: np.ndarray) -> dict[str, Any]:
    a = np.asarray(a)
    le = a.astype(a.dtype.newbyteorder("<"), copy=False) if a.dtype.byteorder == ">" else a
    buffer = _b64encode(np.ascontiguousarray(le).tobytes())
    return {
        "object_type": "array",
        "shape": list(a.shape),  # a 0-d array stays `shape: []` (the peer refuses [1])
        "dtype": a.dtype.name,
        "data": {"buffer": buffer, "encoding": "base64"},
    }


def encode(tree: Any) -> Any:
    """`tree` with every numpy array (and numpy scalar) as a base64 array leaf."""
    if isinstance(tree, np.ndarray | np.generic):
        return _array(np.asarray(tree))
    if isinstance(tree, dict):
        return {k: encode(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [encode(v) for v in tree]
    return tree


def dumps(tree: Any) -> bytes:
    return dumps_json(encode(tree))


def shapes_only(tree: Any) -> Any:
    """`tree` with each array as `{"shape", "dtype"}` (what `/abstract_eval` takes)."""
    if isinstance(tree, np.ndarray | np.generic):
        return {"shape": list(np.shape(tree)), "dtype": np.asarray(tree).dtype.name}
    if isinstance(tree, dict):
        return {k: shapes_only(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [shapes_only(v) for v in tree]
    return tree


def read_array(node: dict[str, Any]) -> np.ndarray | None:
    """A Tesseract array object (`shape`, `dtype`, `data`) as numpy, from an uncompressed
    base64 or a json buffer; None for another encoding. A malformed object raises KeyError,
    TypeError or ValueError (a bad base64 buffer's binascii.Error is a ValueError): each side
    words that for its reader (a client's TransportError, a server's 422)."""
    data, dtype, shape = node["data"], np.dtype(node["dtype"]), tuple(node["shape"])
    encoding = data.get("encoding") if isinstance(data, dict) else None
    if encoding == "base64" and data.get("compression", "none") in ("none", None):
        raw = b64decode(data["buffer"])
        return np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    if encoding == "json":
        return np.asarray(data["buffer"], dtype).reshape(shape)
    return None


def encoding_of(node: dict[str, Any]) -> tuple[Any, Any]:
    """(encoding, compression) of an array object, for messages."""
    data = node.get("data")
    data = data if isinstance(data, dict) else {}
    return data.get("encoding"), data.get("compression", "none")


def _decode_array(leaf: dict[str, Any], where: str) -> np.ndarray:
    array = read_array(leaf)
    if array is not None:
        return array
    encoding, compression = encoding_of(leaf)
    raise TransportError(
        f"{where} answered an array encoded as {encoding!r} (compression {compression!r}); "
        "this client asks for json+base64 and reads base64 or json arrays only"
    )


def decode(tree: Any, where: str) -> Any:
    """A decoded answer with each `object_type: array` leaf as a numpy array."""
    if isinstance(tree, dict):
        if tree.get("object_type") == "array":
            try:
                return _decode_array(tree, where)
            except (KeyError, TypeError, ValueError) as e:
                raise TransportError(f"{where} answered an unreadable array: {e}") from e
        return {k: decode(v, where) for k, v in tree.items()}
    if isinstance(tree, list):
        return [decode(v, where) for v in tree]
    return tree


def _detail(body: bytes) -> Any:
    try:
        return json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return None


def _snippet(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _invalid(detail: list[Any], where: str) -> ValidationError:
    errors, lines = [], []
    for item in detail:
        path = loc_path(item.get("loc", []))
        given = item.get("input")
        got = "" if isinstance(given, dict | list) else _snippet(given)  # not whole trees
        lines.append(f"{path}: {item.get('msg')}" + (f" (got {got})" if got else ""))
        errors.append({"path": path, "message": item.get("msg"), "got": got})
    more = f" (and {len(lines) - 5} more)" if len(lines) > 5 else ""
    text = "; ".join(lines[:5]) + more
    return ValidationError(f"{where} refused the request: {text}", errors=errors)


def error(status: int, body: bytes, where: str) -> ChainruleError:
    """The chainrule error for a Tesseract server's non-2xx answer to `where`."""
    detail = _detail(body)
    if status == 422 and isinstance(detail, list):
        return _invalid(detail, where)
    if status == 404:
        return EndpointUnavailableError(f"{where} is not offered by this Tesseract (HTTP 404)")
    if status == 500:
        text = body[:300].decode("utf-8", "replace")
        return ComponentError(
            f"the Tesseract at {where} failed (HTTP 500: {text}); its own code raised or its "
            "outputs did not validate. Serve it with TESSERACT_DEBUG=1 for a traceback"
        )
    text = json.dumps(detail) if detail is not None else body[:300].decode("utf-8", "replace")
    return TransportError(f"{where} answered HTTP {status}: {text}")
