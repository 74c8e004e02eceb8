"""chainrule.optimize: the drivers against scipy's reference answers, history, stopping, resume."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize as scipy_optimize

import chainrule as cr
import chainrule.jax as crj
from cases import CASES, build
from chainrule._tools.optimize.history import History
from chainrule._tools.optimize.optimize import OptimizeResult, optimize

pytestmark = pytest.mark.jax

X0 = {2: np.array([-1.2, 1.0]), 5: np.array([1.3, 0.7, 0.8, 1.9, 1.2])}


def rosenbrock(x: Any) -> Any:
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def reference(dim: int, method: str = "L-BFGS-B") -> Any:
    """scipy's own answer with its hand-written Rosenbrock gradient."""
    ref = scipy_optimize.minimize(
        scipy_optimize.rosen, X0[dim], jac=scipy_optimize.rosen_der, method=method
    )
    assert ref.success
    return ref


# ---- known problems against scipy's reference answers ----------------------------------------


@pytest.fixture(scope="module")
def lbfgs_2d() -> tuple[OptimizeResult, OptimizeResult]:
    """optax lbfgs on 2-D Rosenbrock, stopped after 5 steps, then resumed (one compilation:
    the line search takes seconds to compile)."""
    first = optimize(rosenbrock, X0[2], method="lbfgs", max_steps=5, tol=None)
    return first, optimize(rosenbrock, X0[2], method="lbfgs", resume=first.history)


@pytest.mark.parametrize("dim", [2, 5])
def test_optax_lbfgs_reaches_scipy_minimizer(
    dim: int, lbfgs_2d: tuple[OptimizeResult, OptimizeResult]
) -> None:
    ref = reference(dim)
    result = lbfgs_2d[1] if dim == 2 else optimize(rosenbrock, X0[dim], method="lbfgs")
    assert result.success, result
    np.testing.assert_allclose(result.x, ref.x, atol=1e-5)
    assert abs(result.fun - ref.fun) < 1e-9
    assert result.steps == len(result.history) - 1


@pytest.mark.parametrize("dim", [2, 5])
@pytest.mark.parametrize("method", ["L-BFGS-B", "SLSQP", "trust-constr"])
def test_scipy_methods_follow_scipy_step_for_step(method: str, dim: int) -> None:
    # Same algorithm, same gradient (up to rounding): scipy's iterations and answer.
    ref = reference(dim, method)
    result = optimize(rosenbrock, X0[dim], method=method, tol=None)
    assert result.success, result
    # The history holds distinct iterates: trust-constr's rejected steps repeat a point.
    assert ref.nit - 1 <= result.steps <= ref.nit if method != "trust-constr" else ref.nit
    assert result.message == ref.message
    np.testing.assert_allclose(result.x, ref.x, rtol=0, atol=1e-8)
    # ... and the minimizer: SLSQP's default rule (ftol=1e-6 on f) leaves x 1e-4 from it.
    np.testing.assert_allclose(result.x, reference(dim).x, atol=5e-4 if method == "SLSQP" else 1e-5)


def test_adam_reaches_rosenbrock_minimizer_loosely() -> None:
    ref = reference(2)
    result = optimize(rosenbrock, X0[2], method="adam", learning_rate=0.05, max_steps=3000)
    np.testing.assert_allclose(result.x, ref.x, atol=1e-3)


def test_sgd_and_a_custom_optax_transformation() -> None:
    def bowl(x: Any) -> Any:
        return jnp.sum((x - 3.0) ** 2)

    sgd = optimize(bowl, np.zeros(3), method="sgd", learning_rate=0.1)
    chained = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))
    custom = optimize(bowl, np.zeros(3), method=chained, max_steps=2000)
    for result in (sgd, custom):
        assert result.success, result
        np.testing.assert_allclose(result.x, 3.0, atol=1e-5)
    assert custom.method == "optax"


# ---- a constrained quadratic ------------------------------------------------------------------
# min (a0 − 2)² + (a1 − 1)² + (b − 3)²  with  0 ≤ a ≤ 1.5,  b ≤ 2.5,
#   a0 + a1 + b = 3 (eq),   a0 − a1 ≥ 0.2 (ineq); parameters as the pytree {"a": [2], "b": []}.


def quadratic(p: Any) -> Any:
    return (p["a"][0] - 2.0) ** 2 + (p["a"][1] - 1.0) ** 2 + (p["b"] - 3.0) ** 2


CONSTRAINTS = [
    {"type": "eq", "fun": lambda p: p["a"][0] + p["a"][1] + p["b"] - 3.0},
    {"type": "ineq", "fun": lambda p: p["a"][0] - p["a"][1] - 0.2},
]
P0 = {"a": np.array([0.5, 0.5]), "b": np.array(0.5)}


def quadratic_reference(method: str) -> Any:
    """scipy on flat vectors [a0, a1, b] (ravel_pytree's order: "a" then "b")."""
    target = np.array([2.0, 1.0, 3.0])
    return scipy_optimize.minimize(
        lambda v: float(np.sum((v - target) ** 2)),
        np.array([0.5, 0.5, 0.5]),
        jac=lambda v: 2 * (v - target),
        method=method,
        bounds=[(0, 1.5), (0, 1.5), (None, 2.5)],
        constraints=[
            scipy_optimize.LinearConstraint([[1, 1, 1]], 3.0, 3.0),
            scipy_optimize.LinearConstraint([[1, -1, 0]], 0.2, np.inf),
        ]
        if method == "trust-constr"
        else [
            {"type": "eq", "fun": lambda v: v.sum() - 3.0, "jac": lambda v: np.ones(3)},
            {"type": "ineq", "fun": lambda v: v[0] - v[1] - 0.2, "jac": lambda v: [1, -1, 0]},
        ],
    )


@pytest.mark.parametrize("method", ["SLSQP", "trust-constr"])
@pytest.mark.parametrize("form", ["tree", "flat"])
def test_constrained_quadratic_matches_scipy(method: str, form: str) -> None:
    ref = quadratic_reference(method)
    bounds: Any = (
        ({"a": 0.0, "b": None}, {"a": np.array([1.5, 1.5]), "b": 2.5})
        if form == "tree"
        else [(0, 1.5), (0, 1.5), (None, 2.5)]
    )
    result = optimize(quadratic, P0, method=method, bounds=bounds, constraints=CONSTRAINTS)
    assert result.success, result
    flat = np.append(result.x["a"], result.x["b"])
    np.testing.assert_allclose(flat, ref.x, atol=1e-5)
    assert abs(flat.sum() - 3.0) < 1e-6 and flat[0] - flat[1] >= 0.2 - 1e-6
    assert set(result.x) == {"a", "b"} and np.shape(result.x["b"]) == ()


def test_bounds_alone_with_lbfgsb() -> None:
    result = optimize(rosenbrock, X0[2], method="L-BFGS-B", bounds=(None, 0.8))
    assert result.success and np.all(result.x <= 0.8)
    ref = scipy_optimize.minimize(
        scipy_optimize.rosen,
        X0[2],
        jac=scipy_optimize.rosen_der,
        method="L-BFGS-B",
        bounds=[(None, 0.8)] * 2,
    )
    np.testing.assert_allclose(result.x, ref.x, atol=1e-6)


# ---- a pipeline of components: gradients and call counts -------------------------------------


def test_objective_through_numpy_and_torch_components() -> None:
    case = CASES[1]  # "matrix": y = tanh(a @ b) + offset, norm = |y|²
    numpy_c, torch_c = build(case, "numpy"), build(case, "torch")
    point = case.point()

    def objective(b: Any) -> Any:
        inputs = {"a": point["a"], "b": b, "offset": point["offset"]}
        return crj.call(numpy_c, inputs)["norm"] + crj.call(torch_c, inputs)["norm"]

    def twin(b: Any) -> Any:  # the same objective in plain JAX
        y = jnp.tanh(point["a"] @ b) + point["offset"]
        return 2 * jnp.sum(y**2)

    result = optimize(
        objective,
        point["b"],
        method="adam",
        learning_rate=0.1,
        max_steps=4,
        components=[numpy_c, torch_c],
    )
    expected = optimize(twin, point["b"], method="adam", learning_rate=0.1, max_steps=4)
    np.testing.assert_allclose(result.history.objective, expected.history.objective, rtol=1e-6)
    assert result.history.objective[-1] < result.history.objective[0]
    per_step = {"matrix_numpy": {"apply": 1, "vjp": 1}, "matrix_torch": {"apply": 1, "vjp": 1}}
    assert result.history.calls[1:] == [per_step] * 4
    for name in per_step:  # step 0 may also ask for output shapes while tracing
        assert {k: v for k, v in result.history.calls[0][name].items() if k != "eval_shape"} == (
            per_step[name]
        )
    assert result.history.total_calls["matrix_torch"]["vjp"] == 5


def test_repeated_component_names_are_told_apart() -> None:
    case = CASES[1]
    first, second = build(case, "numpy"), build(case, "numpy")
    point = case.point()

    def objective(b: Any) -> Any:
        inputs = {"a": point["a"], "b": b, "offset": point["offset"]}
        return crj.call(first, inputs)["norm"]

    result = optimize(objective, point["b"], max_steps=1, components=[first, second])
    assert set(result.history.calls[1]) == {"matrix_numpy", "matrix_numpy#2"}
    assert result.history.calls[1]["matrix_numpy#2"] == {}


# ---- stopping rules --------------------------------------------------------------------------


def bowl(x: Any) -> Any:
    return jnp.sum((x - 1.0) ** 2)


def test_tol_stops_on_gradient_norm() -> None:
    result = optimize(bowl, np.zeros(2), method="sgd", learning_rate=0.1, tol=1e-4)
    assert result.success and result.grad_norm <= 1e-4
    assert result.message.startswith("gradient norm") and "tol=0.0001" in result.message
    assert result.history.grad_norm[-2] > 1e-4  # it stopped at the first step below tol


def test_ftol_stops_on_relative_change() -> None:
    result = optimize(bowl, np.zeros(2), method="sgd", learning_rate=0.01, tol=None, ftol=1e-3)
    assert result.success and "ftol=0.001" in result.message
    assert result.message.startswith("relative objective change")


@pytest.mark.parametrize("method", ["adam", "L-BFGS-B", "SLSQP"])
def test_max_steps(method: str) -> None:
    result = optimize(rosenbrock, X0[5], method=method, max_steps=3, tol=None)
    assert not result.success
    assert result.message == "reached max_steps=3"
    assert result.steps == 3 and len(result.history) == 4


def test_max_steps_zero_only_evaluates_the_start() -> None:
    result = optimize(bowl, np.zeros(2), max_steps=0)
    assert result.steps == 0 and result.fun == 2.0
    np.testing.assert_array_equal(result.x, np.zeros(2))


def test_time_budget() -> None:
    def slow(step: int, x: Any, value: float, grad_norm: float) -> None:
        time.sleep(0.05)

    result = optimize(bowl, np.zeros(2), time_budget=0.3, tol=None, callback=slow)
    assert not result.success and result.message.startswith("time budget of 0.3 s used")
    # It stopped at the first step that ended past the budget (callbacks count as time).
    seconds = result.history.seconds
    assert sum(seconds[:-1]) < 0.3 <= sum(seconds)


def test_callback_sees_every_step_and_stops() -> None:
    seen: list[tuple[int, float]] = []

    def stop_at_five(step: int, x: Any, value: float, grad_norm: float) -> bool:
        assert isinstance(x, np.ndarray)
        seen.append((step, value))
        return step == 5

    result = optimize(bowl, np.zeros(2), method="adam", callback=stop_at_five)
    assert result.message == "stopped by callback at step 5" and not result.success
    assert [s for s, _ in seen] == list(range(6))
    assert [v for _, v in seen] == result.history.objective


def test_callback_stops_a_scipy_method() -> None:
    result = optimize(
        rosenbrock, X0[5], method="SLSQP", callback=lambda step, *_: step >= 2, tol=None
    )
    assert result.message == "stopped by callback at step 2" and result.steps == 2


def test_non_finite_objective_stops() -> None:
    result = optimize(lambda x: jnp.sum(jnp.log(x)), np.array([-1.0]), max_steps=5)
    assert not result.success and "not finite at step 0" in result.message


def test_lbfgsb_says_when_its_line_search_met_non_finite_values() -> None:
    """scipy's L-BFGS-B stops with only `ABNORMAL:` when a trial point is NaN: say so."""
    result = optimize(
        lambda x: jnp.sum(jnp.sqrt(1.6 - x) + (x - 3.0) ** 2), np.zeros(2), method="L-BFGS-B"
    )
    assert not result.success
    message = result.message
    assert message.startswith("scipy stopped (ABNORMAL")
    assert "the objective or its gradient was not finite at" in message
    assert "(first: objective nan at x = [" in message
    assert "Fix: keep the search where the objective is finite (bounds=" in message
    assert np.isfinite(result.fun)  # the result is the last finite iterate


# ---- history: save, load, resume --------------------------------------------------------------


def test_history_records_every_step(tmp_path: Path) -> None:
    result = optimize(quadratic, P0, method="adam", learning_rate=0.1, max_steps=6)
    h = result.history
    assert len(h) == 7 == len(h.x) == len(h.seconds) == len(h.grad_norm) == len(h.calls)
    assert h.method == "adam" and all(s >= 0 for s in h.seconds)
    assert h.x[-1]["a"] is not h.x[-2]["a"]
    np.testing.assert_array_equal(h.x[0]["a"], P0["a"])
    assert result.x is h.x[-1]  # one name: x, in the result and in the history
    assert h.params is h.x  # `params`, its former name, is the same list
    assert h.objective[0] == pytest.approx(float(quadratic(P0)))


def test_history_save_load_round_trip(tmp_path: Path) -> None:
    case = CASES[1]
    torch_c = build(case, "torch")
    point = case.point()

    def objective(p: Any) -> Any:
        inputs = {"a": point["a"], "b": p["b"], "offset": point["offset"]}
        return crj.call(torch_c, inputs)["norm"] + jnp.sum(p["extra"][0] ** 2)

    x0 = {"b": point["b"], "extra": [np.ones((2, 2))]}
    result = optimize(objective, x0, max_steps=3, components=[torch_c])
    path = result.history.save(tmp_path / "run")
    assert path.suffix == ".npz"
    with np.load(path, allow_pickle=False) as data:  # nothing in the file needs pickle
        assert "meta" in data.files and data["param_0"].shape == (4, 2)
    loaded = History.load(path)
    for field in ("method", "objective", "grad_norm", "seconds", "calls"):
        assert getattr(loaded, field) == getattr(result.history, field), field
    assert isinstance(loaded.x[2]["extra"], list)
    np.testing.assert_array_equal(loaded.x[2]["extra"][0], result.history.x[2]["extra"][0])
    assert loaded.opt_state is not None and len(loaded.opt_state) == len(
        result.history.opt_state or []
    )


def test_load_refuses_other_files(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", a=np.ones(2))
    with pytest.raises(cr.ValidationError, match="not a chainrule History file"):
        History.load(tmp_path / "other.npz")


def test_resume_adam_ends_exactly_where_an_uninterrupted_run_ends(tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"method": "adam", "learning_rate": 0.05, "tol": None}
    full = optimize(rosenbrock, X0[2], max_steps=40, **kwargs)
    first = optimize(rosenbrock, X0[2], max_steps=15, **kwargs)
    first.history.save(tmp_path / "run.npz")
    resumed = optimize(rosenbrock, X0[2], max_steps=40, resume=tmp_path / "run.npz", **kwargs)
    np.testing.assert_array_equal(resumed.x, full.x)
    assert resumed.history.objective == full.history.objective
    assert resumed.steps == 40 and len(resumed.history) == 41


def test_resume_lbfgs_restores_the_line_search_state(
    lbfgs_2d: tuple[OptimizeResult, OptimizeResult],
) -> None:
    first, resumed = lbfgs_2d
    # Step 5 is evaluated again from the restored state: the value and gradient the line search
    # stored there, bit for bit.
    assert resumed.history.objective[5] == first.history.objective[5]
    assert resumed.history.grad_norm[5] == first.history.grad_norm[5]
    assert resumed.history.objective[:5] == first.history.objective[:5]
    assert resumed.success and resumed.steps > 5


def test_resume_lbfgsb_ends_near_an_uninterrupted_run() -> None:
    full = optimize(rosenbrock, X0[5], method="L-BFGS-B")
    first = optimize(rosenbrock, X0[5], method="L-BFGS-B", max_steps=10)
    resumed = optimize(rosenbrock, X0[5], method="L-BFGS-B", resume=first.history)
    assert resumed.success
    np.testing.assert_allclose(resumed.x, full.x, atol=1e-4)
    assert resumed.history.x[10] is not None and len(resumed.history) > 11


def test_checkpoint_then_resume(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.npz"
    kwargs: dict[str, Any] = {"method": "adam", "learning_rate": 0.05, "tol": None}

    def crash(step: int, *_: Any) -> None:
        if step == 12:
            raise KeyboardInterrupt  # an interrupted run

    with pytest.raises(KeyboardInterrupt):
        optimize(
            rosenbrock,
            X0[2],
            max_steps=30,
            checkpoint=path,
            checkpoint_every=5,
            callback=crash,
            **kwargs,
        )
    assert len(History.load(path)) == 13  # saved when the run failed, not only every 5 steps
    resumed = optimize(rosenbrock, X0[2], max_steps=30, resume=path, **kwargs)
    full = optimize(rosenbrock, X0[2], max_steps=30, **kwargs)
    np.testing.assert_array_equal(resumed.x, full.x)


def test_resume_refuses_a_state_that_does_not_fit() -> None:
    first = optimize(bowl, np.zeros(2), method="adam", max_steps=2)
    with pytest.raises(cr.ValidationError, match=r"saved parameters are x: float64\[2\], x0 is"):
        optimize(bowl, np.zeros(3), method="adam", resume=first.history)


# ---- multi-start -------------------------------------------------------------------------------


def double_well(x: Any) -> Any:
    # Two local minima, near x = −1 (the lower, f ≈ −0.30) and x = +1 (f ≈ +0.30).
    return jnp.sum((x**2 - 1.0) ** 2 + 0.3 * x)


@pytest.mark.parametrize("method", ["sgd", "L-BFGS-B"])
def test_multistart_picks_the_best_local_minimum(method: str) -> None:
    starts = [np.array([1.5]), np.array([0.4]), np.array([-0.2]), np.array([2.0])]
    rate = {"learning_rate": 0.02} if method == "sgd" else {}
    result = optimize(double_well, starts, method=method, multistart=True, **rate)
    assert len(result.runs) == 4 and result in result.runs
    assert result.fun == min(r.fun for r in result.runs)
    assert result.x[0] == pytest.approx(-1.0363, abs=1e-3)
    assert result.runs[0].x[0] == pytest.approx(0.9603, abs=1e-3)  # a local minimum
    assert "runs=4" in repr(result)


def test_multistart_needs_a_list() -> None:
    with pytest.raises(cr.ValidationError, match="non-empty list of starting points"):
        optimize(double_well, np.array([1.0]), multistart=True)


@pytest.mark.parametrize("method", ["adam", "L-BFGS-B"])
def test_multistart_workers_run_the_starts_at_once_with_the_same_results(method: str) -> None:
    starts = [np.array([1.5]), np.array([0.4]), np.array([-0.2]), np.array([2.0])]
    one = optimize(double_well, starts, method=method, max_steps=30, multistart=True)
    four = optimize(double_well, starts, method=method, max_steps=30, multistart=True, workers=4)
    for a, b in zip(one.runs, four.runs, strict=True):
        np.testing.assert_array_equal(a.history.objective, b.history.objective)
    assert four.x.dtype == np.float64 and four.x == one.x  # x64 in the worker threads too


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"workers": 0}, "workers= must be a whole number of at least 1, got 0"),
        ({"workers": 2}, r"workers=2 runs the starts of multistart=True at once.*multistart=False"),
        ({"workers": 2, "multistart": True, "progress": True}, r"with progress=True.*Fix: pass"),
        (
            {"workers": 2, "multistart": True, "components": [build(CASES[0], "numpy")]},
            "components=",
        ),
    ],
)
def test_multistart_workers_refuse_what_they_cannot_honour(extra: Any, match: str) -> None:
    starts = [np.array([1.5]), np.array([0.4])]
    with pytest.raises(cr.ValidationError, match=match):
        optimize(double_well, starts if extra.get("multistart") else starts[0], **extra)


# ---- output, arguments and messages -----------------------------------------------------------


def test_no_progress_bar_without_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    optimize(bowl, np.zeros(2), max_steps=3)
    assert capsys.readouterr().out == ""


def test_progress_bar_shows_objective_and_gradient(capsys: pytest.CaptureFixture[str]) -> None:
    optimize(bowl, np.zeros(2), max_steps=3, progress=True)
    out = capsys.readouterr().out
    assert "objective" in out and "|grad|" in out


def test_without_jit() -> None:
    jitted = optimize(bowl, np.zeros(2), max_steps=5)
    eager = optimize(bowl, np.zeros(2), max_steps=5, jit=False)
    np.testing.assert_allclose(eager.x, jitted.x, rtol=1e-12)
    scipy_eager = optimize(bowl, np.zeros(2), method="L-BFGS-B", jit=False)
    assert scipy_eager.success and np.allclose(scipy_eager.x, 1.0)


def test_repr_is_readable() -> None:
    result = optimize(quadratic, P0, method="adam", max_steps=2)
    text = repr(result)
    assert text.startswith("OptimizeResult(adam, stopped at step 2: reached max_steps=2")
    assert "['a']: [" in text and "fun=" in text
    assert isinstance(result, OptimizeResult) and "entries=3" in repr(result.history)


MESSAGES = [
    (
        {"method": "adamw"},
        "unknown method 'adamw'; known: 'sgd', 'adam', 'lbfgs' (optax), 'L-BFGS-B', 'SLSQP', "
        "'trust-constr' (scipy), or pass an optax.GradientTransformation",
    ),
    (
        {"method": "adam", "constraints": CONSTRAINTS},
        "method 'adam' (optax) does not take constraints; use a scipy method: 'L-BFGS-B', "
        "'SLSQP', 'trust-constr'",
    ),
    ({"method": "lbfgs", "bounds": (0, 1)}, "method 'lbfgs' (optax) does not take bounds"),
    ({"method": "L-BFGS-B", "constraints": CONSTRAINTS}, "takes bounds but not constraints"),
    ({"method": "SLSQP", "learning_rate": 0.1}, "learning_rate applies to optax methods"),
    ({"method": "adam", "options": {"maxiter": 3}}, "options= are passed to scipy"),
    ({"max_steps": -1}, "max_steps must be an int >= 0, got -1"),
    ({"tol": "small"}, "tol must be a number >= 0 or None, got 'small'"),
    ({"method": 3}, "method must be a method name or an optax.GradientTransformation, got int"),
    ({"components": ["band"]}, "components= must list chainrule Components, got str"),
    (
        {"method": "SLSQP", "constraints": [{"type": "le", "fun": bowl}]},
        "constraints[0] must be a dict {'type': 'eq' | 'ineq', 'fun': f}",
    ),
    ({"method": "SLSQP", "bounds": [(0, 1)]}, "bounds must be a list of 2 (low, high) pairs"),
]


@pytest.mark.parametrize(("kwargs", "message"), MESSAGES, ids=[str(m[0]) for m in MESSAGES])
def test_bad_arguments_are_explained(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(cr.ValidationError) as info:
        optimize(bowl, np.zeros(2), **kwargs)
    assert message in str(info.value)


def test_method_names_ignore_case() -> None:
    assert optimize(bowl, np.zeros(2), method="l-bfgs-b").method == "L-BFGS-B"


def test_objective_must_be_scalar() -> None:
    with pytest.raises(cr.ValidationError, match=r"must return a scalar, got float64\[2\]"):
        optimize(lambda x: x**2, np.zeros(2))


def test_parameters_must_be_floating() -> None:
    with pytest.raises(cr.ValidationError, match=r"x0\['w'\]: parameters must be real floating"):
        optimize(lambda p: jnp.sum(p["w"]), {"w": np.array(["a", "b"])})
    result = optimize(bowl, np.array([1, 2]), max_steps=1)  # integers become float64
    assert result.x.dtype == np.float64
