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

The host callbacks are emitted with JAX's internal emitter, which hands the host the numpy
views XLA already has (`jax.pure_callback` would first put every argument on a device as a
`jax.Array`, ~50-100 µs each); a JAX without that emitter, or the environment variable
`CHAINRULE_JAX_PURE_CALLBACK=1`, falls back to `jax.pure_callback`.

The primitives and their host functions live in `_jax_primitives`, their derivative and vmap
rules in `_jax_rules`; this module builds the static spec of a call site and binds `call_p`
(or traces an in-process JAX component inline).
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import _jax_rules  # noqa: F401  (registers the derivative and vmap rules with JAX)
from ._backends._jax import JaxBackend, check_x64, needs_x64, output_value
from ._component import Component
from ._errors import (
    EndpointUnavailableError,
    NotDifferentiableError,
    ShapesUnknownError,
    ValidationError,
)
from ._jax_primitives import _ERROR_TAG, _ERRORS, _Spec
from ._jax_primitives import call_p as call_p  # re-exported: chainrule.plot inspects jaxprs
from ._jax_primitives import hvp_p as hvp_p
from ._jax_primitives import jvp_p as jvp_p
from ._jax_primitives import vjp_p as vjp_p
from ._schema import Schema, ShapeDtype, passthrough
from ._tree import leaves, replace_leaves, signature

__all__ = ["call", "errors", "original_error"]


# ---- the static description of one call site -----------------------------------------------


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


# ---- component errors under jit ---------------------------------------------------------------


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
            check_x64(component.name, "output", x.path, x.spec.dtype, str(x.spec))
            value = output_value(x)
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
    if any(needs_x64(aval.dtype) for aval in spec.out_avals):
        for leaf in leaves(spec.out_template):
            check_x64(component.name, "output", leaf.path, leaf.value.dtype, str(leaf.spec))
    outs = call_p.bind(*values, spec=spec, keep=False, levels=(), sizes=())
    return _results(spec, outs)
