"""`chainrule.plot`: pictures of optimizations, landscapes, pipelines and gradient checks.

Each function returns a matplotlib `Figure` (built without pyplot, so nothing global is touched
and nothing is shown) and saves it when given `save=path`:

- `objective(history)`         objective vs step, gradient norm on a twin axis;
- `landscape(fn, xlim, ylim)`  contours of a function of two variables, a path on top;
- `pipeline(fn, *args)`        the components of a JAX pipeline and what feeds what;
- `gradient_check(report)`     the relative errors of a `GradientReport` vs its tolerances.

matplotlib is an optional extra (`pip install 'chainrule[plot]'`); it is imported when a
function is called, as is JAX by `pipeline`. The jaxpr analysis behind `pipeline` (tracing,
`PipelineGraph`, layout) lives in `graph`; this module draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .graph import Node, PipelineGraph, _positions, pipeline_graph

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from .check import GradientReport

__all__ = [
    "Node",
    "PipelineGraph",
    "gradient_check",
    "landscape",
    "objective",
    "pipeline",
    "pipeline_graph",
]

_INSTALL = "chainrule.plot needs matplotlib: pip install 'chainrule[plot]'"
_COLORS = {"jax": "#cfe2f3", "torch": "#fce5cd", "numpy": "#d9ead3", "remote": "#e6d9f2"}
_IO_COLOR = "#eeeeee"


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A Figure not registered with pyplot (no global state, nothing to close)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError(_INSTALL) from e
    return Figure(figsize=figsize, layout="constrained")


def _finish(fig: Figure, save: str | Path | None) -> Figure:
    if save is not None:
        Path(save).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(save, dpi=120)
    return fig


# ---- objective vs step ---------------------------------------------------------------------


def _series(history: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """(objective values, gradient norms or None) from a sequence or a history object."""
    if isinstance(history, Sequence | np.ndarray):
        return np.asarray(history, dtype=float), None
    # Any history works (chainrule.optimize's, or a user's): it is read structurally, and
    # `grad_norm` is optional there, so its absence is not an error.
    norms = getattr(history, "grad_norm", None)
    values = np.asarray(history.objective, dtype=float)
    return values, None if norms is None or len(norms) == 0 else np.asarray(norms, dtype=float)


def objective(
    history: Any,
    *,
    log: bool = False,
    optimum: float | None = None,
    title: str = "Objective",
    save: str | Path | None = None,
) -> Figure:
    """The objective against the step, with the gradient norm on a twin (log) axis if known.

    Arguments:
        history: a sequence of objective values, or an object with `.objective` (a list of
            floats) and optionally `.grad_norm` (e.g. the history of `chainrule.optimize`).
        log: draw the objective on a log scale (for f − f* use `optimum=`).
        optimum: draw f − optimum instead of f (on a log scale, values ≤ 0 are left out).
        title: the axes title.
        save: write the figure to this file (PNG, SVG, PDF, ... by its suffix).

    Returns:
        The matplotlib Figure.

    Example:
        ```python
        chainrule.plot.objective(result.history, optimum=81.911688, save="objective.png")
        ```
    """
    values, norms = _series(history)
    fig = _new_figure((6.4, 4.0))
    ax = fig.add_subplot()
    ylabel = "objective"
    if optimum is not None:
        values, ylabel, log = values - optimum, "objective − optimum", True
    if log:
        values = np.where(values > 0, values, np.nan)  # a log axis cannot show ≤ 0
        ax.set_yscale("log")
    ax.plot(np.arange(len(values)), values, marker=".", lw=1, color="C0", label=ylabel)
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    handles = ax.get_lines()
    if norms is not None:
        twin = ax.twinx()
        twin.semilogy(np.arange(len(norms)), norms, lw=1, ls="--", color="C1", label="|∇|")
        twin.set_ylabel("gradient norm |∇|")
        handles = [*handles, *twin.get_lines()]
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], fontsize=8)
    return _finish(fig, save)


# ---- a landscape of two variables ------------------------------------------------------------


def _grid_values(fn: Callable[..., Any], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """fn over the grid: one vectorized call if fn takes arrays, else point by point."""
    try:
        z = np.asarray(fn(x, y), dtype=float)
        if z.shape == x.shape:
            return z
    except Exception:  # not vectorized (e.g. uses float(), branches): loop below
        pass
    flat = [float(fn(a, b)) for a, b in zip(x.ravel(), y.ravel(), strict=True)]
    return np.asarray(flat).reshape(x.shape)


def landscape(
    fn: Callable[..., Any],
    xlim: tuple[float, float],
    ylim: tuple[float, float],
    path: Any = None,
    *,
    resolution: int = 121,
    levels: int | Sequence[float] = 20,
    log: bool = False,
    labels: tuple[str, str] = ("x", "y"),
    title: str = "Landscape",
    save: str | Path | None = None,
) -> Figure:
    """Filled contours of `fn(x, y)` over a rectangle, with an optimization path on top.

    Arguments:
        fn: a function of two variables; called once on grid arrays when it is vectorized
            (NumPy or JAX), else once per grid point.
        xlim, ylim: the rectangle.
        path: iterates as an array of shape (steps, 2) (or a list of pairs); drawn as a line,
            the start as a square and the end as a star.
        resolution: grid points along each axis.
        levels: number of contour levels or their values.
        log: colour by log(f − min f) over the grid (for landscapes spanning many decades).
        labels: axis labels; title: axes title; save: write the figure to this file.

    Returns:
        The matplotlib Figure.

    Example:
        ```python
        rosen = lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2
        chainrule.plot.landscape(rosen, (-2, 2), (-1, 3), path=iterates, log=True)
        ```
    """
    x, y = np.meshgrid(np.linspace(*xlim, resolution), np.linspace(*ylim, resolution))
    z = _grid_values(fn, x, y)
    fig = _new_figure((6.4, 5.0))
    ax = fig.add_subplot()
    if log:
        # Shifted to start at zero; the grid minimum itself is lifted to the next smallest
        # value, so the log scale spans the decades the grid actually shows.
        z = z - np.nanmin(z)
        positive = z[z > 0]
        z = np.maximum(z, float(positive.min()) if positive.size else 1e-12)
    filled = _contours(ax, x, y, z, levels, log)
    _colorbar(fig, ax, filled, log)
    if path is not None:
        _draw_path(ax, np.asarray(path, dtype=float))
    ax.set(xlabel=labels[0], ylabel=labels[1], title=title, xlim=xlim, ylim=ylim)
    return _finish(fig, save)


def _contours(ax: Axes, x: np.ndarray, y: np.ndarray, z: np.ndarray, levels: Any, log: bool) -> Any:
    """Filled contours with thin white lines; on a log scale the levels are decades split
    into `levels` steps at most (so the colour bar reads 1e-3, 1e-2, ...)."""
    from matplotlib.colors import LogNorm

    if log and isinstance(levels, int):
        lo, hi = np.floor(np.log10(np.nanmin(z))), np.ceil(np.log10(np.nanmax(z)))
        per_decade = max(1, round(levels / max(hi - lo, 1)))
        levels = 10.0 ** np.linspace(lo, hi, int(hi - lo) * per_decade + 1)
    norm = LogNorm() if log else None
    filled = ax.contourf(x, y, z, levels=levels, cmap="viridis_r", norm=norm)
    ax.contour(x, y, z, levels=filled.levels, colors="white", linewidths=0.4, alpha=0.6)
    return filled


def _colorbar(fig: Figure, ax: Axes, filled: Any, log: bool) -> None:
    if not log:
        fig.colorbar(filled, ax=ax, label="f")
        return
    from matplotlib.ticker import LogFormatterSciNotation

    decades = filled.levels[np.isclose(np.log10(filled.levels) % 1, 0)]
    fig.colorbar(filled, ax=ax, label="f − min f", ticks=decades, format=LogFormatterSciNotation())


def _draw_path(ax: Axes, path: np.ndarray) -> None:
    if path.ndim != 2 or path.shape[1] != 2:
        raise ValueError(
            f"landscape(path=...): expected iterates of shape (steps, 2), got {path.shape}"
        )
    ax.plot(path[:, 0], path[:, 1], "-o", color="C3", ms=3, lw=1, label=f"{len(path)} iterates")
    ax.plot(*path[0], "s", color="white", mec="black", ms=8, label="start")
    ax.plot(*path[-1], "*", color="gold", mec="black", ms=15, label="end")
    ax.legend(fontsize=8, loc="best")


# ---- the pipeline as a graph (traced and laid out by _graph) ---------------------------------


def pipeline(
    fn: Callable[..., Any],
    *example_args: Any,
    title: str | None = None,
    save: str | Path | None = None,
) -> Figure:
    """The pipeline `fn` as a graph: a box per component call (name, backend, where it runs),
    arrows for data dependencies, the function's inputs on the left and outputs on the right.

    Arguments:
        fn: a JAX function calling components through `chainrule.jax.call`.
        example_args: arguments to trace `fn` with (only shapes and dtypes matter).
        title: the axes title (default: the function's name); save: write to this file.

    Returns:
        The matplotlib Figure (`pipeline_graph` gives the graph itself).

    Example:
        ```python
        chainrule.plot.pipeline(total_time, jnp.zeros(2), save="pipeline.png")
        ```
    """
    graph = pipeline_graph(fn, *example_args)
    pos = _positions(graph)
    width = 2.6 * (1 + max(x for x, _ in pos.values()))
    height = 1.2 * (1 + max(abs(y) for _, y in pos.values()) * 2)
    fig = _new_figure((max(width, 5.0), max(height, 2.5)))
    ax = fig.add_subplot()
    boxes = {n.id: _box(ax, n, pos[n.id]) for n in graph.nodes}
    for a, b in graph.edges:
        _arrow(ax, boxes[a], boxes[b], skips=pos[b][0] - pos[a][0] > 1)
    xs, ys = [x for x, _ in pos.values()], [y for _, y in pos.values()]
    ax.set(xlim=(min(xs) - 0.6, max(xs) + 0.6), ylim=(min(ys) - 0.8, max(ys) + 1.0))
    ax.set_axis_off()
    ax.set_title(title or f"pipeline {getattr(fn, '__name__', '')}".strip())
    _legend(ax, graph)
    return _finish(fig, save)


def _arrow(ax: Axes, source: Any, target: Any, skips: bool) -> None:
    """An arrow from the right edge of one box to the left edge of another; one that skips
    columns bows out, so it does not run through the boxes between."""
    ax.annotate(
        "",
        xy=(0.0, 0.5),
        xycoords=target,
        xytext=(1.0, 0.5),
        textcoords=source,
        arrowprops={
            "arrowstyle": "-|>",
            "color": "0.3",
            "shrinkA": 4,
            "shrinkB": 4,
            "connectionstyle": f"arc3,rad={-0.3 if skips else 0.0}",
        },
    )


def _box(ax: Axes, node: Node, xy: tuple[float, float]) -> Any:
    color = _COLORS.get(node.backend, "white") if node.kind == "component" else _IO_COLOR
    style = "round,pad=0.5" if node.kind == "component" else "square,pad=0.4"
    return ax.text(
        *xy,
        node.label,
        ha="center",
        va="center",
        fontsize=8,
        fontweight="bold" if node.kind == "component" else "normal",
        bbox={"boxstyle": style, "fc": color, "ec": "0.3"},
    )


def _legend(ax: Axes, graph: PipelineGraph) -> None:
    from matplotlib.patches import Patch

    backends = sorted({n.backend for n in graph.components})
    if backends:
        handles = [Patch(fc=_COLORS.get(b, "white"), ec="0.3", label=b) for b in backends]
        ax.legend(
            handles=handles,
            fontsize=7,
            loc="lower center",
            ncols=len(handles),
            bbox_to_anchor=(0.5, -0.12),
            frameon=False,
        )


# ---- a gradient-check report ---------------------------------------------------------------


def gradient_check(report: GradientReport, *, save: str | Path | None = None) -> Figure:
    """Relative error of every check in a `GradientReport`, on a log axis, beside its tolerance.

    One column per check, grouped by endpoint (one tick per endpoint, points left to right);
    passing checks are dots, failures red crosses, each tolerance a short grey bar.

    Arguments:
        report: what `chainrule.check_gradients` returned; save: write to this file.

    Returns:
        The matplotlib Figure.

    Example:
        ```python
        chainrule.plot.gradient_check(chainrule.check_gradients(comp, inputs), save="g.png")
        ```
    """
    # Grouped by endpoint (in order of first appearance), points left to right within.
    order = {e: k for k, e in enumerate(dict.fromkeys(c.endpoint for c in report.checks))}
    checks = sorted(report.checks, key=lambda c: (order[c.endpoint], c.point))
    fig = _new_figure((max(5.0, 0.35 * len(checks) + 2), 4.0))
    ax = fig.add_subplot()
    ax.set_yscale("log")
    tiny = 1e-17  # an exact match (error 0) still needs a place on a log axis
    x = np.arange(len(checks))
    errors = np.array([max(c.error, tiny) for c in checks])
    ok = np.array([c.ok for c in checks], dtype=bool)
    tolerances = [c.tolerance for c in checks]
    ax.hlines(tolerances, x - 0.4, x + 0.4, colors="0.4", lw=2, label="tolerance")
    ax.scatter(x[ok], errors[ok], color="C2", zorder=3, label="passed")
    if (~ok).any():
        ax.scatter(x[~ok], errors[~ok], color="red", marker="x", s=60, zorder=3, label="FAILED")
    _endpoint_ticks(ax, [c.endpoint for c in checks])
    verdict = "all passed" if report.ok else f"{len(report.failures)} FAILED"
    ax.set(ylabel="relative error", title=f"gradient check of '{report.component}': {verdict}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _finish(fig, save)


def _endpoint_ticks(ax: Axes, endpoints: list[str]) -> None:
    """A tick in the middle of each endpoint's run of checks, separators between runs."""
    starts = [i for i, e in enumerate(endpoints) if i == 0 or e != endpoints[i - 1]]
    ends = [*starts[1:], len(endpoints)]
    ax.set_xticks([(s + e - 1) / 2 for s, e in zip(starts, ends, strict=True)])
    ax.set_xticklabels([endpoints[s] for s in starts], rotation=30, ha="right", fontsize=8)
    for s in starts[1:]:
        ax.axvline(s - 0.5, color="0.85", lw=0.8)
    ax.set_xlim(-0.6, len(endpoints) - 0.4)
