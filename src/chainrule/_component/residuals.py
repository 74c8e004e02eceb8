"""Residual reuse: linearizations kept by `apply(..., keep=True)` under a handle.

A residual is whatever lets a backend answer `vjp`/`jvp` without a second forward pass (a JAX
vjp closure, a torch graph, a finite-difference base point). Residuals live in a per-component
LRU cache with a byte budget and a time to live.

The rule that makes a handle safe: a residual is used only when the call's point provably
equals the point it was kept at, every array and static leaf by value; otherwise the endpoint
recomputes. "Provably" is a fingerprint (`fingerprint`), taken when the residual is kept and
again for each call that names it: a 128-bit xxh3 hash of the static values, the array
shapes/dtypes and the raw bytes of every array. Object identity proves nothing (the caller may
have changed the array in place since), so it is never used as a shortcut; and what a backend
keeps shares no memory with the caller's arrays, so the residual cannot change behind its
fingerprint either. Handle ids are random 128-bit strings, unique across server lifetimes: a
handle from a restarted server is unknown to the new one, which recomputes.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import pathlib
import re
import secrets
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash
from pydantic import BaseModel

from chainrule._schema import tree as _tree
from chainrule._schema.errors import ValidationError

__all__ = ["Handle", "Residual", "ResidualCache", "digest", "fingerprint", "layout"]

_HANDLE = re.compile(r"h[0-9a-f]{32}")


@dataclass(frozen=True)
class Handle:
    """Names a kept linearization; pass it as `handle=` to `jvp`/`vjp` with the same inputs.

    The id is `h` and 32 random hex digits (128 bits): unguessable, and unique across
    processes and server restarts.
    """

    id: str
    component: str
    # 31 bits of the id (see `number`), parsed once: lookups use it on every call.
    _number: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # No format check here (`parse` does it): an id that is not a handle's gets some
        # number or -1, and a lookup compares the whole id anyway.
        try:
            number = int(self.id[1:9], 16) >> 1
        except (TypeError, ValueError):
            number = -1
        object.__setattr__(self, "_number", number)

    @classmethod
    def new(cls, component: str) -> Handle:
        """A fresh handle with a random id."""
        return cls("h" + secrets.token_hex(16), component)

    @classmethod
    def parse(cls, text: Any, component: str) -> Handle:
        """The handle named by `text` (e.g. from a request), refused if it is not one."""
        if not isinstance(text, str) or not _HANDLE.fullmatch(text):
            shown = repr(text)[:60]
            message = (
                f"'handle': expected a handle returned by apply with keep (h and 32 hex "
                f"digits), got {shown}; pass that handle back unchanged, or omit it to recompute"
            )
            raise ValidationError(
                message,
                errors=[{"path": "handle", "expected": "h + 32 hex digits", "got": shown}],
            )
        return cls(text, component)

    @property
    def number(self) -> int:
        """31 bits of the id as an integer (never 0 for a kept handle): how `chainrule.jax`
        names a kept linearization inside a JAX program, where it travels as an int32 token
        (a program whose 64-bit mode is off has no int64). Numbers may repeat over time; a
        lookup by number is safe all the same, because the residual is used only when its
        fingerprint equals the call's point."""
        return self._number

    def __repr__(self) -> str:
        return f"Handle({self.id!r}, component={self.component!r})"


@dataclass(eq=False)
class Residual:
    """What a backend keeps: its own data (sharing no memory with the caller's arrays), the
    bytes it holds, the output shapes, and the fingerprint of the point it was made at."""

    data: Any
    nbytes: int
    outputs: Any  # [(output path, spec, shape, dtype)], then {path: Leaf}: shapes, no data
    fingerprint: bytes | None = None  # None: matches no point
    memo: dict[Any, Any] = field(default_factory=dict)  # e.g. a finite-difference Jacobian
    created: float = field(default_factory=time.monotonic)
    _cache: ResidualCache | None = field(default=None, repr=False)

    def remember(self, key: Any, value: Any, nbytes: int) -> None:
        """Memoize `value` (of `nbytes` bytes) under `key`, counted in the cache's budget."""
        self.memo[key] = value
        self.nbytes += nbytes
        if self._cache is not None:
            self._cache._grew(self, nbytes)


# ---- fingerprints ----------------------------------------------------------------------------

# Types whose repr gives back the value exactly (and distinguishes 1, 1.0 and True, 0.0 and
# -0.0): a static value of one of them is compared by its repr.
_EXACT = frozenset(
    {
        int,
        float,
        complex,
        str,
        bytes,
        bool,
        type(None),
        decimal.Decimal,
        fractions.Fraction,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        uuid.UUID,
        range,
        pathlib.PurePosixPath,
        pathlib.PureWindowsPath,
        pathlib.PosixPath,
        pathlib.WindowsPath,
    }
)


class _Opaque(Exception):
    """A static value that cannot be compared by value (an object of an arbitrary class)."""


def _static(value: Any) -> str:
    """A string equal for two static values exactly when they are equal by value."""
    kind = type(value)
    if kind in _EXACT:
        return f"{kind.__name__}:{value!r}"
    if kind is list or kind is tuple:
        return f"{kind.__name__}[" + ",".join(_static(v) for v in value) + "]"
    if kind is dict:  # in order: a function may iterate over it
        return "dict{" + ",".join(f"{_static(k)}={_static(v)}" for k, v in value.items()) + "}"
    if kind is set or kind is frozenset:
        return f"{kind.__name__}{{" + ",".join(sorted(_static(v) for v in value)) + "}"
    if isinstance(value, np.ndarray | np.generic) and not value.dtype.hasobject:
        array = np.ascontiguousarray(value)
        return f"ndarray:{array.dtype.str}{array.shape}:{xxhash.xxh3_128_hexdigest(array.data)}"
    if isinstance(value, enum.Enum):
        return f"{kind.__module__}.{kind.__qualname__}.{value.name}"
    if isinstance(value, BaseModel):
        return f"{kind.__module__}.{kind.__qualname__}({_static(dict(value))})"
    params = getattr(kind, "__dataclass_params__", None)
    if params is not None and params.frozen and dataclasses.is_dataclass(value):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return f"{kind.__module__}.{kind.__qualname__}({_static(fields)})"
    raise _Opaque(kind.__qualname__)


def fingerprint(inputs: BaseModel) -> bytes | None:
    """A 128-bit fingerprint of an input point: its static values, array paths, shapes and
    dtypes, and the raw bytes of every array (xxh3_128). Two points have the same fingerprint
    exactly when they are equal leaf by leaf, by value (barring a 2⁻¹²⁸ collision).

    None when a static value cannot be compared by value (an object of an arbitrary class):
    such a point matches no kept residual, so its endpoints always recompute.
    """
    found = layout(inputs)
    return None if found is None else digest(found[0], found[2])


def layout(inputs: BaseModel) -> tuple[bytes, list[str], list[np.ndarray]] | None:
    """What `fingerprint` hashes besides array bytes: a text of the static values and of each
    array's path, dtype and shape; and the arrays' paths and arrays, in hashing order.

    A caller whose statics and shapes are fixed (a framework binding's call site) can keep the
    text and paths, and hash new arrays with `digest`: the same fingerprint, less work.
    """
    flat = _tree.flat_fields(type(inputs))
    text: list[str] = []
    paths: list[str] = []
    arrays: list[np.ndarray] = []
    try:
        if flat is not None:  # the common case, in one loop (~2 µs for a small call)
            values = inputs.__dict__
            for name, spec in flat:
                value = values[name]
                if spec is not None and value is not None:
                    arrays.append(_array(name, value, text))
                    paths.append(name)
                else:
                    kind = type(value)
                    exact = kind in _EXACT
                    text.append(
                        f"{name}={kind.__name__}:{value!r}" if exact else _static_part(name, value)
                    )
        else:
            found = _tree.leaves(inputs)
            arrays = [_array(x.path, x.value, text) for x in found]
            paths = [x.path for x in found]
            text += [_static_part(p, v) for p, v in _tree.static_values(inputs)]
    except _Opaque:
        return None
    return ";".join(text).encode(), paths, arrays


def digest(head: bytes, arrays: Sequence[np.ndarray]) -> bytes:
    """xxh3_128 of `head` then the C-order bytes of each array."""
    if sum(a.nbytes for a in arrays) <= _SMALL:  # one call on one buffer beats streaming
        return xxhash.xxh3_128_digest(head + b"".join(a.tobytes() for a in arrays))
    h = xxhash.xxh3_128(head)
    for a in arrays:
        h.update(a.data if a.flags.c_contiguous else np.ascontiguousarray(a).data)
    return h.digest()


_SMALL = 1 << 16
_DTYPE_TEXT: dict[np.dtype, str] = {}  # dtype -> its text (`<f8`): `dtype.str` is slow-ish


def _array(name: str, value: Any, text: list[str]) -> np.ndarray:
    """`value` as a numpy array, its path, dtype and shape appended to `text`."""
    array = value if type(value) is np.ndarray else np.asarray(value)
    kind = _DTYPE_TEXT.get(array.dtype)
    if kind is None:
        if array.dtype.hasobject:  # references: their bytes say nothing of the values
            raise _Opaque("object array")
        kind = _DTYPE_TEXT[array.dtype] = array.dtype.str
    text.append(f"{name}:{kind}{array.shape}")
    return array


def _static_part(name: str, value: Any) -> str:
    kind = type(value)
    if kind in _EXACT:
        return f"{name}={kind.__name__}:{value!r}"
    return f"{name}={_static(value)}"


# ---- the cache -------------------------------------------------------------------------------


class ResidualCache:
    """LRU cache of residuals with a byte budget and a time to live (thread-safe).

    Arguments:
        max_bytes: total size of kept residuals; the least recently used go first.
        max_entries: bound on the number of handles, whatever their size.
        ttl: seconds a residual is kept at most, used or not (None: until evicted); servers
            set it so handles that clients never use again do not linger.
    """

    def __init__(
        self, max_bytes: int = 256 * 2**20, max_entries: int = 1024, ttl: float | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.ttl = ttl
        # By handle number: (handle id, residual), least recently used first.
        self._entries: OrderedDict[int, tuple[str, Residual]] = OrderedDict()
        self._born: OrderedDict[int, float] = OrderedDict()  # creation times, oldest first
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def put(self, component: str, residual: Residual) -> Handle:
        """Keep `residual`, evicting the oldest ones beyond the budget; return its handle."""
        with self._lock:
            handle = Handle.new(component)
            while not handle.number or handle.number in self._entries:  # 0 is "no token"
                handle = Handle.new(component)
            residual._cache = self
            self._entries[handle.number] = (handle.id, residual)
            self._born[handle.number] = residual.created
            self.nbytes += residual.nbytes
            self._evict()
        return handle

    def _drop(self, number: int) -> None:
        _, old = self._entries.pop(number)
        self._born.pop(number, None)
        old._cache = None
        self.nbytes -= old.nbytes

    def _evict(self) -> None:
        if self.ttl is not None:
            deadline = time.monotonic() - self.ttl
            while self._born and next(iter(self._born.values())) < deadline:
                self._drop(next(iter(self._born)))
                self.evictions += 1
        while self._entries and (
            self.nbytes > self.max_bytes or len(self._entries) > self.max_entries
        ):
            self._drop(next(iter(self._entries)))
            self.evictions += 1

    def _grew(self, residual: Residual, nbytes: int) -> None:
        with self._lock:
            if residual._cache is self:  # still kept
                self.nbytes += nbytes
                self._evict()

    def get(self, handle: Handle | int | None, point: BaseModel | bytes | None) -> Residual | None:
        """The residual of `handle` (or of a handle's `number`) if it is kept and was made at
        `point` (input values, or their `fingerprint`), else None: then recompute."""
        if handle is None:
            return None
        number = handle if isinstance(handle, int) else handle.number
        with self._lock:
            self._evict()
            entry = self._entries.get(number)
            if entry is None or (not isinstance(handle, int) and entry[0] != handle.id):
                self.misses += 1
                return None
        residual = entry[1]
        given = point if isinstance(point, bytes) or point is None else fingerprint(point)
        with self._lock:
            if residual.fingerprint is None or given != residual.fingerprint:
                self.misses += 1
                return None
            if number in self._entries:
                self._entries.move_to_end(number)
            self.hits += 1
        return residual

    def release(self, handle: Handle) -> None:
        """Drop the residual of `handle` now (later calls with it recompute)."""
        with self._lock:
            entry = self._entries.get(handle.number)
            if entry is not None and entry[0] == handle.id:
                self._drop(handle.number)

    def clear(self) -> None:
        """Drop every residual."""
        with self._lock:
            for number in list(self._entries):
                self._drop(number)

    def __len__(self) -> int:
        return len(self._entries)
