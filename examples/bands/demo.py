"""Terrain crossing across frameworks: every part of the travel time is a different component.

Three bands of width d=10 are crossed at speeds v=(0.7, 0.3, 0.45) from offset 0 to offset
h=20; the path crosses the inner boundaries after lateral offsets x1 and x2, so the legs are
(x1, x2, h − x1 − x2) and the travel time is

    t = sqrt(x1² + d²)/0.7 + sqrt(x2² + d²)/0.3 + sqrt((h − x1 − x2)² + d²)/0.45

Here each band's time comes from a different kind of component, and a fourth kind adds them up:

- band 1: an in-process JAX component (traced inline into the jitted program);
- band 2: an in-process PyTorch component (derivatives by torch.func);
- band 3: a NumPy component in `remote_band/`, launched in its own uv environment and called
  over HTTP (its vjp is written by hand);
- the total t1 + t2 + t3: an in-process NumPy component with no derivatives written
  (central finite differences).

`total_time(x)` is a plain JAX function over those four components; gradient descent with
`jax.jit(jax.value_and_grad(total_time))` finds the fastest crossing (x1 ≈ 11.17307,
x2 ≈ 3.36991, t ≈ 81.911688), where Snell's law holds: sin θ_i / v_i is the same in every band.

Run: `python examples/bands/demo.py [--steps N] [--out DIR] [--no-plots]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

import chainrule as cr
import chainrule.jax as crj

# This program computes in float64 (its components declare Float64 fields): JAX's 64-bit
# mode is the program's choice to make, and it is made here.
jax.config.update("jax_enable_x64", True)

H, D = 20.0, 10.0  # total lateral offset, width of each band
SPEEDS = (0.7, 0.3, 0.45)
EXPECTED = {"x1": 11.17307, "x2": 3.36991, "t": 81.911688}  # docs/design.md
# x and t: docs/design.md's values are rounded to 5 and 6 decimals; grad: when the descent stops.
TOLERANCE = {"x": 1e-5, "t": 1e-6, "snell": 1e-6, "grad": 1e-10}
REMOTE_FOLDER = Path(__file__).parent / "remote_band"


# ---- the in-process components -----------------------------------------------------------
# The launched band declares the same two schemas in its own module: it runs in another
# environment and imports only numpy and chainrule.


class Leg(cr.Schema):
    """One leg of the path: its lateral offset across a band, and the band itself."""

    offset: cr.Differentiable[cr.Array[(), cr.Float64]]
    speed: float
    width: float = D


class Time(cr.Schema):
    time: cr.Differentiable[cr.Array[(), cr.Float64]]


@cr.component(inputs=Leg, outputs=Time, backend="jax")
def jax_band(inputs: Leg) -> Time:
    """Travel time across a band, in JAX."""
    return Time(time=jnp.sqrt(inputs.offset**2 + inputs.width**2) / inputs.speed)


@cr.component(inputs=Leg, outputs=Time, backend="torch")
def torch_band(inputs: Leg) -> Time:
    """Travel time across a band, in PyTorch."""
    return Time(time=torch.sqrt(inputs.offset**2 + inputs.width**2) / inputs.speed)


class Times(cr.Schema):
    times: cr.Differentiable[cr.Array[("bands",), cr.Float64]]


class Total(cr.Schema):
    total: cr.Differentiable[cr.Array[(), cr.Float64]]


@cr.component(inputs=Times, outputs=Total, backend="numpy")
def numpy_total(inputs: Times) -> Total:
    """The whole travel time; plain NumPy, its derivatives come from finite differences."""
    return Total(total=np.sum(inputs.times))


# ---- the pipeline --------------------------------------------------------------------------


def pipeline(remote: cr.Component) -> Callable[[jax.Array], jax.Array]:
    """`total_time(x)`: the travel time over the crossing offsets x = (x1, x2)."""

    def total_time(x: jax.Array) -> jax.Array:
        t1 = crj.call(jax_band, {"offset": x[0], "speed": SPEEDS[0]})["time"]
        t2 = crj.call(torch_band, {"offset": x[1], "speed": SPEEDS[1]})["time"]
        t3 = crj.call(remote, {"offset": H - x[0] - x[1], "speed": SPEEDS[2]})["time"]
        return crj.call(numpy_total, {"times": jnp.stack([t1, t2, t3])})["total"]

    return total_time


def reference_time(x: jax.Array) -> jax.Array:
    """The same travel time written as one JAX function (to check the pipeline's gradient)."""
    legs = jnp.stack([x[0], x[1], H - x[0] - x[1]])
    return jnp.sum(jnp.sqrt(legs**2 + D**2) / jnp.asarray(SPEEDS))


def legs(x: np.ndarray) -> np.ndarray:
    """Lateral offsets of the three legs."""
    return np.array([x[0], x[1], H - x[0] - x[1]])


def snell(x: np.ndarray) -> np.ndarray:
    """sin θ_i / v_i of each band, θ_i the angle of leg i from the band normal."""
    offsets = legs(x)
    return offsets / np.sqrt(offsets**2 + D**2) / np.asarray(SPEEDS)


# ---- gradient descent ------------------------------------------------------------------------


@dataclass
class History:
    """Iterates of the descent: x, t and ∇t at every step."""

    x: list[np.ndarray] = field(default_factory=list)
    t: list[float] = field(default_factory=list)
    grad: list[np.ndarray] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.t)

    @property
    def grad_norm(self) -> list[float]:
        return [float(np.linalg.norm(g)) for g in self.grad]


def descend(
    total_time: Callable[[jax.Array], jax.Array],
    steps: int,
    lr: float = 3.0,
    tol: float = TOLERANCE["grad"],
    progress: bool = False,
) -> History:
    """Gradient descent from the straight line until |∇t| < tol or `steps` steps.

    The Hessian's eigenvalues stay within [0.12, 0.51] on the way, so lr=3 contracts the
    error by ~0.6 per step (2/λmax ≈ 3.9 would be the stability limit).
    """
    step = jax.jit(jax.value_and_grad(total_time))
    x = jnp.array([H / 3, H / 3])
    history = History()
    start = time.perf_counter()
    with _progress(steps, progress) as report:
        for k in range(steps):
            t, grad = step(x)
            history.x.append(np.asarray(x))
            history.t.append(float(t))
            history.grad.append(np.asarray(grad))
            report(k, history.t[-1], history.grad_norm[-1])
            if history.grad_norm[-1] < tol:
                break
            x = x - lr * grad
    history.seconds = time.perf_counter() - start
    return history


@contextmanager
def _progress(total: int, bar: bool) -> Iterator[Callable[[int, float, float], None]]:
    """A rich progress bar on a terminal; otherwise a line every 10 steps (logs stay short)."""
    if not bar:

        def line(k: int, t: float, gnorm: float) -> None:
            if k % 10 == 0:
                print(f"  step {k:4d}  t = {t:.9f}  |∇t| = {gnorm:.2e}", flush=True)

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("descending", total=total)

        def update(k: int, t: float, gnorm: float) -> None:
            text = f"step {k:4d}  t = {t:.9f}  |∇t| = {gnorm:.2e}"
            progress.update(task, completed=k + 1, description=text)

        yield update


# ---- the launched component ----------------------------------------------------------------


@contextmanager
def launched_band(cache_dir: Path | None) -> Iterator[tuple[cr.Component, str]]:
    """Band 3's server in its own environment: (connected client, URL); stopped at the end."""
    print(f"environment of {REMOTE_FOLDER.name} (requirements: numpy): built with uv on the")
    print("  first run (a few seconds, uv's progress below), reused from the cache afterwards")
    start = time.perf_counter()
    python = cr.build_env(REMOTE_FOLDER, cache_dir=cache_dir)
    print(f"  ready in {time.perf_counter() - start:.1f} s: {python}")
    start = time.perf_counter()
    server = cr.launch(REMOTE_FOLDER, cache_dir=cache_dir)
    with server as remote:
        print(f"  serving at {server.url} (started in {time.perf_counter() - start:.1f} s)")
        yield remote, server.url
    print(f"  server at {server.url} {'still running?!' if server.alive() else 'stopped'}")


# ---- the report ----------------------------------------------------------------------------


def _where(url: str) -> list[tuple[str, str, str]]:
    """(part, formula, where it runs) for the table printed before the descent."""
    v1, v2, v3 = SPEEDS
    return [
        ("band 1", f"sqrt(x1² + d²)/{v1}", "jax, in-process (traced inline into the jit)"),
        ("band 2", f"sqrt(x2² + d²)/{v2}", "torch, in-process (torch.func)"),
        (
            "band 3",
            f"sqrt((h − x1 − x2)² + d²)/{v3}",
            f"numpy, own env over HTTP at {url} (vjp by hand)",
        ),
        ("total", "t1 + t2 + t3", "numpy, in-process (finite differences)"),
    ]


def _calls(component: cr.Component) -> str:
    """`apply 52, vjp 52, ...`; an inlined JAX component serves no calls at all."""
    if not component.calls:
        return "no calls (traced inline into the compiled program)"
    return ", ".join(f"{name} {n}" for name, n in sorted(component.calls.items()))


def report_optimum(x: np.ndarray, t: float) -> bool:
    """Print x1, x2 and t beside the design's values; True iff they match to the digits given."""
    ok = (
        max(abs(x[0] - EXPECTED["x1"]), abs(x[1] - EXPECTED["x2"])) < TOLERANCE["x"]
        and abs(t - EXPECTED["t"]) < TOLERANCE["t"]
    )
    for name, value, digits in (("x1", x[0], 5), ("x2", x[1], 5), ("t", t, 6)):
        print(f"{name:<2} = {value:<10.{digits}f}  (expected ≈ {EXPECTED[name]})")
    print(f"optimum: {'matches' if ok else 'DIFFERS from'} docs/design.md")
    return ok


def report_snell(x: np.ndarray) -> bool:
    """Print sin θ / v per band and their spread; True iff the spread is below 1e-6."""
    ratios = snell(x)
    spread = float(np.ptp(ratios))
    ok = spread < TOLERANCE["snell"]
    print("sin θ / v per band: " + ", ".join(f"{r:.12f}" for r in ratios))
    verdict = "holds" if ok else "DOES NOT hold"
    print(f"Snell's law: spread {spread:.1e} (must be < {TOLERANCE['snell']:g}) -> {verdict}")
    return ok


def report_calls(remote: cr.Component) -> None:
    """The endpoint calls each component served (the launched one counted by its client)."""
    print("calls each component served:")
    parts = ("band 1", jax_band), ("band 2", torch_band), ("band 3", remote), ("total", numpy_total)
    for part, component in parts:
        where = " (counted by the client)" if component is remote else ""
        print(f"  {part:<6}  {component.name:<12}  {_calls(component)}{where}")


def report_descent(history: History) -> None:
    """How the descent ended: steps, time, final gradient norm and why it stopped."""
    gnorm = history.grad_norm[-1]
    tol = TOLERANCE["grad"]
    why = f"converged (< {tol:g})" if gnorm < tol else f"out of steps before |∇t| < {tol:g}"
    print(f"{history.steps} steps in {history.seconds:.1f} s (the first compiles), ", end="")
    print(f"|∇t| = {gnorm:.1e}: {why}")


def report_gradient(history: History) -> None:
    """Compare the first gradient through the four components with the pure-JAX formula."""
    reference = np.asarray(jax.grad(reference_time)(jnp.asarray(history.x[0])))
    error = float(np.max(np.abs(history.grad[0] - reference)))
    print(f"gradient at x0 through the components vs pure JAX: max |Δ| = {error:.1e}")


def optimize(cache_dir: Path | None, steps: int) -> tuple[History, bool]:
    """Launch band 3, descend, report; the history and whether the optimum and Snell hold."""
    with launched_band(cache_dir) as (remote, url):
        print("which part runs where:")
        for part, formula, where in _where(url):
            print(f"  {part:<6}  {formula:<30}  {where}")
        print("descending: jax.jit(jax.value_and_grad(total_time)) from the straight line")
        history = descend(pipeline(remote), steps, progress=sys.stdout.isatty())
        report_descent(history)
        report_gradient(history)
        ok = report_optimum(history.x[-1], history.t[-1]) & report_snell(history.x[-1])
        report_calls(remote)
    return history, ok


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 iff the optimum matches docs/design.md and Snell's law holds to 1e-6."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="at most this many steps")
    parser.add_argument("--out", type=Path, default=Path("out/bands"), help="folder for plots")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--cache-dir", type=Path, help="where component environments are cached")
    args = parser.parse_args(argv)

    print(f"Fastest crossing of three bands (d={D:g}, h={H:g}, v={SPEEDS})")
    history, ok = optimize(args.cache_dir, args.steps)
    if not args.no_plots:
        from plots import Terrain, plot_all  # a sibling module: matplotlib only when plotting

        labels = ("JAX\nin-process", "PyTorch\nin-process", "NumPy, own env\nover HTTP")
        note = "total t1 + t2 + t3: NumPy, in-process, finite differences"
        files = plot_all(history, args.out, Terrain(H, D, SPEEDS, labels, note))
        print("plots: " + ", ".join(str(f) for f in files))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
