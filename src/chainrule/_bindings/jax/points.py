"""Derivatives at B points in one request: the host of the level "points" (`rules`).

Under `vmap` over the primals of a remote component, `call_p` sends one `batched_apply` (its
level "batched") and its derivatives one request at all the points: the endpoint with
`batched=` every input path (`chainrule._component.points`), the tangents or cotangents
stacked the same way, a batched endpoint if a batched level is inside (jacrev, then vmap).
Every argument carries the points, unmapped ones broadcast by the vmap rule. The tokens are
0 (a batched apply keeps nothing), so nothing kept is looked up: the server recomputes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from chainrule._bindings.levels import run_levels

if TYPE_CHECKING:
    from .primitives import _Spec as Spec

__all__ = ["points_host"]


def points_host(
    kind: str, spec: Spec, wrt: tuple[int, ...], of: tuple[int, ...], levels: tuple[str, ...]
) -> Callable[[list[np.ndarray]], list[np.ndarray]]:
    """The host of a derivative at B points (the level "points": every argument carries
    them): one call of the endpoint with `batched`, a batched one if a batched level is
    inside; the loops outside it as usual."""
    at = levels.index("points")
    endpoint = f"batched_{kind}" if levels[at + 1 :] == ("batched",) else kind
    fn = _host_points_jvp if kind == "jvp" else _host_points_vjp

    def host(args: list[np.ndarray], batched: bool = False) -> list[np.ndarray]:
        n = len(spec.in_paths)  # args[0]: the tokens, 0 (a batched_apply keeps nothing)
        return fn(spec, endpoint, wrt, of, args[1 : 1 + n], args[1 + n :])

    return lambda args: run_levels(host, levels[:at], args)


def _host_points_jvp(
    spec: Spec,
    endpoint: str,
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    arrays: Sequence[np.ndarray],
    tangents: Sequence[np.ndarray],
) -> list[np.ndarray]:
    outs = [spec.out_paths[i] for i in of]
    t = {spec.in_paths[i]: v for i, v in zip(wrt, tangents, strict=True)}
    found = spec.component.call(
        endpoint, spec.inputs(arrays), tangents=t, of=outs, batched=list(spec.in_paths)
    )
    return [np.asarray(found[p], spec.out_avals[i].dtype) for i, p in zip(of, outs, strict=True)]


def _host_points_vjp(
    spec: Spec,
    endpoint: str,
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    arrays: Sequence[np.ndarray],
    cts: Sequence[np.ndarray],
) -> list[np.ndarray]:
    paths = [spec.in_paths[i] for i in wrt]
    c = {spec.out_paths[i]: v for i, v in zip(of, cts, strict=True)}
    found = spec.component.call(
        endpoint, spec.inputs(arrays), cotangents=c, wrt=paths, batched=list(spec.in_paths)
    )
    return [np.asarray(found[p], arrays[i].dtype) for i, p in zip(wrt, paths, strict=True)]
