"""`chainrule.jax.call`: components inside JAX code, under every JAX transformation.

An in-process JAX component is traced straight into the caller's program (no callback, no
copy). Any other component (PyTorch, NumPy, remote) becomes a JAX primitive:

- `call_p(*inputs)`            the outputs (a host callback to `apply`); with `keep`, also a
                               token naming the linearization kept by `apply(keep=True)`;
- `jvp_p(token, *inputs, *t)`  J·t, linear in t (host: `jvp` with the kept handle);
- `vjp_p(token, *inputs, *c)`  Jᵀ·c, linear in c (host: `vjp` with the kept handle);
- `hvp_p(*inputs, *v)`         H·v of one scalar output (second order), self-transposed.

`jvp_p` and `vjp_p` transpose into each other, so reverse mode costs one `apply(keep=True)`
and one `vjp` per component. vmap over tangents or cotangents alone maps onto the batched
endpoints (one request per batch: `jacrev` of a remote component is one call); vmap over
anything else loops inside one host callback.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.extend as jax_extend
import jax.numpy as jnp
import numpy as np
from jax.interpreters import ad, batching, mlir

from ._backends._jax import JaxBackend
from ._component import Component, Point
from ._errors import (
    EndpointUnavailableError,
    NotDifferentiableError,
    ShapesUnknownError,
    ValidationError,
)
from ._residuals import Handle
from ._schema import Schema, ShapeDtype, passthrough
from ._tree import leaves, replace_leaves, signature

__all__ = ["call", "errors", "original_error"]

Prim = jax_extend.core.Primitive
_NOT_MAPPED = None  # how vmap marks an unbatched argument


# ---- the static description of one call site -----------------------------------------------


@dataclass(frozen=True, eq=False)
class _Spec:
    """Everything static about a call: the component, input/output leaves and avals."""

    component: Component
    template: Schema  # inputs with ShapeDtype leaves (static values filled in)
    in_paths: tuple[str, ...]
    in_diff: tuple[bool, ...]
    out_template: Schema  # outputs with ShapeDtype leaves
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


def _leaf(instance: Schema, path: str) -> Any:
    return next(x.value for x in leaves(instance) if x.path == path)


_SPECS: OrderedDict[Any, _Spec] = OrderedDict()
_SHAPES: dict[Any, Schema] = {}


def _output_shapes(component: Component, template: Schema, concrete: dict[str, Any]) -> Schema:
    """Output shapes without running the component when possible, else on concrete inputs."""
    key = (id(component), signature(template))
    if key in _SHAPES:
        return _SHAPES[key]
    zeros = {x.path: np.zeros(x.value.shape, x.value.dtype) for x in leaves(template)}
    try:
        shapes = component.eval_shape(replace_leaves(template, zeros))
    except EndpointUnavailableError:
        if len(concrete) != len(zeros):
            raise ShapesUnknownError(
                f"cannot tell the output shapes of component '{component.name}' while tracing: "
                "its eval_shape needs apply. Declare its output shapes with named dimensions, "
                "or call it once outside jit so the shapes are known"
            ) from None
        out = component.apply(replace_leaves(template, concrete))
        shapes = replace_leaves(
            out, {x.path: ShapeDtype(x.value.shape, x.value.dtype) for x in leaves(out)}
        )
    _SHAPES[key] = shapes
    return shapes


def _spec(component: Component, template: Schema, concrete: dict[str, Any]) -> _Spec:
    key = (id(component), signature(template))
    spec = _SPECS.get(key)
    if spec is None:
        shapes = _output_shapes(component, template, concrete)
        ins, outs = leaves(template), leaves(shapes)
        spec = _Spec(
            component,
            template,
            tuple(x.path for x in ins),
            tuple(x.spec.differentiable for x in ins),
            shapes,
            tuple(x.path for x in outs),
            tuple(
                jax.core.ShapedArray(tuple(x.value.shape), np.dtype(x.value.dtype)) for x in outs
            ),
            tuple(x.spec.differentiable for x in outs),
            key,
        )
        _SPECS[key] = spec
        while len(_SPECS) > 1024:
            _SPECS.popitem(last=False)
    return spec


# ---- tokens: kept linearizations crossing the JAX program as int64 scalars ------------------

_TOKENS: OrderedDict[int, Handle] = OrderedDict()
_TOKEN_IDS = itertools.count(1)
_TOKEN_LOCK = threading.Lock()


def _new_token(handle: Handle) -> int:
    with _TOKEN_LOCK:
        token = next(_TOKEN_IDS)
        _TOKENS[token] = handle
        while len(_TOKENS) > 100_000:
            _TOKENS.popitem(last=False)
    return token


def _handle(token: Any) -> Handle | None:
    # An unknown token (evicted, or 0) makes the endpoint recompute: slower, never wrong.
    return _TOKENS.get(int(np.asarray(token)))


# ---- host functions (run on concrete numpy arrays) ------------------------------------------


def _point(spec: _Spec, arrays: Sequence[np.ndarray]) -> Point:
    return Point(spec.component, spec.inputs(arrays))


def _host_apply(spec: _Spec, keep: bool, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    # The arrays come from JAX with the avals of the spec: the point needs no re-validation.
    out, handle = spec.component._apply_kept(_point(spec, arrays), keep)
    found = {x.path: x.value for x in leaves(out)}
    result = [
        np.asarray(found[p], a.dtype) for p, a in zip(spec.out_paths, spec.out_avals, strict=True)
    ]
    if keep:
        result.append(np.asarray(_new_token(handle) if handle else 0, np.int64))
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
    p = _point(spec, arrays)
    res = comp.residuals.get(_handle(token), p.values)
    result = comp._run("batched_jvp" if batched else "jvp", p, res, tangents=t, of=outs)
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
    p = _point(spec, arrays)
    res = comp.residuals.get(_handle(token), p.values)
    result = comp._run("batched_vjp" if batched else "vjp", p, res, cotangents=c, wrt=paths)
    return [
        np.asarray(result[p], np.asarray(arrays[i]).dtype) for i, p in zip(wrt, paths, strict=True)
    ]


def _host_hvp(
    spec: _Spec,
    wrt: tuple[int, ...],
    of: int,
    arrays: Sequence[np.ndarray],
    vs: Sequence[np.ndarray],
) -> list[np.ndarray]:
    paths = tuple(spec.in_paths[i] for i in wrt)
    result = spec.component.hvp(
        spec.inputs(arrays), dict(zip(paths, vs, strict=True)), of=spec.out_paths[of], wrt=paths
    )
    return [
        np.asarray(result[p], np.asarray(arrays[i]).dtype) for i, p in zip(wrt, paths, strict=True)
    ]


# ---- batching: a stack of leading axes, each looped over or handed to a batched endpoint ----


def _run_levels(
    host: Callable[..., list[np.ndarray]],
    levels: tuple[str, ...],
    args: list[np.ndarray],
    linear: Sequence[bool],
) -> list[np.ndarray]:
    """Run `host` over the leading axes named by `levels` ("loop" or "batched")."""
    if not levels or levels == ("batched",):
        return host(args, batched=bool(levels))
    if levels[0] == "batched":  # only an innermost batched level is supported
        raise AssertionError(levels)
    size = len(args[0]) if args else 0
    rows = [_run_levels(host, levels[1:], [a[b] for a in args], linear) for b in range(size)]
    return [np.stack([r[k] for r in rows]) for k in range(len(rows[0]))] if rows else []


# A component's exception cannot cross XLA: under jit JAX re-raises it as JaxRuntimeError
# carrying only its text. The original is kept here under a number that the text carries, so
# `errors()` (and chainrule's own jitted code) can raise the original again.
_ERRORS: OrderedDict[int, BaseException] = OrderedDict()
_ERROR_IDS = itertools.count(1)
_ERROR_TAG = re.compile(r"\[chainrule error #(\d+)\]")


class _CallbackError(RuntimeError):
    """Raised inside a host callback; its text names the stored original exception."""


def _host_call(host: Callable[..., list[np.ndarray]], args: Sequence[Any]) -> list[np.ndarray]:
    try:
        return host([np.asarray(x) for x in args])
    except Exception as e:
        with _TOKEN_LOCK:
            number = next(_ERROR_IDS)
            _ERRORS[number] = e
            while len(_ERRORS) > 256:
                _ERRORS.popitem(last=False)
        raise _CallbackError(f"[chainrule error #{number}] {type(e).__name__}: {e}") from e


def original_error(error: BaseException) -> BaseException | None:
    """The component exception behind a JaxRuntimeError from a jitted call, if any."""
    match = _ERROR_TAG.search(str(error))
    return _ERRORS.get(int(match.group(1))) if match else None


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Re-raise component errors from jitted code as themselves (not as JaxRuntimeError).

    Example:
        ```python
        with chainrule.jax.errors():
            jax.jit(pipeline)(x)  # a failing component raises its ComponentError here
        ```
    """
    try:
        yield
    except Exception as e:  # JaxRuntimeError, or ValueError from an already-compiled call
        original = original_error(e)
        if original is None:
            raise
        # Not `from e`: the original keeps its own cause (the author's exception).
        raise original.with_traceback(None)  # noqa: B904


def _callback(
    host: Callable[..., list[np.ndarray]], avals: Sequence[Any], args: Sequence[Any]
) -> list[Any]:
    shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
    return list(jax.pure_callback(lambda *xs: _host_call(host, xs), shapes, *args))


def _batched_avals(avals: Sequence[Any], sizes: tuple[int, ...]) -> list[Any]:
    return [jax.core.ShapedArray(sizes + tuple(a.shape), a.dtype) for a in avals]


# ---- primitives -------------------------------------------------------------------------------


def _define(
    name: str,
    host_of: Callable[..., Callable[..., list[np.ndarray]]],
    avals_of: Callable[..., list[Any]],
) -> Prim:
    """A multiple-results primitive run by a host callback, with eager and jit paths."""
    prim = Prim(name)
    prim.multiple_results = True

    def impl(*args: Any, **params: Any) -> list[Any]:
        host = host_of(**params)
        return [jnp.asarray(x) for x in host([np.asarray(a) for a in args])]

    def abstract(*args: Any, **params: Any) -> list[Any]:
        return avals_of(**params)

    def lowered(*args: Any, **params: Any) -> list[Any]:
        return _callback(host_of(**params), avals_of(**params), args)

    prim.def_impl(impl)
    prim.def_abstract_eval(abstract)
    mlir.register_lowering(prim, mlir.lower_fun(lowered, multiple_results=True))
    return prim


def _apply_host(spec: _Spec, keep: bool, levels: tuple[str, ...], sizes: tuple[int, ...]) -> Any:
    def host(args: list[np.ndarray], batched: bool = False) -> list[np.ndarray]:
        return _host_apply(spec, keep, args)

    return lambda args: _run_levels(host, levels, args, [False] * len(args))


def _apply_avals(spec: _Spec, keep: bool, levels: tuple[str, ...], sizes: tuple[int, ...]) -> Any:
    token = [jax.core.ShapedArray((), np.dtype(np.int64))] if keep else []
    return _batched_avals([*spec.out_avals, *token], sizes)


call_p = _define("chainrule_call", _apply_host, _apply_avals)


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

        linear = [False] * (1 + n) + [True] * (len(wrt) if kind == "jvp" else len(of))
        return lambda args: _run_levels(host, levels, args, linear)

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


jvp_p = _define("chainrule_jvp", _linear_host("jvp"), _jvp_avals)
vjp_p = _define("chainrule_vjp", _linear_host("vjp"), _vjp_avals)


def _hvp_host(
    spec: _Spec, wrt: tuple[int, ...], of: int, levels: tuple[str, ...], sizes: tuple[int, ...]
) -> Any:
    n = len(spec.in_paths)

    def host(args: list[np.ndarray], batched: bool = False) -> list[np.ndarray]:
        return _host_hvp(spec, wrt, of, args[:n], args[n:])

    return lambda args: _run_levels(host, levels, args, [False] * len(args))


def _hvp_avals(
    spec: _Spec, wrt: tuple[int, ...], of: int, levels: tuple[str, ...], sizes: tuple[int, ...]
) -> Any:
    return _batched_avals([spec.in_aval(i) for i in wrt], sizes)


hvp_p = _define("chainrule_hvp", _hvp_host, _hvp_avals)


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
        tangents_out.append(_tangent_zero(jax.core.ShapedArray((), np.dtype(np.int64))))
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


# ---- the public entry point -----------------------------------------------------------------


def _concrete(x: Any) -> np.ndarray | None:
    """The value of `x` if it is known now (not under jit), else None."""
    if not isinstance(x, jax.core.Tracer):
        return np.asarray(x)
    from jax._src import core  # no public spelling yet; used only to learn shapes early

    value = core.to_concrete_value(x)
    return None if value is None else np.asarray(value)


def _prepare(component: Component, inputs: Any) -> tuple[Schema, list[Any]]:
    """Inputs as a schema instance whose leaves are cast JAX values (tracers pass through)."""
    if isinstance(inputs, Schema):
        inputs = {name: getattr(inputs, name) for name in type(inputs).model_fields}
    if not isinstance(inputs, dict):
        raise ValidationError(
            f"chainrule.jax.call({component.name}): inputs must be a dict, "
            f"got {type(inputs).__name__}"
        )
    try:
        with passthrough():
            instance = component.inputs.model_validate(inputs)
    except Exception as e:
        raise ValidationError(f"invalid inputs to component '{component.name}': {e}") from e
    cast = {}
    for leaf in leaves(instance):
        value = jnp.asarray(leaf.value)
        if value.dtype != leaf.spec.dtype:
            if not jnp.can_cast(value.dtype, leaf.spec.dtype, "same_kind"):
                raise ValidationError(
                    f"input '{leaf.path}' of component '{component.name}': expected "
                    f"{leaf.spec}, got {value.dtype}{list(value.shape)}"
                )
            value = value.astype(leaf.spec.dtype)
        cast[leaf.path] = value
    return replace_leaves(instance, cast), list(cast.values())


def _results(spec: _Spec, values: Sequence[Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(zip(spec.out_paths, values, strict=True))
    from ._tree import static_values

    for path, value in static_values(spec.out_template):
        out[path] = value
    return out


def _inline(component: Component, instance: Schema) -> dict[str, Any]:
    """An in-process JAX component traced straight into the caller's program."""
    # The named scope marks the traced ops in the jaxpr, so tools (chainrule.plot.pipeline)
    # can tell which equations belong to this component.
    with jax.named_scope(f"chainrule:{component.name}"):
        guarded = {
            x.path: x.value
            if x.spec.differentiable
            else _no_tangent(x.value, x.path, component.name)
            for x in leaves(instance)
        }
        with passthrough():
            raw = component.fn(replace_leaves(instance, guarded))
        from ._backends import as_outputs

        out = as_outputs(raw, component.outputs, component.name)
        result: dict[str, Any] = {}
        for x in leaves(out):
            value = jnp.asarray(x.value)
            if value.dtype != x.spec.dtype and x.spec.dtype.kind in "fc":
                value = value.astype(x.spec.dtype)
            result[x.path] = value if x.spec.differentiable else jax.lax.stop_gradient(value)
        from ._tree import static_values

        result.update(dict(static_values(out)))
        return result


def _no_tangent(value: Any, path: str, name: str) -> Any:
    """Identity that refuses a nonzero tangent (a non-differentiable input being differentiated)."""

    @jax.custom_jvp
    def guard(x: Any) -> Any:
        return x

    def rule(primals: Any, tangents: Any) -> Any:
        (x,), (t,) = primals, tangents
        if not isinstance(t, jax.custom_derivatives.SymbolicZero):
            raise NotDifferentiableError(
                f"input '{path}' of component '{name}' is not differentiable, but the "
                "computation differentiates with respect to it; mark it Differentiable[...] "
                "in the component's schema, or pass jax.lax.stop_gradient(value)"
            )
        return x, jnp.zeros_like(x)

    guard.defjvp(rule, symbolic_zeros=True)
    return guard(value) if jnp.issubdtype(jnp.asarray(value).dtype, jnp.floating) else value


def _native_jax(component: Component) -> bool:
    # Inline only when JAX's own derivatives are the component's: an author's written
    # derivative endpoint must be honoured, so that component goes through the primitive.
    return isinstance(component.backend, JaxBackend) and not component._written


def call(component: Component, inputs: Any) -> dict[str, Any]:
    """Call `component` from JAX code; differentiable under jit, grad, jvp, vmap, scan, ...

    Arguments:
        component: any component (in-process JAX, PyTorch, NumPy, remote, launched).
        inputs: a dict of its inputs; arrays may be JAX arrays or tracers, static fields are
            ordinary Python values.

    Returns:
        `{output path: value}`: JAX arrays for array outputs, Python values for static ones.

    Example:
        ```python
        def total(x):
            return crj.call(torch_band, {"offset": x[1]})["time"] + x[0] ** 2

        jax.jit(jax.grad(total))(x0)
        ```
    """
    instance, values = _prepare(component, inputs)
    if _native_jax(component):
        return _inline(component, instance)
    known = {x.path: _concrete(x.value) for x in leaves(instance)}
    concrete = {k: v for k, v in known.items() if v is not None}
    shapes = {
        x.path: ShapeDtype(tuple(x.value.shape), np.dtype(x.value.dtype)) for x in leaves(instance)
    }
    template = replace_leaves(instance, shapes)
    spec = _spec(component, template, concrete)
    outs = call_p.bind(*values, spec=spec, keep=False, levels=(), sizes=())
    return _results(spec, outs)
