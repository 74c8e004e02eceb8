"""`chainrule.jax.call`: components inside JAX code, under every JAX transformation.

An in-process JAX component is traced straight into the caller's program (no callback, no
copy). Any other component (PyTorch, NumPy, remote) becomes a JAX primitive:

- `call_p(*inputs)`            the outputs (a host callback to `apply`); with `keep`, also a
                               token naming the linearization kept by `apply(keep=True)`;
- `jvp_p(token, *inputs, *t)`  J·t, linear in t (host: `jvp` with the kept handle);
- `vjp_p(token, *inputs, *c)`  Jᵀ·c, linear in c (host: `vjp` with the kept handle);
- `hvp_p(*inputs, *w, *v)`     H·v, H the Hessian of Σ⟨w_o, y_o⟩ over outputs o (host: the
                               component's `hvp` with output weights), self-transposed.

`jvp_p` and `vjp_p` transpose into each other, so reverse mode costs one `apply(keep=True)`
and one `vjp` per component; their derivatives add the curvature term through `hvp_p`, so
second order works for outputs of any shape where the component has an `hvp`. vmap over
tangents or cotangents alone maps onto the batched endpoints (one request per batch:
`jacrev` of a remote component is one call, and one per element under an outer vmap); vmap
over anything else loops inside one host callback. A batch of size 0 calls nothing.

The host callbacks are emitted with JAX's internal emitter, which hands the host the numpy
views XLA already has (`jax.pure_callback` would first put every argument on a device as a
`jax.Array`, ~50-100 µs each); a JAX without that emitter falls back to `jax.pure_callback`,
as does every host callback when the binding is configured so (`settings.configure`:
`chainrule.jax` reads `CHAINRULE_JAX_PURE_CALLBACK=1` from the environment when imported).

The primitives and their host functions live in `primitives`, their derivative and vmap
rules in `rules` (second order in `curvature`), the private JAX APIs they use in `compat`;
this module builds the static spec of a call site, kept by its component
(`Component.cache`), and binds `call_p` (or traces an in-process JAX component inline).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from chainrule._component import carried
from chainrule._component.backends.jax import check_x64, needs_x64, output_value
from chainrule._component.component import Component
from chainrule._component.shapes import bound, static_leaves
from chainrule._schema.errors import (
    EndpointUnavailableError,
    NotDifferentiableError,
    ShapesUnknownError,
    ValidationError,
)
from chainrule._schema.schema import Schema, ShapeDtype, passthrough
from chainrule._schema.tree import (
    bind_dims,
    flat_fields,
    leaves,
    replace_leaves,
    signature,
    static_values,
)

from . import compat
from . import curvature as _jax_curvature  # noqa: F401  (register the rules with JAX)
from . import dce as _jax_dce  # noqa: F401
from . import rules as _jax_rules  # noqa: F401
from .primitives import _Spec
from .primitives import call_p as call_p  # re-exported: chainrule.plot inspects jaxprs
from .primitives import hvp_p as hvp_p
from .primitives import jvp_p as jvp_p
from .primitives import vjp_p as vjp_p

__all__ = ["call", "errors", "original_error", "sites"]


# ---- the static description of one call site -----------------------------------------------


# A component keeps its call sites (and the output shapes learnt for them) in caches of its
# own (`Component.cache`), keyed by the static signature: bounded, and gone with it.
_SITES = "chainrule.jax call sites"
_SHAPES = "chainrule.jax output shapes"


def sites(component: Component) -> list[_Spec]:
    """The call sites of `component` this binding remembers (most recently used last)."""
    return list(component.cache(_SITES).values())


@dataclass(frozen=True)
class _Outs:
    """The output leaves of a call site, and the outputs' static values if they are known."""

    paths: tuple[str, ...]
    avals: tuple[jax.core.ShapedArray, ...]
    diff: tuple[bool, ...]
    template: Schema | None  # outputs with ShapeDtype leaves; None: static values unknown
    complete: bool  # nothing left to learn (static values known, or there are none)

    @classmethod
    def of(cls, shapes: Schema) -> _Outs:
        found = leaves(shapes)
        return cls(
            tuple(x.path for x in found),
            tuple(
                jax.core.ShapedArray(tuple(x.value.shape), np.dtype(x.value.dtype)) for x in found
            ),
            tuple(x.spec.differentiable for x in found),
            shapes,
            True,
        )


def _declared(component: Component, template: Schema) -> _Outs | None:
    """The output leaves fixed by the output schema (fixed sizes, named dimensions the inputs
    bind), or None when some output shape is left to the code."""
    static = static_leaves(component.outputs)
    if static is None:
        return None
    fail = lambda message, errors: ValidationError(message, errors=errors)  # noqa: E731
    dims = bind_dims([leaves(template)], fail)
    shapes = [bound(spec.shape, dims) for _, spec in static]
    if not all(type(d) is int for shape in shapes for d in shape):
        return None
    flat = flat_fields(component.outputs)
    return _Outs(
        tuple(path for path, _ in static),
        tuple(
            jax.core.ShapedArray(shape, spec.dtype)
            for shape, (_, spec) in zip(shapes, static, strict=True)
        ),
        tuple(spec.differentiable for _, spec in static),
        None,
        flat is not None and all(spec is not None for _, spec in flat),  # no static fields
    )


def _output_shapes(component: Component, template: Schema, concrete: dict[str, Any]) -> _Outs:
    """The outputs of a call: from the declaration when it fixes every output (no call),
    else from eval_shape, else from apply on concrete inputs; under jit without eval_shape,
    the declared array leaves with the static output values left unknown."""
    known = component.cache(_SHAPES).get(signature(template))
    if known is not None:
        return _Outs.of(known)
    declared = _declared(component, template)
    if declared is not None and declared.complete:
        return declared
    zeros = {x.path: np.zeros(x.value.shape, x.value.dtype) for x in leaves(template)}
    try:
        shapes = component.eval_shape(replace_leaves(template, zeros))
    except EndpointUnavailableError:
        if len(concrete) != len(zeros):
            if declared is not None:
                return declared
            raise ShapesUnknownError(
                f"cannot tell the output shapes of component '{component.name}' while tracing: "
                "its eval_shape needs apply and its output schema leaves some shape free. Give "
                "every output dimension a size or a name the inputs bind, or call it once "
                "outside jit so the shapes are known"
            ) from None
        out = component.apply(replace_leaves(template, concrete))
        shapes = replace_leaves(
            out, {x.path: ShapeDtype(x.value.shape, x.value.dtype) for x in leaves(out)}
        )
    component.cache(_SHAPES).put(signature(template), shapes)
    return _Outs.of(shapes)


def _spec(component: Component, template: Schema, concrete: dict[str, Any]) -> _Spec:
    found = component.cache(_SITES)
    key = signature(template)
    spec = found.get(key)
    if spec is None:
        outs = _output_shapes(component, template, concrete)
        ins = leaves(template)
        spec = _Spec(
            component,
            template,
            tuple(x.path for x in ins),
            tuple(x.spec.differentiable for x in ins),
            outs.template,
            outs.paths,
            outs.avals,
            outs.diff,
            (component, key),
        )
        if outs.complete:  # else a later call with values may learn the static outputs
            found.put(key, spec)
    return spec


# ---- component errors under jit ---------------------------------------------------------------


def original_error(error: BaseException) -> BaseException | None:
    """The component exception behind a JaxRuntimeError from a jitted call, if any."""
    return carried.original(error)


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


# ---- the public entry point -----------------------------------------------------------------


def _concrete(x: Any) -> np.ndarray | None:
    """The value of `x` if it is known now (not under jit), else None."""
    if not isinstance(x, jax.core.Tracer):
        return np.asarray(x)
    value = compat.concrete_value(x)  # used only to learn shapes early
    return None if value is None else np.asarray(value)


def _prepare(component: Component, inputs: Any) -> tuple[Schema, list[Any]]:
    """Inputs as a schema instance whose leaves are cast JAX values (tracers pass through)."""
    instance = component.traced_inputs(inputs, "chainrule.jax.call")
    cast = {}
    for leaf in leaves(instance):
        check_x64(component.name, "input", leaf.path, leaf.spec.dtype, str(leaf.spec))
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


class _Outputs(dict[str, Any]):
    """The outputs of a call traced without values: the static ones are not known."""

    name: str = ""

    def __missing__(self, key: str) -> Any:
        raise ShapesUnknownError(
            f"output '{key}' of component '{self.name}' is not known while tracing: its value "
            "depends on running the component (its eval_shape needs apply). Call it once "
            "outside jit so its static outputs are known, or read only its array outputs"
        )


def _results(spec: _Spec, values: Sequence[Any]) -> dict[str, Any]:
    if spec.out_template is None:
        partial = _Outputs(zip(spec.out_paths, values, strict=True))
        partial.name = spec.component.name
        return partial
    out: dict[str, Any] = dict(zip(spec.out_paths, values, strict=True))
    out.update(static_values(spec.out_template))
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
        out = component.traced_outputs(raw)
        result: dict[str, Any] = {}
        for x in leaves(out):
            check_x64(component.name, "output", x.path, x.spec.dtype, str(x.spec))
            value = output_value(x)
            result[x.path] = value if x.spec.differentiable else jax.lax.stop_gradient(value)
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
    # Inline only when JAX's own derivatives are the component's (`Component.inline`): an
    # author's written derivative must be honoured, so that component goes through call_p.
    if component.inline("jax"):
        return _inline(component, instance)
    known = {x.path: _concrete(x.value) for x in leaves(instance)}
    concrete = {k: v for k, v in known.items() if v is not None}
    shapes = {
        x.path: ShapeDtype(tuple(x.value.shape), np.dtype(x.value.dtype)) for x in leaves(instance)
    }
    template = replace_leaves(instance, shapes)
    spec = _spec(component, template, concrete)
    for path, aval in zip(spec.out_paths, spec.out_avals, strict=True):
        if needs_x64(aval.dtype):
            declared = dict(static_leaves(component.outputs) or ()).get(path)
            shown = str(declared) if declared is not None else aval.str_short()
            check_x64(component.name, "output", path, aval.dtype, shown)
    outs = call_p.bind(*values, spec=spec, keep=False, levels=(), sizes=())
    return _results(spec, outs)
