"""The constants, errors and content types of the wire format, shared by both directions.

`encoder` (encoding, and the public face of the format) and `decoder` (decoding untrusted
bodies) both build on what is here: the documented constants (`MAGIC`, `ALIGNMENT`,
`MAX_DEPTH`, `MAX_NDIM`, `DTYPES`), the `WireFormatError` helper that says what is wrong,
where, and how to fix it, the negotiation of `Content-Type`/`Accept` headers, and the small
path, alignment and depth helpers that encoding and decoding must agree on. Kept apart so
that neither direction imports the other. The format itself is `docs/wire-format.md`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np

from chainrule._schema.errors import WireFormatError

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
# Builds what stands for a `$array` marker (an array, or a template slot) from its value.
MarkerHook = Callable[[Any, str], Any]


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
    exact = _MEDIA.get(header_value)
    if exact is not None:  # a bare media type (what chainrule peers send): no parsing
        return exact
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
# Shared by encoding and decoding


def _align(n: int) -> int:
    """Round `n` up to the next multiple of `ALIGNMENT`."""
    return -(-n // ALIGNMENT) * ALIGNMENT


def _child(path: str, key: str | int) -> str:
    """Tree path of a child: `a.b` for dict keys, `a[0]` for list items."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


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


def _check_text(text: str, path: str, what: str, fix: str) -> None:
    """Refuse strings UTF-8 cannot carry (lone surrogates, which a JSON `\\ud800` escape
    decodes to), naming where they are: nothing downstream could encode them, not even an
    error message."""
    if text.isascii():  # the usual case, answered without encoding
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        _fail(
            path,
            f"{what} is not valid Unicode",
            "a string encodable as UTF-8",
            f"{_describe(text)} (contains a lone surrogate)",
            fix,
        )


def _remember(cache: dict[Any, Any], key: Any, value: Any, entries: int) -> None:
    """Store `value` under `key`, dropping the oldest entries beyond `entries`.

    The caches are shared by threads (a server's workers, a client's callers): another thread
    may shrink or grow the dict while this one picks the oldest key; that is harmless here, so
    the race is ignored rather than locked.
    """
    while len(cache) >= entries:
        try:
            cache.pop(next(iter(cache)), None)
        except (RuntimeError, StopIteration):  # changed or emptied by another thread
            break
    cache[key] = value
