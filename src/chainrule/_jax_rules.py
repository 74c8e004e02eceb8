"""Differentiation and vmap rules of the `chainrule.jax` primitives.

Registered with JAX when this module is imported (`chainrule.jax` imports it): the jvp of
`call_p` keeps the linearization and binds `jvp_p`; `jvp_p` and `vjp_p` transpose into each
other; their own jvps add the curvature term through `hvp_p` (second order, scalar outputs),
which is its own transpose. vmap pushes a "loop" or "batched" level onto a primitive's
`levels` parameter: "batched" when only the linear arguments are mapped (one call to a
batched endpoint), "loop" otherwise. Kept apart from the primitives (`_jax_primitives`) so
each file reads as one concern: what runs on the host, and how JAX transforms it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching

from ._errors import EndpointUnavailableError, NotDifferentiableError
from ._jax_primitives import (
    TOKEN_DTYPE,
    Prim,
    _batched_avals,
    _Spec,
    call_p,
    hvp_p,
    jvp_p,
    vjp_p,
)

_NOT_MAPPED = None  # how vmap marks an unbatched argument


# ---- differentiation rules ------------------------------------------------------------------


def _is_zero(t: Any) -> bool:
    return type(t) is ad.Zero


def _zeros_like_aval(aval: Any) -> Any:
    return jnp.zeros(aval.shape, aval.dtype)


def _tangent_zero(aval: Any) -> Any:
    return ad.Zero(aval.to_tangent_aval())


def _check_tangents(spec: _Spec, tangents: Sequence[Any], what: str) -> tuple[int, ...]:
    """Indices of differentiable inputs with nonzero tangents; an error for the others."""
    wrt = []
    for i, t in enumerate(tangents):
        if _is_zero(t) or (hasattr(t, "dtype") and t.dtype == jax.dtypes.float0):
            continue
        if not spec.in_diff[i]:
            raise NotDifferentiableError(
                f"{what}: input '{spec.in_paths[i]}' of component '{spec.component.name}' is "
                "not differentiable, but the computation differentiates with respect to it; "
                "mark it Differentiable[...] in the component's schema, or pass "
                "jax.lax.stop_gradient(value)"
            )
        wrt.append(i)
    return tuple(wrt)


def _call_jvp(
    primals: Sequence[Any],
    tangents: Sequence[Any],
    *,
    spec: _Spec,
    keep: bool,
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> Any:
    wrt = _check_tangents(spec, tangents, "jvp")
    outs = call_p.bind(*primals, spec=spec, keep=True, levels=levels, sizes=sizes)
    values, token = list(outs[:-1]), outs[-1]
    out_avals = _batched_avals(spec.out_avals, sizes)
    tangents_out = [_tangent_zero(a) for a in out_avals]
    if wrt and spec.diff_outs:
        tans = [tangents[i] for i in wrt]
        if levels:
            raise AssertionError("jvp of a batched call is handled by vmap of the jvp")
        diff = jvp_p.bind(
            token, *primals, *tans, spec=spec, wrt=wrt, of=spec.diff_outs, levels=(), sizes=()
        )
        for i, d in zip(spec.diff_outs, diff, strict=True):
            tangents_out[i] = d
    if keep:
        values.append(token)
        tangents_out.append(_tangent_zero(jax.core.ShapedArray((), TOKEN_DTYPE)))
    return values, tangents_out


def _split(args: Sequence[Any], spec: _Spec) -> tuple[Any, list[Any], list[Any]]:
    n = len(spec.in_paths)
    return args[0], list(args[1 : 1 + n]), list(args[1 + n :])


def _nonzero(values: Sequence[Any]) -> list[int]:
    return [k for k, v in enumerate(values) if not _is_zero(v)]


def _jvp_transpose(
    cts: Sequence[Any],
    *args: Any,
    spec: _Spec,
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> list[Any]:
    token, primals, _ = _split(args, spec)
    keep = _nonzero(cts)  # outputs whose cotangent is not a symbolic zero
    if not keep:
        avals = _batched_avals([spec.in_aval(i) for i in wrt], sizes)
        return [None] * (1 + len(primals)) + [ad.Zero(a.to_tangent_aval()) for a in avals]
    grads = vjp_p.bind(
        token,
        *primals,
        *[cts[k] for k in keep],
        spec=spec,
        wrt=wrt,
        of=tuple(of[k] for k in keep),
        levels=levels,
        sizes=sizes,
    )
    return [None] * (1 + len(primals)) + list(grads)


def _vjp_transpose(
    cts: Sequence[Any],
    *args: Any,
    spec: _Spec,
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> list[Any]:
    token, primals, _ = _split(args, spec)
    keep = _nonzero(cts)  # inputs whose cotangent is not a symbolic zero
    if not keep:
        avals = _batched_avals([spec.out_avals[i] for i in of], sizes)
        return [None] * (1 + len(primals)) + [ad.Zero(a.to_tangent_aval()) for a in avals]
    outs = jvp_p.bind(
        token,
        *primals,
        *[cts[k] for k in keep],
        spec=spec,
        wrt=tuple(wrt[k] for k in keep),
        of=of,
        levels=levels,
        sizes=sizes,
    )
    return [None] * (1 + len(primals)) + list(outs)


def _loops(
    levels: tuple[str, ...], sizes: tuple[int, ...]
) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The looped prefix of a batching stack (primal arguments carry only those axes)."""
    n = len(levels) - (1 if levels and levels[-1] == "batched" else 0)
    return levels[:n], sizes[:n]


def _curvature(
    spec: _Spec,
    primals: list[Any],
    dx: Sequence[Any],
    o: int,
    what: str,
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> dict[int, Any] | None:
    """H_o·dx for scalar output o, by input index, with the loop axes of the call."""
    moved = _check_tangents(spec, dx, what)
    if not moved:
        return None
    if "hvp" not in spec.component.endpoints:
        raise EndpointUnavailableError(
            f"{what}: second derivatives through component '{spec.component.name}' need its "
            "hvp endpoint, which it does not offer (finite-difference components have none); "
            "define one with @component.def_hvp"
        )
    if int(np.prod(spec.out_avals[o].shape)) != 1:
        raise EndpointUnavailableError(
            f"{what}: second derivatives through component '{spec.component.name}' are "
            f"supported for scalar outputs; '{spec.out_paths[o]}' is "
            f"{spec.out_avals[o].str_short()}"
        )
    loops, loop_sizes = _loops(levels, sizes)
    hv = hvp_p.bind(
        *primals,
        *[dx[i] for i in moved],
        spec=spec,
        wrt=moved,
        of=o,
        levels=loops,
        sizes=loop_sizes,
    )
    if len(loops) < len(levels):  # a batched (linear-only) level: insert its axis
        hv = [jnp.expand_dims(h, len(loops)) for h in hv]
    return dict(zip(moved, hv, strict=True))


def _second_order(
    spec: _Spec,
    primals: list[Any],
    dx: Sequence[Any],
    weights: dict[int, Any],
    wrt: tuple[int, ...],
    what: str,
    levels: tuple[str, ...] = (),
    sizes: tuple[int, ...] = (),
) -> list[Any] | None:
    """Σ_o weight_o · H_o·dx over scalar outputs o (the curvature term of a derivative)."""
    total: list[Any] | None = None
    for o, w in weights.items():
        hv = _curvature(spec, primals, dx, o, what, levels, sizes)
        if hv is None:
            return None
        term: list[Any] = []
        for i in wrt:
            if i not in hv:
                term.append(None)
                continue
            scale = jnp.reshape(w, tuple(sizes) + (1,) * len(spec.in_aval(i).shape))
            term.append(scale * hv[i])
        total = term if total is None else [_add(a, b) for a, b in zip(total, term, strict=True)]
    return total


def _add(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else a + b


def _jvp_of_vjp(
    primals_in: Sequence[Any],
    tangents_in: Sequence[Any],
    *,
    spec: _Spec,
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> Any:
    token, primals, cts = _split(primals_in, spec)
    _, dprimals, dcts = _split(tangents_in, spec)
    out = vjp_p.bind(*primals_in, spec=spec, wrt=wrt, of=of, levels=levels, sizes=sizes)
    tan: list[Any] = [None] * len(wrt)
    keep = _nonzero(dcts)
    if keep:
        tan = list(
            vjp_p.bind(
                token,
                *primals,
                *[dcts[k] for k in keep],
                spec=spec,
                wrt=wrt,
                of=tuple(of[k] for k in keep),
                levels=levels,
                sizes=sizes,
            )
        )
    weights = dict(zip(of, cts, strict=True))
    curvature = _second_order(
        spec, primals, dprimals, weights, wrt, "derivative of a vjp", levels, sizes
    )
    if curvature is not None:
        tan = [_add(a, b) for a, b in zip(tan, curvature, strict=True)]
    avals = _batched_avals([spec.in_aval(i) for i in wrt], sizes)
    return out, [_tangent_zero(a) if t is None else t for t, a in zip(tan, avals, strict=True)]


def _jvp_of_jvp(
    primals_in: Sequence[Any],
    tangents_in: Sequence[Any],
    *,
    spec: _Spec,
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> Any:
    token, primals, ts = _split(primals_in, spec)
    _, dprimals, dts = _split(tangents_in, spec)
    out = jvp_p.bind(*primals_in, spec=spec, wrt=wrt, of=of, levels=levels, sizes=sizes)
    tan: list[Any] = [None] * len(of)
    keep = _nonzero(dts)
    if keep:
        tan = list(
            jvp_p.bind(
                token,
                *primals,
                *[dts[k] for k in keep],
                spec=spec,
                wrt=tuple(wrt[k] for k in keep),
                of=of,
                levels=levels,
                sizes=sizes,
            )
        )
    for k, o in enumerate(of):
        # d(J·t)_o = tᵀ·H_o·dx for a scalar output o.
        hv = _curvature(spec, primals, dprimals, o, "derivative of a jvp", levels, sizes)
        if hv is None:
            continue
        term = sum(
            jnp.sum(hv[i] * t, axis=tuple(range(len(sizes), t.ndim)))
            for i, t in zip(wrt, ts, strict=True)
            if i in hv
        )
        shape = tuple(sizes) + tuple(spec.out_avals[o].shape)
        tan[k] = _add(tan[k], jnp.reshape(term, shape))
    avals = _batched_avals([spec.out_avals[i] for i in of], sizes)
    return out, [_tangent_zero(a) if t is None else t for t, a in zip(tan, avals, strict=True)]


def _hvp_transpose(
    cts: Sequence[Any],
    *args: Any,
    spec: _Spec,
    wrt: tuple[int, ...],
    of: int,
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> list[Any]:
    # A Hessian is symmetric: the transpose of v ↦ H·v is itself.
    n = len(spec.in_paths)
    primals = list(args[:n])
    cts = [
        _zeros_like_aval(spec.in_aval(i)) if _is_zero(c) else c
        for i, c in zip(wrt, cts, strict=True)
    ]
    return [None] * n + list(
        hvp_p.bind(*primals, *cts, spec=spec, wrt=wrt, of=of, levels=levels, sizes=sizes)
    )


ad.primitive_jvps[call_p] = _call_jvp
ad.primitive_transposes[jvp_p] = _jvp_transpose
ad.primitive_transposes[vjp_p] = _vjp_transpose
ad.primitive_transposes[hvp_p] = _hvp_transpose
ad.primitive_jvps[vjp_p] = _jvp_of_vjp
ad.primitive_jvps[jvp_p] = _jvp_of_jvp


# ---- vmap -----------------------------------------------------------------------------------


def _move(x: Any, d: Any, size: int) -> Any:
    if d is _NOT_MAPPED:
        return jnp.broadcast_to(x, (size, *jnp.shape(x)))
    return jnp.moveaxis(x, d, 0)


def _batch_rule(prim: Prim, n_fixed: Callable[[dict[str, Any]], int]) -> Callable[..., Any]:
    """vmap: a batched endpoint when only the linear arguments are mapped, else a loop."""

    def rule(args: Sequence[Any], dims: Sequence[Any], **params: Any) -> Any:
        size = next(
            jnp.shape(a)[d] for a, d in zip(args, dims, strict=True) if d is not _NOT_MAPPED
        )
        fixed = n_fixed(params)
        only_linear = all(d is _NOT_MAPPED for d in dims[:fixed])
        batched_ok = prim in (jvp_p, vjp_p) and only_linear and not params["levels"]
        if batched_ok:
            moved = list(args[:fixed]) + [
                _move(a, d, size) for a, d in zip(args[fixed:], dims[fixed:], strict=True)
            ]
            level = "batched"
        else:
            moved = [_move(a, d, size) for a, d in zip(args, dims, strict=True)]
            level = "loop"
        new = {**params, "levels": (level, *params["levels"]), "sizes": (size, *params["sizes"])}
        outs = prim.bind(*moved, **new)
        return outs, [0] * len(outs)

    return rule


batching.primitive_batchers[call_p] = _batch_rule(call_p, lambda p: 0)
batching.primitive_batchers[jvp_p] = _batch_rule(jvp_p, lambda p: 1 + len(p["spec"].in_paths))
batching.primitive_batchers[vjp_p] = _batch_rule(vjp_p, lambda p: 1 + len(p["spec"].in_paths))
batching.primitive_batchers[hvp_p] = _batch_rule(hvp_p, lambda p: len(p["spec"].in_paths))
