"""Terrain crossing over N bands, each band's travel time a component of its own.

Band i has width d_i and speed v_i; the path crosses it with lateral offset x_i (the last
offset is what is left of the total h, x_N = h − x_1 − … − x_{N−1}), so the travel time is

    t = Σ_i sqrt(x_i² + d_i²) / v_i

Band i is a component whose backend cycles through JAX (traced inline), PyTorch (torch.func)
and NumPy (finite differences). `total_time(x)` calls them all through `chainrule.jax.call`
and `jax.jit(jax.value_and_grad(total_time))` drives gradient descent from the straight line
to the fastest crossing, where Snell's law holds: sin θ_i / v_i is the same in every band.

Run: `python examples/terrain_n/optimize.py [--bands N] [--seed S] [--out DIR]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import torch

import chainrule as cr
import chainrule.jax as crj

# This program computes in float64 (its components declare Float64 fields): JAX's 64-bit
# mode is the program's choice to make, and it is made here.
jax.config.update("jax_enable_x64", True)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

BACKENDS = ("jax", "torch", "numpy")
SNELL_TOLERANCE = 1e-6  # the spread of sin θ_i / v_i allowed at the optimum
# The descent stops when |∇t| is below this; finite differences (the NumPy bands) resolve the
# gradient to ~1e-10, so a tighter tolerance would wait on rounding noise.
GRAD_TOLERANCE = 1e-9


# ---- one band: a component -----------------------------------------------------------------


class Leg(cr.Schema):
    """The lateral offset of the path across one band, and the band (static)."""

    offset: cr.Differentiable[cr.Array[(), cr.Float64]]
    speed: float
    width: float


class Time(cr.Schema):
    time: cr.Differentiable[cr.Array[(), cr.Float64]]


def _jax_time(inputs: Leg) -> Time:
    return Time(time=jnp.sqrt(inputs.offset**2 + inputs.width**2) / inputs.speed)


def _torch_time(inputs: Leg) -> Time:
    return Time(time=torch.sqrt(inputs.offset**2 + inputs.width**2) / inputs.speed)


def _numpy_time(inputs: Leg) -> Time:
    return Time(time=np.sqrt(inputs.offset**2 + inputs.width**2) / inputs.speed)


_FUNCTIONS = {"jax": _jax_time, "torch": _torch_time, "numpy": _numpy_time}


def band_component(i: int) -> cr.Component:
    """Band i's component (1-based name), its backend cycling jax, torch, numpy."""
    backend = BACKENDS[i % len(BACKENDS)]
    return cr.component(
        _FUNCTIONS[backend], inputs=Leg, outputs=Time, backend=backend, name=f"band{i + 1}"
    )


# ---- the terrain ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Terrain:
    """N bands (widths, speeds) crossed from lateral offset 0 to offset h."""

    widths: np.ndarray
    speeds: np.ndarray
    h: float

    @classmethod
    def random(cls, bands: int, seed: int) -> Terrain:
        """Widths in [5, 15], speeds in [0.3, 1], h between 0.3 and 1 times the total depth."""
        rng = np.random.default_rng(seed)
        widths = rng.uniform(5.0, 15.0, bands)
        return cls(
            widths, rng.uniform(0.3, 1.0, bands), float(rng.uniform(0.3, 1.0) * widths.sum())
        )

    @property
    def bands(self) -> int:
        return len(self.widths)

    def legs(self, x: np.ndarray) -> np.ndarray:
        """All N lateral offsets from the N − 1 free ones."""
        return np.append(x, self.h - np.sum(x))

    def time(self, x: np.ndarray) -> float:
        """The travel time in plain NumPy (the reference, independent of the components)."""
        return float(np.sum(np.hypot(self.legs(x), self.widths) / self.speeds))

    def snell(self, x: np.ndarray) -> np.ndarray:
        """sin θ_i / v_i per band, θ_i the angle of leg i from the band normal."""
        legs = self.legs(x)
        return legs / np.hypot(legs, self.widths) / self.speeds

    def straight_line(self) -> np.ndarray:
        """The free offsets of the straight path from (0, 0) to (h, total depth)."""
        return self.h * self.widths[:-1] / self.widths.sum()

    def max_curvature(self) -> float:
        """A bound on the Hessian's largest eigenvalue: sqrt(x² + d²)/v curves at most 1/(v d),
        and the last leg depends on every free offset."""
        curvature = 1.0 / (self.speeds * self.widths)
        return float(np.max(curvature[:-1]) + (self.bands - 1) * curvature[-1])


def pipeline(terrain: Terrain, bands: Sequence[cr.Component]) -> Callable[[jax.Array], jax.Array]:
    """`total_time(x)`: the travel time over the N − 1 free offsets, one component per band."""
    speeds, widths = terrain.speeds.tolist(), terrain.widths.tolist()

    def total_time(x: jax.Array) -> jax.Array:
        legs = [*(x[i] for i in range(terrain.bands - 1)), terrain.h - jnp.sum(x)]
        times = [
            crj.call(band, {"offset": leg, "speed": v, "width": d})["time"]
            for band, leg, v, d in zip(bands, legs, speeds, widths, strict=True)
        ]
        return jnp.sum(jnp.stack(times))

    return total_time


# ---- gradient descent ----------------------------------------------------------------------


@dataclass
class History:
    """The descent's iterates; `objective` and `grad_norm` are what chainrule.plot reads."""

    x: list[np.ndarray] = field(default_factory=list)
    objective: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    seconds: float = 0.0


def descend(terrain: Terrain, total_time: Callable[[jax.Array], jax.Array], steps: int) -> History:
    """Gradient descent from the straight line until |∇t| < GRAD_TOLERANCE or `steps` steps.

    The step length is Barzilai–Borwein's (s·s / s·y from the last two iterates), which
    adapts to the curvature: a fixed step safe everywhere (1/λ_max, `Terrain.max_curvature`)
    needs ~1000 steps here, BB a few dozen. The first step, and any step where the curvature
    estimate is not positive, uses the safe one.
    """
    step = jax.jit(jax.value_and_grad(total_time))
    safe = 1.0 / terrain.max_curvature()
    x = jnp.asarray(terrain.straight_line())
    history, previous = History(), None
    start = time.perf_counter()
    for _ in range(steps):
        t, grad = step(x)
        history.x.append(np.asarray(x))
        history.objective.append(float(t))
        history.grad_norm.append(float(jnp.linalg.norm(grad)))
        if history.grad_norm[-1] < GRAD_TOLERANCE:
            break
        lr = _bb_step(previous, (x, grad), safe)
        previous, x = (x, grad), x - lr * grad
    history.seconds = time.perf_counter() - start
    return history


def _bb_step(
    previous: tuple[jax.Array, jax.Array] | None, now: tuple[jax.Array, jax.Array], safe: float
) -> float:
    """Barzilai–Borwein step s·s / s·y (s: change of x, y: change of ∇t), else `safe`."""
    if previous is None:
        return safe
    s, y = now[0] - previous[0], now[1] - previous[1]
    sy = float(jnp.dot(s, y))
    return float(jnp.dot(s, s)) / sy if sy > 0 else safe


# ---- the report ----------------------------------------------------------------------------


def print_table(terrain: Terrain, bands: Sequence[cr.Component], x: np.ndarray) -> None:
    """Per band: backend, width, speed, offset, angle, sin θ / v, and the calls it served."""
    legs, ratios = terrain.legs(x), terrain.snell(x)
    angles = np.degrees(np.arctan2(legs, terrain.widths))
    print(
        f"{'band':<6} {'backend':<7} {'width':>6} {'speed':>6} {'offset':>10} {'θ (deg)':>8}"
        f" {'sin θ / v':>16}  calls"
    )
    for i, band in enumerate(bands):
        calls = ", ".join(f"{k} {n}" for k, n in sorted(band.calls.items())) or "inline (none)"
        print(
            f"{band.name:<6} {band.backend.name:<7} {terrain.widths[i]:6.2f} "
            f"{terrain.speeds[i]:6.3f} {legs[i]:10.5f} {angles[i]:8.3f} {ratios[i]:16.12f}  {calls}"
        )


def snell_spread(terrain: Terrain, x: np.ndarray) -> float:
    """max − min of sin θ_i / v_i over the bands (0 at the exact optimum)."""
    return float(np.ptp(terrain.snell(x)))


def save_plots(
    terrain: Terrain, history: History, total_time: Callable[..., jax.Array], out: Path
) -> list[Path]:
    """objective.png, pipeline.png, paths.png and, from 3 bands on, landscape.png (a slice
    through the first two offsets, the others at the optimum)."""
    import chainrule.plot as crplot

    files = [out / f"{n}.png" for n in ("objective", "pipeline", "paths")]
    crplot.objective(history, optimum=history.objective[-1], title="t − t*", save=files[0])
    example = jnp.asarray(terrain.straight_line())
    title = "total_time(x): one component per band"
    crplot.pipeline(total_time, example, title=title, save=files[1])
    _paths_figure(terrain, history).savefig(files[2], dpi=120)
    if terrain.bands >= 3:
        files.append(out / "landscape.png")
        x_star = history.x[-1]
        crplot.landscape(
            _slice(terrain, x_star),
            (x_star[0] - 8, x_star[0] + 8),
            (x_star[1] - 8, x_star[1] + 8),
            path=np.array(history.x)[:, :2],
            log=True,
            labels=("x1", "x2"),
            title="t over (x1, x2), the other offsets at the optimum",
            save=files[3],
        )
    return files


def _slice(terrain: Terrain, x_star: np.ndarray) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """t as a vectorized function of (x1, x2), the other free offsets fixed at x_star."""
    rest = float(np.sum(x_star[2:]))

    def t(x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
        legs = [x1, x2, *(np.full_like(x1, v) for v in x_star[2:]), terrain.h - x1 - x2 - rest]
        return sum(
            np.hypot(leg, d) / v
            for leg, d, v in zip(legs, terrain.widths, terrain.speeds, strict=True)
        )

    return t


def _paths_figure(terrain: Terrain, history: History) -> Figure:
    """The crossing at a few steps over the bands (slower bands darker)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    depth = np.concatenate([[0.0], np.cumsum(terrain.widths)])
    slow = (terrain.speeds.max() - terrain.speeds) / np.ptp(terrain.speeds)
    for i in range(terrain.bands):
        ax.axhspan(depth[i], depth[i + 1], color=colormaps["YlGn"](0.2 + 0.6 * slow[i]), alpha=0.7)
    picks = np.unique(np.geomspace(1, len(history.x), 6).astype(int) - 1)
    for k in picks:
        across = np.concatenate([[0.0], np.cumsum(terrain.legs(history.x[k]))])
        last = k == len(history.x) - 1
        ax.plot(
            across,
            depth,
            marker="o",
            ms=3,
            lw=2.5 if last else 1,
            color="C3" if last else "C0",
            alpha=1.0 if last else 0.5,
            label=f"step {k}: t = {history.objective[k]:.6f}",
        )
    ax.set(xlabel="lateral offset", ylabel="depth", title="Crossing paths over the steps")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    return fig


# ---- the command ---------------------------------------------------------------------------


def _floats(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.split(",")])


def terrain_from(args: argparse.Namespace) -> Terrain:
    """The terrain of the command line: random by seed, unless widths/speeds/h are given."""
    base = Terrain.random(args.bands, args.seed)
    widths = _floats(args.widths) if args.widths else base.widths
    speeds = _floats(args.speeds) if args.speeds else base.speeds
    if len(widths) != len(speeds):
        raise SystemExit(f"--widths has {len(widths)} values but --speeds has {len(speeds)}")
    return Terrain(widths, speeds, args.h if args.h is not None else base.h)


def run(terrain: Terrain, steps: int = 20_000) -> tuple[History, list[cr.Component], bool]:
    """Build the components, descend, print the table; (history, bands, Snell holds)."""
    bands = [band_component(i) for i in range(terrain.bands)]
    total_time = pipeline(terrain, bands)
    history = descend(terrain, total_time, steps)
    x = history.x[-1]
    print(f"{len(history.x)} steps in {history.seconds:.1f} s, |∇t| = {history.grad_norm[-1]:.1e}")
    print(f"t = {history.objective[-1]:.9f}  (NumPy formula at the same x: {terrain.time(x):.9f})")
    print_table(terrain, bands, x)
    spread = snell_spread(terrain, x)
    ok = spread < SNELL_TOLERANCE
    verdict = "holds in every band" if ok else "DOES NOT hold"
    print(f"Snell's law: spread {spread:.1e} (must be < {SNELL_TOLERANCE:g}) -> {verdict}")
    return history, bands, ok


def main(argv: list[str] | None = None) -> int:
    """Run the example; 0 iff Snell's law holds at the optimum in every band."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bands", type=int, default=6, help="number of bands N (≥ 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of random widths/speeds/h")
    parser.add_argument("--widths", help="comma-separated band widths (else random)")
    parser.add_argument("--speeds", help="comma-separated band speeds (else random)")
    parser.add_argument("--h", type=float, help="total lateral offset (else random)")
    parser.add_argument("--steps", type=int, default=20_000, help="at most this many steps")
    parser.add_argument("--out", type=Path, default=Path("out/terrain_n"), help="plot folder")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    terrain = terrain_from(args)
    if terrain.bands < 2:
        raise SystemExit("--bands must be at least 2")
    print(f"Fastest crossing of {terrain.bands} bands, h = {terrain.h:.4f}")
    history, bands, ok = run(terrain, args.steps)
    if not args.no_plots:
        files = save_plots(terrain, history, pipeline(terrain, bands), args.out)
        print("plots: " + ", ".join(str(f) for f in files))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
