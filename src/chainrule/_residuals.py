"""Residual reuse: linearizations kept by `apply(..., keep=True)` under a handle.

A residual is whatever lets a backend answer `vjp`/`jvp` without a second forward pass (a JAX
vjp closure, a torch graph, a finite-difference base point). Residuals live in a per-component
LRU cache with a byte budget; an evicted or unknown handle makes the endpoint recompute, so a
handle can make a call cheaper but never changes its answer.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Handle", "Residual", "ResidualCache"]

_ids = itertools.count(1)


@dataclass(frozen=True)
class Handle:
    """Names a kept linearization; pass it as `handle=` to `jvp`/`vjp` with the same inputs."""

    id: str
    component: str

    @property
    def number(self) -> int:
        """The handle's number (ids are `h<number>`, unique in the process): how
        `chainrule.jax` names a kept linearization inside a JAX program."""
        return int(self.id[1:])

    @classmethod
    def numbered(cls, number: int, component: str) -> Handle:
        """The handle whose `number` is `number`."""
        return cls(f"h{number}", component)

    def __repr__(self) -> str:
        return f"Handle({self.id!r}, component={self.component!r})"


@dataclass
class Residual:
    """What a backend keeps: its own data, its size, the outputs and the input point."""

    data: Any
    nbytes: int
    outputs: Any
    point: Mapping[str, Any]
    memo: dict[Any, Any] = field(default_factory=dict)  # e.g. a finite-difference Jacobian
    created: float = field(default_factory=time.monotonic)
    # The validated input point (a Point) it was kept at, for callers that come back with
    # the same arrays (chainrule.jax's backward pass): it lives exactly as long as the residual.
    validated: Any = None


def _same_point(kept: Mapping[str, Any], given: Mapping[str, Any]) -> bool:
    """Whether `given` leaves are the ones the residual was computed at (identity, else value)."""
    if kept.keys() != given.keys():
        return False
    return all(a is b or np.array_equal(a, b) for a, b in ((kept[k], given[k]) for k in kept))


class ResidualCache:
    """LRU cache of residuals with a byte budget (thread-safe).

    Arguments:
        max_bytes: total size of kept residuals; the least recently used go first.
        max_entries: bound on the number of handles, whatever their size.
        ttl: seconds a residual is kept at most (None: until evicted); servers set it so
            handles that clients never use again do not linger.
    """

    def __init__(
        self, max_bytes: int = 256 * 2**20, max_entries: int = 1024, ttl: float | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.ttl = ttl
        self._entries: OrderedDict[str, Residual] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def put(self, component: str, residual: Residual) -> Handle:
        """Keep `residual`, evicting the oldest ones beyond the budget; return its handle."""
        handle = Handle(f"h{next(_ids)}", component)
        with self._lock:
            self._entries[handle.id] = residual
            self.nbytes += residual.nbytes
            self._evict()
        return handle

    def _evict(self) -> None:
        if self.ttl is not None:
            deadline = time.monotonic() - self.ttl
            while self._entries and next(iter(self._entries.values())).created < deadline:
                _, old = self._entries.popitem(last=False)
                self.nbytes -= old.nbytes
                self.evictions += 1
        while self._entries and (
            self.nbytes > self.max_bytes or len(self._entries) > self.max_entries
        ):
            _, old = self._entries.popitem(last=False)
            self.nbytes -= old.nbytes
            self.evictions += 1

    def get(self, handle: Handle | None, point: Mapping[str, Any]) -> Residual | None:
        """The residual of `handle` if it is kept and was computed at `point`, else None."""
        if handle is None:
            return None
        with self._lock:
            self._evict()
            residual = self._entries.get(handle.id)
            if residual is None or not _same_point(residual.point, point):
                self.misses += 1
                return None
            self._entries.move_to_end(handle.id)
            self.hits += 1
            return residual

    def release(self, handle: Handle) -> None:
        """Drop the residual of `handle` now (later calls with it recompute)."""
        with self._lock:
            old = self._entries.pop(handle.id, None)
            if old is not None:
                self.nbytes -= old.nbytes

    def clear(self) -> None:
        """Drop every residual."""
        with self._lock:
            self._entries.clear()
            self.nbytes = 0

    def __len__(self) -> int:
        return len(self._entries)
