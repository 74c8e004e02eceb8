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
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np

from chainrule._errors import WireFormatError

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

BINARY: str = "application/x-chainrule"
JSON: str = "application/json"

MAGIC: bytes = b"CHRULE01"
"""First 8 bytes of every binary body; the trailing `01` is the format version."""

ALIGNMENT: int = 64
"""The data section and every array start at a multiple of this many bytes from the body start."""

MAX_DEPTH: int = 64
"""Most containers (dicts and lists, array markers excluded) that may enclose one another."""

MAX_NDIM: int = 32
"""Most dimensions an array may have (numpy 1.x's limit, so every numpy can decode)."""

DTYPES: tuple[str, ...] = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "complex64",
    "complex128",
)
"""Names of the supported dtypes, as they appear in headers (numpy's `dtype.name`)."""

# Little-endian dtypes by wire name: the wire is always little-endian whatever the host.
_DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(name).newbyteorder("<") for name in DTYPES}

_MARKER = "$array"
_PREFIX = len(MAGIC) + 8  # magic + uint64 header length
_HEADER_KEYS = frozenset({"tree", "arrays"})
_DESCRIPTOR_KEYS = frozenset({"dtype", "shape", "offset", "nbytes"})
_JSON_ARRAY_KEYS = frozenset({"dtype", "shape", "data"})
_INTP_MAX = 2**63 - 1  # numpy cannot describe an array whose byte size exceeds this
_SUPPORTED = f"`{BINARY}` or `{JSON}`"

# What a media range in a Content-Type/Accept header resolves to; wildcards get the default.
_MEDIA: dict[str, str] = {
    BINARY: BINARY,
    JSON: JSON,
    "application/*": JSON,
    "*/*": JSON,
}

ArrayHook = Callable[[np.ndarray, str], Any]
MarkerHook = Callable[[Any, str], np.ndarray]


# --------------------------------------------------------------------------------------------
# Errors


def _describe(value: Any, limit: int = 80) -> str:
    """Short `repr` of an offending value, cut so one huge body cannot flood the message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(path: str, problem: str, expected: str, got: str, fix: str) -> NoReturn:
    """Raise a `WireFormatError` saying what is wrong, expected vs got, and how to fix it.

    Arguments:
        path: where the problem is: a tree path (`a.b[0]`), a header field
            (`header.arrays[1].offset`) or `body`.
        problem: what is wrong, in a few words.
        expected: what the format requires.
        got: what was found.
        fix: how to correct the body (or the value being encoded).

    Returns:
        Never; always raises.
    """
    where = path or "<root>"
    message = f"{problem} at `{where}`: expected {expected}, got {got}. {fix}"
    detail = {"path": where, "expected": expected, "got": got, "message": message}
    raise WireFormatError(message, errors=[detail])


# --------------------------------------------------------------------------------------------
# Content types


def _normalize(content_type: str) -> str:
    """Map an exact constant or a raw header value to `BINARY` or `JSON`."""
    if content_type in (BINARY, JSON):
        return content_type
    return content_type_of(content_type)


def _quality(params: str) -> float:
    """The `q` parameter of one media range; 1.0 when absent or unreadable (be lenient)."""
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value.strip())
            except ValueError:
                return 1.0
            return q if math.isfinite(q) else 1.0
    return 1.0


def content_type_of(header_value: str | None) -> str:
    """Resolve a `Content-Type` or `Accept` header value to `BINARY` or `JSON`.

    Parameters such as `charset` are ignored. In an `Accept` list the supported media range
    with the highest `q` wins (the first listed on a tie); `q=0` ranges are skipped and
    `*/*` or `application/*` mean `JSON`.

    Arguments:
        header_value: the raw header value, or `None` when the header is absent.

    Returns:
        `BINARY` or `JSON`; `JSON` when the header is missing or blank.

    Raises:
        WireFormatError: no media range names a supported type.
    """
    if header_value is None or not header_value.strip():
        return JSON
    best: str | None = None
    best_q = 0.0
    for item in header_value.split(","):
        media, _, params = item.partition(";")
        candidate = _MEDIA.get(media.strip().lower())
        q = _quality(params)
        if candidate is not None and q > best_q:
            best, best_q = candidate, q
    if best is None:
        _fail(
            "content-type",
            "unsupported content type",
            _SUPPORTED,
            _describe(header_value),
            f"Send `Content-Type: {BINARY}` (fast, zero-copy arrays) or `{JSON}`.",
        )
    return best


# --------------------------------------------------------------------------------------------
# Encoding


def _align(n: int) -> int:
    """Round `n` up to the next multiple of `ALIGNMENT`."""
    return -(-n // ALIGNMENT) * ALIGNMENT


def _child(path: str, key: str | int) -> str:
    """Tree path of a child: `a.b` for dict keys, `a[0]` for list items."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _check_text(text: str, path: str, what: str) -> None:
    """Refuse strings UTF-8 cannot carry (lone surrogates), naming where they are."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        _fail(
            path,
            f"{what} is not valid Unicode",
            "a string encodable as UTF-8",
            f"{_describe(text)} (contains a lone surrogate)",
            "Remove or replace the surrogate code point before encoding.",
        )


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
    _check_text(key, path, "dict key")
    return "$" + key if key.startswith("$") else key


def _wire_array(value: np.ndarray | np.generic, path: str) -> np.ndarray:
    """Convert an array or numpy scalar to a C-contiguous little-endian array of a wire dtype.

    Copies only when needed (big-endian, non-contiguous or a scalar); otherwise returns the
    input's own memory.
    """
    array = np.asarray(value)
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


def _check_depth(depth: int, path: str) -> None:
    """Bound nesting so a hostile or cyclic tree cannot exhaust the stack."""
    if depth > MAX_DEPTH:
        _fail(
            path,
            "tree is nested too deeply",
            f"at most {MAX_DEPTH} nested dicts/lists",
            f"more than {MAX_DEPTH} (or a reference cycle)",
            "Flatten the structure, or pack deep numeric data into a numpy array.",
        )


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
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        _check_text(value, path, "string")
        return value
    # Before int/float: np.float64 subclasses float, and numpy scalars become 0-d arrays.
    if isinstance(value, (np.ndarray, np.generic)):
        return on_array(_wire_array(value, path), path)
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
    if isinstance(value, dict):
        _check_depth(depth + 1, path)
        return {
            _escape_key(key, path): _lower(item, _child(path, key), depth + 1, on_array)
            for key, item in value.items()
        }
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


def _dump(document: Any) -> bytes:
    """Compact UTF-8 JSON; strings were already checked, floats are finite."""
    text = json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.encode("utf-8")


def _raw(array: np.ndarray) -> memoryview:
    """The array's bytes as a flat byte view, without copying (the array is C-contiguous)."""
    return array.reshape(-1).view(np.uint8).data


def _encode_binary(tree: Any) -> bytes:
    """Encode `tree` as `application/x-chainrule` (see `docs/wire-format.md`)."""
    # One b"".join of views: the array bytes are copied exactly once, into the result.
    return b"".join(_binary_parts(tree))


def _binary_parts(tree: Any) -> list[bytes | memoryview]:
    """The binary body as pieces: header bytes, padding, and views of the arrays' memory."""
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
        {"dtype": a.dtype.name, "shape": list(a.shape), "offset": o, "nbytes": a.nbytes}
        for a, o in zip(arrays, offsets, strict=True)
    ]
    header = _dump({"tree": lowered, "arrays": descriptors})
    prefix = MAGIC + struct.pack("<Q", len(header)) + header
    parts: list[bytes | memoryview] = [prefix, bytes(_align(len(prefix)) - len(prefix))]
    end = 0
    for array, offset in zip(arrays, offsets, strict=True):
        parts.append(bytes(offset - end))
        parts.append(_raw(array))
        end = offset + array.nbytes
    return parts


def encode_parts(tree: Any, content_type: str = BINARY) -> list[bytes | memoryview]:
    """Like `encode`, but as pieces to send one after another without joining them.

    Binary bodies are returned as header bytes plus views of the arrays' own memory, so a
    large body is never copied in user space before it reaches the socket. The views are
    valid while the arrays are alive and unmodified.
    """
    if _normalize(content_type) == BINARY:
        return _binary_parts(tree)
    return [_encode_json(tree)]


def _encode_json(tree: Any) -> bytes:
    """Encode `tree` as `application/json` with base64 `$array` objects."""

    def add(array: np.ndarray, path: str) -> dict[str, Any]:
        data = base64.b64encode(_raw(array)).decode("ascii")
        return {_MARKER: {"dtype": array.dtype.name, "shape": list(array.shape), "data": data}}

    return _dump(_lower(tree, "", 0, add))


def encode(tree: Any, content_type: str = BINARY) -> bytes:
    """Encode a tree as a request or response body.

    Arguments:
        tree: nesting of `dict` (str keys), `list`, `tuple` (sent as a list), `str`, `int`,
            finite `float`, `bool`, `None`, numpy arrays and numpy scalars (sent as 0-d
            arrays) of a dtype in `DTYPES`.
        content_type: `BINARY`, `JSON`, or a raw `Content-Type`/`Accept` header value.

    Returns:
        The body bytes.

    Raises:
        WireFormatError: the tree holds an unsupported type or dtype, a non-str key, a
            non-finite Python float, an invalid string, or nests deeper than `MAX_DEPTH`.
    """
    if _normalize(content_type) == BINARY:
        return _encode_binary(tree)
    return _encode_json(tree)


# --------------------------------------------------------------------------------------------
# Decoding: shared pieces


def _is_int(value: Any) -> bool:
    """A JSON integer (bool is an int subclass in Python but not a number on the wire)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _unescape_key(key: str, path: str) -> str:
    """Undo `_escape_key`: `$$x` -> `$x`; any other `$`-key is reserved and refused."""
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
    if len(result) != len(pairs):
        keys = [key for key, _ in pairs]
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        _fail(
            "body",
            "duplicate key in a JSON object",
            "unique keys",
            _describe(duplicates),
            "Send each key once per object.",
        )
    return result


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
        return json.loads(text, parse_constant=_parse_constant, object_pairs_hook=_pairs)
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


def _view(
    buffer: Any, dtype: np.dtype[Any], shape: tuple[int, ...], offset: int, nbytes: int
) -> np.ndarray:
    """Zero-copy array over `buffer[offset:offset + nbytes]` (bounds already checked)."""
    return np.frombuffer(
        buffer, dtype=dtype, count=nbytes // dtype.itemsize, offset=offset
    ).reshape(shape)


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
    if isinstance(node, float) and not math.isfinite(node):  # e.g. 1e400 overflows to inf
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


def _check_descriptor(
    descriptor: Any, index: int, data_size: int
) -> tuple[np.dtype[Any], tuple[int, ...], int, int]:
    """Validate one entry of `header.arrays` against the data section's size.

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
    if offset + nbytes > data_size:
        _fail(
            f"{path}.offset",
            "array extends past the end of the body (truncated body?)",
            f"offset + nbytes <= {data_size} (the data section's size)",
            f"{offset} + {nbytes} = {offset + nbytes}",
            "Send the whole body; check that offsets are relative to the data section.",
        )
    return dtype, shape, offset, nbytes


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
            "Encode with `chainrule._wire.encode`, or follow docs/wire-format.md." + hint,
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


def _decode_binary(body: memoryview) -> Any:
    """Decode an `application/x-chainrule` body; arrays are read-only views of `body`."""
    header_length, data_start = _read_prefix(body)
    header = _load_json(body[_PREFIX : _PREFIX + header_length], "header")
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
    data_size = len(body) - data_start
    checked = [_check_descriptor(d, i, data_size) for i, d in enumerate(descriptors)]
    end = max((offset + nbytes for _, _, offset, nbytes in checked), default=0)
    if end != data_size:
        _fail(
            "body",
            "trailing bytes after the last array",
            f"the body to end at byte {data_start + end}",
            f"{len(body)} bytes",
            "Do not pad after the last array; check header lengths and offsets.",
        )

    def resolve(index: Any, path: str) -> np.ndarray:
        if not _is_int(index) or not 0 <= index < len(checked):
            _fail(
                path,
                "array reference out of range",
                f"an integer index in [0, {len(checked)})",
                _describe(index),
                "Point each `$array` marker at an entry of `header.arrays`.",
            )
        dtype, shape, offset, nbytes = checked[index]
        return _view(body, dtype, shape, data_start + offset, nbytes)

    return _raise(fields["tree"], "", 0, resolve)


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
    return _view(raw, dtype, shape, 0, nbytes)


def _decode_json(body: memoryview) -> Any:
    """Decode an `application/json` body."""
    return _raise(_load_json(body, "body"), "", 0, _json_array)


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
    kind = _normalize(content_type)
    view = _byte_view(body, max_bytes)
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
