"""Figures of the learned-closure example: solutions, error over time, loss curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np

LENGTH = 2 * np.pi


def _centres(n: int) -> np.ndarray:
    return (np.arange(n) + 0.5) * LENGTH / n


def plot_solutions(path: Path, setup: Any, data: Any, plain: np.ndarray, fixed: np.ndarray) -> Path:
    """One held-out initial condition at four times: fine, coarse and corrected coarse."""
    times = [0, setup.steps // 4, setup.steps // 2, setup.steps - 1]
    fig, axes = plt.subplots(1, len(times), figsize=(14, 3.4), sharey=True)
    xc = _centres(setup.coarse)
    for ax, k in zip(axes, times, strict=True):
        ax.plot(xc, data.reference[0, k], "k-", lw=2.5, label=f"fine ({setup.fine}) averaged")
        ax.plot(xc, plain[0, k], "o--", color="tab:orange", ms=3, label=f"coarse ({setup.coarse})")
        ax.plot(xc, fixed[0, k], "s-", color="tab:blue", ms=3, label="coarse + learned closure")
        ax.set(title=f"t = {(k + 1) * setup.dt:.2f}", xlabel="x")
    axes[0].set_ylabel("u")
    axes[0].legend(fontsize=7, loc="lower left")
    fig.suptitle("Burgers, held-out initial condition")
    return _save(fig, path)


def plot_error_in_time(
    path: Path, setup: Any, data: Any, plain: np.ndarray, fixed: np.ndarray
) -> Path:
    """Relative L2 error at each step (held-out set), with and without the closure."""
    t = (np.arange(setup.steps) + 1) * setup.dt
    norm = np.linalg.norm(data.reference, axis=(0, 2))
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for run, name, color in ((plain, "coarse", "tab:orange"), (fixed, "corrected", "tab:blue")):
        ax.plot(
            t, np.linalg.norm(run - data.reference, axis=(0, 2)) / norm, color=color, label=name
        )
    ax.set(xlabel="t", ylabel="relative L2 error", title="held-out error over the horizon")
    ax.legend()
    return _save(fig, path)


def plot_loss(path: Path, loss: list[float]) -> Path:
    """Training loss per epoch (log scale)."""
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.semilogy(loss)
    ax.set(xlabel="epoch", ylabel="relative squared error", title="training loss")
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_all(
    out: Path, setup: Any, data: Any, plain: np.ndarray, fixed: np.ndarray, loss: list[float]
) -> list[Path]:
    """Every figure into `out`; returns the files written."""
    return [
        plot_solutions(out / "solutions.png", setup, data, plain, fixed),
        plot_error_in_time(out / "error_in_time.png", setup, data, plain, fixed),
        plot_loss(out / "loss.png", loss),
    ]
