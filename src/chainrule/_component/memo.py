"""`LRU`: a small bounded cache, held by what it describes (a component, a backend).

Caches of chainrule live on the object whose answers they keep (a component's remembered
output shapes, a binding's call sites of one component), so they go when it goes, and each is
bounded: never a module-level table keyed by `id()`, where a new object at a reused address
could read an old one's entries.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

__all__ = ["LRU"]

V = TypeVar("V")


class LRU(Generic[V]):
    """At most `size` entries; the least recently used goes first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, V] = OrderedDict()

    def get(self, key: Hashable) -> V | None:
        value = self._items.get(key)
        if value is not None:
            # (dropped by another thread meanwhile: still a valid answer)
            with contextlib.suppress(KeyError):
                self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: V) -> V:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def __contains__(self, key: Hashable) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def values(self) -> Iterator[V]:
        return iter(list(self._items.values()))
