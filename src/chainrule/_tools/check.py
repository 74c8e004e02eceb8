"""`check_gradients`: every derivative endpoint of a component against finite differences.

The reference is a Richardson-extrapolated central difference of `apply` along a random
direction u (error O(h⁴)), so checks cost a handful of `apply` calls whatever the input size:
  jvp          J·u                 vs  FD along u
  vjp          ⟨Jᵀ·v, u⟩           vs  ⟨v, FD along u⟩
  jacobian     J·u (contracted)    vs  FD along u
  batched_*    each batch row      vs  its FD reference
  dot product  ⟨v, J·u⟩ (jvp)      vs  ⟨Jᵀ·v, u⟩ (vjp): no FD involved
  hvp          H·u, H of ⟨v, y⟩    vs  FD of the vjp gradient Jᵀ·v along u
at the given point and at random perturbations of it. Which comparison an endpoint gets is
its row's `check` kind in the endpoint table; `_ROUTINES` maps each kind to its routine.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chainrule._component.component import Component
from chainrule._component.endpoints import ENDPOINTS
from chainrule._component.point import Point
from chainrule._schema.errors import ChainruleError, EndpointUnavailableError
from chainrule._schema.tree import leaves, replace_leaves

__all__ = ["Check", "GradientReport", "check_gradients"]

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class Check:
    """One comparison: endpoint, point index, relative error, tolerance, verdict."""

    endpoint: str
    point: int
    error: float
    tolerance: float
    ok: bool
    detail: str = ""


@dataclass
class GradientReport:
    """Result of `check_gradients`; `.ok` is True when every check passed.

    Printing it shows a table (a rich table under rich).
    """

    component: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def _rows(self) -> list[tuple[str, str, str, str, str]]:
        return [
            (
                c.endpoint,
                str(c.point),
                "-" if np.isnan(c.error) else f"{c.error:.2e}",
                f"{c.tolerance:.1e}",
                c.detail
                if c.detail.startswith("n/a")
                else ("ok" if c.ok else "FAIL") + (f" {c.detail}" if c.detail else ""),
            )
            for c in self.checks
        ]

    def __str__(self) -> str:
        head = ("endpoint", "point", "rel. error", "tolerance", "result")
        rows = [head, *self._rows()]
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
        verdict = "all passed" if self.ok else f"{len(self.failures)} FAILED"
        return f"gradient check of '{self.component}': {verdict}\n" + "\n".join(lines)

    def __rich__(self) -> Any:
        from rich.table import Table

        verdict = "[green]all passed" if self.ok else f"[red]{len(self.failures)} FAILED"
        table = Table(title=f"gradient check of '{self.component}': {verdict}")
        for name in ("endpoint", "point", "rel. error", "tolerance", "result"):
            table.add_column(name)
        for row in self._rows():
            style = None if row[4].startswith(("ok", "n/a")) else "red"
            table.add_row(*row, style=style)
        return table


def _dot(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    return float(sum(np.vdot(np.asarray(b[k]), np.asarray(a[k])).real for k in a))


def _norm(a: Mapping[str, Any]) -> float:
    return float(np.sqrt(sum(np.sum(np.abs(np.asarray(v)) ** 2) for v in a.values())))


def _sub(a: Mapping[str, Any], b: Mapping[str, Any]) -> Arrays:
    return {k: np.asarray(a[k]) - np.asarray(b[k]) for k in a}


class _Checker:
    def __init__(self, comp: Component, rtol: float, atol: float, rng: np.random.Generator):
        self.comp, self.rtol, self.atol, self.rng = comp, rtol, atol, rng
        self.report = GradientReport(comp.name)

    def compare(self, endpoint: str, k: int, got: Any, want: Any) -> None:
        if isinstance(got, float):
            diff, scale = abs(got - want), max(abs(got), abs(want))
        else:
            diff, scale = _norm(_sub(got, want)), max(_norm(got), _norm(want))
        tol = self.atol + self.rtol * scale
        err = diff / scale if scale > 0 else diff
        self.report.checks.append(Check(endpoint, k, err, self.rtol, diff <= tol))

    def guarded(self, endpoint: str, k: int, fn: Callable[[], None]) -> None:
        try:
            fn()
        except EndpointUnavailableError as e:
            # Declared but not computable here (e.g. second order through a finite-difference
            # part of a pipeline): a missing capability, reported, not a wrong derivative.
            self.report.checks.append(
                Check(endpoint, k, float("nan"), self.rtol, True, f"n/a: {e}")
            )
        except ChainruleError as e:
            self.report.checks.append(
                Check(endpoint, k, float("nan"), self.rtol, False, f"{type(e).__name__}: {e}")
            )

    def outputs(self, p: Point, values: Mapping[str, np.ndarray], of: tuple[str, ...]) -> Arrays:
        out = self.comp.apply(replace_leaves(p.inputs, values))
        found = {x.path: np.asarray(x.value, dtype=np.float64) for x in leaves(out)}
        return {o: found[o] for o in of}

    def directional(self, p: Point, u: Arrays, of: tuple[str, ...]) -> Arrays:
        """Richardson-extrapolated central difference of the `of` outputs along u."""
        scale = max([1.0, *(float(np.max(np.abs(p.values[w]), initial=0)) for w in u)])
        h = 1e-3 * scale / max(_norm(u), 1e-300)

        def central(step: float) -> Arrays:
            plus = self.outputs(p, {w: p.values[w] + step * u[w] for w in u}, of)
            minus = self.outputs(p, {w: p.values[w] - step * u[w] for w in u}, of)
            return {o: (plus[o] - minus[o]) / (2 * step) for o in of}

        coarse, fine = central(h), central(h / 2)
        return {o: (4 * fine[o] - coarse[o]) / 3 for o in of}

    def random_like(self, arrays: Mapping[str, Any]) -> Arrays:
        return {
            k: self.rng.standard_normal(np.shape(v)).astype(np.asarray(v).dtype)
            for k, v in arrays.items()
        }


def _contract(jac: Mapping[str, Mapping[str, np.ndarray]], u: Arrays) -> Arrays:
    out = {}
    for o, row in jac.items():
        terms = [
            np.tensordot(row[w], u[w], axes=u[w].ndim) if u[w].ndim else row[w] * u[w] for w in u
        ]
        out[o] = sum(terms[1:], terms[0])
    return out


@dataclass(frozen=True)
class _At:
    """One checked point: its random directions u (inputs) and v (outputs), and the
    finite-difference references of the outputs along u."""

    p: Point
    k: int
    wrt: tuple[str, ...]
    of: tuple[str, ...]
    u: Arrays
    u2: Arrays
    v: Arrays
    v2: Arrays
    fd: Arrays
    fd2: Arrays


def _at(c: _Checker, p: Point, k: int, wrt: tuple[str, ...], of: tuple[str, ...]) -> _At:
    u = c.random_like({w: p.values[w] for w in wrt})
    u2 = c.random_like(u)
    base = c.outputs(p, {}, of)
    v, v2 = c.random_like(base), c.random_like(base)
    fd, fd2 = c.directional(p, u, of), c.directional(p, u2, of)
    return _At(p, k, wrt, of, u, u2, v, v2, fd, fd2)


def _jvp(c: _Checker, at: _At, name: str) -> None:
    """J·u vs FD along u."""
    c.compare(name, at.k, c.comp.call(name, at.p, tangents=at.u, of=at.of), at.fd)


def _vjp(c: _Checker, at: _At, name: str) -> None:
    """⟨Jᵀ·v, u⟩ vs ⟨v, FD along u⟩."""
    got = c.comp.call(name, at.p, cotangents=at.v, wrt=at.wrt)
    c.compare(name, at.k, _dot(got, at.u), _dot(at.v, at.fd))


def _dot_product(c: _Checker, at: _At, name: str) -> None:
    """⟨v, J·u⟩ (jvp) vs ⟨Jᵀ·v, u⟩ (vjp): no finite differences involved."""
    jvp = c.comp.call("jvp", at.p, tangents=at.u, of=at.of)
    vjp = c.comp.call("vjp", at.p, cotangents=at.v, wrt=at.wrt)
    c.compare(name, at.k, _dot(at.v, jvp), _dot(vjp, at.u))


def _jacobian(c: _Checker, at: _At, name: str) -> None:
    """J contracted with u vs FD along u."""
    jac = c.comp.call(name, at.p, wrt=at.wrt, of=at.of)
    c.compare(name, at.k, _contract(jac, at.u), at.fd)


def _batched_jvp(c: _Checker, at: _At, name: str) -> None:
    """Each row of a batch of two tangents vs its FD reference."""
    tangents = {w: np.stack([at.u[w], at.u2[w]]) for w in at.wrt}
    got = c.comp.call(name, at.p, tangents=tangents, of=at.of)
    want = {o: np.stack([at.fd[o], at.fd2[o]]) for o in at.of}
    c.compare(name, at.k, {o: got[o] for o in at.of}, want)


def _batched_vjp(c: _Checker, at: _At, name: str) -> None:
    """Both rows of a batch of two cotangents at once, as ⟨Jᵀ·v_b, u⟩ vs ⟨v_b, FD(u)⟩."""
    cotangents = {o: np.stack([at.v[o], at.v2[o]]) for o in at.of}
    got = c.comp.call(name, at.p, cotangents=cotangents, wrt=at.wrt)
    rows = [_dot({w: got[w][b] for w in at.wrt}, at.u) for b in range(2)]
    wants = [_dot(vb, at.fd) for vb in (at.v, at.v2)]
    c.compare(name, at.k, {"b": np.array(rows)}, {"b": np.array(wants)})


def _hvp(c: _Checker, at: _At, name: str) -> None:
    """H·u, H the Hessian of ⟨v, outputs⟩, vs the FD of the vjp gradient Jᵀ·v along u."""
    p, u, wrt = at.p, at.u, at.wrt
    scale = max([1.0, *(float(np.max(np.abs(p.values[w]), initial=0)) for w in u)])
    h = 1e-3 * scale / max(_norm(u), 1e-300)

    def grad_at(step: float) -> Arrays:
        point = replace_leaves(p.inputs, {w: p.values[w] + step * u[w] for w in u})
        return c.comp.vjp(point, at.v, wrt=wrt)

    def central(step: float) -> Arrays:
        return {
            w: (a - b) / (2 * step)
            for (w, a), b in zip(grad_at(step).items(), grad_at(-step).values(), strict=True)
        }

    coarse, fine = central(h), central(h / 2)
    want = {w: (4 * fine[w] - coarse[w]) / 3 for w in wrt}
    c.compare(name, at.k, c.comp.call(name, p, tangents=u, cotangents=at.v, wrt=wrt), want)


# What each row's `check` kind compares (`chainrule._component.endpoints.Endpoint.check`).
_ROUTINES: dict[str, Callable[[_Checker, _At, str], None]] = {
    "jvp": _jvp,
    "vjp": _vjp,
    "jacobian": _jacobian,
    "batched_jvp": _batched_jvp,
    "batched_vjp": _batched_vjp,
    "hvp": _hvp,
}


def _check_point(c: _Checker, at: _At, offered: set[str]) -> None:
    """Every offered endpoint's check at one point, in table order (the dot product test
    after the vjp, when jvp and vjp are both offered)."""
    for name, row in ENDPOINTS.items():
        if row.check is None or name not in offered:
            continue
        routine = _ROUTINES[row.check]
        c.guarded(name, at.k, lambda: routine(c, at, name))  # noqa: B023 (called at once)
        if name == "vjp" and "jvp" in offered:
            c.guarded("dot product", at.k, lambda: _dot_product(c, at, "dot product"))


def _perturbed(
    comp: Component, p: Point, wrt: tuple[str, ...], rng: np.random.Generator, size: float
) -> Point:
    new = {}
    for w in wrt:
        x = p.values[w]
        noise = rng.standard_normal(x.shape) * size * (np.abs(x) + 1e-2)
        new[w] = (x + noise).astype(x.dtype)
    return comp.point(replace_leaves(p.inputs, new))


def check_gradients(
    component: Component,
    inputs: Any,
    *,
    wrt: str | list[str] | None = None,
    of: str | list[str] | None = None,
    n_random: int = 2,
    perturbation: float = 0.05,
    rtol: float | None = None,
    atol: float = 1e-9,
    seed: int = 0,
    endpoints: list[str] | None = None,
) -> GradientReport:
    """Compare every derivative endpoint of `component` with finite differences.

    Arguments:
        component: the component to check.
        inputs: the point to check at (more points are random perturbations of it).
        wrt, of: restrict to these input / output paths (default: all differentiable).
        n_random: number of perturbed points besides `inputs`.
        perturbation: relative size of the perturbations.
        rtol, atol: tolerances (rtol defaults to 1e-6 for float64 inputs, 1e-2 otherwise).
        seed: seed of the random directions and points.
        endpoints: the endpoints to check (default: every one the component offers).

    Returns:
        A `GradientReport`; `report.ok` is True when every check passed.

    Example:
        ```python
        report = cr.check_gradients(affine, {"x": np.ones(3)})
        assert report.ok, report
        ```
    """
    p = component.point(inputs)
    wrt_paths, of_paths = component.paths(p, wrt=wrt, of=of)
    if rtol is None:
        low = any(p.values[w].dtype.itemsize < 8 for w in wrt_paths)
        rtol = 1e-2 if low else 1e-6
    checked = {name for name, row in ENDPOINTS.items() if row.check is not None}
    offered = set(endpoints or component.endpoints) & checked
    rng = np.random.default_rng(seed)
    checker = _Checker(component, rtol, atol, rng)
    points = [p] + [_perturbed(component, p, wrt_paths, rng, perturbation) for _ in range(n_random)]
    for k, point in enumerate(points):
        _check_point(checker, _at(checker, point, k, wrt_paths, of_paths), offered)
    return checker.report
