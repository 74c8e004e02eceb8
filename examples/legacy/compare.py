"""Legacy code: a NumPy-only heat solver with finite-difference gradients beside its JAX twin.

The solver integrates the 1-D heat equation u_t = (κ(x) u_x)_x on [0, 1] (zero temperature
at both ends) with explicit Euler steps, from a fixed initial temperature; its parameter is the
diffusion coefficient profile κ (one value per grid cell) and its output the final temperature.
The same solver exists twice:

- `legacy_heat`: plain NumPy (a Python loop over time steps), a `numpy` component: chainrule
  derives its derivatives by central finite differences, two solver runs per entry of κ;
- `jax_heat`: the same arithmetic in jax.numpy (a `fori_loop`), a `jax` component: reverse
  mode costs about one forward and one backward pass, whatever the size of κ.

For several grid sizes the script prints the accuracy of the finite-difference gradient of a
misfit ‖u(T; κ) − u_obs‖² against the JAX gradient, and what each gradient costs: solver runs
(counted inside the NumPy solver), the endpoint calls the component served and wall time.
Then both calibrate κ from the same observations with L-BFGS-B and reach the same answer.

Run: `python examples/legacy/compare.py [--sizes 16,32,64,128] [--steps 400]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

import chainrule as cr
import chainrule.jax as crj

# This program computes in float64 (its components declare Float64 fields): JAX's 64-bit
# mode is the program's choice to make, and it is made here.
jax.config.update("jax_enable_x64", True)

KAPPA_MAX = 2.0  # the profiles here stay below this; the time step is stable up to it
# dt/dx²: explicit Euler is stable for dt·κ_max/dx² ≤ 1/2; 0.2 leaves a margin. (Fixed in
# grid units, so a finer grid covers a shorter time: the cost per step is what is compared.)
RATIO = 0.2 / KAPPA_MAX


class Rod(cr.Schema):
    """A rod of n cells: its diffusion coefficients, initial temperature and time stepping."""

    kappa: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    u0: cr.Array[("n",), cr.Float64]
    steps: int = 400


class Temperature(cr.Schema):
    u: cr.Differentiable[cr.Array[("n",), cr.Float64]]


# ---- the legacy solver (NumPy only), and a count of its runs --------------------------------


class RunCounter:
    """How many times the legacy solver ran (each finite-difference probe is one run)."""

    def __init__(self) -> None:
        self.runs = 0


RUNS = RunCounter()


def numpy_solve(kappa: np.ndarray, u0: np.ndarray, steps: int) -> np.ndarray:
    """The legacy code: explicit finite volumes, zero-temperature ends by ghost cells."""
    RUNS.runs += 1
    r = RATIO
    faces = np.concatenate([kappa[:1], 0.5 * (kappa[1:] + kappa[:-1]), kappa[-1:]])
    u = u0.copy()
    for _ in range(steps):
        padded = np.concatenate([[-u[0]], u, [-u[-1]]])
        u = u + r * np.diff(faces * np.diff(padded))
    return u


def jax_solve(kappa: jax.Array, u0: jax.Array, steps: int) -> jax.Array:
    """The JAX twin: the same arithmetic, line for line, in a fori_loop."""
    r = RATIO
    faces = jnp.concatenate([kappa[:1], 0.5 * (kappa[1:] + kappa[:-1]), kappa[-1:]])

    def step(_: int, u: jax.Array) -> jax.Array:
        padded = jnp.concatenate([-u[:1], u, -u[-1:]])
        return u + r * jnp.diff(faces * jnp.diff(padded))

    return jax.lax.fori_loop(0, steps, step, u0)


@cr.component(inputs=Rod, outputs=Temperature, backend="numpy")
def legacy_heat(inputs: Rod) -> Temperature:
    """The legacy solver as a component; derivatives by central finite differences."""
    return Temperature(u=numpy_solve(inputs.kappa, inputs.u0, inputs.steps))


@cr.component(inputs=Rod, outputs=Temperature, backend="jax")
def jax_heat(inputs: Rod) -> Temperature:
    """The JAX twin as a component; derivatives by JAX."""
    return Temperature(u=jax_solve(inputs.kappa, inputs.u0, inputs.steps))


# ---- the problem: a misfit of the final temperature ------------------------------------------


@dataclass(frozen=True)
class Problem:
    """A rod of n cells, its initial temperature, observations of u(T) and a start for κ."""

    u0: np.ndarray
    observed: np.ndarray
    kappa0: np.ndarray
    steps: int

    @classmethod
    def make(cls, n: int, steps: int) -> Problem:
        x = (np.arange(n) + 0.5) / n
        u0 = np.sin(np.pi * x) + 0.5 * np.exp(-(((x - 0.3) / 0.1) ** 2))
        true_kappa = 1.0 + 0.5 * np.sin(2 * np.pi * x)
        observed = numpy_solve(true_kappa, u0, steps)
        RUNS.runs = 0  # making the observations is not part of any gradient's cost
        return cls(u0, observed, np.ones(n), steps)

    def misfit(self, component: cr.Component) -> Callable[[jax.Array], jax.Array]:
        """‖u(T; κ) − u_obs‖², the solver called as `component`."""

        def loss(kappa: jax.Array) -> jax.Array:
            inputs = {"kappa": kappa, "u0": self.u0, "steps": self.steps}
            u = crj.call(component, inputs)["u"]
            return jnp.sum((u - self.observed) ** 2)

        return loss


# ---- accuracy and cost per grid size ----------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One grid size: FD accuracy against JAX, and the cost of one gradient each way."""

    n: int
    rel_error: float
    fd_runs: int  # legacy solver runs per FD gradient
    fd_calls: str  # endpoint calls the NumPy component served per gradient
    fd_ms: float
    jax_ms: float


def _timed(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `fn` in milliseconds (after one warm-up call that compiles)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def measure(n: int, steps: int, repeats: int = 3) -> Row:
    """Gradients of the misfit at κ0 both ways; FD cost counted on one fresh gradient."""
    problem = Problem.make(n, steps)
    kappa = jnp.asarray(problem.kappa0)
    fd_grad = jax.jit(jax.value_and_grad(problem.misfit(legacy_heat)))
    jax_grad = jax.jit(jax.value_and_grad(problem.misfit(jax_heat)))
    reference = np.asarray(jax_grad(kappa)[1])
    fd_ms = _timed(lambda: fd_grad(kappa), repeats)
    legacy_heat.calls.clear()
    RUNS.runs = 0
    approx = np.asarray(fd_grad(kappa)[1])
    calls = ", ".join(f"{k} {v}" for k, v in sorted(legacy_heat.calls.items()))
    error = float(np.linalg.norm(approx - reference) / np.linalg.norm(reference))
    return Row(n, error, RUNS.runs, calls, fd_ms, _timed(lambda: jax_grad(kappa), repeats))


def print_rows(rows: Sequence[Row]) -> None:
    print(
        f"{'n':>5}  {'rel. error FD vs JAX':>20}  {'FD solver runs':>14}  {'FD calls':<14}"
        f"  {'FD ms/grad':>10}  {'JAX ms/grad':>11}"
    )
    for r in rows:
        print(
            f"{r.n:>5}  {r.rel_error:>20.2e}  {r.fd_runs:>14}  {r.fd_calls:<14}"
            f"  {r.fd_ms:>10.1f}  {r.jax_ms:>11.2f}"
        )


# ---- a small calibration both ways -----------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """κ recovered with gradients from one component: the answer and what it cost."""

    kappa: np.ndarray
    misfit: float
    iterations: int
    seconds: float


def calibrate(component: cr.Component, problem: Problem, alpha: float = 1e-4) -> Calibration:
    """L-BFGS-B on misfit + α‖Dκ‖² (smoothness: κ is otherwise not identifiable everywhere),
    κ kept within [0.2, KAPPA_MAX] so the explicit solver stays stable."""

    def objective(kappa: jax.Array) -> jax.Array:
        return problem.misfit(component)(kappa) + alpha * jnp.sum(jnp.diff(kappa) ** 2)

    value_and_grad = jax.jit(jax.value_and_grad(objective))

    def fun(kappa: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = value_and_grad(jnp.asarray(kappa))
        return float(value), np.asarray(grad, dtype=np.float64)

    start = time.perf_counter()
    bounds = [(0.2, KAPPA_MAX)] * len(problem.kappa0)
    result = scipy.optimize.minimize(
        fun, problem.kappa0, jac=True, method="L-BFGS-B", bounds=bounds, options={"gtol": 1e-10}
    )
    seconds = time.perf_counter() - start
    return Calibration(result.x, float(result.fun), int(result.nit), seconds)


def compare_calibrations(n: int, steps: int) -> float:
    """Calibrate with each component; print both and return max |κ_FD − κ_JAX|."""
    problem = Problem.make(n, steps)
    results = {c.name: calibrate(c, problem) for c in (legacy_heat, jax_heat)}
    for name, c in results.items():
        print(
            f"  {name:<12} objective {c.misfit:.3e} in {c.iterations} iterations, {c.seconds:.2f} s"
        )
    diff = float(np.max(np.abs(results["legacy_heat"].kappa - results["jax_heat"].kappa)))
    print(f"  κ recovered: {np.array2string(results['jax_heat'].kappa, precision=3)}")
    print(f"  max |κ_FD − κ_JAX| = {diff:.1e}")
    return diff


def main(argv: list[str] | None = None) -> int:
    """Print the accuracy/cost table and the calibration; 0 iff FD matches JAX to 1e-6."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="16,32,64,128", help="grid sizes n, comma-separated")
    parser.add_argument("--steps", type=int, default=400, help="time steps of the solver")
    parser.add_argument("--calibrate", type=int, default=12, help="n of the calibration (0: skip)")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"Gradient of ‖u(T; κ) − u_obs‖² over κ (n values), {args.steps} explicit steps")
    rows = [measure(n, args.steps) for n in sizes]
    print_rows(rows)
    ok = all(r.rel_error < 1e-6 for r in rows)
    worst = max(r.rel_error for r in rows)
    print(f"finite differences match JAX to {worst:.1e} (relative); ", end="")
    print(
        f"FD cost: {' → '.join(str(r.fd_runs) for r in rows)} solver runs per gradient "
        "(2 per entry of κ), JAX: one forward and one backward pass"
    )
    if args.calibrate:
        print(f"calibration of κ (n={args.calibrate}) from the same observations, L-BFGS-B:")
        ok &= compare_calibrations(args.calibrate, args.steps) < 1e-4
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
