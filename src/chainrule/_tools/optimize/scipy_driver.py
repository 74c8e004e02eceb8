"""The scipy driver of `chainrule.optimize`: `scipy.optimize.minimize` on flat parameters.

The parameter pytree is flattened with `ravel_pytree`; scipy gets value and gradient from
`jax.value_and_grad` (remembered per point, as scipy asks twice), bounds as
`scipy.optimize.Bounds` from flat pairs or a pytree pair, and constraints whose Jacobians (and,
for trust-constr, Hessians) come from JAX. Our stopping rules (`Recorder`) run in scipy's
per-iteration callback and stop it by raising `_Stop`. Kept apart from `optimize` (the entry
point, argument checks and the optax driver); scipy is imported only when a run needs it.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from chainrule._schema.errors import ValidationError

from .history import Outcome, Recorder
from .problem import _Problem, _scalar

# ---- the scipy driver --------------------------------------------------------------------------


class _Stop(Exception):
    """Raised in scipy's callback when one of our rules stops the run."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome[0])
        self.outcome = outcome


class _Memo:
    """Value and gradient on flat float64 vectors, remembered for the last few points.

    scipy asks for the same point more than once (the callback's iterate was just evaluated
    by the line search); remembering avoids calling the pipeline again.
    """

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.memo: OrderedDict[bytes, tuple[float, np.ndarray]] = OrderedDict()
        self.nonfinite = 0  # points where the value or gradient was NaN or inf
        self.first_nonfinite: tuple[float, np.ndarray] | None = None  # (value, x)

    def __call__(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        key = np.asarray(flat, np.float64).tobytes()
        if key not in self.memo:
            value, grad = self.fn(jnp.asarray(flat))
            self.memo[key] = (float(value), np.asarray(grad, np.float64))
            self._note(flat, *self.memo[key])
            while len(self.memo) > 16:
                self.memo.popitem(last=False)
        value, grad = self.memo[key]
        return value, grad.copy()  # scipy may write into it

    def _note(self, flat: np.ndarray, value: float, grad: np.ndarray) -> None:
        if np.isfinite(value) and np.isfinite(grad).all():
            return
        self.nonfinite += 1
        if self.first_nonfinite is None:
            self.first_nonfinite = (value, np.array(flat, np.float64))

    def explain(self, message: str) -> str:
        """scipy's stopping message, with what chainrule saw if some point was not finite.

        scipy's line search stops at a NaN or inf trial value with only `ABNORMAL:`; the
        points it tried are known here.
        """
        if self.first_nonfinite is None:
            return message
        value, flat = self.first_nonfinite
        where = np.array2string(flat, precision=6, threshold=6, separator=", ")
        bad = "objective" if not np.isfinite(value) else "gradient"
        what = f"{bad} {value}" if bad == "objective" else f"{bad} with NaN/inf"
        return (
            f"scipy stopped ({message.strip() or 'no message'}); the objective or its gradient "
            f"was not finite at {self.nonfinite} point(s) scipy tried (first: {what} at "
            f"x = {where}), likely the cause: a line search cannot step through NaN or inf. "
            "Fix: keep the search where the objective is finite (bounds=, or a start closer to "
            "the optimum), or make it finite there (guard the operation that overflows; `with "
            "chainrule.check_finite():` names the component that first produces a NaN or inf)."
        )


def _run_scipy(problem: _Problem, x: Any, rec: Recorder, extra: dict[str, Any]) -> Outcome:
    from scipy.optimize import minimize

    flat0, unravel = ravel_pytree(x)
    value_fn = _scalar(problem.objective)
    # Keyed by the parameters' structure: `unravel` is built into the compiled function.
    shapes = [(tuple(a.shape), str(a.dtype)) for a in jax.tree.leaves(x)]
    memo = _Memo(
        problem.compiled(
            ("value_and_grad_flat", jax.tree.structure(x), str(shapes)),
            lambda: jax.value_and_grad(lambda flat: value_fn(unravel(flat))),
        )
    )
    last: list[np.ndarray] = []

    def record(flat: np.ndarray) -> None:
        if last and np.array_equal(flat, last[0]):  # trust-constr reports its start again
            return
        value, grad = memo(flat)
        last[:] = [np.array(flat)]
        outcome = rec.record(unravel(jnp.asarray(flat)), value, float(np.linalg.norm(grad)))
        if outcome is not None:
            raise _Stop(outcome)

    try:
        record(np.asarray(flat0, np.float64))
        res = minimize(
            memo,
            np.asarray(flat0, np.float64),
            jac=True,
            method=problem.method,
            callback=lambda intermediate_result: record(intermediate_result.x),
            **extra,
        )
    except _Stop as stop:
        return stop.outcome
    if not np.array_equal(res.x, last[0]):  # scipy may end on a point it did not report
        with contextlib.suppress(_Stop):  # scipy's own message says why it stopped
            record(res.x)
    message = str(res.message) if res.success else memo.explain(str(res.message))
    return message, bool(res.success)


def _scipy_options(
    method: str,
    x: Any,
    bounds: Any,
    constraints: Sequence[Mapping[str, Any]],
    options: Mapping[str, Any] | None,
    remaining: int,
    jit: bool,
) -> dict[str, Any]:
    """The keyword arguments of `scipy.optimize.minimize` beyond fun, x0, jac and callback."""
    flat, unravel = ravel_pytree(x)
    # One iteration more than our max_steps, so that our rule (and its message) stops first.
    opts = {"maxiter": remaining + 1, **(options or {})}
    extra: dict[str, Any] = {"options": opts}
    if bounds is not None:
        extra["bounds"] = _scipy_bounds(bounds, x, flat.size)
    if constraints:
        if method == "L-BFGS-B":
            raise ValidationError(
                "method 'L-BFGS-B' takes bounds but not constraints; use method='SLSQP' or "
                "'trust-constr'"
            )
        extra["constraints"] = [
            _scipy_constraint(c, i, method, unravel, jit) for i, c in enumerate(constraints)
        ]
    return extra


def _scipy_constraint(c: Mapping[str, Any], i: int, method: str, unravel: Any, jit: bool) -> Any:
    """A scipy constraint on flat vectors, from a function of the parameter pytree.

    SLSQP gets `{"type", "fun", "jac"}`. trust-constr gets a `NonlinearConstraint` with the
    constraint's Hessian from JAX: from a dict, scipy would approximate it by BFGS, which
    warns on (common) linear constraints and converges more slowly.
    """
    if (
        not isinstance(c, Mapping)
        or c.get("type") not in ("eq", "ineq")
        or not callable(c.get("fun"))
    ):
        raise ValidationError(
            f"constraints[{i}] must be a dict {{'type': 'eq' | 'ineq', 'fun': f}} with f a "
            f"function of the parameters (eq: f(x) == 0, ineq: f(x) >= 0), got {c!r}"
        )
    user = c["fun"]

    def fun(flat: Any) -> Any:
        return jnp.atleast_1d(user(unravel(flat)))

    def hess(flat: Any, v: Any) -> Any:
        return jax.hessian(lambda y: jnp.dot(v, fun(y)))(flat)

    f, jac, h = (jax.jit(g) if jit else g for g in (fun, jax.jacrev(fun), hess))
    numpy_fun = _on_numpy(f)
    numpy_jac = _on_numpy(jac)
    if method == "SLSQP":
        return {"type": c["type"], "fun": numpy_fun, "jac": numpy_jac}
    from scipy.optimize import NonlinearConstraint

    upper = 0.0 if c["type"] == "eq" else np.inf
    return NonlinearConstraint(numpy_fun, 0.0, upper, jac=numpy_jac, hess=_on_numpy(h))


def _on_numpy(fn: Callable[..., Any]) -> Callable[..., np.ndarray]:
    """`fn` taking and returning float64 NumPy arrays, as scipy expects."""
    return lambda *args: np.asarray(fn(*(jnp.asarray(a) for a in args)), np.float64)


def _scipy_bounds(bounds: Any, x: Any, n: int) -> Any:
    """`scipy.optimize.Bounds` from flat `(low, high)` pairs or a `(lower, upper)` pytree pair."""
    from scipy.optimize import Bounds

    if isinstance(bounds, Bounds):
        bounds = (bounds.lb, bounds.ub)
    if _flat_pairs(bounds, n):
        low = [-np.inf if lo is None else lo for lo, _ in bounds]
        high = [np.inf if hi is None else hi for _, hi in bounds]
        return Bounds(np.asarray(low, float), np.asarray(high, float))
    if isinstance(bounds, (tuple, list)) and len(bounds) == 2:
        return Bounds(
            _bound_vector(bounds[0], x, -np.inf, "lower"),
            _bound_vector(bounds[1], x, np.inf, "upper"),
        )
    raise ValidationError(
        f"bounds must be a list of {n} (low, high) pairs, one per scalar parameter, or a "
        f"tuple (lower, upper) of pytrees shaped like x0 (or scalars, or None); got {bounds!r}"
    )


def _flat_pairs(bounds: Any, n: int) -> bool:
    def scalar(v: Any) -> bool:
        return v is None or np.isscalar(v)

    return (
        isinstance(bounds, (list, tuple))
        and len(bounds) == n
        and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in bounds)
        and all(scalar(lo) and scalar(hi) for lo, hi in bounds)
    )


def _bound_vector(bound: Any, x: Any, default: float, which: str) -> np.ndarray:
    """One side of the bounds as a flat vector, from a pytree prefix of x.

    Each leaf of `bound` (a number, an array broadcast to the leaf, or None for unbounded)
    applies to the whole subtree of x at its place: `0.0` bounds everything, `{"w": 0.0,
    "b": None}` bounds only `w`.
    """

    def side(b: Any, subtree: Any) -> Any:
        fill = np.asarray(default if b is None else b, float)
        return jax.tree.map(lambda a: np.broadcast_to(fill, np.shape(a)), subtree)

    try:
        tree = jax.tree.map(side, bound, x, is_leaf=lambda b: b is None)
    except ValueError as e:
        raise ValidationError(
            f"{which} bounds must be shaped like the parameters ({jax.tree.structure(x)}), or "
            f"a prefix of them; {e}"
        ) from e
    return np.asarray(ravel_pytree(tree)[0], float)
