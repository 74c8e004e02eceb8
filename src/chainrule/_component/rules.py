"""The rules that derive one endpoint from another, and `resolve`, which picks the cheapest.

Every endpoint implementation, whoever provides it (a backend, the author, a derivation), has
the same shape: `impl(point, residual, **request) -> result`, where `point` is a validated
input point (see `point.Point`), `residual` a kept linearization or None, and the request
keywords are those of the endpoint's row (`endpoints.ENDPOINTS`), validated. Adding a way to
derive one endpoint from another is a row in `RULES`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = ["RULES", "Impl", "ImplFn", "PointLike", "Rule", "resolve"]


class PointLike(Protocol):
    """What derivations need of an input point."""

    values: Mapping[str, np.ndarray]

    def out_shapes(self, paths: tuple[str, ...], residual: Any) -> dict[str, tuple[int, ...]]: ...


ImplFn = Callable[..., Any]


@dataclass(frozen=True)
class Impl:
    """An endpoint implementation and where it came from (shown by `/schema` and reports)."""

    fn: ImplFn
    provenance: str
    cost: float


@dataclass(frozen=True)
class Rule:
    """`target` can be computed from `source` at `cost` (added to the source's cost)."""

    target: str
    source: str
    cost: float
    build: Callable[[ImplFn], ImplFn]


def _tensordot(a: np.ndarray, b: np.ndarray, axes: int) -> np.ndarray:
    return np.tensordot(a, b, axes=axes) if axes else np.multiply.outer(a, b)


def _jvp_from_jacobian(jacobian: ImplFn) -> ImplFn:
    def jvp(p: PointLike, res: Any, tangents: dict[str, np.ndarray], of: tuple[str, ...]) -> Any:
        jac = jacobian(p, res, wrt=tuple(tangents), of=of)
        out = {}
        for o in of:
            terms = [_contract_in(jac[o][w], t) for w, t in tangents.items()]
            out[o] = sum(terms[1:], terms[0]) if terms else None
        return out

    return jvp


def _contract_in(jac: np.ndarray, t: np.ndarray) -> np.ndarray:
    # jac has shape out.shape + in.shape; contract the trailing in-dims with the tangent.
    return np.tensordot(jac, t, axes=t.ndim) if t.ndim else jac * t


def _vjp_from_jacobian(jacobian: ImplFn) -> ImplFn:
    def vjp(p: PointLike, res: Any, cotangents: dict[str, np.ndarray], wrt: tuple[str, ...]) -> Any:
        jac = jacobian(p, res, wrt=wrt, of=tuple(cotangents))
        out = {}
        for w in wrt:
            acc = np.zeros(np.shape(p.values[w]), dtype=np.result_type(p.values[w], np.float32))
            for o, c in cotangents.items():
                acc = acc + (np.tensordot(c, jac[o][w], axes=c.ndim) if c.ndim else c * jac[o][w])
            out[w] = acc
        return out

    return vjp


def _batched_jvp_from_jacobian(jacobian: ImplFn) -> ImplFn:
    def batched_jvp(
        p: PointLike, res: Any, tangents: dict[str, np.ndarray], of: tuple[str, ...]
    ) -> Any:
        jac = jacobian(p, res, wrt=tuple(tangents), of=of)  # one Jacobian for every tangent
        size = len(next(iter(tangents.values()))) if tangents else 0
        if size == 0:
            return _empty_batch(p, res, "tangents", {"of": of})
        return {
            o: np.stack(
                [
                    sum(_contract_in(jac[o][w], t[b]) for w, t in tangents.items())
                    for b in range(size)
                ]
            )
            for o in of
        }

    return batched_jvp


def _batched_vjp_from_jacobian(jacobian: ImplFn) -> ImplFn:
    def batched_vjp(
        p: PointLike, res: Any, cotangents: dict[str, np.ndarray], wrt: tuple[str, ...]
    ) -> Any:
        jac = jacobian(p, res, wrt=wrt, of=tuple(cotangents))  # one Jacobian for every row
        once = lambda *a, **k: jac  # noqa: E731
        size = len(next(iter(cotangents.values()))) if cotangents else 0
        if size == 0:
            return _empty_batch(p, res, "cotangents", {"wrt": wrt})
        rows = [
            _vjp_from_jacobian(once)(p, res, {o: c[b] for o, c in cotangents.items()}, wrt)
            for b in range(size)
        ]
        return {w: np.stack([r[w] for r in rows]) for w in wrt}

    return batched_vjp


def _blocks(shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, dict[str, slice]]:
    """Stack one identity block per leaf along a batch axis: total size and each slice."""
    total, slices = 0, {}
    for path, shape in shapes.items():
        n = math.prod(shape)
        slices[path] = slice(total, total + n)
        total += n
    return total, slices


def _basis(shapes: Mapping[str, tuple[int, ...]], dtypes: Mapping[str, Any]) -> dict[str, Any]:
    total, slices = _blocks(shapes)
    basis = {}
    for path, shape in shapes.items():
        b = np.zeros((total, math.prod(shape)), dtype=dtypes[path])
        b[slices[path]] = np.eye(math.prod(shape), dtype=dtypes[path])
        basis[path] = b.reshape((total, *shape))
    return basis


def jacobian_from_batched_vjp(batched_vjp: ImplFn) -> ImplFn:
    # One batched request answers every output row: jacrev of a remote component is one call.
    def jacobian(p: PointLike, res: Any, wrt: tuple[str, ...], of: tuple[str, ...]) -> Any:
        shapes = p.out_shapes(of, res)
        dtypes = {o: np.float64 for o in of}
        rows = batched_vjp(p, res, cotangents=_basis(shapes, dtypes), wrt=wrt)
        _, slices = _blocks(shapes)
        return {
            o: {w: rows[w][slices[o]].reshape(shapes[o] + np.shape(p.values[w])) for w in wrt}
            for o in of
        }

    return jacobian


def jacobian_from_batched_jvp(batched_jvp: ImplFn) -> ImplFn:
    def jacobian(p: PointLike, res: Any, wrt: tuple[str, ...], of: tuple[str, ...]) -> Any:
        shapes = {w: np.shape(p.values[w]) for w in wrt}
        dtypes = {w: p.values[w].dtype for w in wrt}
        cols = batched_jvp(p, res, tangents=_basis(shapes, dtypes), of=of)
        _, slices = _blocks(shapes)
        jac: dict[str, dict[str, np.ndarray]] = {}
        for o in of:
            col = np.asarray(cols[o])
            jac[o] = {
                w: np.moveaxis(col[slices[w]], 0, -1).reshape(col.shape[1:] + shapes[w])
                for w in wrt
            }
        return jac

    return jacobian


def _batched_from_single(single: ImplFn, key: str) -> ImplFn:
    def batched(p: PointLike, res: Any, **request: Any) -> Any:
        stacked = request.pop(key)
        size = len(next(iter(stacked.values()))) if stacked else 0
        if size == 0:
            return _empty_batch(p, res, key, request)
        results = [
            single(p, res, **{key: {k: v[b] for k, v in stacked.items()}}, **request)
            for b in range(size)
        ]
        return {k: np.stack([np.asarray(r[k]) for r in results]) for k in results[0]}

    return batched


def _empty_batch(p: PointLike, res: Any, key: str, request: Mapping[str, Any]) -> Any:
    """The answer to a batch of no rows, from shapes alone: there is no row to ask the source
    endpoint about. Reached when a derived Jacobian has no rows or columns (an empty input or
    output), whose basis is a batch of 0: `{input path: (0, *shape)}` for cotangents (a
    batched vjp), `{output path: (0, *shape)}` for tangents (a batched jvp)."""
    if key == "cotangents":
        values = {w: np.asarray(p.values[w]) for w in request["wrt"]}
        return {
            w: np.zeros((0, *v.shape), np.result_type(v, np.float32)) for w, v in values.items()
        }
    shapes = p.out_shapes(tuple(request["of"]), res)
    return {o: np.zeros((0, *shape)) for o, shape in shapes.items()}


def _single_from_batched(batched: ImplFn, key: str) -> ImplFn:
    def single(p: PointLike, res: Any, **request: Any) -> Any:
        one = {k: np.asarray(v)[None] for k, v in request.pop(key).items()}
        return {k: np.asarray(v)[0] for k, v in batched(p, res, **{key: one}, **request).items()}

    return single


RULES: tuple[Rule, ...] = (
    Rule("jvp", "jacobian", 1.0, _jvp_from_jacobian),
    Rule("vjp", "jacobian", 1.0, _vjp_from_jacobian),
    Rule("jacobian", "batched_vjp", 1.0, jacobian_from_batched_vjp),
    Rule("jacobian", "batched_jvp", 1.1, jacobian_from_batched_jvp),
    Rule("batched_jvp", "jacobian", 1.0, _batched_jvp_from_jacobian),
    Rule("batched_vjp", "jacobian", 1.0, _batched_vjp_from_jacobian),
    Rule("batched_jvp", "jvp", 0.5, lambda f: _batched_from_single(f, "tangents")),
    Rule("batched_vjp", "vjp", 0.5, lambda f: _batched_from_single(f, "cotangents")),
    Rule("jvp", "batched_jvp", 0.1, lambda f: _single_from_batched(f, "tangents")),
    Rule("vjp", "batched_vjp", 0.1, lambda f: _single_from_batched(f, "cotangents")),
)


def resolve(sources: Mapping[str, Impl]) -> dict[str, Impl]:
    """The cheapest implementation of every endpoint reachable from `sources`.

    Costs are small numbers (written 0, AD 1, finite differences 10) plus each rule's cost, so
    an author's vjp is preferred to a backend's, and anything exact to finite differences.
    """
    best = dict(sources)
    changed = True
    while changed:
        changed = False
        for rule in RULES:
            src = best.get(rule.source)
            if src is None:
                continue
            cost = src.cost + rule.cost
            current = best.get(rule.target)
            if current is None or cost < current.cost - 1e-9:
                origin = src.provenance.split(" <- ")[-1]
                note = f"derived: {rule.target} <- {rule.source} <- {origin}"
                if "derived" in src.provenance:
                    note = f"derived: {rule.target} <- {src.provenance.removeprefix('derived: ')}"
                best[rule.target] = Impl(rule.build(src.fn), note, cost)
                changed = True
    return _jacobian_by_size(best)


def _jacobian_by_size(best: dict[str, Impl]) -> dict[str, Impl]:
    """A derived Jacobian takes rows (batched vjp) or columns (batched jvp), whichever are fewer.

    The cost table cannot know sizes; when both batched forms exist, decide per call.
    """
    jac = best.get("jacobian")
    if jac is None or not jac.provenance.startswith("derived: jacobian <- batched_vjp"):
        return best
    if "batched_jvp" not in best or "jacobian" in best["batched_jvp"].provenance:
        return best  # columns would come from the Jacobian itself: no alternative
    by_rows, by_cols = jac.fn, jacobian_from_batched_jvp(best["batched_jvp"].fn)

    def jacobian(p: PointLike, res: Any, wrt: tuple[str, ...], of: tuple[str, ...]) -> Any:
        n_in = sum(int(np.size(p.values[w])) for w in wrt)
        n_out = sum(math.prod(s) for s in p.out_shapes(of, res).values())
        return (by_cols if n_in < n_out else by_rows)(p, res, wrt=wrt, of=of)

    note = jac.provenance + " (or <- batched_jvp when inputs are fewer)"
    return {**best, "jacobian": Impl(jacobian, note, jac.cost)}
