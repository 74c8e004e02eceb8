"""Terrain crossing: the fastest path across three bands of terrain, by gradient descent.

Three bands of width d are crossed at speeds v1, v2, v3; the path crosses the band boundaries
at offsets x1 and x1 + x2 and ends at total offset h. The travel time

    t = sqrt(x1² + d²)/v1 + sqrt(x2² + d²)/v2 + sqrt((h − x1 − x2)² + d²)/v3

is one JAX component. Plain gradient descent through its `vjp` (with the linearization kept by
`apply(keep=True)`, so each step costs one forward and one backward pass) finds the optimum,
where Snell's law holds: sin θ_i / v_i is the same in every band.

Run: `python examples/terrain/optimize.py` (add `--help` for options).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import jax.numpy as jnp
import numpy as np

import chainrule as cr


class Crossing(cr.Schema):
    """Where the path crosses the two inner boundaries, and the fixed geometry."""

    x: cr.Differentiable[cr.Array[(2,), cr.Float64]]  # x1, x2
    speeds: cr.Array[(3,), cr.Float64]
    h: float = 20.0
    d: float = 10.0


class TravelTime(cr.Schema):
    t: cr.Differentiable[cr.Array[(), cr.Float64]]


@cr.component(inputs=Crossing, outputs=TravelTime, backend="jax")
def travel_time(inputs: Crossing) -> TravelTime:
    x1, x2 = inputs.x[0], inputs.x[1]
    legs = jnp.stack([x1, x2, inputs.h - x1 - x2])
    return TravelTime(t=jnp.sum(jnp.sqrt(legs**2 + inputs.d**2) / inputs.speeds))


SPEEDS = np.array([0.7, 0.3, 0.45])
EXPECTED = {"x1": 11.17307, "x2": 3.36991, "t": 81.911688}


@dataclass
class Result:
    x: np.ndarray
    t: float
    steps: int
    history: list[float] = field(default_factory=list)
    path: list[np.ndarray] = field(default_factory=list)

    def snell(self, h: float = 20.0, d: float = 10.0) -> np.ndarray:
        """sin θ_i / v_i of each band (equal at the optimum)."""
        legs = np.array([self.x[0], self.x[1], h - self.x[0] - self.x[1]])
        return legs / np.sqrt(legs**2 + d**2) / SPEEDS


def optimize(
    steps: int = 500, lr: float = 2.0, tol: float = 1e-12, progress: bool = True
) -> Result:
    """Gradient descent on the travel time, starting from the straight line."""
    x = np.array([20.0 / 3, 20.0 / 3])
    result = Result(x, math.inf, 0)
    bar = _progress(steps) if progress else None
    for step in range(steps):
        inputs = {"x": x, "speeds": SPEEDS}
        out, handle = travel_time.apply(inputs, keep=True)
        grad = travel_time.vjp(inputs, {"t": 1.0}, handle=handle)["x"]
        travel_time.release(handle)
        result.history.append(float(out.t))
        result.path.append(x.copy())
        if bar:
            bar.update(step, float(out.t), float(np.linalg.norm(grad)))
        if np.linalg.norm(grad) < tol:
            break
        x = x - lr * grad
    result.x, result.t, result.steps = (
        x,
        float(travel_time.apply({"x": x, "speeds": SPEEDS}).t),
        step + 1,
    )
    if bar:
        bar.close()
    return result


class _progress:
    """A rich progress bar when rich is installed, occasional lines otherwise."""

    def __init__(self, total: int) -> None:
        try:
            from rich.progress import Progress
        except ImportError:
            self.bar = None
        else:
            self.bar = Progress(transient=True)
            self.task = self.bar.add_task("descending", total=total)
            self.bar.start()

    def update(self, step: int, t: float, gnorm: float) -> None:
        text = f"step {step:4d}  t={t:.9f}  |∇t|={gnorm:.2e}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step + 1, description=text)
        elif step % 50 == 0:
            print(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def plot(result: Result, folder: Path) -> list[Path]:
    """Objective vs step and the crossing paths improving over the steps (PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogy(np.array(result.history) - EXPECTED["t"] + 1e-9)
    ax.set(xlabel="step", ylabel="t − t* (log)", title="Travel time above the optimum")
    fig.tight_layout()
    fig.savefig(folder / "objective.png", dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    picks = np.unique(np.geomspace(1, len(result.path), 6).astype(int) - 1)
    for i in picks:
        x1, x2 = result.path[i]
        ax.plot(
            [0, x1, x1 + x2, 20.0],
            [0, 10, 20, 30],
            marker="o",
            alpha=0.3 + 0.7 * i / picks[-1],
            label=f"step {i}",
        )
    for y in (10, 20):
        ax.axhline(y, color="grey", lw=0.5)
    ax.set(xlabel="offset", ylabel="depth (bands of 10)", title="Crossing paths over the steps")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / "paths.png", dpi=120)
    plt.close("all")
    return [folder / "objective.png", folder / "paths.png"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--lr", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=Path("out/terrain"), help="folder for plots")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)

    report = cr.check_gradients(travel_time, {"x": [5.0, 5.0], "speeds": SPEEDS})
    print(f"gradient check of the component: {'ok' if report.ok else 'FAILED'}")
    result = optimize(args.steps, args.lr, progress=sys.stdout.isatty())
    snell = result.snell()
    spread = float(np.ptp(snell))
    print(f"steps: {result.steps}")
    print(f"x1 = {result.x[0]:.5f}   (expected ≈ {EXPECTED['x1']})")
    print(f"x2 = {result.x[1]:.5f}   (expected ≈ {EXPECTED['x2']})")
    print(f"t  = {result.t:.6f}  (expected ≈ {EXPECTED['t']})")
    print("sin θ / v per band: " + ", ".join(f"{s:.9f}" for s in snell))
    ok = report.ok and spread < 1e-6
    print(f"Snell's law: spread {spread:.1e} -> {'holds' if spread < 1e-6 else 'DOES NOT hold'}")
    if not args.no_plots:
        try:
            files = plot(result, args.out)
        except ImportError:
            print("(matplotlib not installed: no plots)")
        else:
            print("plots: " + ", ".join(str(f) for f in files))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
