"""Figures of the 4D-Var example: initial states, errors over the window, cost per iteration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np


def plot_states(path: Path, problem: Any, result: Any) -> Path:
    """Truth, background and analysis initial states, variable by variable."""
    fig, ax = plt.subplots(figsize=(9, 3.6))
    i = np.arange(problem.truth.shape[1])
    ax.plot(i, problem.truth[0], "k-", lw=2, label="truth")
    ax.plot(i, problem.background, "o--", color="tab:orange", ms=3,
            label=f"background (RMS error {result.background_rms:.3f})")  # fmt: skip
    ax.plot(i, result.analysis.x0, "s-", color="tab:blue", ms=3,
            label=f"analysis (RMS error {result.analysis_rms:.3f})")  # fmt: skip
    ax.set(xlabel="variable i", ylabel="x_i at t = 0", title="4D-Var: recovered initial state")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, path)


def plot_cost(path: Path, result: Any) -> Path:
    """The 4D-Var cost at every L-BFGS-B iteration (log scale)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.semilogy(result.analysis.costs, "o-", ms=3)
    ax.set(xlabel="L-BFGS-B iteration", ylabel="J(x0)", title="cost per iteration")
    return _save(fig, path)


def plot_errors(path: Path, setup: Any, problem: Any, runs: list[np.ndarray]) -> Path:
    """|error| of background and analysis trajectories over the window (Hovmöller)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    vmax = float(np.abs(runs[0] - problem.truth).max())
    t = np.arange(runs[0].shape[0]) * setup.dt
    for ax, run, name in zip(axes, runs, ("background", "analysis"), strict=True):
        image = ax.pcolormesh(np.arange(setup.n), t, np.abs(run - problem.truth),
                              vmin=0, vmax=vmax, cmap="magma")  # fmt: skip
        ax.set(xlabel="variable i", title=f"|{name} − truth|")
    axes[0].set_ylabel("time")
    fig.colorbar(image, ax=axes)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_all(out: Path, setup: Any, problem: Any, result: Any) -> list[Path]:
    """Every figure into `out`; returns the files written."""
    return [
        plot_states(out / "states.png", problem, result),
        plot_cost(out / "cost.png", result),
        plot_errors(out / "errors.png", setup, problem, result.runs),
    ]
