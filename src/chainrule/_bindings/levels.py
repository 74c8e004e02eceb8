"""Batch levels of a framework binding: a stack of leading axes over a host computation.

Under `vmap`, both bindings push a level onto the host computation of a primitive (JAX) or an
autograd Function's op (PyTorch), outermost first: `"loop"` (one call per element) or
`"batched"` (one call to a batched endpoint, the tangents or cotangents carrying the batch).
Only the innermost level may be batched. `run_levels` runs the host computation under them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["Host", "run_levels"]

Host = Callable[[list[np.ndarray], bool], list[np.ndarray]]
"""`host(args, batched)`: the results of one call; `batched`: the innermost level is batched."""


def run_levels(host: Host, levels: tuple[str, ...], args: list[np.ndarray]) -> list[np.ndarray]:
    """Run `host` over the leading axes named by `levels`; only the innermost may be batched."""
    if not levels or levels == ("batched",):
        return host(args, bool(levels))
    if levels[0] == "batched":
        raise AssertionError(f"a batched level must be innermost, got {levels}")
    rows = [run_levels(host, levels[1:], [a[b] for a in args]) for b in range(len(args[0]))]
    return [np.stack([r[k] for r in rows]) for k in range(len(rows[0]))] if rows else []
