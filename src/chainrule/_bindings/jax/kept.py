"""Host callbacks of a planned call site that keeps a linearization (torch's autograd graph).

Under `jit(grad)`, the forward keeps the graph its lane recorded under a token, and the vjp
answers from it: what `primitives._host_apply` and `_host_vjp` do through a lane, written
out flat as `fast` does for the sites that keep nothing. The forward's inputs are copies
made for the call (torch has no read-only tensors; the graph keeps them without copying
again: `Lane.fresh_copies`). The vjp reads XLA's primal buffers in place, only to check the
kept graph was made at these values (its fingerprint; else the generic path recomputes);
the cotangents autograd is given are copies (an author's backward hook may keep one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from chainrule._component import finite
from chainrule._component.carried import carry

from .buffers import Callback, _clear, _copy, _read_only, put

__all__ = ["kept_apply_callback", "kept_vjp_callback"]


def kept_apply_callback(spec: Any, generic: Callback) -> Callback | None:
    """`call_p(keep=True)` at `spec` (a `primitives._Spec`) through its plan's lane."""
    plan = spec.plan
    if plan is None or plan.lane is None:
        return None
    lane = plan.lane.fresh_copies()
    residuals, name = plan.component.residuals, plan.component.name
    n, m = len(spec.in_paths), len(spec.out_paths)
    fingerprint: Callable[..., bytes | None] = spec.fingerprint
    shapes, build = spec.out_shapes, plan.inputs

    def callback(ctx: Any, *buffers: Any) -> None:
        if finite.active():
            return generic(ctx, *buffers)
        arrays = [_copy(b) for b in buffers[:n]]
        try:
            made_at = fingerprint(arrays)  # before the call: the point the graph saw
            outs, residual = lane.apply(build, arrays, shapes, True)
            for i in range(m):
                put(buffers[n + i], outs[i])
            assert residual is not None
            residual.fingerprint = made_at
            np.asarray(buffers[n + m])[...] = residuals.put(name, residual).number
        except Exception as e:
            _clear(e)
            raise carry(e) from None
        return None

    return callback


def kept_vjp_callback(
    spec: Any, wrt: tuple[int, ...], of: tuple[int, ...], generic: Callback
) -> Callback | None:
    """`vjp_p` at `spec` from the graph a kept forward recorded, or, when the token names none
    kept at these values (token 0: the forward was not kept, `dce`; evicted; another point),
    from a graph recorded in this call."""
    plan = spec.plan
    if plan is None or plan.lane is None or not plan.lane.vjps:
        return None
    lane, residuals = plan.lane, plan.component.residuals
    fresh = lane.fresh_copies()
    n, k = len(spec.in_paths), len(of)
    given = tuple(spec.out_paths[o] for o in of)
    paths = tuple(spec.in_paths[i] for i in wrt)
    fingerprint: Callable[..., bytes | None] = spec.fingerprint
    shapes, build = spec.out_shapes, plan.inputs

    def callback(ctx: Any, *buffers: Any) -> None:
        if finite.active():
            return generic(ctx, *buffers)
        number = int(np.asarray(buffers[0]))
        residual = None
        if number:
            at = fingerprint([_read_only(b) for b in buffers[1 : 1 + n]])
            residual = residuals.get(number, at)
        if residual is not None and not lane.owns(residual):
            return generic(ctx, *buffers)
        cts = {given[j]: _copy(buffers[1 + n + j]) for j in range(k)}
        try:
            if residual is None:  # none kept (token 0, evicted, another point): record it now
                arrays = [_copy(b) for b in buffers[1 : 1 + n]]
                residual = fresh.apply(build, arrays, shapes, True, measure=False)[1]
                assert residual is not None
            grads = lane.vjp(residual, cts, paths)
            for i in range(len(paths)):
                put(buffers[1 + n + k + i], grads[paths[i]])
        except Exception as e:
            _clear(e)
            raise carry(e) from None
        return None

    return callback
