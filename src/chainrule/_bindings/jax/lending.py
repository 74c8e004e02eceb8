"""Lending XLA's buffers to author code, with a check that nothing keeps them.

A host callback's input buffers are XLA's: once the callback returns, XLA may reuse their
memory. Code that keeps an array it was given (a history list, a cache, a torch tensor over
it) would later read other values, silently. Copying every input makes that safe, at a cost
that is most of a small crossing (a copy is ~1 µs; at 1e6 elements, a fresh 8 MB array).

A call site therefore starts by giving its author's code copies and watching whether the
code keeps any of them: an array's reference count (numpy views and tensors over an array
hold a reference to it), and the inputs instance and the linear arguments' dict it was
handed. If nothing was kept, the site lends XLA's buffers from then on (read-only views, no
copy), still watching each call:
- an inputs instance or dict kept past the call gets copies of its arrays put in place of
  the views before the callback returns (so what was kept stays right);
- an array kept itself cannot be made safe after the fact: the call fails with an error
  naming the component, the input and the fix, and the site copies from then on. Never a
  silently wrong value.
A site whose code kept something on its first call copies for good (no error: the copies
are the code's own).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from chainrule._schema.errors import ComponentError

from .buffers import _copy, _read_only

__all__ = ["KeptBufferError", "Lending"]


class KeptBufferError(ComponentError):
    """The author's code kept an array lent to it (a `ComponentError`). It holds no view
    itself: it crosses XLA as it is, whoever still holds the kept array."""


_getrefcount = sys.getrefcount


class Lending:
    """Whether one call site's author code gets copies or XLA's buffers (see the module)."""

    __slots__ = ("component", "endpoint", "mode", "names")

    def __init__(self, component: str, endpoint: str, names: Sequence[str]) -> None:
        self.component, self.endpoint = component, endpoint
        self.names = tuple(names)  # what each array given is, for the error
        self.mode = "probe"  # then "lend" or "copy"

    def take(self, buffers: Sequence[Any]) -> list[np.ndarray]:
        """The arrays the author's code gets for `buffers`: views or copies."""
        if self.mode == "lend":
            return [_read_only(b) for b in buffers]
        return [_copy(b) for b in buffers]

    def watch(self, arrays: list[np.ndarray], holders: tuple[Any, ...]) -> Any:
        """Reference counts before the call (`holders`: the inputs instance, the dict of
        linear arguments); None when the site copies for good."""
        if self.mode == "copy":
            return None
        return _refcounts(arrays), _refcounts(holders)

    def settle(self, watched: Any, arrays: list[np.ndarray], holders: tuple[Any, ...]) -> None:
        """After the call (its results dropped): make kept holders safe, learn or check."""
        if watched is None:
            return
        counts, held = watched
        kept_holder = False
        now = _refcounts(holders)
        for i in range(len(holders)):
            if now[i] > held[i]:
                kept_holder = True
                if self.mode == "lend":
                    counts = _replace(holders[i], arrays, counts)
        now = _refcounts(arrays)
        kept = [i for i in range(len(arrays)) if now[i] > counts[i]]
        if self.mode == "probe":
            self.mode = "copy" if kept or kept_holder else "lend"
            return
        if kept:
            self.mode = "copy"
            names = ", ".join(repr(self.names[i]) for i in kept)
            raise KeptBufferError(
                f"component '{self.component}' kept {names} (given to its {self.endpoint}) past "
                "the call. chainrule lent it XLA's own buffer, which XLA reuses once the call "
                f"returns, so the kept array would later show other values. Keep a copy "
                f"instead (np.array(...)); this call site copies its inputs from now on"
            )


def _refcounts(objects: Sequence[Any]) -> list[int]:
    # By index, never through zip/enumerate: their reused result tuples hold the items.
    return [_getrefcount(objects[i]) for i in range(len(objects))]


def _replace(holder: Any, arrays: list[np.ndarray], counts: list[int]) -> list[int]:
    """Put copies in place of the lent arrays held by `holder` (an inputs instance or a dict
    kept past the call); the counts expected of the arrays afterwards."""
    fields = holder if isinstance(holder, dict) else holder.__dict__
    counts = list(counts)
    for key in list(fields):
        for i in range(len(arrays)):
            if fields[key] is arrays[i]:
                copy = np.array(arrays[i])
                copy.flags.writeable = False
                fields[key] = copy
                counts[i] -= 1
    return counts
