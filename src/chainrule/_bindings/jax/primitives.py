"""The four JAX primitives behind `chainrule.jax.call` and the host functions they run.

`chainrule.jax.call` turns a component that JAX cannot trace (PyTorch, NumPy, remote) into a
`call_p` equation; its derivatives are `jvp_p`, `vjp_p` and `hvp_p` equations (see the
`chainrule.jax` docstring for what each computes). This module holds what those primitives
are made of: the static `_Spec` of a call site (their `spec` parameter), the tokens naming a
kept linearization, the host functions run on concrete numpy arrays, and how they are
emitted (jaxlib's buffer callback, JAX's own emitter, `compat`, or `jax.pure_callback`).
The host functions run the component through its interface for bindings (`Component.at`,
`apply_at`, `run` and the per-site `Component.plan`); the flattest of them, for planned
sites outside vmap, are in `fast`. A component error raised there is carried across XLA
by `chainrule._component.carried`. Their differentiation and vmap rules live in `rules`;
`call` builds the specs and binds `call_p`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.extend as jax_extend
import jax.numpy as jnp
import numpy as np
from jax.interpreters import mlir

from chainrule._bindings.levels import run_levels
from chainrule._component import finite as _finite
from chainrule._component.carried import carry
from chainrule._component.component import Component
from chainrule._component.plan import Plan
from chainrule._component.point import Point
from chainrule._component.residuals import Handle, Residual, digest, layout
from chainrule._schema.schema import Schema
from chainrule._schema.tree import leaves, replace_leaves

from . import compat, fast
from .buffers import buffer_host, direct_host
from .points import points_host
from .settings import Settings as Settings
from .settings import configure as configure
from .settings import emitter, mode

Prim = jax_extend.core.Primitive


_TOKENED = ("jvp", "vjp", "batched_jvp", "batched_vjp")  # the endpoints given a token

# ---- the static description of one call site -----------------------------------------------


@dataclass(frozen=True, eq=False)
class _Spec:
    """Everything static about a call: the component, input/output leaves and avals."""

    component: Component
    template: Schema  # inputs with ShapeDtype leaves (static values filled in)
    in_paths: tuple[str, ...]
    in_diff: tuple[bool, ...]
    out_template: Schema | None  # outputs with ShapeDtype leaves (None: static values unknown)
    out_paths: tuple[str, ...]
    out_avals: tuple[jax.core.ShapedArray, ...]
    out_diff: tuple[bool, ...]
    key: tuple[Any, ...]

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Spec) and self.key == other.key

    def in_aval(self, i: int) -> jax.core.ShapedArray:
        leaf = _leaf(self.template, self.in_paths[i])
        return jax.core.ShapedArray(leaf.shape, leaf.dtype)

    @property
    def diff_outs(self) -> tuple[int, ...]:
        return tuple(i for i, d in enumerate(self.out_diff) if d)

    def inputs(self, arrays: Sequence[Any]) -> Schema:
        return replace_leaves(self.template, dict(zip(self.in_paths, arrays, strict=True)))

    @functools.cached_property
    def _print(self) -> tuple[bytes, tuple[int, ...]] | None:
        """What fingerprints of this site's points share (statics, dtypes and shapes are
        fixed here): the hashed text, and the order of the arrays (see
        `chainrule._component.residuals.layout`)."""
        zeros = [np.zeros(a.shape, a.dtype) for a in map(self.in_aval, range(len(self.in_paths)))]
        found = layout(self.inputs(zeros))
        if found is None:
            return None
        head, paths, _ = found
        return head, tuple(self.in_paths.index(p) for p in paths)

    def fingerprint(self, arrays: Sequence[Any]) -> bytes | None:
        """`residuals.fingerprint(self.inputs(arrays))`, without building the inputs."""
        if self._print is None:
            return None
        head, order = self._print
        return digest(head, [np.asarray(arrays[i]) for i in order])

    @functools.cached_property
    def dims(self) -> dict[str, int]:
        """The named dimensions its shapes bind (the same for every call at this site)."""
        return self.component.at(self.template).dims

    @functools.cached_property
    def shares(self) -> bool:
        """Whether the host may read XLA's buffers in place (else it gets copies): only where
        no author code gets them, which could keep one past the call, when XLA reuses the
        memory (a torch backward hook keeping its gradient): a remote component's client
        encodes them and keeps nothing."""
        return self.component.backend.name == "remote"

    @functools.cached_property
    def keeps(self) -> bool:
        """Whether a kept linearization can serve the derivatives the binding asks with a
        token (jvp, vjp, batched): not if they are written or derived from written ones
        (they never read it)."""
        impls = self.component.impls
        found = [impls[e].provenance for e in _TOKENED if e in impls]
        return not all(p == "written" or "<- written" in p for p in found)

    @functools.cached_property
    def plan(self) -> Plan | None:
        """The component's plan for this call site (flat schemas; `Component.plan`)."""
        return self.component.plan(self.template, self.in_paths, self.out_paths)

    @functools.cached_property
    def out_shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(tuple(a.shape) for a in self.out_avals)


def _leaf(instance: Schema, path: str) -> Any:
    return next(x.value for x in leaves(instance) if x.path == path)


# ---- tokens: kept linearizations crossing the JAX program as int32 scalars ------------------
#
# A token is the `number` of the residual's handle in the component's own cache (31 bits of
# its random id): no table of tokens to keep, and the residual holds its own copies of what it
# needs, so it all goes when the component's bounded cache evicts it. 0 means none. int32, not
# int64: a program whose 64-bit mode is off has no int64 values.

TOKEN_DTYPE = np.dtype(np.int32)


def _token(handle: Handle | None) -> np.ndarray:
    return np.asarray(handle.number if handle is not None else 0, TOKEN_DTYPE)


def _residual(spec: _Spec, token: Any, arrays: Sequence[np.ndarray]) -> Residual | None:
    """The residual kept under `token` if it was made at `arrays` (its fingerprint says so,
    whatever memory they are in). An unknown token (evicted, or 0) or another point gives None
    and the endpoint recomputes: slower, never wrong."""
    number = int(np.asarray(token))
    if not number:
        return None
    return spec.component.residuals.get(number, spec.fingerprint(arrays))


# ---- host functions (run on concrete numpy arrays) ------------------------------------------


def _point(spec: _Spec, arrays: Sequence[np.ndarray]) -> Point:
    # JAX fixed the shapes to the spec's: its named dimensions need no binding again.
    return spec.component.at(spec.inputs(arrays), spec.dims)


def _host_apply(spec: _Spec, keep: bool, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    if keep and not spec.keeps:  # token 0: the derivatives run from the primals
        return [*_host_apply(spec, False, arrays), _token(None)]
    plan = spec.plan
    lane = plan.lane if plan is not None else None
    if lane is not None and not _finite.active():
        assert plan is not None
        made_at = spec.fingerprint(arrays) if keep else None
        outs, residual = lane.apply(plan.inputs, arrays, spec.out_shapes, keep)
        result = [np.asarray(o, a.dtype) for o, a in zip(outs, spec.out_avals, strict=True)]
        if not keep:
            return result
        assert residual is not None
        residual.fingerprint = made_at
        result.append(_token(spec.component.residuals.put(spec.component.name, residual)))
        return result
    # The arrays come from JAX with the avals of the spec: the point needs no re-validation.
    p = _point(spec, arrays)
    out, handle = spec.component.apply_at(p, keep, spec.fingerprint(arrays) if keep else None)
    found = {x.path: x.value for x in leaves(out)}
    result = [
        np.asarray(found[path], aval.dtype)
        for path, aval in zip(spec.out_paths, spec.out_avals, strict=True)
    ]
    if keep:
        result.append(_token(handle))
    return result


def _host_batched_apply(spec: _Spec, keep: bool, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """vmap over primals: one `batched_apply` for the batch (every input carries it). It
    keeps no linearization: the tokens are 0, and a derivative at these points recomputes
    (per point)."""
    size = len(arrays[0])
    batched = list(spec.in_paths)
    found = spec.component.call("batched_apply", spec.inputs(arrays), batched=batched)
    result = [
        np.asarray(found[path], aval.dtype)
        for path, aval in zip(spec.out_paths, spec.out_avals, strict=True)
    ]
    if keep:
        result.append(np.zeros(size, TOKEN_DTYPE))
    return result


def _host_jvp(
    spec: _Spec,
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    batched: bool,
    token: Any,
    arrays: Sequence[np.ndarray],
    tangents: Sequence[np.ndarray],
) -> list[np.ndarray]:
    comp, outs = spec.component, tuple(spec.out_paths[i] for i in of)
    t = {spec.in_paths[i]: v for i, v in zip(wrt, tangents, strict=True)}
    plan = spec.plan
    if plan is not None and plan.has("jvp") and not batched and not _finite.active():
        found = plan.derivative("jvp", plan.inputs(arrays), t, outs)
        return [
            np.asarray(found[p], spec.out_avals[i].dtype) for i, p in zip(of, outs, strict=True)
        ]
    res = _residual(spec, token, arrays)
    p = _point(spec, arrays)
    result = comp.run("batched_jvp" if batched else "jvp", p, res, tangents=t, of=outs)
    return [np.asarray(result[p], spec.out_avals[i].dtype) for i, p in zip(of, outs, strict=True)]


def _host_vjp(
    spec: _Spec,
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    batched: bool,
    token: Any,
    arrays: Sequence[np.ndarray],
    cts: Sequence[np.ndarray],
) -> list[np.ndarray]:
    comp = spec.component
    c = {spec.out_paths[i]: v for i, v in zip(of, cts, strict=True)}
    paths = tuple(spec.in_paths[i] for i in wrt)
    plan = spec.plan
    if plan is not None and plan.has("vjp") and not batched and not _finite.active():
        result = plan.derivative("vjp", plan.inputs(arrays), c, paths)
        return [np.asarray(result[p], arrays[i].dtype) for i, p in zip(wrt, paths, strict=True)]
    res = _residual(spec, token, arrays)
    lane = plan.lane if plan is not None else None
    if lane is not None and not batched and not _finite.active() and lane.owns(res):
        assert res is not None
        result = lane.vjp(res, c, paths)
    else:
        p = _point(spec, arrays)
        result = comp.run("batched_vjp" if batched else "vjp", p, res, cotangents=c, wrt=paths)
    return [
        np.asarray(result[p], np.asarray(arrays[i]).dtype) for i, p in zip(wrt, paths, strict=True)
    ]


def _host_hvp(
    spec: _Spec,
    moved: tuple[int, ...],
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    args: Sequence[np.ndarray],
) -> list[np.ndarray]:
    """H·v for inputs `wrt`, H the Hessian of Σ⟨w_o, y_o⟩ over outputs `of`, v on `moved`."""
    n, m = len(spec.in_paths), len(of)
    arrays, weights, vs = args[:n], args[n : n + m], args[n + m :]
    paths = tuple(spec.in_paths[i] for i in wrt)
    result = spec.component.run(
        "hvp",
        _point(spec, arrays),
        None,
        tangents={spec.in_paths[i]: v for i, v in zip(moved, vs, strict=True)},
        cotangents={spec.out_paths[o]: w for o, w in zip(of, weights, strict=True)},
        wrt=paths,
    )
    return [
        np.asarray(result[p], np.asarray(arrays[i]).dtype) for i, p in zip(wrt, paths, strict=True)
    ]


def _host_call(host: Callable[..., list[np.ndarray]], args: Sequence[Any]) -> list[np.ndarray]:
    try:
        return host([np.asarray(x) for x in args])
    except Exception as e:
        raise carry(e) from e


def _callback(
    host: Callable[..., list[np.ndarray]], avals: Sequence[Any], args: Sequence[Any]
) -> list[Any]:
    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
    return list(jax.pure_callback(lambda *xs: _host_call(host, xs), shapes, *args))


# ---- how host callbacks are emitted -------------------------------------------------------


def _batched_avals(avals: Sequence[Any], sizes: tuple[int, ...]) -> list[Any]:
    return [jax.core.ShapedArray(sizes + tuple(a.shape), a.dtype) for a in avals]


# ---- primitives -------------------------------------------------------------------------------


def _define(
    name: str,
    host_of: Callable[..., Callable[..., list[np.ndarray]]],
    avals_of: Callable[..., list[Any]],
    fast_of: Callable[..., Callable[..., None] | None] | None = None,
) -> Prim:
    """A multiple-results primitive run by a host callback, with eager and jit paths;
    `fast_of(generic, **params)`: a planned site's own buffer callback (`fast`), if any."""
    prim = Prim(name)
    prim.multiple_results = True

    def host_for(params: dict[str, Any]) -> Callable[..., list[np.ndarray]]:
        if 0 in params["sizes"]:  # an empty batch (jacrev of a zero-size output): no call
            avals = avals_of(**params)
            return lambda args: [np.zeros(a.shape, a.dtype) for a in avals]
        return host_of(**params)

    def impl(*args: Any, **params: Any) -> list[Any]:
        host = host_for(params)
        return [jnp.asarray(x) for x in host([np.asarray(a) for a in args])]

    def abstract(*args: Any, **params: Any) -> list[Any]:
        return avals_of(**params)

    def lowered(*args: Any, **params: Any) -> list[Any]:
        return _callback(host_for(params), avals_of(**params), args)

    def buffered(*args: Any, **params: Any) -> list[Any]:
        avals = avals_of(**params)
        shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
        assert compat.BUFFER_CALLBACK is not None
        host = buffer_host(host_for(params), params["spec"].shares, len(args))
        return list(compat.BUFFER_CALLBACK(host, shapes)(*args))

    def lowering(ctx: Any, *args: Any, **params: Any) -> Any:
        if mode() == "buffer":
            direct = direct_host(host_for(params), params["spec"].shares, len(args))
            if fast_of is not None and not params["levels"]:
                direct = fast_of(direct, **params) or direct
            emitted = compat.lower_buffer_callback(ctx, direct, args)
            if emitted is not None:
                return emitted
            return mlir.lower_fun(buffered, multiple_results=True)(ctx, *args, **params)
        emit = emitter()
        if emit is None:
            return mlir.lower_fun(lowered, multiple_results=True)(ctx, *args, **params)
        host = host_for(params)
        result, _, _ = emit(
            ctx,
            lambda *xs: tuple(_host_call(host, xs)),
            None,
            list(args),
            ctx.avals_in,
            ctx.avals_out,
            has_side_effect=False,
            returns_token=False,
        )
        return result

    prim.def_impl(impl)
    prim.def_abstract_eval(abstract)
    # cacheable=False as for pure_callback: each lowering registers its own host callback.
    mlir.register_lowering(prim, lowering, cacheable=False)
    return prim


def _apply_host(spec: _Spec, keep: bool, levels: tuple[str, ...], sizes: tuple[int, ...]) -> Any:
    def host(args: list[np.ndarray], batched: bool = False) -> list[np.ndarray]:
        return _host_batched_apply(spec, keep, args) if batched else _host_apply(spec, keep, args)

    return lambda args: run_levels(host, levels, args)


def _apply_avals(spec: _Spec, keep: bool, levels: tuple[str, ...], sizes: tuple[int, ...]) -> Any:
    token = [jax.core.ShapedArray((), TOKEN_DTYPE)] if keep else []
    return _batched_avals([*spec.out_avals, *token], sizes)


call_p = _define("chainrule_call", _apply_host, _apply_avals, fast.for_apply)


def _linear_host(kind: str) -> Callable[..., Any]:
    def host_of(
        spec: _Spec,
        wrt: tuple[int, ...],
        of: tuple[int, ...],
        levels: tuple[str, ...],
        sizes: tuple[int, ...],
    ) -> Any:
        n = len(spec.in_paths)
        fn = _host_jvp if kind == "jvp" else _host_vjp

        def host(args: list[np.ndarray], batched: bool = False) -> list[np.ndarray]:
            return fn(spec, wrt, of, batched, args[0], args[1 : 1 + n], args[1 + n :])

        if "points" in levels:
            return points_host(kind, spec, wrt, of, levels)
        return lambda args: run_levels(host, levels, args)

    return host_of


def _jvp_avals(
    spec: _Spec,
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> Any:
    return _batched_avals([spec.out_avals[i] for i in of], sizes)


def _vjp_avals(
    spec: _Spec,
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> Any:
    return _batched_avals([spec.in_aval(i) for i in wrt], sizes)


jvp_p = _define("chainrule_jvp", _linear_host("jvp"), _jvp_avals, fast.for_linear("jvp"))
vjp_p = _define("chainrule_vjp", _linear_host("vjp"), _vjp_avals, fast.for_linear("vjp"))


def _hvp_host(
    spec: _Spec,
    moved: tuple[int, ...],
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> Any:
    def host(args: list[np.ndarray], batched: bool = False) -> list[np.ndarray]:
        return _host_hvp(spec, moved, wrt, of, args)

    return lambda args: run_levels(host, levels, args)


def _hvp_avals(
    spec: _Spec,
    moved: tuple[int, ...],
    wrt: tuple[int, ...],
    of: tuple[int, ...],
    levels: tuple[str, ...],
    sizes: tuple[int, ...],
) -> Any:
    return _batched_avals([spec.in_aval(i) for i in wrt], sizes)


hvp_p = _define("chainrule_hvp", _hvp_host, _hvp_avals)
