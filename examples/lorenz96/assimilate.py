"""4D-Var on Lorenz-96: recover an initial state from noisy, partial observations.

The truth is a Lorenz-96 state (N=40, F=8, RK4, dt=0.01) on its attractor. Every 5th step of
the assimilation window, every other variable is observed with Gaussian noise (σ_o = 0.5). A
first guess (the background) is the true initial state plus noise (σ_b = 1). 4D-Var finds the
initial state x0 minimizing

    J(x0) = ½ ‖x0 − x_b‖² / σ_b²  +  ½ Σ_t ‖H x_t(x0) − y_t‖² / σ_o²

where x_t(x0) is the model trajectory. The model is `l96_solver/`, a NumPy component launched
in its own uv environment (numpy only) and called over HTTP; its derivative is the hand-written
adjoint of RK4. J is plain JAX around `chainrule.jax.call`, and scipy's L-BFGS-B minimizes it
with `jax.value_and_grad(J)`: each evaluation is one `apply` and one `vjp` of the solver.

Run: `python examples/lorenz96/assimilate.py [--window N] [--out DIR]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

import chainrule as cr
import chainrule.jax as crj

# This program computes in float64 (its components declare Float64 fields): JAX's 64-bit
# mode is the program's choice to make, and it is made here.
jax.config.update("jax_enable_x64", True)

SOLVER = Path(__file__).parent / "l96_solver"


@dataclass(frozen=True)
class Setup:
    """The model, the window and the observing system."""

    n: int = 40
    forcing: float = 8.0
    dt: float = 0.01
    window: int = 100  # steps in the assimilation window (1 time unit)
    obs_every: int = 5  # steps between observation times
    obs_stride: int = 2  # every other variable is observed
    sigma_o: float = 0.5
    sigma_b: float = 1.0
    spinup: int = 1000  # steps to reach the attractor from a perturbed rest state

    @property
    def obs_times(self) -> np.ndarray:
        return np.arange(self.obs_every, self.window + 1, self.obs_every)

    @property
    def observed(self) -> np.ndarray:
        return np.arange(0, self.n, self.obs_stride)


def run_model(solver: cr.Component, setup: Setup, x0: np.ndarray, steps: int) -> np.ndarray:
    """The trajectory (steps + 1, n) from x0, computed by the (launched) solver."""
    window = {"x0": x0, "steps": steps, "dt": setup.dt, "forcing": setup.forcing}
    return np.asarray(solver.apply(window).states)


@dataclass
class Problem:
    """The true trajectory, the background and the observations of one window."""

    truth: np.ndarray  # (window + 1, n)
    background: np.ndarray  # (n,)
    observations: np.ndarray  # (obs times, observed variables)


def make_problem(solver: cr.Component, setup: Setup, seed: int) -> Problem:
    """A truth on the attractor, a perturbed first guess and noisy partial observations."""
    rng = np.random.default_rng(seed)
    rest = np.full(setup.n, setup.forcing) + 0.01 * rng.normal(size=setup.n)
    x0 = run_model(solver, setup, rest, setup.spinup)[-1]
    truth = run_model(solver, setup, x0, setup.window)
    background = x0 + setup.sigma_b * rng.normal(size=setup.n)
    seen = truth[np.ix_(setup.obs_times, setup.observed)]
    observations = seen + setup.sigma_o * rng.normal(size=seen.shape)
    return Problem(truth, background, observations)


def cost_function(
    solver: cr.Component, setup: Setup, problem: Problem
) -> Callable[[jax.Array], jax.Array]:
    """J(x0) in JAX: background term plus observation misfits along the solver's trajectory."""
    xb, y = jnp.asarray(problem.background), jnp.asarray(problem.observations)
    times, observed = jnp.asarray(setup.obs_times), jnp.asarray(setup.observed)

    def cost(x0: jax.Array) -> jax.Array:
        window = {"x0": x0, "steps": setup.window, "dt": setup.dt, "forcing": setup.forcing}
        states = crj.call(solver, window)["states"]
        misfit = states[times][:, observed] - y
        background = jnp.sum((x0 - xb) ** 2) / setup.sigma_b**2
        return 0.5 * background + 0.5 * jnp.sum(misfit**2) / setup.sigma_o**2

    return cost


@dataclass
class Analysis:
    """The minimizer's result and the cost at every iteration."""

    x0: np.ndarray
    costs: list[float] = field(default_factory=list)
    evaluations: int = 0
    seconds: float = 0.0
    message: str = ""


def assimilate(solver: cr.Component, setup: Setup, problem: Problem, maxiter: int) -> Analysis:
    """Minimize J from the background with L-BFGS-B (value and gradient from JAX)."""
    cost = cost_function(solver, setup, problem)
    # The trajectory's length comes from a static input, which the output schema cannot name:
    # one eager call shows chainrule.jax the output shape before jit traces the cost.
    cost(jnp.asarray(problem.background))
    value_and_grad = jax.jit(jax.value_and_grad(cost))

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = value_and_grad(jnp.asarray(x))
        return float(value), np.asarray(grad, dtype=np.float64)

    analysis = Analysis(problem.background)

    def record(intermediate_result: scipy.optimize.OptimizeResult) -> None:
        # scipy passes the OptimizeResult (with .fun) only to a parameter of this exact name.
        analysis.costs.append(float(intermediate_result.fun))

    analysis.costs.append(fun(problem.background)[0])
    start = time.perf_counter()
    result = scipy.optimize.minimize(
        fun, problem.background, jac=True, method="L-BFGS-B",
        callback=record,
        options={"maxiter": maxiter, "gtol": 1e-8},
    )  # fmt: skip
    analysis.x0, analysis.evaluations = np.asarray(result.x), int(result.nfev)
    analysis.seconds, analysis.message = time.perf_counter() - start, str(result.message)
    return analysis


def rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


@dataclass
class Result:
    """RMS errors of the initial state and over the window, background vs analysis."""

    background_rms: float
    analysis_rms: float
    background_window_rms: float
    analysis_window_rms: float
    analysis: Analysis
    runs: list[np.ndarray]  # trajectories from the background and the analysis
    files: list[Path] = field(default_factory=list)

    @property
    def factor(self) -> float:
        return self.background_rms / self.analysis_rms


def evaluate(solver: cr.Component, setup: Setup, problem: Problem, analysis: Analysis) -> Result:
    """Errors of the background and the analysis vs the truth, at t=0 and over the window."""
    runs = [run_model(solver, setup, x, setup.window) for x in (problem.background, analysis.x0)]
    return Result(
        rms(problem.background, problem.truth[0]),
        rms(analysis.x0, problem.truth[0]),
        rms(runs[0], problem.truth),
        rms(runs[1], problem.truth),
        analysis,
        runs,
    )


def report(setup: Setup, result: Result) -> None:
    a = result.analysis
    print(f"L-BFGS-B: {len(a.costs) - 1} iterations, {a.evaluations} cost+gradient evaluations")
    print(f"  in {a.seconds:.1f} s; J {a.costs[0]:.1f} -> {a.costs[-1]:.1f} ({a.message})")
    print("RMS error of the initial state vs the truth:")
    print(f"  background {result.background_rms:.4f}   analysis {result.analysis_rms:.4f}", end="")
    print(f"   -> {result.factor:.1f}x smaller")
    print("RMS error over the window (trajectories from each initial state):")
    print(f"  background {result.background_window_rms:.4f}   ", end="")
    print(f"analysis {result.analysis_window_rms:.4f}")


def run(
    setup: Setup, out: Path | None, cache_dir: Path | None, seed: int = 0, maxiter: int = 300
) -> Result:
    """Launch the solver, make the problem, assimilate, report and plot (if `out`)."""
    start = time.perf_counter()
    server = cr.launch(SOLVER, cache_dir=cache_dir, quiet=True)
    with server as solver:
        print(f"solver {SOLVER.name} (numpy only) launched in its own environment at {server.url}")
        print(f"  ready in {time.perf_counter() - start:.1f} s (the first run builds the env)")
        problem = make_problem(solver, setup, seed)
        obs = problem.observations.size
        print(f"window {setup.window} steps (t = {setup.window * setup.dt:g}), {obs} observations")
        analysis = assimilate(solver, setup, problem, maxiter)
        result = evaluate(solver, setup, problem, analysis)
        calls = ", ".join(f"{k} {v}" for k, v in sorted(solver.calls.items()))
    report(setup, result)
    print(f"solver calls (counted by the client): {calls}")
    if out is not None:
        from l96_plots import plot_all  # a sibling module: matplotlib only when plotting

        result.files = plot_all(out, setup, problem, result)
        print("plots: " + ", ".join(str(f) for f in result.files))
    return result


def main(argv: list[str] | None = None) -> int:
    """Assimilate one window; 0 iff the analysis error is at least 3x below the background's."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=int, default=100, help="steps in the window")
    parser.add_argument("--out", type=Path, default=Path("out/lorenz96"), help="folder for plots")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--cache-dir", type=Path, help="where component environments are cached")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = None if args.no_plots else args.out
    result = run(Setup(window=args.window), out, args.cache_dir, args.seed)
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0 if result.factor >= 3.0 else 1


if __name__ == "__main__":
    sys.exit(main())
