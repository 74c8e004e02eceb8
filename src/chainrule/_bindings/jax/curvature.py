"""Second order through the `chainrule.jax` primitives: the curvature terms, by `hvp_p`.

The derivative of `vjp_p` (Jᵀ·c) as its point moves by dx adds H(c)·dx, H(c) the Hessian of
Σ⟨c_o, y_o⟩: one `hvp_p` (the component's `hvp` with output weights c), or one per row when
the cotangents are a batch (jacrev), or one per output element when those are fewer (a
Hessian of a scalar output by jacfwd(jacrev) is one hvp per column). The derivative of
`jvp_p` (J·t) adds tᵀ·H_k·dx for every output element k (one hvp each). `hvp_p` is its own
transpose (a Hessian is symmetric) and bilinear in the weights and the vector; a third
derivative (moving its point) is refused. Registered when imported (`chainrule.jax` does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad

from chainrule._schema.errors import EndpointUnavailableError

from .primitives import _batched_avals, _Spec, hvp_p, jvp_p, vjp_p
from .rules import _check_tangents, _is_zero, _loops, _nonzero, _split, _tangent_zero


def _hvp(
    spec: _Spec,
    primals: Sequence[Any],
    weights: dict[int, Any],
    dx: Sequence[Any],
    wrt: tuple[int, ...],
    what: str,
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> dict[int, Any] | None:
    """H·dx, H the Hessian of Σ⟨weights_o, y_o⟩, for inputs `wrt` (None if dx is zero).

    Every argument carries the loop axes `levels` (all loops), weights included.
    """
    moved = _check_tangents(spec, dx, what)
    if not moved or not weights:
        return None
    if "hvp" not in spec.component.endpoints:
        raise EndpointUnavailableError(
            f"{what}: second derivatives through component '{spec.component.name}' need its "
            "hvp endpoint, which it does not offer (finite-difference components have none); "
            "define one with @component.def_hvp"
        )
    of = tuple(weights)
    hv = hvp_p.bind(
        *primals,
        *[weights[o] for o in of],
        *[dx[i] for i in moved],
        spec=spec,
        moved=moved,
        wrt=wrt,
        of=of,
        levels=levels,
        sizes=sizes,
    )
    return dict(zip(wrt, hv, strict=True))


def _hvp_rows(
    spec: _Spec,
    primals: Sequence[Any],
    rows: dict[int, Any],
    dx: Sequence[Any],
    wrt: tuple[int, ...],
    what: str,
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> dict[int, Any] | None:
    """`_hvp` for each of a stack of weights (their axis after the loop axes `levels`)."""
    moved = _check_tangents(spec, dx, what)  # before vmap: a refused tangent raises as itself
    if not moved or not rows:
        return None
    at = len(levels)

    def one(weights: dict[int, Any]) -> dict[int, Any]:
        return _hvp(spec, primals, weights, dx, wrt, what, levels, sizes) or {}

    result: dict[int, Any] = jax.vmap(one, in_axes=(at,), out_axes=at)(rows)
    return result


def _basis(spec: _Spec, of: Sequence[int], lead: tuple[int, ...]) -> dict[int, Any]:
    """One weight row per element of the outputs `of` (M rows in all), after axes `lead`."""
    sizes = [int(np.prod(spec.out_avals[o].shape)) for o in of]
    rows, start = {}, 0
    for o, n in zip(of, sizes, strict=True):
        aval = spec.out_avals[o]
        eye = jnp.eye(sum(sizes), n, -start, dtype=aval.dtype)  # rows start..start+n are I
        block = jnp.reshape(eye, (-1, *aval.shape))
        rows[o] = jnp.broadcast_to(block, (*lead, *block.shape))
        start += n
    return rows


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
    """The curvature term of the derivative of a vjp along dx: H·dx for each row of output
    weights (the vjp's cotangents, with every axis of `levels`).

    Without a batched level that is one hvp. Over a batched level of B rows it is B hvps, or,
    when the outputs have fewer elements M in all, M hvps (one per output element) contracted
    with the weights: a Hessian by jacfwd(jacrev) of a scalar output costs one hvp per column.
    """
    if not _check_tangents(spec, dx, what):  # the point does not move: no curvature term
        return None
    loops, loop_sizes = _loops(levels, sizes)
    if len(loops) == len(levels):
        hv = _hvp(spec, primals, weights, dx, wrt, what, loops, loop_sizes)
        return None if hv is None else [hv.get(i) for i in wrt]
    rows = sum(int(np.prod(spec.out_avals[o].shape)) for o in weights)
    if sizes[-1] <= rows:
        hv = _hvp_rows(spec, primals, weights, dx, wrt, what, loops, loop_sizes)
        return None if hv is None else [hv.get(i) for i in wrt]
    basis = _basis(spec, tuple(weights), loop_sizes)
    hv = _hvp_rows(spec, primals, basis, dx, wrt, what, loops, loop_sizes)
    if hv is None:
        return None
    flat = [jnp.reshape(w, (*sizes, -1)) for w in weights.values()]
    w = jnp.concatenate(flat, axis=-1)  # loop sizes + (B, M)
    out = []
    for i in wrt:
        h = jnp.reshape(hv[i], (*loop_sizes, rows, -1))  # loop sizes + (M, N_i)
        term = jnp.einsum("...bm,...mn->...bn", w.astype(h.dtype), h)
        out.append(jnp.reshape(term, (*sizes, *spec.in_aval(i).shape)))
    return out


def _jvp_curvature(
    spec: _Spec,
    primals: Sequence[Any],
    dx: Sequence[Any],
    ts: Sequence[Any],
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> list[Any] | None:
    """The curvature term of the derivative of a jvp along dx: tᵀ·H_k·dx for each element k
    of the outputs `of`, by one hvp per output element (H_k·dx, then contracted with t)."""
    if not _check_tangents(spec, dx, "derivative of a jvp"):  # the point does not move
        return None
    loops, loop_sizes = _loops(levels, sizes)
    basis = _basis(spec, of, loop_sizes)
    hv = _hvp_rows(spec, primals, basis, dx, wrt, "derivative of a jvp", loops, loop_sizes)
    if hv is None:
        return None
    rows = sum(int(np.prod(spec.out_avals[o].shape)) for o in of)
    lead = (*loop_sizes, sizes[-1] if len(loops) < len(levels) else 1)
    total: Any = None
    for i, t in zip(wrt, ts, strict=True):
        h = jnp.reshape(hv[i], (*loop_sizes, rows, -1))  # loop sizes + (M, N_i)
        term = jnp.einsum("...bn,...mn->...bm", jnp.reshape(t, (*lead, -1)), h.astype(t.dtype))
        total = term if total is None else total + term
    out, start = [], 0
    for o in of:
        aval = spec.out_avals[o]
        block = total[..., start : start + int(np.prod(aval.shape))]
        out.append(jnp.reshape(block, (*sizes, *aval.shape)).astype(aval.dtype))
        start += int(np.prod(aval.shape))
    return out


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
    curvature = _jvp_curvature(spec, primals, dprimals, ts, wrt, of, levels, sizes)
    if curvature is not None:
        tan = [_add(a, b) for a, b in zip(tan, curvature, strict=True)]
    avals = _batched_avals([spec.out_avals[i] for i in of], sizes)
    return out, [_tangent_zero(a) if t is None else t for t, a in zip(tan, avals, strict=True)]


def _hvp_split(args: Sequence[Any], spec: _Spec, of: tuple[int, ...]) -> tuple[list, list, list]:
    n, m = len(spec.in_paths), len(of)
    return list(args[:n]), list(args[n : n + m]), list(args[n + m :])


def _third_order(spec: _Spec) -> EndpointUnavailableError:
    return EndpointUnavailableError(
        f"third derivatives through component '{spec.component.name}' are not supported: its "
        "hvp endpoint gives second order only; differentiate at most twice through it"
    )


def _hvp_transpose(
    cts: Sequence[Any],
    *args: Any,
    spec: _Spec,
    moved: tuple[int, ...],
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> list[Any]:
    # The Hessian of Σ⟨w, y⟩ is symmetric: the transpose of its (wrt, moved) block is the
    # (moved, wrt) block, another hvp at the same point and weights.
    primals, weights, _ = _hvp_split(args, spec, of)
    if any(ad.is_undefined_primal(w) for w in weights):
        raise _third_order(spec)
    keep = _nonzero(cts)
    avals = _batched_avals([spec.in_aval(i) for i in moved], sizes)
    if not keep:
        return [None] * (len(primals) + len(weights)) + [_tangent_zero(a) for a in avals]
    hv = hvp_p.bind(
        *primals,
        *weights,
        *[cts[k] for k in keep],
        spec=spec,
        moved=tuple(wrt[k] for k in keep),
        wrt=moved,
        of=of,
        levels=levels,
        sizes=sizes,
    )
    return [None] * (len(primals) + len(weights)) + list(hv)


def _jvp_of_hvp(
    primals_in: Sequence[Any],
    tangents_in: Sequence[Any],
    *,
    spec: _Spec,
    moved: tuple[int, ...],
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> Any:
    """hvp is bilinear in (weights, v): its derivative along those is two hvps; along the
    point it would need third derivatives."""
    params = {"spec": spec, "moved": moved, "wrt": wrt, "of": of, "levels": levels}
    out = hvp_p.bind(*primals_in, **params, sizes=sizes)
    primals, weights, vs = _hvp_split(primals_in, spec, of)
    dprimals, dweights, dvs = _hvp_split(tangents_in, spec, of)
    if _nonzero(dprimals):
        raise _third_order(spec)
    tan: list[Any] = [None] * len(wrt)
    if _nonzero(dweights):
        dw = [_instantiate(d, w) for d, w in zip(dweights, weights, strict=True)]
        tan = list(hvp_p.bind(*primals, *dw, *vs, **params, sizes=sizes))
    if _nonzero(dvs):
        dv = [_instantiate(d, v) for d, v in zip(dvs, vs, strict=True)]
        more = hvp_p.bind(*primals, *weights, *dv, **params, sizes=sizes)
        tan = [_add(a, b) for a, b in zip(tan, more, strict=True)]
    avals = _batched_avals([spec.in_aval(i) for i in wrt], sizes)
    return out, [_tangent_zero(a) if t is None else t for t, a in zip(tan, avals, strict=True)]


def _instantiate(t: Any, like: Any) -> Any:
    return jnp.zeros(jnp.shape(like), jnp.result_type(like)) if _is_zero(t) else t


ad.primitive_transposes[hvp_p] = _hvp_transpose
ad.primitive_jvps[vjp_p] = _jvp_of_vjp
ad.primitive_jvps[jvp_p] = _jvp_of_jvp
ad.primitive_jvps[hvp_p] = _jvp_of_hvp
