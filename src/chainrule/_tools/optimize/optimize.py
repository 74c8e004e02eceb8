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

The objective and its compiled functions are `problem._Problem`; the scipy driver lives in
`scipy_driver`; this module holds the entry point, the argument checks and the optax driver.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from chainrule._component.component import Component
from chainrule._schema.errors import ValidationError

from .history import (
    Callback,
    History,
    OptimizeResult,
    Outcome,
    ProgressBar,
    Recorder,
    Rules,
    restore_state,
)
from .problem import _Problem, _scalar
from .scipy_driver import _run_scipy, _scipy_options

__all__ = ["OPTAX_METHODS", "SCIPY_METHODS", "OptimizeResult", "optimize"]

OPTAX_METHODS = ("sgd", "adam", "lbfgs")
SCIPY_METHODS = ("L-BFGS-B", "SLSQP", "trust-constr")


# ---- the method: a name or an optax transformation -------------------------------------------


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
    if history is not None and history.x:
        want, got = _describe(_as_params(x0)), _describe(history.x[-1])
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


@jax.enable_x64(True)  # for each call, in the calling thread; the process's config is untouched
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
    workers: int = 1,
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
        workers: with `multistart`, how many starts run at once, each in a thread of its own
            (a component deployed on N Ray replicas evaluates N starts side by side). Each run
            computes as it would alone. The per-step call counts of one run would include the
            other runs' calls, so `components=` needs `workers=1`; no progress bar is shown.
        resume: a `History` (or a path saved by `History.save`) of an interrupted run, to
            continue from its last parameters. optax methods also restore the saved optimizer
            state, so the run continues exactly as if never interrupted; scipy methods restart
            from the last parameters (L-BFGS-B's curvature memory is rebuilt, so the path
            differs slightly).
        checkpoint: save the history (with the optimizer state) to this `.npz` every
            `checkpoint_every` steps and when the run ends or fails, for `resume=`.
        checkpoint_every: steps between checkpoints.

    The run computes with JAX's 64-bit mode on in the calling thread, whatever the process's
    setting (which it leaves as it was), so float64 components and float64 parameters compute
    in float64. The parameters keep x0's dtype: NumPy arrays and Python floats are float64;
    pass float32 arrays for a float32 run.

    Returns:
        An `OptimizeResult` (`x`, `fun`, `grad_norm`, `history`, `steps`, `success`, `message`,
        `method`, `runs`).

    Raises:
        ValidationError: an unknown method, or arguments the method cannot honour.

    Example:
        ```python
        def rosenbrock(x):
            return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

        result = chainrule.optimize(rosenbrock, np.zeros(5), method="L-BFGS-B")
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
    _check_workers(workers, multistart, components, progress)
    show = (sys.stdout.isatty() and workers == 1) if progress is None else bool(progress)
    setup = _Setup(problem, rules, _watched(components), show, bounds, constraints, options)
    if not multistart:
        path = None if checkpoint is None else Path(checkpoint)
        return _single(setup, x0, _load_resume(resume, x0), path, checkpoint_every, name)
    return _multistart(setup, x0, resume, checkpoint, workers)


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


def _check_workers(
    workers: Any, multistart: bool, components: Sequence[Component], progress: bool | None
) -> None:
    """`workers=` runs the starts of a multi-start at once: refuse what it cannot honour."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValidationError(f"workers= must be a whole number of at least 1, got {workers!r}")
    clash = _clash(multistart, components, progress) if workers > 1 else None
    if clash is not None:
        raise ValidationError(
            f"workers={workers} runs the starts of multistart=True at once, which does not go "
            f"with {clash}. Fix: pass workers=1, or drop the other argument."
        )


def _clash(multistart: bool, components: Sequence[Component], progress: bool | None) -> str | None:
    if not multistart:
        return "multistart=False (a single run: nothing to run at once)"
    if components:
        return "components= (each run's per-step call counts would include the other runs')"
    if progress:
        return "progress=True (a bar per run: they cannot share the terminal)"
    return None


def _multistart(
    setup: _Setup, x0s: Any, resume: Any, checkpoint: Any, workers: int
) -> OptimizeResult:
    if not isinstance(x0s, (list, tuple)) or not x0s:
        raise ValidationError(
            f"multistart=True needs x0 to be a non-empty list of starting points, got {x0s!r}"
        )
    if resume is not None or checkpoint is not None:
        raise ValidationError(
            "resume= and checkpoint= follow one run; with multistart=True, resume the run you "
            "want from its history (result.runs[i].history) without multistart"
        )
    runs = _starts(setup, list(x0s), workers)
    best = min(runs, key=lambda r: r.fun if math.isfinite(r.fun) else math.inf)
    best.runs = runs
    return best


def _starts(setup: _Setup, x0s: list[Any], workers: int) -> list[OptimizeResult]:
    """A run from each start, in order; `workers` of them at once, each in its own thread."""
    n = len(x0s)

    def run(i: int) -> OptimizeResult:
        with jax.enable_x64(True):  # as `optimize` does in its caller's thread
            return _single(setup, x0s[i], None, None, 1, f"start {i + 1}/{n}")

    if workers == 1:
        return [run(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=min(workers, n)) as pool:
        return list(pool.map(run, range(n)))


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
    if resume is not None and resume.x:
        x = _as_params(resume.x[-1])
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
        x=history.x[-1],
        fun=history.objective[-1],
        grad_norm=history.grad_norm[-1],
        history=history,
        steps=len(history) - 1,
        success=success,
        message=message,
        method=history.method,
    )
