"""The data-flow graph of a JAX pipeline: which components it calls and what feeds what.

`pipeline_graph(fn, *args)` traces `fn` to a jaxpr (nothing runs) and walks it: a component
called through `chainrule.jax.call` is a `chainrule_call` equation, an in-process JAX
component a run of equations under its `chainrule:<name>` named scope. The result is a
`PipelineGraph` of `Node`s (inputs, component calls, outputs) and dependency edges, plus the
column layout `chainrule.plot.pipeline` draws it with. Kept apart from `chainrule.plot`
because it is the jaxpr analysis, not the drawing, and needs no matplotlib; `chainrule.plot`
re-exports `pipeline_graph`, `PipelineGraph` and `Node`. JAX is imported when a function is
called, never at import.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from chainrule._component.component import Component

__all__ = ["Node", "PipelineGraph", "pipeline_graph"]

_SCOPE = re.compile(r"chainrule:([^/()\[\]]+)")  # the named scope of an inline component


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
    return component.backend.name, component.backend.where


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
        from chainrule._bindings.jax.primitives import call_p

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
