"""Differentiation and vmap rules of the `chainrule.jax` primitives (first order).

Registered with JAX when this module is imported (`chainrule.jax` imports it): the jvp of
`call_p` keeps the linearization and binds `jvp_p` (under a vmapped call, with the same loop
levels: each element kept its own); `jvp_p` and `vjp_p` transpose into each other; their own
jvps add a curvature term (second order, `curvature`). vmap pushes a "loop" level onto
a primitive's `levels`, or, when only the linear arguments are mapped, makes them the
innermost "batched" level (one call to a batched endpoint per loop element); the derivatives
at mapped primals of a remote component (or a backend mapping its own) get the level
"points" instead of a loop (one call at all the points, `batched=` on the endpoint). Kept apart from
the primitives (`primitives`) so each file reads as one concern: what runs on the host,
and how JAX transforms it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.interpreters import ad, batching

from chainrule._schema.errors import NotDifferentiableError

from .primitives import (
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
    # Under vmap over primals answered by one batched_apply (the innermost level "batched"),
    # a remote component's derivatives are one request at all the points too (the level
    # "points"; they recompute on the server either way), as are those of a backend that
    # maps its own (`_at_once`); any other keeps its linearization per point, and its
    # derivatives loop over the points.
    linear = levels
    if levels[-1:] == ("batched",):
        linear = (*levels[:-1], "points" if _at_once(spec) else "loop")
    keeps = levels if _at_once(spec) else linear
    if spec.keeps and keeps[-1:] != ("batched",):
        outs = call_p.bind(*primals, spec=spec, keep=True, levels=keeps, sizes=sizes)
        values, token = list(outs[:-1]), outs[-1]
    else:  # nothing kept (written derivatives; a batched apply): token 0, "recompute",
        # with no result to carry it, so XLA may drop a forward the derivatives do not read
        values = list(call_p.bind(*primals, spec=spec, keep=False, levels=keeps, sizes=sizes))
        token = jnp.zeros(sizes, TOKEN_DTYPE)
    out_avals = _batched_avals(spec.out_avals, sizes)
    tangents_out = [_tangent_zero(a) for a in out_avals]
    if wrt and spec.diff_outs:
        # A vmapped call (grad of vmap) has only loop levels: each element kept its own
        # linearization (the tokens carry the loop axes too), and the jvp loops the same way.
        tans = [tangents[i] for i in wrt]
        diff = jvp_p.bind(
            token,
            *primals,
            *tans,
            spec=spec,
            wrt=wrt,
            of=spec.diff_outs,
            levels=linear,
            sizes=sizes,
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


ad.primitive_jvps[call_p] = _call_jvp
ad.primitive_transposes[jvp_p] = _jvp_transpose
ad.primitive_transposes[vjp_p] = _vjp_transpose


# ---- vmap -----------------------------------------------------------------------------------


def _move(x: Any, d: Any, size: int) -> Any:
    if d is _NOT_MAPPED:
        return jnp.broadcast_to(x, (size, *jnp.shape(x)))
    return jnp.moveaxis(x, d, 0)


def _at_once(spec: _Spec) -> bool:
    """Whether derivatives at B points are one call (then vmap over a call's primals is one
    `batched_apply` and one derivative, recomputing): a remote component (one request), or a
    backend that maps its own derivatives (torch: `torch.func.vmap` of the vjp, measured 12×
    faster at 64 points than a kept linearization per point). Others loop over the points,
    each keeping its own linearization."""
    return spec.component.backend.name == "remote" or hasattr(spec.component.backend, "points")


def _batch_rule(prim: Prim, n_fixed: Callable[[dict[str, Any]], int]) -> Callable[..., Any]:
    """vmap: a batched endpoint when only the linear arguments are mapped; one
    `batched_apply` (the level "batched" of `call_p`) for the first vmap over a call's
    primals, unless it keeps a linearization per point (not if `_at_once`); derivatives at
    mapped primals at once if `_at_once` (the level "points"); else a loop. Every argument
    carries every level's axis (unmapped ones broadcast), so the loops of the derivatives can
    index them all."""

    def rule(args: Sequence[Any], dims: Sequence[Any], **params: Any) -> Any:
        size = next(
            jnp.shape(a)[d] for a, d in zip(args, dims, strict=True) if d is not _NOT_MAPPED
        )
        fixed = n_fixed(params)
        if prim in (jvp_p, vjp_p) and all(d is _NOT_MAPPED for d in dims[:fixed]):
            return _batched(prim, fixed, size, args, dims, params)
        moved = [_move(a, d, size) for a, d in zip(args, dims, strict=True)]
        level = "loop"
        if prim is call_p and not params["levels"] and size:
            level = "batched" if not params["keep"] or _at_once(params["spec"]) else "loop"
        elif prim in (jvp_p, vjp_p) and _at_points(params):
            level = "points"
        new = {**params, "levels": (level, *params["levels"]), "sizes": (size, *params["sizes"])}
        outs = prim.bind(*moved, **new)
        if level == "batched" and params["keep"]:
            # A batched apply keeps nothing: its tokens are 0 whatever it computed, so the
            # derivatives need not wait for it (and jit drops it where its values are unused).
            outs = [*outs[:-1], jnp.zeros_like(outs[-1])]
        return outs, [0] * len(outs)

    return rule


def _at_points(params: dict[str, Any]) -> bool:
    """Whether a derivative whose primals vmap maps now answers all the points in one
    call (the level "points", outermost): if `_at_once`, with no loop below (a
    batched level inside is the endpoint's own batch axis: jacrev, then vmap)."""
    return _at_once(params["spec"]) and all(v == "batched" for v in params["levels"])


def _batched(
    prim: Prim, fixed: int, size: int, args: Sequence[Any], dims: Sequence[Any], params: Any
) -> Any:
    """vmap over the linear arguments alone: the batched level stays innermost.

    Below loop levels (jacrev of vmap) the new axis becomes the batched level after them;
    over an existing batched level (vmap of jacrev) the two merge into one of size·B, so
    each loop element is still one call to a batched endpoint.
    """
    levels, sizes = params["levels"], params["sizes"]
    loops, loop_sizes = _loops(levels, sizes)
    at = len(loops)  # where the batched axis of the linear arguments is (or goes)
    inner = sizes[at] if len(loops) < len(levels) else 1
    linear = []
    for a, d in zip(args[fixed:], dims[fixed:], strict=True):
        x = jnp.moveaxis(a, d, at) if d is not _NOT_MAPPED else _insert(a, at, size)
        if len(loops) == len(levels):
            x = jnp.expand_dims(x, at + 1)
        linear.append(jnp.reshape(x, (*x.shape[:at], size * inner, *x.shape[at + 2 :])))
    new = {
        **params,
        "levels": (*loops, "batched"),
        "sizes": (*loop_sizes, size * inner),
    }
    outs = prim.bind(*args[:fixed], *linear, **new)
    split = [jnp.reshape(o, (*o.shape[:at], size, inner, *o.shape[at + 1 :])) for o in outs]
    if len(loops) == len(levels):
        split = [jnp.squeeze(o, at + 1) for o in split]
    return split, [at] * len(split)


def _insert(x: Any, at: int, size: int) -> Any:
    """`x` with a new axis of `size` at position `at` (an unmapped linear argument)."""
    x = jnp.expand_dims(x, at)
    return jnp.broadcast_to(x, (*x.shape[:at], size, *x.shape[at + 1 :]))


batching.primitive_batchers[call_p] = _batch_rule(call_p, lambda p: 0)
batching.primitive_batchers[jvp_p] = _batch_rule(jvp_p, lambda p: 1 + len(p["spec"].in_paths))
batching.primitive_batchers[vjp_p] = _batch_rule(vjp_p, lambda p: 1 + len(p["spec"].in_paths))
batching.primitive_batchers[hvp_p] = _batch_rule(hvp_p, lambda p: len(p["spec"].in_paths))
