"""Components: schemas + an `apply` function + a backend that derives the other endpoints.

Public endpoint methods validate their arguments into a `Point` (validated inputs, leaves by
path) and numpy tangents/cotangents, then dispatch to the implementation chosen by
`endpoints.resolve` among the author's functions, the backend's and derivations of both.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal, overload

import numpy as np
import pydantic
from pydantic_core import PydanticCustomError

from chainrule._component.backends.base import Backend, FiniteDifferences
from chainrule._component.backends.load import load_backend
from chainrule._schema import tree as _tree
from chainrule._schema.errors import (
    ChainruleError,
    ComponentError,
    EndpointUnavailableError,
    NotDifferentiableError,
    OutputValidationError,
    SchemaDefinitionError,
    UnknownPathError,
    ValidationError,
)
from chainrule._schema.messages import format_pydantic
from chainrule._schema.messages import prefixed as _prefixed
from chainrule._schema.schema import ArraySpec, Schema, ShapeDtype, passthrough
from chainrule._schema.schema import _shape_matches as _shape_ok

from . import finite as _finite
from .carried import original as _carried_original
from .endpoints import DERIVATIVES, Impl, resolve
from .point import Point
from .residuals import Handle, Residual, ResidualCache

__all__ = ["Component", "Point", "component"]

Paths = str | Sequence[str] | None


def _as_paths(sel: Paths) -> tuple[str, ...] | None:
    if sel is None:
        return None
    return (sel,) if isinstance(sel, str) else tuple(sel)


class Component:
    """A typed, differentiable unit of computation (build it with `chainrule.component`).

    Endpoints: `apply`, `eval_shape`, `jvp`, `vjp`, `jacobian`, `batched_jvp`, `batched_vjp`
    and `hvp`; `endpoints` tells which exist and where each comes from.
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
        self._shapes: OrderedDict[Any, Schema] = OrderedDict()
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn

    def __repr__(self) -> str:
        return f"<Component {self.name!r} backend={self.backend.name}>"

    # ---- which endpoints exist -------------------------------------------------------------

    @property
    def impls(self) -> dict[str, Impl]:
        """Chosen implementation of each endpoint (recomputed when the author adds one)."""
        if self._impls is None:
            sources = {
                n: Impl(self.backend.endpoint(n), self.backend.provenance_of(n), self.backend.cost)
                for n in self.backend.native
            }
            sources.update(
                {n: Impl(_written_impl(f, n), "written", 0.0) for n, f in self._written.items()}
            )
            self._impls = resolve(sources)
        return self._impls

    @property
    def endpoints(self) -> dict[str, str]:
        """`{endpoint: provenance}` for every endpoint this component offers."""
        base = {
            "apply": self.backend.provenance_of("apply"),
            "eval_shape": self.backend.eval_shape_provenance,
        }
        return base | {n: self.impls[n].provenance for n in DERIVATIVES if n in self.impls}

    def define(self, endpoint: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Use the author's `fn` for a derivative endpoint; missing ones are derived from it."""
        if endpoint not in DERIVATIVES:
            raise SchemaDefinitionError(
                f"cannot define endpoint {endpoint!r}; derivative endpoints are {DERIVATIVES}"
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
        if isinstance(inputs, pydantic.BaseModel) and not isinstance(inputs, self.inputs):
            inputs = inputs.model_dump()
        if not isinstance(inputs, self.inputs | Mapping):
            raise ValidationError(
                f"invalid inputs to component '{self.name}': expected a dict or "
                f"{self.inputs.__name__}, got {type(inputs).__name__}",
                errors=[
                    {
                        "path": "(root)",
                        "expected": f"dict or {self.inputs.__name__}",
                        "got": type(inputs).__name__,
                    }
                ],
            )
        exact = _construct_exact(self.inputs, inputs)
        if exact is not None:
            return Point(self, exact)
        try:
            return Point(self, self.inputs.model_validate(inputs))
        except pydantic.ValidationError as e:
            message, errors = format_pydantic(e, f"invalid inputs to component '{self.name}'")
            raise ValidationError(message, errors=errors) from None

    def traced_inputs(self, inputs: Any, binding: str) -> Schema:
        """Inputs for a framework binding: validated like `point`, except that framework arrays
        (JAX tracers, torch tensors) pass through unconverted, shapes checked.

        Arguments:
            inputs: a dict or an input schema instance.
            binding: the caller, for messages (`"chainrule.jax.call"`).
        """
        if isinstance(inputs, Schema):
            inputs = {name: getattr(inputs, name) for name in type(inputs).model_fields}
        if not isinstance(inputs, dict):
            raise ValidationError(
                f"{binding}({self.name}): inputs must be a dict, got {type(inputs).__name__}",
                errors=[{"path": "(root)", "expected": "dict", "got": type(inputs).__name__}],
            )
        try:
            with passthrough():
                return self.inputs.model_validate(inputs)
        except pydantic.ValidationError as e:
            message, errors = format_pydantic(e, f"invalid inputs to component '{self.name}'")
            raise ValidationError(message, errors=errors) from None

    def _input_leaf(self, p: Point, path: str, role: str) -> _tree.Leaf:
        if path not in p.leaves:
            raise UnknownPathError(
                f"{role}: '{path}' is not an array input of component '{self.name}'; "
                f"differentiable inputs are {list(p.diff)}",
                errors=[{"path": path, "expected": list(p.diff), "got": path}],
            )
        if path not in p.diff:
            raise NotDifferentiableError(
                f"{role}: input '{path}' of component '{self.name}' is not differentiable "
                f"({p.leaves[path].spec}); mark it Differentiable[...] in "
                f"{self.inputs.__name__}, or leave it out. Differentiable inputs: {list(p.diff)}",
                errors=[{"path": path, "expected": "a Differentiable input", "got": path}],
            )
        return p.leaves[path]

    def _output_specs(self, p: Point, res: Residual | None) -> dict[str, tuple[ArraySpec, Any]]:
        """{output path: (spec, shape or None)}: exact shapes when known cheaply."""
        static = _static_leaves(self.outputs)
        if static is not None:  # shapes fixed by the declaration and the inputs' named dims
            bound = {k: (s, _bound(s.shape, p.dims)) for k, s in static}
            if all(type(d) is int for _, shape in bound.values() for d in shape):
                return bound
        known = p.out_leaves(res, run=static is None)
        if known is not None:
            return {k: (x.spec, tuple(x.value.shape)) for k, x in known.items()}
        return {k: (s, None) for k, s in static or ()}

    def _output_leaf(self, p: Point, path: str, role: str, specs: Mapping[str, Any]) -> Any:
        diff = [k for k, (s, _) in specs.items() if s.differentiable]
        if path not in specs:
            raise UnknownPathError(
                f"{role}: '{path}' is not an array output of component '{self.name}'; "
                f"differentiable outputs are {diff}",
                errors=[{"path": path, "expected": diff, "got": path}],
            )
        if path not in diff:
            raise NotDifferentiableError(
                f"{role}: output '{path}' of component '{self.name}' is not differentiable "
                f"({specs[path][0]}); differentiable outputs are {diff}",
                errors=[{"path": path, "expected": "a Differentiable output", "got": path}],
            )
        return specs[path]

    def _tangent_array(self, value: Any, spec: ArraySpec, role: str, path: str) -> np.ndarray:
        try:
            return np.asarray(spec.validate(value))
        except PydanticCustomError as e:
            msg = f"{role} for '{path}' of component '{self.name}': {e}"
            raise ValidationError(
                msg, errors=[{"path": f"{role}.{path}", **(e.context or {}), "message": msg}]
            ) from None

    def _tangents(self, p: Point, tangents: Any, batched: bool) -> dict[str, np.ndarray]:
        role = "batched tangents" if batched else "tangents"
        _require_mapping(tangents, role, "input", p.diff)
        out = {}
        for path, t in tangents.items():
            leaf = self._input_leaf(p, path, role)
            shape = tuple(leaf.value.shape)
            spec = ArraySpec(
                ((None,) if batched else ()) + shape, leaf.value.dtype, casting="same_kind"
            )
            out[path] = self._tangent_array(t, spec, role, path)
        _check_batch(out, role)
        return out

    def _cotangents(self, p: Point, cts: Any, batched: bool, res: Residual | None) -> dict:
        role = "batched cotangents" if batched else "cotangents"
        specs = self._output_specs(p, res)
        _require_mapping(
            cts, role, "output", [k for k, (s, _) in specs.items() if s.differentiable]
        )
        out = {}
        for path, c in cts.items():
            spec, shape = self._output_leaf(p, path, role, specs)
            pattern = shape if shape is not None else _bound(spec.shape, p.dims)
            full = ArraySpec(
                ((None,) if batched else ()) + tuple(pattern), spec.dtype, casting="same_kind"
            )
            out[path] = self._tangent_array(c, full, role, path)
        _check_batch(out, role)
        return out

    def _wrt(self, p: Point, wrt: Paths, role: str = "wrt") -> tuple[str, ...]:
        paths = _as_paths(wrt)
        if paths is None:
            return p.diff
        for path in paths:
            self._input_leaf(p, path, role)
        return paths

    def _of(self, p: Point, of: Paths, res: Residual | None, role: str = "of") -> tuple[str, ...]:
        specs = self._output_specs(p, res)
        paths = _as_paths(of)
        if paths is None:
            return tuple(k for k, (s, _) in specs.items() if s.differentiable)
        for path in paths:
            self._output_leaf(p, path, role, specs)
        return paths

    def _check_outputs(self, raw: Any, p: Point) -> Schema:
        # An instance the author's own Outputs(...) call validated needs no second pass.
        out = raw if _validated_numpy(raw, self.outputs) else self._validate_outputs(raw)
        if _dims_agree(p.dims, out):  # the usual case, checked without building labels
            return out
        if _tree.has_named_dims(type(p.inputs)) or _tree.has_named_dims(self.outputs):
            # Label the two sides so a mismatch says which field is an input, which an output.
            ins = [_tree.Leaf(f"inputs.{x.path}", x.spec, x.value) for x in p.leaves.values()]
            outs = [_tree.Leaf(f"outputs.{x.path}", x.spec, x.value) for x in _tree.leaves(out)]
            what = f"component '{self.name}' returned bad outputs"
            _tree.bind_dims([ins, outs], _prefixed(OutputValidationError, what))
        return out

    def _validate_outputs(self, raw: Any) -> Schema:
        if isinstance(raw, pydantic.BaseModel):
            raw = raw.model_dump()
        if not isinstance(raw, Mapping):
            raise OutputValidationError(
                f"component '{self.name}' returned {type(raw).__name__}; return an "
                f"{self.outputs.__name__} instance or a dict of its fields"
            )
        exact = _construct_exact(self.outputs, raw)
        if exact is not None:
            return exact
        try:
            return self.outputs.model_validate(raw)
        except pydantic.ValidationError as e:
            message, errors = format_pydantic(e, f"component '{self.name}' returned bad outputs")
            raise OutputValidationError(message, errors=errors) from None

    # ---- running ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _guard(self, endpoint: str) -> Iterator[None]:
        """Re-raise the author's exceptions as ComponentError, chained, with the endpoint."""
        self.calls[endpoint] += 1
        try:
            yield
        except ChainruleError:
            raise
        except pydantic.ValidationError as e:
            message, errors = format_pydantic(e, f"component '{self.name}' built bad outputs")
            raise OutputValidationError(message, errors=errors) from e
        except Exception as e:
            original = _carried_original(e)
            if original is not None:  # a nested component failed inside jitted code
                raise original.with_traceback(None)  # noqa: B904 (keeps the author's cause)
            raise ComponentError(
                f"component '{self.name}' raised in {endpoint}: {type(e).__name__}: {e}"
            ) from e

    def _apply_point(self, p: Point, keep: bool) -> tuple[Schema, Residual | None]:
        checking = _finite.active()
        if checking:
            self._check_given("apply", p, {})
        with self._guard("apply"):
            raw, residual = self.backend.apply(p, keep)
        out = self._check_outputs(raw, p)
        if checking:
            outs = ((x.path, x.value) for x in _tree.leaves(out))
            _finite.check_values(self.name, "apply", "output", outs, made=True)
        if residual is not None:
            residual.outputs = _output_shapes(out)  # shapes only: the residual pins no output
        if self.backend.cheap_eval_shape and self.backend.static_shapes:
            self._remember_shapes(p, out)
        return out, residual

    def _remember_shapes(self, p: Point, out: Schema) -> None:
        key = p.signature
        if key not in self._shapes:
            self._shapes[key] = _shapes_of(out)
            while len(self._shapes) > 64:
                self._shapes.popitem(last=False)

    def _cheap_shapes(self, p: Point) -> Schema | None:
        """Output shapes without running apply, or None when that needs apply."""
        if not self.backend.cheap_eval_shape:
            return None
        key = p.signature if self.backend.static_shapes else None
        if key in self._shapes:
            return self._shapes[key]
        with contextlib.suppress(EndpointUnavailableError):
            shapes = self.eval_shape(p)
            if key is not None:
                self._shapes[key] = shapes
            return shapes
        return None

    def _run(self, endpoint: str, p: Point, res: Residual | None, **request: Any) -> Any:
        impl = self.impls.get(endpoint)
        if impl is None:
            raise EndpointUnavailableError(
                f"component '{self.name}' ({self.backend.name} backend) has no {endpoint} and "
                f"none can be derived from what it has ({sorted(self.impls)}); define one "
                f"with @{self.name}.def_{endpoint}"
            )
        checking = _finite.active()
        if checking:
            self._check_given(endpoint, p, request)
        with self._guard(endpoint):
            result = impl.fn(p, res, **request)
        result = _numpy_tree(result)
        if checking:
            _finite.check_values(self.name, endpoint, "result", _flat_items(result), made=True)
        return result

    def _check_given(self, endpoint: str, p: Point, request: dict[str, Any]) -> None:
        _finite.check_values(self.name, endpoint, "input", p.values.items(), made=False)
        for role in ("tangents", "cotangents"):
            given = request.get(role)
            if isinstance(given, Mapping):
                _finite.check_values(self.name, endpoint, role[:-1], given.items(), made=False)

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
        out, handle = self._apply_kept(self.point(inputs), keep)
        return (out, handle) if keep else out

    def _apply_kept(
        self, p: Point, keep: bool, made_at: bytes | None = None
    ) -> tuple[Schema, Handle | None]:
        """Apply at a validated point; with `keep`, also the handle of the kept residual
        (`made_at`: the point's fingerprint, if the caller has it already)."""
        if not keep:
            return self._apply_point(p, keep)[0], None
        made_at = made_at or p.fingerprint()  # before apply: the point the forward pass saw
        out, residual = self._apply_point(p, keep)
        residual = residual or Residual(None, 0, _output_shapes(out))
        residual.fingerprint = made_at
        return out, self.residuals.put(self.name, residual)

    __call__ = apply

    def eval_shape(self, inputs: Any) -> Any:
        """Output shapes and dtypes without computing them (an output instance of ShapeDtype)."""
        p = self.point(inputs)
        with self._guard("eval_shape"):
            return self.backend.eval_shape(p)

    def jvp(
        self,
        inputs: Any,
        tangents: Mapping[str, Any],
        *,
        of: Paths = None,
        handle: Handle | None = None,
    ) -> dict[str, np.ndarray]:
        """Jacobian-vector product `{output path: J·t}` for tangents `{input path: t}`."""
        return self._forward("jvp", inputs, tangents, of, handle)

    def vjp(
        self,
        inputs: Any,
        cotangents: Mapping[str, Any],
        *,
        wrt: Paths = None,
        handle: Handle | None = None,
    ) -> dict[str, np.ndarray]:
        """Vector-Jacobian product `{input path: Jᵀ·c}` for cotangents `{output path: c}`."""
        return self._reverse("vjp", inputs, cotangents, wrt, handle)

    def jacobian(
        self, inputs: Any, *, wrt: Paths = None, of: Paths = None, handle: Handle | None = None
    ) -> dict[str, dict[str, np.ndarray]]:
        """`{output path: {input path: ∂out/∂in}}`, each of shape `out.shape + in.shape`."""
        p = self.point(inputs)
        res = self.residuals.get(handle, p.inputs)
        wrt_paths, of_paths = self._wrt(p, wrt), self._of(p, of, res)
        if not wrt_paths or not of_paths:  # an empty Jacobian; jax and torch cannot build one
            return {o: {} for o in of_paths}
        return self._run("jacobian", p, res, wrt=wrt_paths, of=of_paths)

    def batched_jvp(
        self,
        inputs: Any,
        tangents: Mapping[str, Any],
        *,
        of: Paths = None,
        handle: Handle | None = None,
    ) -> dict[str, np.ndarray]:
        """`jvp` for a leading batch axis of tangents, answered in one call."""
        return self._forward("batched_jvp", inputs, tangents, of, handle)

    def batched_vjp(
        self,
        inputs: Any,
        cotangents: Mapping[str, Any],
        *,
        wrt: Paths = None,
        handle: Handle | None = None,
    ) -> dict[str, np.ndarray]:
        """`vjp` for a leading batch axis of cotangents, answered in one call."""
        return self._reverse("batched_vjp", inputs, cotangents, wrt, handle)

    def _forward(
        self, endpoint: str, inputs: Any, tangents: Any, of: Paths, handle: Handle | None
    ) -> dict[str, np.ndarray]:
        """jvp or batched_jvp: validate, then run with the kept residual if there is one."""
        p = self.point(inputs)
        res = self.residuals.get(handle, p.inputs)
        t = self._tangents(p, tangents, batched=endpoint.startswith("batched"))
        result: dict[str, np.ndarray] = self._run(
            endpoint, p, res, tangents=t, of=self._of(p, of, res)
        )
        return result

    def _reverse(
        self, endpoint: str, inputs: Any, cotangents: Any, wrt: Paths, handle: Handle | None
    ) -> dict[str, np.ndarray]:
        """vjp or batched_vjp: validate, then run with the kept residual if there is one."""
        p = self.point(inputs)
        res = self.residuals.get(handle, p.inputs)
        c = self._cotangents(p, cotangents, batched=endpoint.startswith("batched"), res=res)
        result: dict[str, np.ndarray] = self._run(
            endpoint, p, res, cotangents=c, wrt=self._wrt(p, wrt)
        )
        return result

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
        p = self.point(inputs)
        if "hvp" not in self.impls:
            self._run("hvp", p, None)  # raises EndpointUnavailableError with the fix
        t = self._tangents(p, tangents, batched=False)
        c = self._hvp_weights(p, cotangents, of)
        return self._run("hvp", p, None, tangents=t, cotangents=c, wrt=self._wrt(p, wrt))

    def _hvp_weights(
        self, p: Point, cotangents: Mapping[str, Any] | None, of: str | None
    ) -> dict[str, np.ndarray]:
        """The output weights of an hvp: the cotangents given, or 1 on the scalar output `of`."""
        if cotangents is not None and of is not None:
            raise ValidationError(
                f"hvp of component '{self.name}': give cotangents= (output weights) or of= "
                "(one scalar output), not both",
                errors=[{"path": "of", "expected": "of or cotangents", "got": "both"}],
            )
        if cotangents is not None:
            return self._cotangents(p, cotangents, batched=False, res=None)
        scalar = self._scalar_output(p, of)
        spec, shape = self._output_specs(p, None)[scalar]
        if shape is None:
            shape = p.out_shapes((scalar,), None)[scalar]
        return {scalar: np.ones(shape, spec.dtype)}

    def _scalar_output(self, p: Point, of: str | None) -> str:
        specs = self._output_specs(p, None)
        if of is None:
            declared = {
                k: shape if shape is not None else _bound(s.shape, p.dims)
                for k, (s, shape) in specs.items()
            }
            scalars = [
                k
                for k, (s, _) in specs.items()
                if s.differentiable
                and all(type(d) is int for d in declared[k])
                and int(np.prod(declared[k])) == 1
            ]
            if len(scalars) != 1:
                raise ValidationError(
                    f"hvp of component '{self.name}' needs cotangents={{output path: weights}} "
                    f"or of=<a scalar differentiable output>; scalar differentiable outputs: "
                    f"{scalars}"
                )
            return scalars[0]
        _, shape = self._output_leaf(p, of, "hvp of", specs)
        if shape is not None and int(np.prod(shape)) != 1:
            raise ValidationError(
                f"hvp of component '{self.name}': output '{of}' has shape {shape}, expected a "
                "scalar for of=; for a vector output pass cotangents={"
                f"'{of}': weights}} (the Hessian of the weighted sum)"
            )
        return of

    def release(self, handle: Handle) -> None:
        """Drop a kept linearization now."""
        self.residuals.release(handle)

    def close(self) -> None:
        """Release open resources (a remote component's connections); calls still work after,
        reconnecting as needed."""
        self.backend.close()


def _output_shapes(out: Schema) -> list[tuple[str, ArraySpec, Any, Any]]:
    """What a residual keeps of its outputs: (path, spec, shape, dtype) of each leaf, no data
    (plain tuples: cheap to make on every keep; `_shape_leaves` builds leaves when needed)."""
    return [(x.path, x.spec, x.value.shape, x.value.dtype) for x in _tree.leaves(out)]


def _shapes_of(out: Schema) -> Schema:
    """`out` with `ShapeDtype` leaves: its shapes, dtypes and static values, no array data."""
    shapes = {x.path: ShapeDtype(tuple(x.value.shape), x.value.dtype) for x in _tree.leaves(out)}
    return _tree.replace_leaves(out, shapes)


def _construct_exact(model: type[Schema], data: Any) -> Schema | None:
    """`data` as a `model` instance without Pydantic, when nothing needs converting: a flat
    schema, every array already a numpy array of the exact dtype and a fitting shape, every
    other value of exactly its annotated type, no unknown keys. Else None (validate normally).

    Arrays that crossed the wire or came from another component are usually exact already;
    this skips a validation pass that costs more than a small call itself.
    """
    plan = _exact_plan(model)
    if plan is None or type(data) is not dict:
        return None
    steps, names = plan
    if not names.issuperset(data):  # unknown keys
        return None
    for name, spec, kind, required in steps:
        value = data.get(name, _MISSING)
        if value is _MISSING:
            if required:
                return None
        elif spec is None:
            if type(value) is not kind:
                return None
        elif not (
            type(value) is np.ndarray and value.dtype == kind and _shape_ok(spec.shape, value.shape)
        ):
            return None
    return model.model_construct(**data)


_MISSING = object()


@functools.cache
def _static_leaves(model: type[Schema]) -> tuple[tuple[str, ArraySpec], ...] | None:
    """The array leaves a schema class fixes (None when the instance decides), cached."""
    found = _tree.class_leaves(model)
    return None if found is None else tuple(found.items())


@functools.cache
def _exact_plan(model: type[Schema]) -> tuple[tuple[Any, ...], frozenset[str]] | None:
    """Per flat schema: `(field, spec, dtype or annotation, required)` for each field, and
    the field names: what `_construct_exact` checks, looked up once per class."""
    flat = _tree.flat_fields(model)
    if flat is None:
        return None
    fields = model.model_fields
    steps = tuple(
        (name, spec, spec.dtype if spec is not None else fields[name].annotation,
         fields[name].is_required())
        for name, spec in flat
    )  # fmt: skip
    return steps, frozenset(fields)


def _dims_agree(dims: Mapping[str, int], out: Schema) -> bool:
    """Whether the outputs' named dimensions agree with each other and with the inputs'."""
    if not _tree.has_named_dims(type(out)):
        return True
    seen = dict(dims)
    for leaf in _tree.leaves(out):
        for name, size in leaf.spec.bind(tuple(leaf.value.shape)).items():
            if seen.setdefault(name, size) != size:
                return False
    return True


def _validated_numpy(raw: Any, outputs: type[Schema]) -> bool:
    """Whether `raw` is a flat outputs instance whose arrays already match their specs exactly
    (as when the author's code built it with validation): then it needs no second pass."""
    if type(raw) is not outputs or _tree.flat_fields(outputs) is None:
        return False
    for leaf in _tree.leaves(raw):
        value = leaf.value
        if not (isinstance(value, np.ndarray) and value.dtype == leaf.spec.dtype):
            return False
        if not _shape_ok(leaf.spec.shape, value.shape):
            return False
    return True


def _bound(shape: tuple[Any, ...], dims: Mapping[str, int]) -> tuple[Any, ...]:
    return tuple(dims.get(d, d) if isinstance(d, str) else d for d in shape)


def _require_mapping(value: Any, role: str, kind: str, paths: Sequence[str]) -> None:
    if not isinstance(value, Mapping):
        raise ValidationError(
            f"{role} must be a dict {{{kind} path: array}} over {list(paths)}, "
            f"got {type(value).__name__}"
        )


def _check_batch(arrays: Mapping[str, np.ndarray], role: str) -> None:
    sizes = {p: a.shape[0] for p, a in arrays.items() if "batched" in role}
    if "batched" in role and not sizes:
        raise ValidationError(
            f"{role} are empty; a batched call takes its batch size from them: give at least "
            "one leaf, with a leading batch axis",
            errors=[{"path": role, "expected": "at least one leaf", "got": "{}"}],
        )
    if 0 in sizes.values():
        raise ValidationError(
            f"{role} have batch size 0; send at least one row along the leading axis",
            errors=[
                {"path": f"{role}.{p}", "expected": "batch size >= 1", "got": n}
                for p, n in sizes.items()
                if n == 0
            ],
        )
    if len(set(sizes.values())) > 1:
        first = next(iter(sizes.values()))
        raise ValidationError(
            f"{role} have different batch sizes {sizes}; give every leaf the same leading axis",
            errors=[
                {"path": f"{role}.{p}", "expected": f"batch size {first}", "got": n}
                for p, n in sizes.items()
            ],
        )


def _flat_items(tree: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(path, array) of a nested result dict, e.g. a Jacobian's `{out: {in: block}}`."""
    if isinstance(tree, Mapping):
        for k, v in tree.items():
            yield from _flat_items(v, f"{prefix}{k}" if not prefix else f"{prefix}/{k}")
    else:
        yield prefix, tree


def _numpy_tree(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _numpy_tree(v) for k, v in value.items()}
    return value if isinstance(value, np.ndarray) else np.asarray(value)


def _written_impl(fn: Callable[..., Any], endpoint: str) -> Callable[..., Any]:
    """Adapt an author's function `fn(inputs, <request>...)` to the implementation shape."""
    accepted = set(inspect.signature(fn).parameters)
    if endpoint == "hvp" and "cotangents" not in accepted:
        return _written_scalar_hvp(fn, accepted)

    def impl(p: Point, res: Any, **request: Any) -> Any:
        kwargs = {k: v for k, v in request.items() if k in accepted}
        return fn(p.inputs, **kwargs)

    impl.__name__ = f"written_{endpoint}"
    return impl


def _written_scalar_hvp(fn: Callable[..., Any], accepted: set[str]) -> Callable[..., Any]:
    """An author's hvp of one scalar output, `fn(inputs, tangents[, of, wrt])`, as the weighted
    form: the sum of its answers for each weighted output, each weight a scalar."""

    def impl(p: Any, res: Any, tangents: Any, cotangents: Any, wrt: Any) -> Any:
        total: dict[str, np.ndarray] = {}
        for o, weight in cotangents.items():
            if np.size(weight) != 1:
                raise EndpointUnavailableError(
                    f"the hvp written for component '{p.component.name}' is of one scalar "
                    f"output (it takes no cotangents=), but output '{o}' has shape "
                    f"{np.shape(weight)}; give it a `cotangents` parameter (output weights: "
                    "the Hessian of the weighted sum of outputs) to serve vector outputs"
                )
            given = {"tangents": tangents, "of": o, "wrt": wrt}
            kwargs = {k: v for k, v in given.items() if k in accepted}
            answer = fn(p.inputs, **kwargs)
            for w in wrt:
                term = float(np.reshape(weight, ())) * np.asarray(answer[w])
                total[w] = total[w] + term if w in total else term
        return {w: total[w] if w in total else np.zeros_like(p.values[w]) for w in wrt}

    impl.__name__ = "written_hvp"
    return impl


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
