"""The demo's pictures: objective vs step, the path over the (x1, x2) landscape, the crossings.

Everything here is plain NumPy and matplotlib (Agg backend, PNG files); the landscape is the
travel-time formula evaluated on a grid, independent of the components that were optimized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np


class Iterates(Protocol):
    """What the plots need from the descent's history (read-only)."""

    @property
    def x(self) -> list[np.ndarray]: ...

    @property
    def t(self) -> list[float]: ...

    @property
    def grad_norm(self) -> list[float]: ...


@dataclass(frozen=True)
class Terrain:
    """The crossing problem: bands of `width` at `speeds`, total lateral offset `h`."""

    h: float
    width: float
    speeds: tuple[float, ...]
    labels: tuple[str, ...]  # which component computes each band
    note: str = ""  # what else the pipeline holds (shown under the crossing paths' title)

    def time(self, x1: np.ndarray, x2: np.ndarray) -> np.ndarray:
        """Travel time at crossing offsets (x1, x2), elementwise over arrays."""
        legs = (x1, x2, self.h - x1 - x2)
        return sum(np.hypot(leg, self.width) / v for leg, v in zip(legs, self.speeds, strict=True))


def plot_all(history: Iterates, folder: Path, terrain: Terrain) -> list[Path]:
    """Write objective.png, landscape.png and paths.png into `folder`; return their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for name, draw in (
        ("objective", _objective),
        ("landscape", _landscape),
        ("paths", _paths),
    ):
        fig = draw(plt, history, terrain)
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=120)
        plt.close(fig)
        files.append(folder / f"{name}.png")
    return files


def _objective(plt: Any, history: Iterates, terrain: Terrain) -> Any:
    """t − t* and |∇t| against the step, both on log scales."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
    t_star = history.t[-1]
    # Below a few ulps of t the difference is float64 rounding, not progress: leave it out.
    floor = 4 * np.finfo(np.float64).eps * t_star
    gap = np.array(history.t) - t_star
    left.semilogy(np.where(gap > floor, gap, np.nan), marker=".", lw=1)
    left.axhline(floor, color="grey", ls=":", lw=0.8, label="float64 resolution of t")
    left.set(xlabel="step", ylabel="t − t*", title="Travel time above the optimum")
    right.semilogy(history.grad_norm, marker=".", lw=1, color="C1")
    right.axhline(1e-10, color="grey", ls="--", lw=0.8, label="stop: |∇t| < 1e-10")
    right.set(xlabel="step", ylabel="|∇t|", title="Gradient norm")
    for ax in (left, right):
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    return fig


def _landscape(plt: Any, history: Iterates, terrain: Terrain) -> Any:
    """Contours of t − t* over (x1, x2) on a log scale, with the iterates drawn on top."""
    from matplotlib.colors import LogNorm

    path = np.array(history.x)
    x1, x2 = np.meshgrid(np.linspace(2, 18, 321), np.linspace(-2, 10, 241))
    # The grid need not hit the optimum: offset by a floor so the log scale stays finite.
    gap = np.maximum(terrain.time(x1, x2) - history.t[-1], 1e-3)
    levels = [1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1, 3, 10, 30]
    fig, ax = plt.subplots(figsize=(7, 5))
    filled = ax.contourf(x1, x2, gap, levels=levels, cmap="viridis_r", norm=LogNorm(), extend="max")
    ax.contour(x1, x2, gap, levels=levels, colors="white", linewidths=0.4, alpha=0.6)
    bar = fig.colorbar(filled, ax=ax, label="t − t*", ticks=levels)
    bar.ax.set_yticklabels([f"{v:g}" for v in levels])
    ax.plot(path[:, 0], path[:, 1], "-o", color="C3", ms=3, lw=1, label=f"{len(path)} iterates")
    ax.plot(*path[0], "s", color="white", mec="black", ms=7, label="start: straight line")
    ax.plot(*path[-1], "*", color="gold", mec="black", ms=14, label="optimum")
    ax.set(xlabel="x1 (leg across band 1)", ylabel="x2 (leg across band 2)")
    ax.set_title("Gradient descent over the travel-time landscape")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper right")
    return fig


def _paths(plt: Any, history: Iterates, terrain: Terrain) -> Any:
    """The crossing itself at a few steps, over the bands labelled by their component."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    w, n = terrain.width, len(terrain.speeds)
    fast, slow = max(terrain.speeds), min(terrain.speeds)
    for i, (v, label) in enumerate(zip(terrain.speeds, terrain.labels, strict=True)):
        shade = 0.2 + 0.55 * (fast - v) / (fast - slow)
        ax.axhspan(i * w, (i + 1) * w, color=plt.cm.YlGn(shade), alpha=0.7)
        text = f"band {i + 1}, v = {v}\n{label}"
        ax.text(-0.5, (i + 0.5) * w, text, ha="right", va="center", fontsize=8)
    for k, alpha in _picks(len(history.x)):
        x1, x2 = history.x[k]
        xs = [0.0, x1, x1 + x2, terrain.h]
        final = k == len(history.x) - 1
        style = {"color": "C3", "lw": 2.5} if final else {"color": "C0", "lw": 1, "alpha": alpha}
        ax.plot(
            xs,
            [i * w for i in range(n + 1)],
            marker="o",
            ms=3,
            label=f"step {k}: t = {history.t[k]:.4f}",
            **style,
        )
    ax.set(xlim=(-12, terrain.h + 1), ylim=(0, n * w), xlabel="lateral offset", ylabel="depth")
    ax.set_xticks(np.arange(0, terrain.h + 1, 5))
    ax.set_title(f"Crossing paths improving over the steps (slower bands darker)\n{terrain.note}")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _picks(n: int) -> Sequence[tuple[int, float]]:
    """A few steps spread on a log scale (most change happens early), with increasing alpha."""
    picks = np.unique(np.geomspace(1, n, 6).astype(int) - 1)
    return [(int(k), 0.3 + 0.7 * j / max(len(picks) - 1, 1)) for j, k in enumerate(picks)]
