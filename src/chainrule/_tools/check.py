"""`check_gradients`: every derivative endpoint of a component against finite differences.

The reference is a Richardson-extrapolated central difference of `apply` along a random
direction u (error O(h⁴)), so checks cost a handful of `apply` calls whatever the input size:
  jvp          J·u                 vs  FD along u
  vjp          ⟨Jᵀ·v, u⟩           vs  ⟨v, FD along u⟩
  jacobian     J·u (contracted)    vs  FD along u
  batched_*    each batch row      vs  its FD reference
  dot product  ⟨v, J·u⟩ (jvp)      vs  ⟨Jᵀ·v, u⟩ (vjp): no FD involved
  hvp          H·u, H of ⟨v, y⟩    vs  FD of the vjp gradient Jᵀ·v along u
at the given point and at random perturbations of it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from chainrule._component.component import Component, Point
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


def _check_point(
    c: _Checker, p: Point, k: int, wrt: tuple[str, ...], of: tuple[str, ...], offered: set[str]
) -> None:
    comp = c.comp
    u = c.random_like({w: p.values[w] for w in wrt})
    u2 = c.random_like(u)
    base = c.outputs(p, {}, of)
    v, v2 = c.random_like(base), c.random_like(base)
    fd, fd2 = c.directional(p, u, of), c.directional(p, u2, of)
    if "jvp" in offered:
        c.guarded("jvp", k, lambda: c.compare("jvp", k, comp.jvp(p, u, of=of), fd))
    if "vjp" in offered:
        c.guarded(
            "vjp", k, lambda: c.compare("vjp", k, _dot(comp.vjp(p, v, wrt=wrt), u), _dot(v, fd))
        )
    if {"jvp", "vjp"} <= offered:
        c.guarded(
            "dot product",
            k,
            lambda: c.compare(
                "dot product", k, _dot(v, comp.jvp(p, u, of=of)), _dot(comp.vjp(p, v, wrt=wrt), u)
            ),
        )
    if "jacobian" in offered:
        c.guarded(
            "jacobian",
            k,
            lambda: c.compare("jacobian", k, _contract(comp.jacobian(p, wrt=wrt, of=of), u), fd),
        )
    if "batched_jvp" in offered:

        def batched_jvp() -> None:
            got = comp.batched_jvp(p, {w: np.stack([u[w], u2[w]]) for w in wrt}, of=of)
            c.compare(
                "batched_jvp",
                k,
                {o: got[o] for o in of},
                {o: np.stack([fd[o], fd2[o]]) for o in of},
            )

        c.guarded("batched_jvp", k, batched_jvp)
    if "batched_vjp" in offered:

        def batched_vjp() -> None:
            got = comp.batched_vjp(p, {o: np.stack([v[o], v2[o]]) for o in of}, wrt=wrt)
            rows = [_dot({w: got[w][b] for w in wrt}, u) for b in range(2)]
            wants = [_dot(vb, fd) for vb in (v, v2)]
            # one row: both batch entries compared at once, as ⟨Jᵀ·v_b, u⟩ vs ⟨v_b, FD(u)⟩
            c.compare("batched_vjp", k, {"b": np.array(rows)}, {"b": np.array(wants)})

        c.guarded("batched_vjp", k, batched_vjp)
    if "hvp" in offered:
        c.guarded("hvp", k, lambda: _check_hvp(c, p, k, wrt, v, u))


def _check_hvp(c: _Checker, p: Point, k: int, wrt: tuple[str, ...], v: Arrays, u: Arrays) -> None:
    """H·u, H the Hessian of ⟨v, outputs⟩, vs the FD of the vjp gradient Jᵀ·v along u."""
    comp = c.comp
    scale = max([1.0, *(float(np.max(np.abs(p.values[w]), initial=0)) for w in u)])
    h = 1e-3 * scale / max(_norm(u), 1e-300)

    def grad_at(step: float) -> Arrays:
        point = replace_leaves(p.inputs, {w: p.values[w] + step * u[w] for w in u})
        return comp.vjp(point, v, wrt=wrt)

    def central(step: float) -> Arrays:
        return {
            w: (a - b) / (2 * step)
            for (w, a), b in zip(grad_at(step).items(), grad_at(-step).values(), strict=True)
        }

    coarse, fine = central(h), central(h / 2)
    want = {w: (4 * fine[w] - coarse[w]) / 3 for w in wrt}
    c.compare("hvp", k, comp.hvp(p, u, cotangents=v, wrt=wrt), want)


def _perturbed(p: Point, wrt: tuple[str, ...], rng: np.random.Generator, size: float) -> Point:
    new = {}
    for w in wrt:
        x = p.values[w]
        noise = rng.standard_normal(x.shape) * size * (np.abs(x) + 1e-2)
        new[w] = (x + noise).astype(x.dtype)
    return p.component.point(replace_leaves(p.inputs, new))


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
    wrt_paths = component._wrt(p, wrt)
    of_paths = component._of(p, of, None)
    if rtol is None:
        low = any(p.values[w].dtype.itemsize < 8 for w in wrt_paths)
        rtol = 1e-2 if low else 1e-6
    offered = set(endpoints or component.endpoints) & {
        "jvp",
        "vjp",
        "jacobian",
        "batched_jvp",
        "batched_vjp",
        "hvp",
    }
    rng = np.random.default_rng(seed)
    checker = _Checker(component, rtol, atol, rng)
    points = [p] + [_perturbed(p, wrt_paths, rng, perturbation) for _ in range(n_random)]
    for k, point in enumerate(points):
        _check_point(checker, point, k, wrt_paths, of_paths, offered)
    return checker.report
