"""`chainrule.optimize`: minimize a JAX objective over a pytree of parameters.

The objective is any JAX function returning a scalar; it may call components of every kind with
`chainrule.jax.call`, so its gradient is the pipeline's. Two families of drivers share one
bookkeeping loop (`Recorder`: history, progress bar, stopping rules):

- optax (`"sgd"`, `"adam"`, `"lbfgs"` or any `optax.GradientTransformation`): our own loop,
  `evaluate` (value and gradient) then `update`, both jit-compiled;
- scipy (`"L-BFGS-B"`, `"SLSQP"`, `"trust-constr"`): `scipy.optimize.minimize` on the flattened
  parameters with `jac=` from `jax.value_and_grad`, bounds, and constraints whose Jacobians come
  from `jax.jacrev`; our rules run in scipy's per-iteration callback.

History entry k is iterate x_k: entry 0 is the start, and a run stopped at entry k returns x_k
(the last point whose value and gradient are known).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import jax as _crj  # noqa: F401  (importing it turns on jax_enable_x64, as components do)
from ._component import Component
from ._errors import ValidationError
from ._history import (
    Callback,
    History,
    OptimizeResult,
    Outcome,
    ProgressBar,
    Recorder,
    Rules,
    restore_state,
)

__all__ = ["OPTAX_METHODS", "SCIPY_METHODS", "OptimizeResult", "optimize"]

OPTAX_METHODS = ("sgd", "adam", "lbfgs")
SCIPY_METHODS = ("L-BFGS-B", "SLSQP", "trust-constr")


# ---- the problem: objective, method and compiled functions -----------------------------------


def _scalar(objective: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The objective, checked (at trace time) to return a scalar."""

    def value(params: Any) -> Any:
        out = jnp.asarray(objective(params))
        if out.shape not in ((), (1,)):
            raise ValidationError(
                f"the objective must return a scalar, got {out.dtype}{list(out.shape)}; "
                "reduce it, e.g. with jnp.sum"
            )
        return out.reshape(())

    return value


@dataclass
class _Problem:
    """The objective with its method, and the compiled functions built for it."""

    objective: Callable[[Any], Any]
    method: str
    transform: Any  # optax transformation (None for scipy methods)
    jit: bool
    _cache: dict[Any, Any] = field(default_factory=dict)

    def compiled(self, key: Any, build: Callable[[], Callable[..., Any]]) -> Callable[..., Any]:
        if key not in self._cache:
            fn = build()
            self._cache[key] = jax.jit(fn) if self.jit else fn
        return self._cache[key]


def _resolve_method(method: Any, learning_rate: float | None) -> tuple[str, Any]:
    """(name, optax transformation or None) for a method name or an optax transformation."""
    if isinstance(method, str):
        names = {m.lower(): m for m in (*OPTAX_METHODS, *SCIPY_METHODS)}
        name = names.get(method.lower())
        if name is None:
            raise ValidationError(
                f"unknown method {method!r}; known: {', '.join(map(repr, OPTAX_METHODS))} "
                f"(optax), {', '.join(map(repr, SCIPY_METHODS))} (scipy), or pass an "
                "optax.GradientTransformation"
            )
        if name in SCIPY_METHODS:
            return name, None
        return name, _optax_transform(name, learning_rate)
    optax = _import("optax")
    if not isinstance(method, optax.GradientTransformation):
        raise ValidationError(
            "method must be a method name or an optax.GradientTransformation, got "
            f"{type(method).__name__}"
        )
    return "optax", optax.with_extra_args_support(method)


def _optax_transform(name: str, learning_rate: float | None) -> Any:
    optax = _import("optax")
    if name == "lbfgs":  # None: the zoom line search picks the step
        return optax.lbfgs(learning_rate)
    lr = 1e-3 if learning_rate is None else learning_rate
    return optax.sgd(lr) if name == "sgd" else optax.adam(lr)


def _import(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ImportError(
            f"chainrule.optimize needs {module} for this method; pip install {module}"
        ) from e


# ---- the optax driver --------------------------------------------------------------------------


def _optax_functions(problem: _Problem) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(evaluate, update): value, gradient and its norm at x; then one optimizer step."""
    optax = _import("optax")
    value_fn = _scalar(problem.objective)
    opt = problem.transform

    def evaluate(params: Any, state: Any) -> Any:
        # A line search (lbfgs) stores the value and gradient at the point it accepted: reuse
        # them instead of evaluating the pipeline again.
        if optax.tree_utils.tree_get(state, "value") is not None:
            value, grad = optax.value_and_grad_from_state(value_fn)(params, state=state)
        else:
            value, grad = jax.value_and_grad(value_fn)(params)
        return value, grad, optax.tree.norm(grad)

    def update(params: Any, state: Any, value: Any, grad: Any) -> Any:
        updates, state = opt.update(grad, state, params, value=value, grad=grad, value_fn=value_fn)
        return optax.apply_updates(params, updates), state

    return problem.compiled("evaluate", lambda: evaluate), problem.compiled(
        "update", lambda: update
    )


def _run_optax(problem: _Problem, x: Any, state: Any, rec: Recorder) -> Outcome:
    evaluate, update = _optax_functions(problem)
    while True:
        value, grad, gnorm = evaluate(x, state)
        outcome = rec.record(x, float(value), float(gnorm), state)
        if outcome is not None:
            return outcome
        x, state = update(x, state, value, grad)


def _initial_state(problem: _Problem, x: Any, resume: History | None) -> Any:
    """A fresh optimizer state, or the saved one when resuming a run of the same method."""
    # Strongly typed leaves: the state an update returns has no weak types, and a weakly typed
    # first state would make jit compile everything a second time at step 1.
    fresh = jax.tree.map(lambda a: jnp.asarray(a, jnp.asarray(a).dtype), problem.transform.init(x))
    if resume is None or resume.opt_state is None or resume.method != problem.method:
        return fresh
    return restore_state(resume.opt_state, fresh, problem.method)


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

    def __call__(self, flat: np.ndarray) -> tuple[float, np.ndarray]:
        key = np.asarray(flat, np.float64).tobytes()
        if key not in self.memo:
            value, grad = self.fn(jnp.asarray(flat))
            self.memo[key] = (float(value), np.asarray(grad, np.float64))
            while len(self.memo) > 16:
                self.memo.popitem(last=False)
        value, grad = self.memo[key]
        return value, grad.copy()  # scipy may write into it


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
    return str(res.message), bool(res.success)


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


# ---- arguments ---------------------------------------------------------------------------------


def _as_params(x0: Any) -> Any:
    """x0 with every leaf a floating JAX array (integers become float64)."""

    def leaf(path: Any, a: Any) -> Any:
        arr = np.asarray(a)
        if arr.dtype.kind in "biu":
            arr = arr.astype(np.float64)
        if arr.dtype.kind != "f":
            raise ValidationError(
                f"x0{jax.tree_util.keystr(path)}: parameters must be real floating arrays, "
                f"got {arr.dtype}{list(arr.shape)}"
            )
        return jnp.asarray(arr)

    params = jax.tree_util.tree_map_with_path(leaf, x0)
    if not jax.tree.leaves(params):
        raise ValidationError("x0 has no parameters (a pytree with no array leaves)")
    return params


def _check_numbers(max_steps: int, tol: Any, ftol: Any, time_budget: Any, every: int) -> None:
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 0:
        raise ValidationError(f"max_steps must be an int >= 0, got {max_steps!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValidationError(f"checkpoint_every must be an int >= 1, got {every!r}")
    for name, value in (("tol", tol), ("ftol", ftol), ("time_budget", time_budget)):
        if value is not None and not (isinstance(value, (int, float)) and value >= 0):
            raise ValidationError(f"{name} must be a number >= 0 or None, got {value!r}")


def _check_family(name: str, transform: Any, bounds: Any, constraints: Any, **given: Any) -> None:
    """Refuse arguments that the chosen family of methods cannot honour."""
    if transform is not None and (bounds is not None or constraints):
        what = "constraints" if constraints else "bounds"
        raise ValidationError(
            f"method {name!r} (optax) does not take {what}; use a scipy method: "
            f"{', '.join(map(repr, SCIPY_METHODS if constraints else ('L-BFGS-B', 'SLSQP')))}"
        )
    if transform is None and given["learning_rate"] is not None:
        raise ValidationError(
            f"learning_rate applies to optax methods; scipy's {name!r} takes options= instead"
        )
    if transform is not None and given["options"]:
        raise ValidationError(
            f"options= are passed to scipy.optimize.minimize; method {name!r} is an optax "
            "method (configure it with learning_rate=, or pass an optax transformation)"
        )


def _watched(components: Sequence[Component]) -> dict[str, Component]:
    """Components by name (a repeated name gets a suffix: `band`, `band#2`)."""
    named: dict[str, Component] = {}
    for c in components:
        if not isinstance(c, Component):
            raise ValidationError(
                f"components= must list chainrule Components, got {type(c).__name__}"
            )
        name, k = c.name, 1
        while name in named:
            k += 1
            name = f"{c.name}#{k}"
        named[name] = c
    return named


def _load_resume(resume: Any, x0: Any) -> History | None:
    if resume is None or isinstance(resume, History):
        history = resume
    else:
        history = History.load(resume, like=x0)
    if history is not None and history.params:
        want, got = _describe(_as_params(x0)), _describe(history.params[-1])
        if want != got:
            raise ValidationError(
                f"resume: the saved parameters are {got}, x0 is {want}; pass the x0 of the "
                "saved run"
            )
    return history


def _describe(tree: Any) -> str:
    """`x['a']: float64[2], x['b']: float64[]`: a pytree's leaves, where and what they are."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return ", ".join(
        f"x{jax.tree_util.keystr(p)}: {np.asarray(a).dtype}{list(np.shape(a))}" for p, a in flat
    )


# ---- the entry point ---------------------------------------------------------------------------


def optimize(
    objective: Callable[[Any], Any],
    x0: Any,
    *,
    method: Any = "adam",
    learning_rate: float | None = None,
    max_steps: int = 1000,
    tol: float | None = 1e-6,
    ftol: float | None = None,
    time_budget: float | None = None,
    callback: Callback | None = None,
    bounds: Any = None,
    constraints: Sequence[Mapping[str, Any]] = (),
    options: Mapping[str, Any] | None = None,
    components: Sequence[Component] = (),
    progress: bool | None = None,
    jit: bool = True,
    multistart: bool = False,
    resume: History | str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 10,
) -> OptimizeResult:
    """Minimize `objective(x)` over a pytree of parameters, with gradients through the pipeline.

    Each step evaluates the objective and its gradient (`jax.value_and_grad`, jit-compiled
    unless `jit=False`) at the current iterate, records it in the history, checks the stopping
    rules, then moves. Stopping rules, checked in this order after every step: a non-finite
    value, `callback` returning True, `tol`, `ftol`, `max_steps`, `time_budget`. scipy methods
    also stop by their own criteria (`options=` sets them), with scipy's message.

    Arguments:
        objective: a JAX function of the parameters returning a scalar; it may call components
            with `chainrule.jax.call`.
        x0: the starting parameters (a pytree of float arrays); with `multistart=True`, a list
            of starting points.
        method: `"sgd"`, `"adam"`, `"lbfgs"` (optax; lbfgs with its zoom line search), any
            `optax.GradientTransformation`, or `"L-BFGS-B"`, `"SLSQP"`, `"trust-constr"`
            (`scipy.optimize.minimize` on the flattened parameters).
        learning_rate: optax methods only (sgd/adam default 1e-3; lbfgs default: line search).
        max_steps: stop after this many updates (counting those of a resumed run). For scipy
            methods a step is an iteration that moved x (trust-constr's rejected steps do not
            count).
        tol: stop when the gradient's Euclidean norm is at most `tol` (None: never). With
            bounds or constraints the plain gradient need not vanish, so scipy's rules stop.
        ftol: stop when |f_k − f_k−1| / max(|f_k|, |f_k−1|, 1) is at most `ftol`.
        time_budget: stop after this many seconds of the run (of each start, with
            `multistart`), compilation included.
        callback: `callback(step, x, value, grad_norm)` after every step; True stops the run.
        bounds: scipy methods only: a list of `(low, high)` pairs, one per scalar parameter in
            `ravel_pytree` order, or a tuple `(lower, upper)` of pytrees shaped like x0 or
            prefixes of it (a number bounds a whole subtree). None is unbounded.
        constraints: SLSQP / trust-constr only: dicts `{"type": "eq" | "ineq", "fun": f}`, f a
            JAX function of the parameter pytree (eq: f(x) == 0; ineq: f(x) >= 0), its
            Jacobian by `jax.jacrev` (and, for trust-constr, its Hessian by `jax.hessian`).
        options: scipy methods only: passed to `scipy.optimize.minimize(options=...)`.
        components: components whose endpoint calls are counted per step in the history.
        progress: show a rich progress bar; None shows it when stdout is a terminal.
        jit: jit-compile the value-and-gradient and update functions.
        multistart: run from every point of the list `x0`; return the best result, with all of
            them in `result.runs`.
        resume: a `History` (or a path saved by `History.save`) of an interrupted run, to
            continue from its last parameters. optax methods also restore the saved optimizer
            state, so the run continues exactly as if never interrupted; scipy methods restart
            from the last parameters (L-BFGS-B's curvature memory is rebuilt, so the path
            differs slightly).
        checkpoint: save the history (with the optimizer state) to this `.npz` every
            `checkpoint_every` steps and when the run ends or fails, for `resume=`.
        checkpoint_every: steps between checkpoints.

    Returns:
        An `OptimizeResult` (`x`, `fun`, `grad_norm`, `history`, `steps`, `success`, `message`,
        `method`, `runs`).

    Raises:
        ValidationError: an unknown method, or arguments the method cannot honour.

    Example:
        ```python
        def rosenbrock(x):
            return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

        result = chainrule.optimize(rosenbrock, jnp.zeros(5), method="L-BFGS-B")
        print(result.x, result.history.objective[-1])
        ```
    """
    # Compiled anew by every call (multi-start shares them), so the objective is traced with
    # the values it closes over now, not those of an earlier call.
    name, transform = _resolve_method(method, learning_rate)
    problem = _Problem(objective, name, transform, jit)
    _check_numbers(max_steps, tol, ftol, time_budget, checkpoint_every)
    _check_family(
        name, transform, bounds, constraints, learning_rate=learning_rate, options=options
    )
    rules = Rules(tol, ftol, max_steps, time_budget, callback)
    show = sys.stdout.isatty() if progress is None else bool(progress)
    setup = _Setup(problem, rules, _watched(components), show, bounds, constraints, options)
    if not multistart:
        path = None if checkpoint is None else Path(checkpoint)
        return _single(setup, x0, _load_resume(resume, x0), path, checkpoint_every, name)
    return _multistart(setup, x0, resume, checkpoint)


@dataclass(frozen=True)
class _Setup:
    """Everything about a run except its starting point."""

    problem: _Problem
    rules: Rules
    watched: dict[str, Component]
    progress: bool
    bounds: Any
    constraints: Sequence[Mapping[str, Any]]
    options: Mapping[str, Any] | None


def _multistart(setup: _Setup, x0s: Any, resume: Any, checkpoint: Any) -> OptimizeResult:
    if not isinstance(x0s, (list, tuple)) or not x0s:
        raise ValidationError(
            f"multistart=True needs x0 to be a non-empty list of starting points, got {x0s!r}"
        )
    if resume is not None or checkpoint is not None:
        raise ValidationError(
            "resume= and checkpoint= follow one run; with multistart=True, resume the run you "
            "want from its history (result.runs[i].history) without multistart"
        )
    n = len(x0s)
    runs = [_single(setup, x, None, None, 1, f"start {i + 1}/{n}") for i, x in enumerate(x0s)]
    best = min(runs, key=lambda r: r.fun if math.isfinite(r.fun) else math.inf)
    best.runs = runs
    return best


def _single(
    setup: _Setup,
    x0: Any,
    resume: History | None,
    checkpoint: Path | None,
    every: int,
    label: str,
) -> OptimizeResult:
    """One run from x0 (or from where `resume` stopped)."""
    problem = setup.problem
    x = _as_params(x0)
    history = History(problem.method)
    if resume is not None and resume.params:
        x = _as_params(resume.params[-1])
        history = resume.head(len(resume) - 1)  # its last entry is evaluated again here
        history.method = problem.method
    rec = Recorder(
        history,
        setup.rules,
        setup.watched,
        ProgressBar(setup.progress, setup.rules.max_steps, label),
        checkpoint,
        every,
    )
    try:
        with rec.bar:
            message, success = _drive(setup, x, resume, rec, len(history))
    finally:
        rec.save()
    return _result(history, message, success)


def _drive(setup: _Setup, x: Any, resume: History | None, rec: Recorder, start: int) -> Outcome:
    problem = setup.problem
    if problem.transform is not None:
        return _run_optax(problem, x, _initial_state(problem, x, resume), rec)
    remaining = max(setup.rules.max_steps - start, 0)
    extra = _scipy_options(
        problem.method, x, setup.bounds, setup.constraints, setup.options, remaining, problem.jit
    )
    return _run_scipy(problem, x, rec, extra)


def _result(history: History, message: str, success: bool) -> OptimizeResult:
    return OptimizeResult(
        x=history.params[-1],
        fun=history.objective[-1],
        grad_norm=history.grad_norm[-1],
        history=history,
        steps=len(history) - 1,
        success=success,
        message=message,
        method=history.method,
    )
