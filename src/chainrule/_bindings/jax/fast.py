"""Host callbacks of a planned call site: the per-call work cut to what the call needs.

At a call site with a `Plan` (flat schemas), outside vmap, on jaxlib's buffer callback, the
crossings of `jit(grad)` run here: `apply` through the backend's lane when the site keeps no
linearization (its derivatives are written, or it is not differentiated), and a `vjp` or
`jvp` the author wrote, called directly; a lane's kept linearization (torch's graph) in
`kept`. Everything else (derived derivatives, loops, `check_finite`) runs the generic host
functions in `primitives`.

At small sizes a crossing's cost is its Python work, so each callback is written out flat,
with everything static looked up once when it is made. What they keep of the generic path:
the author's code gets read-only copies of XLA's buffers, or above `LEND_BYTES` the buffers
themselves under `lending`'s check; what it returns is checked exactly against the site's
avals (else the component's own output check runs) before it is copied into XLA's result
buffers; each call is counted in `Component.calls`; its errors become chainrule's
(`dispatch.guard`) and are carried across XLA (`carried`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from chainrule._component import dispatch, finite
from chainrule._component.backends.base import Lane
from chainrule._component.carried import carry
from chainrule._component.plan import Plan

from .buffers import Callback, _clear, _copy, _counts, _fill, _pinned, _unpinned, put
from .kept import kept_apply_callback, kept_vjp_callback
from .lending import KeptBufferError, Lending

__all__ = ["LEND_BYTES", "apply_callback", "derivative_callback", "for_apply", "for_linear"]

Runner = Callable[[list[np.ndarray], Sequence[Any], Lending | None], None]
"""`run(arrays, targets, lending)`: the call at `arrays`, its answers written to `targets`."""

LEND_BYTES = 1 << 16
"""Inputs of at least this many bytes in all are lent (no copy, `lending`'s check, ~2 µs);
smaller ones are copied (cheaper than the check)."""


def _nbytes(shapes: Sequence[tuple[int, ...]], dtypes: Sequence[Any]) -> int:
    return sum(
        int(np.prod(s, dtype=np.int64)) * np.dtype(d).itemsize
        for s, d in zip(shapes, dtypes, strict=True)
    )


def apply_callback(
    plan: Plan,
    shapes: Sequence[tuple[int, ...]],
    in_avals: Sequence[Any],
    token: bool,
    generic: Callback,
) -> Callback | None:
    """`apply` through the plan's lane, keeping nothing (with `token`, a last result: token 0,
    "recompute"); `generic` when `check_finite` is on. None without a lane. A lane that lends
    runs the function on the arrays as they are; another (torch) gets fresh copies."""
    lane = plan.lane
    if lane is None:
        return None
    n, m = len(in_avals), len(shapes)
    lending = _lending(plan, "apply", plan.in_paths, in_avals) if lane.lends else None
    run = _applier(plan) if lane.lends else _through(lane.fresh_copies(), plan, shapes)

    def callback(ctx: Any, *buffers: Any) -> None:
        if finite.active():
            return generic(ctx, *buffers)
        if lending is not None:
            return _lent(lending, run, buffers[:n], buffers[n : n + m])
        arrays = [_copy(b) for b in buffers[:n]]
        try:
            run(arrays, buffers[n : n + m], None)
        except Exception as e:
            _clear(e)
            raise carry(e) from None
        if token:
            np.asarray(buffers[-1])[...] = 0
        return None

    if token and lending is not None:
        lent = callback

        def callback(ctx: Any, *buffers: Any) -> None:
            lent(ctx, *buffers)
            np.asarray(buffers[-1])[...] = 0

    return callback


def _through(lane: Lane, plan: Plan, shapes: Sequence[tuple[int, ...]]) -> Runner:
    """`run(arrays, targets)` by the lane's own apply (a lane that is given copies)."""
    build = plan.inputs

    def run(arrays: list[np.ndarray], targets: Sequence[Any], lending: Lending | None) -> None:
        outs = lane.apply(build, arrays, shapes, False)[0]
        for i in range(len(targets)):
            put(targets[i], outs[i])

    return run


def _applier(plan: Plan) -> Runner:
    """`run(arrays, targets)`: the function at `arrays`, its outputs written to `targets`; for
    a lane that lends, which computes on the arrays as they are (`fn(inputs)`)."""
    lane, comp = plan.lane, plan.component
    assert lane is not None
    fn, outputs, calls, name = comp.fn, comp.outputs, comp.calls, comp.name
    out_paths, build = plan.out_paths, plan.inputs

    def run(arrays: list[np.ndarray], targets: Sequence[Any], lending: Lending | None) -> None:
        inputs = build(arrays)
        watched = lending.watch(arrays, (inputs,)) if lending is not None else None
        calls["apply"] += 1
        try:
            out = fn(inputs)
        except Exception as e:
            raise _guarded(name, "apply", e)  # noqa: B904 (it chains `e` as its cause)
        if not _copied(out, outputs, out_paths, targets):
            _checked(plan, out, inputs, targets)
        if lending is not None:
            del out  # (it may hold a lent array: an output may be an input as it is)
            lending.settle(watched, arrays, (inputs,))

    return run


def _copied(out: Any, outputs: type, out_paths: tuple[str, ...], targets: Sequence[Any]) -> bool:
    """Copy `out`'s arrays into `targets` if they are exactly the site's; else False."""
    if type(out) is not outputs:
        return False
    found = out.__dict__
    values = [found[p] for p in out_paths]
    buffers = [np.asarray(t) for t in targets]
    for i in range(len(buffers)):
        v, t = values[i], buffers[i]
        if type(v) is not np.ndarray or v.dtype != t.dtype or v.shape != t.shape:
            return False
    for i in range(len(buffers)):
        np.copyto(buffers[i], values[i])
    return True


def _checked(plan: Plan, out: Any, inputs: Any, targets: Sequence[Any]) -> None:
    """Outputs that are not exactly the site's arrays, through the component's one check."""
    from chainrule._component.backends.base import as_outputs

    comp = plan.component
    with dispatch.guard(comp.name, Counter(), "apply"):
        out = as_outputs(out, comp.outputs, comp.name)
    checked = comp.validate_outputs(out, comp.at(inputs)).__dict__
    for target, path in zip(targets, plan.out_paths, strict=True):
        found = np.asarray(target)
        _fill(found, np.asarray(checked[path], found.dtype))


def derivative_callback(
    plan: Plan,
    endpoint: str,
    in_avals: Sequence[Any],
    given: tuple[str, ...],
    given_avals: Sequence[Any],
    paths: tuple[str, ...],
    generic: Callback,
) -> Callback | None:
    """The author's `endpoint` ("vjp": cotangents of outputs `given`, answers for inputs
    `paths`; "jvp": tangents of inputs `given`, answers for outputs `paths`) on buffers
    (token, the primals, the linear arguments); `generic` when `check_finite` is on. None if
    the author did not write it."""
    if not plan.has(endpoint):
        return None
    n, m = len(in_avals), len(given)
    role = "cotangent" if endpoint == "vjp" else "tangent"
    names = (*plan.in_paths, *(f"{role} of '{p}'" for p in given))
    lending = _lending(plan, endpoint, names, [*in_avals, *given_avals])
    run = _deriver(plan, endpoint, n, given, paths)

    def callback(ctx: Any, *buffers: Any) -> None:
        if finite.active():
            return generic(ctx, *buffers)
        # buffers[0] is the token: it never reaches author code (and is unused here).
        if lending is not None:
            return _lent(lending, run, buffers[1 : 1 + n + m], buffers[1 + n + m :])
        arrays = [_copy(b) for b in buffers[1 : 1 + n + m]]
        try:
            run(arrays, buffers[1 + n + m :], None)
        except Exception as e:
            _clear(e)
            raise carry(e) from None
        return None

    return callback


def _deriver(
    plan: Plan, endpoint: str, n: int, given: tuple[str, ...], paths: tuple[str, ...]
) -> Runner:
    build, name = plan.inputs, plan.component.name

    def run(arrays: list[np.ndarray], targets: Sequence[Any], lending: Lending | None) -> None:
        inputs = build(arrays[:n])
        linear = dict(zip(given, arrays[n:], strict=True))
        watched = lending.watch(arrays, (inputs, linear)) if lending is not None else None
        try:
            result = plan.derivative(endpoint, inputs, linear, paths)
            for i in range(len(targets)):
                put(targets[i], result[paths[i]])
        except Exception as e:
            raise _guarded(name, endpoint, e)  # noqa: B904 (it chains `e` as its cause)
        if lending is not None:
            del result  # (it may hold a lent array: the author may answer with one given)
            lending.settle(watched, arrays, (inputs, linear))

    return run


def _guarded(name: str, endpoint: str, error: Exception) -> Exception:
    """What `dispatch.guard` makes of `error` raised by the author's code (itself if none)."""
    try:
        dispatch.guard(name, Counter(), endpoint).__exit__(type(error), error, None)
    except Exception as converted:
        return converted
    return error


def _lending(
    plan: Plan, endpoint: str, names: Sequence[str], avals: Sequence[Any]
) -> Lending | None:
    shapes = [tuple(a.shape) for a in avals]
    if _nbytes(shapes, [a.dtype for a in avals]) < LEND_BYTES:
        return None
    return Lending(plan.component.name, endpoint, names)


def _lent(
    lending: Lending,
    run: Runner,
    given: Sequence[Any],
    targets: Sequence[Any],
) -> None:
    """`run` on views of (or copies of) `given`, under `lending`'s watch."""
    lent = lending.mode == "lend"  # (else copies: the author's own to keep)
    arrays = lending.take(given)
    counts = _counts(arrays)
    failed: BaseException | None = None
    try:
        run(arrays, targets, lending)
    except KeptBufferError as e:
        raise carry(e) from None
    except Exception as e:
        _clear(e)
        failed = _unpinned(e, arrays, counts) if lent else e  # (copies pin nothing of XLA's)
    if failed is None:
        return
    # Out of the except block, the original error is gone: a lent array still held now was
    # kept by the author's code, which also failed. Say both; copy from now on.
    if lent and _pinned(arrays, counts):
        lending.mode = "copy"
        failed = KeptBufferError(
            f"{type(failed).__name__}: {failed}; and component '{lending.component}' kept "
            f"an input array lent to its {lending.endpoint} past the call, whose values XLA "
            "will change: keep a copy (np.array(...)); this call site copies its inputs from now on"
        )
    raise carry(failed) from None


# ---- the factories `primitives` asks for a site's own callback (None: the generic one) ----


def for_apply(generic: Callback, spec: Any, keep: bool, **params: Any) -> Callback | None:
    """`call_p`'s callback at `spec` (a `primitives._Spec`), unless it keeps a linearization."""
    plan = spec.plan
    if plan is None:
        return None
    if keep and spec.keeps:  # a kept linearization
        return kept_apply_callback(spec, generic)
    in_avals = [spec.in_aval(i) for i in range(len(spec.in_paths))]
    return apply_callback(plan, spec.out_shapes, in_avals, keep, generic)


def for_linear(kind: str) -> Callable[..., Callback | None]:
    """The factory of `jvp_p`'s (`kind` "jvp") or `vjp_p`'s callbacks."""

    def factory(
        generic: Callback, spec: Any, wrt: tuple[int, ...], of: tuple[int, ...], **params: Any
    ) -> Callback | None:
        plan = spec.plan
        if plan is None:
            return None
        ins = tuple(spec.in_paths[i] for i in wrt)
        outs = tuple(spec.out_paths[i] for i in of)
        given, paths = (outs, ins) if kind == "vjp" else (ins, outs)
        in_avals = [spec.in_aval(i) for i in range(len(spec.in_paths))]
        linear = [spec.out_avals[i] for i in of] if kind == "vjp" else [in_avals[i] for i in wrt]
        if plan.has(kind):
            return derivative_callback(plan, kind, in_avals, given, linear, paths, generic)
        if kind == "vjp" and spec.keeps:  # from the kept linearization (torch's graph)
            return kept_vjp_callback(spec, wrt, of, generic)
        return None

    return factory
