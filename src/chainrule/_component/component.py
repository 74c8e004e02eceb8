"""Components: schemas + an `apply` function + a backend that derives the other endpoints.

Every endpoint runs through one path, `Component.call(endpoint, inputs, **request)`: the
inputs validated into a `Point` (validated inputs, leaves by path), the request's keywords
validated at that point by their row of the endpoint table (`endpoints`, `validate`), then
the implementation `rules.resolve` chose among the author's functions, the backend's and
derivations of both. The public endpoint methods (`apply`, `vjp`, ...) are one line each
over it.

Bindings and tools run endpoints on points they trust (a framework binding's call site fixes
every shape) through a small documented interface instead of the component's insides: `at`,
`apply_at`, `run`, `written`, `inline`, `lane`, `errors`, `validate_outputs`, `paths`,
`known_shapes` and `cache` (see "For bindings and tools" below).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Literal, NoReturn, overload

import numpy as np

from chainrule._schema import tree as _tree
from chainrule._schema.errors import (
    EndpointUnavailableError,
    SchemaDefinitionError,
    ValidationError,
)
from chainrule._schema.schema import Schema

from . import batched, dispatch, finite, points, validate
from .backends.base import Backend, FiniteDifferences, as_outputs, flat_site
from .backends.load import load_backend
from .endpoints import ENDPOINTS, Endpoint, derivatives
from .memo import LRU
from .plan import Plan
from .point import Point
from .residuals import Handle, Residual, ResidualCache
from .rules import Impl, resolve
from .shapes import output_shapes, shapes_of

__all__ = ["Component", "Point", "component"]

Paths = validate.Paths


class Component:
    """A typed, differentiable unit of computation (build it with `chainrule.component`).

    Endpoints: `apply`, `eval_shape`, `jvp`, `vjp`, `jacobian`, `batched_jvp`, `batched_vjp`
    and `hvp` (`call` runs any of them by name); `endpoints` tells which exist and where each
    comes from.
    """

    def __init__(
        self,
        fn: Callable[[Any], Any],
        *,
        inputs: type[Schema],
        outputs: type[Schema],
        backend: str | FiniteDifferences | Backend = "jax",
        name: str | None = None,
        residual_bytes: int = 256 * 2**20,
    ) -> None:
        for role, cls in (("inputs", inputs), ("outputs", outputs)):
            if not (isinstance(cls, type) and issubclass(cls, Schema)):
                raise SchemaDefinitionError(
                    f"{role}= must be a chainrule.Schema subclass, got {cls!r}"
                )
        self.fn = fn
        self.inputs = inputs
        self.outputs = outputs
        self.name: str = name or str(getattr(fn, "__name__", "component"))
        self.backend: Backend = load_backend(backend, fn, inputs, outputs)
        self.residuals = ResidualCache(max_bytes=residual_bytes)
        self.calls: Counter[str] = Counter()
        self._written: dict[str, Callable[..., Any]] = {}
        self._impls: dict[str, Impl] | None = None
        # Output shapes by static signature, for backends whose shapes depend on nothing else.
        self._shapes: LRU[Schema] = LRU(64)
        self._caches: dict[str, LRU[Any]] = {}
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Component {self.name!r} backend={self.backend.name}>"

    # ---- which endpoints exist -------------------------------------------------------------

    @property
    def impls(self) -> dict[str, Impl]:
        """Chosen implementation of each endpoint (recomputed when the author adds one)."""
        if self._impls is None:
            backend = self.backend
            sources = {
                n: Impl(backend.endpoint(n), backend.provenance_of(n), backend.cost)
                for n in backend.native
            }
            written = self._written.items()
            sources.update(
                {n: Impl(dispatch.written_impl(f, n), "written", 0.0) for n, f in written}
            )
            self._impls = resolve(sources)
        return self._impls

    @property
    def endpoints(self) -> dict[str, str]:
        """`{endpoint: provenance}` for every endpoint this component offers."""
        base = {
            "apply": self.backend.provenance_of("apply"),
            "eval_shape": self.backend.eval_shape_provenance,
            "batched_apply": batched.provenance(self),
        }
        return base | {n: self.impls[n].provenance for n in derivatives() if n in self.impls}

    def define(self, endpoint: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Use the author's `fn` for a derivative endpoint; missing ones are derived from it."""
        if endpoint not in derivatives():
            raise SchemaDefinitionError(
                f"cannot define endpoint {endpoint!r}; derivative endpoints are {derivatives()}"
            )
        self._written[endpoint] = fn
        self._impls = None
        return fn

    def def_jvp(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: `fn(inputs, tangents[, of]) -> {output path: array}`."""
        return self.define("jvp", fn)

    def def_vjp(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: `fn(inputs, cotangents[, wrt]) -> {input path: array}`."""
        return self.define("vjp", fn)

    def def_jacobian(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: `fn(inputs[, wrt, of]) -> {output path: {input path: array}}`."""
        return self.define("jacobian", fn)

    def def_batched_jvp(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: like `def_jvp` with a leading batch axis on tangents and results."""
        return self.define("batched_jvp", fn)

    def def_batched_vjp(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: like `def_vjp` with a leading batch axis on cotangents and results."""
        return self.define("batched_vjp", fn)

    def def_hvp(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Decorator: `fn(inputs, tangents[, cotangents, wrt]) -> {input path: H·t}`, H the
        Hessian of `Σ ⟨cotangents[o], outputs[o]⟩`; a function taking `of` (one scalar output)
        instead of `cotangents` serves scalar outputs only."""
        return self.define("hvp", fn)

    # ---- validation ------------------------------------------------------------------------

    def point(self, inputs: Any) -> Point:
        """Validate `inputs` (a dict, or an instance of the input schema) into a `Point`."""
        if isinstance(inputs, Point):
            return inputs
        exact = validate.construct_exact(self.inputs, inputs)  # the common case, first
        return Point(self, exact if exact is not None else validate.inputs(self, inputs))

    def traced_inputs(self, inputs: Any, binding: str) -> Schema:
        """Inputs for a framework binding: validated like `point`, except that framework arrays
        (JAX tracers, torch tensors) pass through unconverted, shapes checked.

        Arguments:
            inputs: a dict or an input schema instance.
            binding: the caller, for messages (`"chainrule.jax.call"`).
        """
        return validate.traced_inputs(self, inputs, binding)

    def traced_outputs(self, raw: Any) -> Schema:
        """What the function returned (an output instance or a dict) as an output instance,
        framework arrays passed through unconverted (a binding running it inline)."""
        return as_outputs(raw, self.outputs, self.name)

    # ---- the one path ----------------------------------------------------------------------

    def call(self, endpoint: str, inputs: Any, **request: Any) -> Any:
        """Run `endpoint` (any row of `chainrule.ENDPOINTS`) at `inputs`, the request keywords
        validated by the row: the path every endpoint method takes.

        Example:
            ```python
            grads = comp.call("vjp", {"x": x}, cotangents={"y": ct})  # as comp.vjp(...)
            ```
        """
        row = ENDPOINTS.get(endpoint)
        if row is None or not row.names.issuperset(request):
            self._refuse(endpoint, request)
        if row.result == "batched_outputs":  # a batch of points, not one point
            return batched.run(self, inputs, request.get("batched") or ())
        if row.derivative and request.get("batched"):  # B points at once
            return points.run(self, row, inputs, request)
        return self._call(row, self.point(inputs), request)

    def _refuse(self, endpoint: str, request: Mapping[str, Any]) -> NoReturn:
        row = ENDPOINTS.get(endpoint)
        if row is None:
            raise EndpointUnavailableError(
                f"component '{self.name}' has no endpoint {endpoint!r}; endpoints are "
                f"{sorted(ENDPOINTS)}"
            )
        unknown = sorted(request.keys() - row.names)
        raise ValidationError(
            f"{endpoint} of component '{self.name}' takes {list(row.request)}, not {unknown}",
            errors=[{"path": k, "expected": list(row.request), "got": k} for k in unknown],
        )

    def _call(self, row: Endpoint, p: Point, request: Mapping[str, Any]) -> Any:
        if row.result == "outputs":
            keep = bool(request.get("keep"))
            out, handle = self.apply_at(p, keep)
            return (out, handle) if keep else out
        if row.result == "shapes":
            with self.errors(row.name):
                return self.backend.eval_shape(p)
        if row.name not in self.impls:
            self._unavailable(row.name)
        res = self.residuals.get(request.get("handle"), p.inputs)
        given = validate.request(self, row, p, res, request)
        if row.result == "jacobian" and not (given["wrt"] and given["of"]):
            return {o: {} for o in given["of"]}  # an empty Jacobian: no backend builds one
        return self.run(row.name, p, res, **given)

    def _unavailable(self, endpoint: str) -> NoReturn:
        raise EndpointUnavailableError(
            f"component '{self.name}' ({self.backend.name} backend) has no {endpoint} and "
            f"none can be derived from what it has ({sorted(self.impls)}); define one "
            f"with @{self.name}.def_{endpoint}"
        )

    # ---- the endpoints ---------------------------------------------------------------------

    @overload
    def apply(self, inputs: Any, *, keep: Literal[False] = False) -> Any: ...
    @overload
    def apply(self, inputs: Any, *, keep: Literal[True]) -> tuple[Any, Handle]: ...

    def apply(self, inputs: Any, *, keep: bool = False) -> Any:
        """Run the component: validated outputs (an instance of the output schema).

        Arguments:
            inputs: a dict (or input schema instance); arrays may be numpy, jax, torch, lists.
            keep: also keep the linearization and return `(outputs, handle)`; pass the handle to
                `vjp`/`jvp` at the same inputs to skip their forward pass.
        """
        return self.call("apply", inputs, keep=keep)

    __call__ = apply

    def eval_shape(self, inputs: Any) -> Any:
        """Output shapes and dtypes without computing them (an output instance of ShapeDtype)."""
        return self.call("eval_shape", inputs)

    def jvp(
        self,
        inputs: Any,
        tangents: Mapping[str, Any],
        *,
        of: Paths = None,
        handle: Handle | None = None,
    ) -> dict[str, np.ndarray]:
        """Jacobian-vector product `{output path: J·t}` for tangents `{input path: t}`."""
        return self.call("jvp", inputs, tangents=tangents, of=of, handle=handle)

    def vjp(
        self,
        inputs: Any,
        cotangents: Mapping[str, Any],
        *,
        wrt: Paths = None,
        handle: Handle | None = None,
    ) -> dict[str, np.ndarray]:
        """Vector-Jacobian product `{input path: Jᵀ·c}` for cotangents `{output path: c}`."""
        return self.call("vjp", inputs, cotangents=cotangents, wrt=wrt, handle=handle)

    def jacobian(
        self, inputs: Any, *, wrt: Paths = None, of: Paths = None, handle: Handle | None = None
    ) -> dict[str, dict[str, np.ndarray]]:
        """`{output path: {input path: ∂out/∂in}}`, each of shape `out.shape + in.shape`."""
        return self.call("jacobian", inputs, wrt=wrt, of=of, handle=handle)

    def batched_jvp(
        self,
        inputs: Any,
        tangents: Mapping[str, Any],
        *,
        of: Paths = None,
        handle: Handle | None = None,
    ) -> dict[str, np.ndarray]:
        """`jvp` for a leading batch axis of tangents, answered in one call."""
        return self.call("batched_jvp", inputs, tangents=tangents, of=of, handle=handle)

    def batched_vjp(
        self,
        inputs: Any,
        cotangents: Mapping[str, Any],
        *,
        wrt: Paths = None,
        handle: Handle | None = None,
    ) -> dict[str, np.ndarray]:
        """`vjp` for a leading batch axis of cotangents, answered in one call."""
        return self.call("batched_vjp", inputs, cotangents=cotangents, wrt=wrt, handle=handle)

    def hvp(
        self,
        inputs: Any,
        tangents: Mapping[str, Any],
        *,
        cotangents: Mapping[str, Any] | None = None,
        of: str | None = None,
        wrt: Paths = None,
    ) -> dict[str, np.ndarray]:
        """Hessian-vector product `{input path: H·t}`, where H is the Hessian of the weighted
        sum of outputs `Σ ⟨cotangents[o], outputs[o]⟩` (the derivative of `vjp(cotangents)`
        along `t`), for outputs of any shape; `of=` one scalar output is the shorthand for
        weight 1 on it (the default when the component has exactly one scalar output)."""
        return self.call("hvp", inputs, tangents=tangents, cotangents=cotangents, of=of, wrt=wrt)

    def release(self, handle: Handle) -> None:
        """Drop a kept linearization now."""
        self.residuals.release(handle)

    def close(self) -> None:
        """Release open resources (a remote component's connections); calls still work after,
        reconnecting as needed."""
        self.backend.close()

    # ---- for bindings and tools ------------------------------------------------------------
    #
    # A framework binding's call site fixes every shape and dtype, so it need not validate
    # each call again: it builds trusted points (`at`) and runs endpoints on them (`apply_at`,
    # `run`, or a backend's per-site `lane`). Tools validate once (`point`, `paths`) and then
    # call the endpoints. None of these validate their arguments: they are for callers that
    # have (the public endpoint methods above do it for everyone else).

    def at(self, inputs: Schema, dims: dict[str, int] | None = None) -> Point:
        """A point at an input instance the caller has validated (no validation here).

        Arguments:
            inputs: an instance of the input schema.
            dims: the sizes of its named dimensions, if known (else bound from its shapes).
        """
        return Point(self, inputs, dims)

    def apply_at(
        self, p: Point, keep: bool = False, fingerprint: bytes | None = None
    ) -> tuple[Schema, Handle | None]:
        """Apply at a validated point: the validated outputs and, with `keep`, the handle of
        the kept linearization (`fingerprint`: the point's, if the caller has it already)."""
        if not keep:
            return self._apply(p, False)[0], None
        made_at = fingerprint or p.fingerprint()  # before apply: the point the forward pass saw
        out, residual = self._apply(p, True)
        residual = residual or Residual(None, 0, output_shapes(out))
        residual.fingerprint = made_at
        return out, self.residuals.put(self.name, residual)

    def _apply(self, p: Point, keep: bool) -> tuple[Schema, Residual | None]:
        checking = finite.active()
        if checking:
            dispatch.check_given(self.name, "apply", p, {})
        with self.errors("apply"):
            raw, residual = self.backend.apply(p, keep)
        out = validate.outputs(self, raw, p)
        if checking:
            outs = ((x.path, x.value) for x in _tree.leaves(out))
            finite.check_values(self.name, "apply", "output", outs, made=True)
        if residual is not None:
            residual.outputs = output_shapes(out)  # shapes only: the residual pins no output
        caps = self.backend.capabilities
        if caps.cheap_eval_shape and caps.static_shapes and p.signature not in self._shapes:
            self._shapes.put(p.signature, shapes_of(out))
        return out, residual

    def run(self, endpoint: str, p: Point, residual: Residual | None = None, **request: Any) -> Any:
        """Run derivative `endpoint` at a validated point with a validated request (numpy
        arrays by path, path tuples; see `validate.request`): its numpy result tree."""
        impl = self.impls.get(endpoint)
        if impl is None:
            self._unavailable(endpoint)
        checking = finite.active()
        if checking:
            dispatch.check_given(self.name, endpoint, p, request)
        with self.errors(endpoint):
            result = impl.fn(p, residual, **request)
        result = dispatch.numpy_tree(result)
        if checking:
            dispatch.check_results(self.name, endpoint, result)
        return result

    @property
    def written(self) -> frozenset[str]:
        """The derivative endpoints the author wrote (`define`, `def_vjp`, ...)."""
        return frozenset(self._written)

    def inline(self, framework: str) -> bool:
        """Whether a binding of `framework` ("jax", "torch") may run the function itself on the
        caller's arrays: the backend computes with that framework (its capabilities say so)
        and no derivative of the author's must be honoured instead of the framework's own."""
        return self.backend.capabilities.framework == framework and not self._written

    def plan(
        self, template: Schema, in_paths: Sequence[str], out_paths: Sequence[str]
    ) -> Plan | None:
        """The plan of one call site (inputs `template` with fixed static values; `plan.Plan`),
        or None where the site needs the generic endpoints (nested schemas)."""
        if not flat_site(self, in_paths, out_paths):
            return None
        return Plan(
            self,
            template,
            tuple(in_paths),
            tuple(out_paths),
            self.backend.host_lane(self, tuple(in_paths), tuple(out_paths)),
        )

    def errors(self, endpoint: str) -> AbstractContextManager[None]:
        """Count a call of `endpoint` and turn what the author's code raises inside the block
        into chainrule's errors (`ComponentError` chaining the original, ...)."""
        return dispatch.guard(self.name, self.calls, endpoint)

    def validate_outputs(self, raw: Any, p: Point) -> Schema:
        """What the function returned at `p` as a validated output instance (the one check)."""
        return validate.outputs(self, raw, p)

    def paths(
        self, p: Point, wrt: Paths = None, of: Paths = None, residual: Residual | None = None
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The input paths `wrt` and output paths `of` validated at `p` (each defaulting to
        every differentiable leaf)."""
        return validate.wrt(self, p, wrt), validate.of(self, p, of, residual)

    def known_shapes(self, p: Point) -> Schema | None:
        """Output shapes at `p` without running apply, or None when that needs apply."""
        caps = self.backend.capabilities
        if not caps.cheap_eval_shape:
            return None
        key = p.signature if caps.static_shapes else None
        remembered = self._shapes.get(key)
        if remembered is not None:
            return remembered
        with contextlib.suppress(EndpointUnavailableError):
            shapes = self._call(ENDPOINTS["eval_shape"], p, {})
            if key is not None:
                self._shapes.put(key, shapes)
            return shapes
        return None

    def cache(self, owner: str, size: int = 256) -> LRU[Any]:
        """A bounded cache that lives and dies with this component, for `owner` (a binding
        keeps its call sites here, keyed by their static signature)."""
        found = self._caches.get(owner)
        if found is None:
            found = self._caches.setdefault(owner, LRU(size))
        return found


def component(
    fn: Callable[[Any], Any] | None = None,
    *,
    inputs: type[Schema],
    outputs: type[Schema],
    backend: str | FiniteDifferences = "jax",
    name: str | None = None,
    residual_bytes: int = 256 * 2**20,
) -> Any:
    """Make a differentiable component of `fn(inputs) -> outputs` (decorator or call).

    Arguments:
        fn: takes an instance of `inputs` (arrays as the backend's arrays) and returns an
            instance of `outputs` or a dict of its fields.
        inputs, outputs: `chainrule.Schema` subclasses.
        backend: `"jax"`, `"torch"`, `"numpy"` (finite differences) or a
            `chainrule.FiniteDifferences(...)` with finite-difference options.
        name: shown in messages (default: the function's name).
        residual_bytes: budget of the cache of kept linearizations (`apply(keep=True)`).

    Example:
        ```python
        @cr.component(inputs=Inputs, outputs=Outputs, backend="jax")
        def affine(inputs):
            return Outputs(y=inputs.scale * inputs.x + 1.0, n=inputs.x.shape[0])
        ```
    """

    def wrap(f: Callable[[Any], Any]) -> Component:
        return Component(
            f,
            inputs=inputs,
            outputs=outputs,
            backend=backend,
            name=name,
            residual_bytes=residual_bytes,
        )

    return wrap if fn is None else wrap(fn)
