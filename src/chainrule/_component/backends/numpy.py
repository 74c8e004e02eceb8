"""The `numpy` backend: plain Python/NumPy code, derivatives by finite differences.

Steps follow the usual error balance: truncation O(h²) against round-off O(eps/h) gives
h ≈ eps^(1/3)·scale for central differences (eps^(1/2)·scale for forward), per leaf, from its
dtype and magnitude. A kept residual holds the base outputs (reused by forward differences)
and memoizes Jacobians, so `vjp` after `apply(keep=True)` reuses the work already done.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from chainrule._component.residuals import Residual
from chainrule._schema.errors import EndpointUnavailableError, ValidationError
from chainrule._schema.schema import Schema, ShapeDtype
from chainrule._schema.tree import class_leaves, leaves, replace_leaves

from .base import Backend, Capabilities, FiniteDifferences, Lane, as_outputs, flat_site

if TYPE_CHECKING:
    from chainrule._component.component import Component, Point

Arrays = dict[str, np.ndarray]


def _size(dim: Any, dims: Mapping[str, int]) -> int | None:
    """The size of an output dimension known from the inputs, or None."""
    if isinstance(dim, str):
        return dims.get(dim)
    return dim if isinstance(dim, int) else None


class NumpyBackend(Backend):
    """Finite differences around the author's NumPy `apply`."""

    name = "numpy"
    provenance = "finite-difference"
    cost = 10.0
    native = ("jvp", "vjp", "jacobian", "batched_jvp", "batched_vjp")
    eval_shape_provenance = "named dimensions (else needs apply)"
    capabilities = Capabilities(static_shapes=False)  # NumPy code may return data-dependent shapes

    def __init__(
        self,
        fn: Callable[[Any], Any],
        inputs: type[Schema],
        outputs: type[Schema],
        options: FiniteDifferences | None = None,
    ) -> None:
        super().__init__(fn, inputs, outputs)
        self.options = options or FiniteDifferences()

    # ---- forward ---------------------------------------------------------------------------

    def _outputs(self, p: Point, values: Mapping[str, np.ndarray]) -> Schema:
        inst = replace_leaves(p.inputs, values) if values else p.inputs
        return as_outputs(self.fn(inst), self.outputs, p.component.name)

    def _diff_out(self, p: Point, values: Mapping[str, np.ndarray], of: tuple[str, ...]) -> Arrays:
        out = {x.path: x.value for x in leaves(self._outputs(p, values))}
        return {o: np.asarray(out[o], dtype=np.float64) for o in of}

    def apply(self, p: Point, keep: bool) -> tuple[Any, Residual | None]:
        out = self._outputs(p, {})
        if not keep:
            return out, None
        # Copies: the outputs may be views of the inputs, or arrays the function or the
        # caller changes later; the base point of finite differences must not move.
        base = {x.path: np.array(x.value) for x in leaves(out)}
        return out, Residual(base, sum(v.nbytes for v in base.values()), None)

    def host_lane(
        self, component: Component, in_paths: tuple[str, ...], out_paths: tuple[str, ...]
    ) -> Lane | None:
        """A `NumpyLane` for a call site over every array leaf of flat schemas."""
        from .numpy_lane import NumpyLane

        usable = flat_site(component, in_paths, out_paths)
        return NumpyLane(component, in_paths, out_paths) if usable else None

    def eval_shape(self, p: Point) -> Any:
        specs = class_leaves(self.outputs)
        fields = set(self.outputs.model_fields)
        why = None
        if specs is None or set(specs) != fields:
            why = "its outputs include non-array or variable-length fields"
        elif any(_size(d, p.dims) is None for s in specs.values() for d in s.shape):
            why = "some output dimensions are free (None/...) or named but not set by the inputs"
        if why:
            raise EndpointUnavailableError(
                f"eval_shape of numpy component '{p.component.name}' needs apply: {why}; "
                "declare output shapes with fixed or named dimensions tied to the inputs "
                "(e.g. Array[('n',), Float64]), or call apply"
            )
        shapes: dict[str, Any] = {
            k: ShapeDtype(tuple(int(_size(d, p.dims) or 0) for d in s.shape), s.dtype)
            for k, s in (specs or {}).items()
        }
        return self.outputs.model_construct(None, **shapes)

    # ---- finite differences ----------------------------------------------------------------

    def _step(self, path: str, x: np.ndarray) -> float:
        step = self.options.step
        if isinstance(step, Mapping) and path in step:
            return float(step[path])
        if isinstance(step, int | float):
            return float(step)
        eps = float(np.finfo(x.dtype).eps)
        power = 1 / 3 if self.options.method == "central" else 1 / 2
        scale = max(1.0, float(np.max(np.abs(x)))) if x.size else 1.0
        return eps**power * scale

    def _base(self, p: Point, res: Residual | None, of: tuple[str, ...]) -> Arrays:
        if res is not None and isinstance(res.data, dict):
            return {o: np.asarray(res.data[o], dtype=np.float64) for o in of}
        return self._diff_out(p, {}, of)

    def _directional(
        self, p: Point, path: str, t: np.ndarray, of: tuple[str, ...], base: Callable[[], Arrays]
    ) -> Arrays:
        """Derivative of the `of` outputs along tangent `t` of leaf `path` alone."""
        x = p.values[path]
        if x.dtype.kind == "c":
            raise ValidationError(
                f"finite differences of component '{p.component.name}' support real inputs "
                f"only; '{path}' is {x.dtype.name}. Use the jax or torch backend"
            )
        norm = float(np.max(np.abs(t))) if t.size else 0.0
        if norm == 0.0:
            return {o: np.zeros_like(v) for o, v in base().items()}
        h = self._step(path, x) / norm
        plus = self._diff_out(p, {path: (x + h * t).astype(x.dtype)}, of)
        if self.options.method == "forward":
            f0 = base()
            return {o: (plus[o] - f0[o]) / h for o in of}
        minus = self._diff_out(p, {path: (x - h * t).astype(x.dtype)}, of)
        return {o: (plus[o] - minus[o]) / (2 * h) for o in of}

    def _jvp(
        self, p: Point, tangents: Arrays, of: tuple[str, ...], base: Callable[[], Arrays]
    ) -> Arrays:
        total: Arrays | None = None
        for path, t in tangents.items():
            d = self._directional(p, path, t, of, base)
            total = d if total is None else {o: total[o] + d[o] for o in of}
        return total if total is not None else {o: np.zeros_like(v) for o, v in base().items()}

    def _memo_base(
        self, p: Point, res: Residual | None, of: tuple[str, ...]
    ) -> Callable[[], Arrays]:
        cache: dict[str, Arrays] = {}

        def base() -> Arrays:
            if "f0" not in cache:
                cache["f0"] = self._base(p, res, of)
            return cache["f0"]

        return base

    def jvp(self, p: Point, res: Residual | None, tangents: Arrays, of: tuple[str, ...]) -> Arrays:
        return self._jvp(p, tangents, of, self._memo_base(p, res, of))

    def batched_jvp(
        self, p: Point, res: Residual | None, tangents: Arrays, of: tuple[str, ...]
    ) -> Arrays:
        base = self._memo_base(p, res, of)  # one base evaluation for every tangent
        size = len(next(iter(tangents.values()))) if tangents else 0
        rows = [self._jvp(p, {k: v[b] for k, v in tangents.items()}, of, base) for b in range(size)]
        return {o: np.stack([r[o] for r in rows]) for o in of} if rows else {}

    def _column(
        self, p: Point, path: str, j: int, of: tuple[str, ...], base: Callable[[], Arrays]
    ) -> Arrays:
        e = np.zeros(p.values[path].size, dtype=p.values[path].dtype)
        e[j] = 1.0
        return self._directional(p, path, e.reshape(p.values[path].shape), of, base)

    def jacobian(
        self, p: Point, res: Residual | None, wrt: tuple[str, ...], of: tuple[str, ...]
    ) -> dict[str, Arrays]:
        key = ("jacobian", wrt, of)
        if res is not None and key in res.memo:
            memo: dict[str, Arrays] = res.memo[key]
            return memo
        base = self._memo_base(p, res, of)
        jac: dict[str, Arrays] = {o: {} for o in of}
        for w in wrt:
            shape = p.values[w].shape
            cols = [self._column(p, w, j, of, base) for j in range(math.prod(shape))]
            for o in of:
                out_shape = base()[o].shape if not cols else cols[0][o].shape
                stacked = (
                    np.stack([c[o] for c in cols], axis=-1) if cols else np.zeros((*out_shape, 0))
                )
                jac[o][w] = stacked.reshape(out_shape + shape)
        if res is not None:
            res.remember(key, jac, sum(v.nbytes for row in jac.values() for v in row.values()))
        return jac

    def vjp(
        self, p: Point, res: Residual | None, cotangents: Arrays, wrt: tuple[str, ...]
    ) -> Arrays:
        if not cotangents:  # a zero cotangent; the batched form would have no row to take
            return {w: np.zeros_like(p.values[w]) for w in wrt}
        batched = {k: v[None] for k, v in cotangents.items()}
        return {k: v[0] for k, v in self.batched_vjp(p, res, batched, wrt).items()}

    def batched_vjp(
        self, p: Point, res: Residual | None, cotangents: Arrays, wrt: tuple[str, ...]
    ) -> Arrays:
        jac = self.jacobian(p, res, wrt, tuple(cotangents))  # one Jacobian for every cotangent
        size = len(next(iter(cotangents.values()))) if cotangents else 0
        out = {}
        for w in wrt:
            acc = np.zeros((size, *p.values[w].shape))
            for o, c in cotangents.items():
                # Explicit sizes: -1 is ambiguous when an array (or the batch) is empty.
                n_out = math.prod(c.shape[1:])
                flat = c.reshape(size, n_out) @ jac[o][w].reshape(n_out, p.values[w].size)
                acc = acc + flat.reshape(acc.shape)
            out[w] = acc.astype(p.values[w].dtype)
        return out


BACKEND = NumpyBackend
