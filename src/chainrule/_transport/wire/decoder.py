"""Decoding of request and response bodies (`decode`), binary and JSON.

Every body reaching here is untrusted: each header field, descriptor and `$array` object is
checked before it is used, nothing is imported or executed (no pickle), and every failure is a
`WireFormatError` naming the offending path. Binary arrays are zero-copy `np.frombuffer`
views of the body. Split from `encoder` (encoding) because validation is most of the format's
code (what binary and JSON share is in `parse`); `chainrule._transport.wire` re-exports
`decode`.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from typing import Any

import numpy as np

from chainrule._schema.errors import WireFormatError

from .format import (
    _DESCRIPTOR_KEYS,
    _HEADER_KEYS,
    _JSON_ARRAY_KEYS,
    _PREFIX,
    ALIGNMENT,
    BINARY,
    JSON,
    MAGIC,
    _align,
    _describe,
    _fail,
    _normalize,
    _remember,
)
from .parse import (
    Decoded,
    _check_dtype,
    _check_keys,
    _check_shape,
    _is_int,
    _load_json,
    _raise,
    _view,
    declared_elements,
)

__all__ = ["Decoded", "declared_elements", "decode", "decode_counted"]


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
