"""`chainrule.plot`: pictures of optimizations, landscapes, pipelines and gradient checks.

Each function returns a matplotlib `Figure` (built without pyplot, so nothing global is touched
and nothing is shown) and saves it when given `save=path`:

- `objective(history)`         objective vs step, gradient norm on a twin axis;
- `landscape(fn, xlim, ylim)`  contours of a function of two variables, a path on top;
- `pipeline(fn, *args)`        the components of a JAX pipeline and what feeds what;
- `gradient_check(report)`     the relative errors of a `GradientReport` vs its tolerances.

matplotlib is an optional extra (`pip install 'chainrule[plot]'`); it is imported when a
function is called, as is JAX by `pipeline`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from ._check import GradientReport
    from ._component import Component

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
_SCOPE = re.compile(r"chainrule:([^/()\[\]]+)")  # the named scope of an inline component


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


# ---- the pipeline as a graph -----------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """One box of a pipeline graph: an input, a component call, or an output."""

    id: str
    kind: Literal["input", "component", "output"]
    name: str
    backend: str = ""
    where: str = ""

    @property
    def label(self) -> str:
        if self.kind != "component":
            return self.name
        return f"{self.name}\n{self.backend} · {self.where}"


@dataclass
class PipelineGraph:
    """Components of a JAX function and their data dependencies (edges as (from, to) ids)."""

    nodes: list[Node] = field(default_factory=list)
    edges: list[tuple[str, str]] = field(default_factory=list)

    @property
    def components(self) -> list[Node]:
        return [n for n in self.nodes if n.kind == "component"]

    def named_edges(self) -> set[tuple[str, str]]:
        """Edges as (name, name): what a test or a reader compares."""
        names = {n.id: n.name for n in self.nodes}
        return {(names[a], names[b]) for a, b in self.edges}

    def add(self, node: Node) -> str:
        self.nodes.append(node)
        return node.id

    def connect(self, sources: Iterable[str], target: str) -> None:
        for s in sorted(sources):
            if s != target and (s, target) not in self.edges:
                self.edges.append((s, target))


Sources = frozenset[str]  # the graph nodes a value depends on


def _where(component: Component) -> tuple[str, str]:
    """(backend, where it runs) of a component called through a chainrule primitive."""
    backend = component.backend.name
    if backend == "remote":
        return backend, str(getattr(component, "url", "remote"))  # set by chainrule.connect
    return backend, "in-process"


class _Walker:
    """Data flow through a jaxpr: which graph nodes each variable depends on.

    Component calls are `chainrule_call` equations (their `spec.component`) and runs of
    consecutive equations under the named scope `chainrule:<name>` (JAX components traced
    inline). Call-like equations (jit, checkpoint, custom_jvp/vjp) are followed into their
    bodies; loops and conditionals are treated conservatively: everything they compute
    depends on everything they read, including the components inside them.
    """

    def __init__(self, graph: PipelineGraph) -> None:
        self.graph = graph
        self.group: tuple[str, str] | None = None  # (scope name, node id) of the open run

    def walk(self, jaxpr: Any, sources: Sequence[Sources]) -> list[Sources]:
        env: dict[Any, Sources] = dict(zip(jaxpr.invars, sources, strict=True))

        def read(v: Any) -> Sources:
            return frozenset() if _literal(v) else env.get(v, frozenset())

        for eqn in jaxpr.eqns:
            outs = self.equation(eqn, [read(v) for v in eqn.invars])
            env.update(zip(eqn.outvars, outs, strict=True))
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn: Any, ins: list[Sources]) -> list[Sources]:
        from .jax import call_p

        n = len(eqn.outvars)
        if eqn.primitive is call_p:
            backend, where = _where(eqn.params["spec"].component)
            name = eqn.params["spec"].component.name
            return [frozenset({self.component(name, backend, where, ins)})] * n
        scope = _scope_of(eqn)
        if scope is not None:
            return [frozenset({self.inline(scope, ins)})] * n
        self.group = None
        return self.nested(eqn, ins)

    def component(self, name: str, backend: str, where: str, ins: list[Sources]) -> str:
        node = self.graph.add(Node(f"c{len(self.graph.nodes)}", "component", name, backend, where))
        self.graph.connect(frozenset().union(*ins), node)
        return node

    def inline(self, scope: str, ins: list[Sources]) -> str:
        if self.group is None or self.group[0] != scope:
            node = self.component(scope, "jax", "in-process (inline)", [])
            self.group = (scope, node)
        self.graph.connect(frozenset().union(*ins), self.group[1])
        return self.group[1]

    def nested(self, eqn: Any, ins: list[Sources]) -> list[Sources]:
        bodies = [_open(j) for j in _subjaxprs(eqn.params)]
        n = len(eqn.outvars)
        if not bodies:
            return [frozenset().union(*ins)] * n
        body = bodies[0]
        direct = len(bodies) == 1 and eqn.primitive.name not in ("scan", "while")
        if direct and len(body.invars) == len(ins) and len(body.outvars) == n:
            return self.walk(body, ins)
        everything = frozenset().union(*ins)
        for b in bodies:
            inner = self.walk(b, [everything] * len(b.invars))
            everything = everything.union(*inner)
        return [everything] * n


def _literal(v: Any) -> bool:
    from jax.extend.core import Literal

    return isinstance(v, Literal)


def _scope_of(eqn: Any) -> str | None:
    """The innermost `chainrule:<name>` scope of an equation, if it belongs to one."""
    found = _SCOPE.findall(str(eqn.source_info.name_stack))
    return found[-1] if found else None


def _subjaxprs(params: dict[str, Any]) -> Iterator[Any]:
    from jax.extend.core import ClosedJaxpr, Jaxpr

    for value in params.values():
        for item in value if isinstance(value, tuple | list) else (value,):
            if isinstance(item, ClosedJaxpr | Jaxpr):
                yield item


def _open(jaxpr: Any) -> Any:
    from jax.extend.core import ClosedJaxpr

    return jaxpr.jaxpr if isinstance(jaxpr, ClosedJaxpr) else jaxpr


def _leaf_names(fn: Callable[..., Any], args: tuple[Any, ...]) -> list[str]:
    """One name per input leaf: the parameter name, plus the pytree path within it."""
    import jax

    try:
        params = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        params = []
    names = []
    for i, arg in enumerate(args):
        base = params[i] if i < len(params) else f"arg{i}"
        for path, _ in jax.tree_util.tree_flatten_with_path(arg)[0]:
            names.append(base + jax.tree_util.keystr(path))
    return names


def pipeline_graph(fn: Callable[..., Any], *example_args: Any) -> PipelineGraph:
    """The components of the JAX function `fn` and which outputs feed which inputs.

    `fn` is traced once with `jax.make_jaxpr` on `example_args` (nothing runs). Dependencies
    pass through any JAX operations between components. Pass the forward function (not its
    gradient), and note that back-to-back calls of the same inline JAX component with no
    operation between them show as one box.
    """
    import jax

    closed, shape = jax.make_jaxpr(fn, return_shape=True)(*example_args)
    graph = PipelineGraph()
    names = _leaf_names(fn, example_args)
    inputs = [frozenset({graph.add(Node(f"in{i}", "input", n))}) for i, n in enumerate(names)]
    outs = _Walker(graph).walk(closed.jaxpr, inputs)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(shape)[0]]
    for i, (path, sources) in enumerate(zip(paths, outs, strict=True)):
        graph.connect(sources, graph.add(Node(f"out{i}", "output", "output" + path)))
    return graph


def _layers(graph: PipelineGraph) -> dict[str, int]:
    """Column of each node: components by longest path, each input just before its first
    user (so its arrow crosses no box), outputs in the last column."""
    feeds: dict[str, list[str]] = {}
    for a, b in graph.edges:
        feeds.setdefault(b, []).append(a)
    layer: dict[str, int] = {}
    for node in graph.components:  # nodes come in trace order: sources before their users
        layer[node.id] = 1 + max((layer.get(a, 0) for a in feeds.get(node.id, [])), default=0)
    last = 1 + max(layer.values(), default=0)
    layer.update({n.id: last for n in graph.nodes if n.kind == "output"})
    for node in graph.nodes:
        if node.kind == "input":
            users = [layer[b] for a, b in graph.edges if a == node.id]
            layer[node.id] = min(users, default=1) - 1
    return layer


def _positions(graph: PipelineGraph) -> dict[str, tuple[float, float]]:
    layer = _layers(graph)
    columns: dict[int, list[str]] = {}
    for node in graph.nodes:
        columns.setdefault(layer[node.id], []).append(node.id)
    # Each column centred on y = 0, first-traced at the top.
    return {
        node_id: (float(x), (len(ids) - 1) / 2 - k)
        for x, ids in columns.items()
        for k, node_id in enumerate(ids)
    }


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
