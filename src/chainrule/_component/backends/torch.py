"""The `torch` backend: every endpoint by reverse-mode autograd.

Arrays cross as `torch.from_numpy` views (no copy); `eval_shape` runs the function on meta
tensors, which carry shapes and dtypes but no data.

No endpoint uses forward-mode AD (`torch.func.jvp`/`jacfwd`, `torch.autograd.forward_ad`):
its dual levels are process-global, so two threads computing jvps at once (a server's
workers) corrupt each other's answers, and a caller inside `forward_ad.dual_level` could not
call an endpoint at all. J·t is the derivative of the linear map c ↦ Jᵀ·c instead (double
backward, `Graph.jvp`), and H·t the gradient of ⟨∇, t⟩ (reverse over reverse): plain
grad mode, batched gradients and the autograd engine keep their state per thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from chainrule._component.residuals import Residual
from chainrule._component.rules import jacobian_from_batched_jvp, jacobian_from_batched_vjp
from chainrule._schema.errors import EndpointUnavailableError
from chainrule._schema.schema import ShapeDtype, passthrough
from chainrule._schema.tree import leaves, replace_leaves

from .base import Backend, Capabilities, Lane, as_outputs, flat_site
from .torch_graph import (
    DTYPES,
    NP_DTYPES,
    Graph,
    numpy_views,
    owned,
    pick,
    read_only,
    shared,
    to_torch,
    untouched,
    weighted,
)

if TYPE_CHECKING:
    from chainrule._component.component import Component
    from chainrule._component.point import Point

Tree = dict[str, Any]


def _zero_blocks(out: torch.Tensor, p: Point, wrt: tuple[str, ...]) -> Tree:
    dtype = NP_DTYPES[out.dtype]
    return {w: np.zeros((*out.shape, *np.shape(p.values[w])), dtype) for w in wrt}


class GraphPoint:
    """What the Jacobian derivations of `endpoints` need of a point, from a recorded graph."""

    def __init__(self, values: Any, graph: Graph) -> None:
        self.values, self.graph = values, graph

    def out_shapes(self, paths: tuple[str, ...], residual: Any) -> dict[str, tuple[int, ...]]:
        return {o: tuple(self.graph.outputs[o].shape) for o in paths}


def _declared(computed: np.dtype, declared: np.dtype) -> np.dtype:
    """The dtype of an output leaf: its declared one for floats (apply casts to it)."""
    return declared if declared.kind in "fc" else computed


class TorchBackend(Backend):
    """Reverse-mode autograd of the author's function: vjp, jvp by double backward, Jacobians
    by one batched pass, hvp by reverse over reverse."""

    name = "torch"
    provenance = "native (torch autograd)"
    cost = 1.0
    native = ("jvp", "vjp", "jacobian", "batched_jvp", "batched_vjp", "hvp")
    eval_shape_provenance = "native (torch meta tensors)"
    capabilities = Capabilities(framework="torch")

    def _f(self, p: Point, const: Tree, box: dict[str, Any]) -> Callable[[Tree], tuple[Tree, Tree]]:
        """`diff inputs -> (diff outputs, other array outputs)`; static outputs go to `box`."""

        def f(d: Tree) -> tuple[Tree, Tree]:
            with passthrough():
                raw = self.fn(replace_leaves(p.inputs, {**d, **const}))
                out = as_outputs(raw, self.outputs, p.component.name)
            box["template"] = out
            dout: Tree = {}
            nd: Tree = {}
            for leaf in leaves(out):
                v = leaf.value if isinstance(leaf.value, torch.Tensor) else to_torch(leaf.value)
                (dout if leaf.spec.differentiable else nd)[leaf.path] = v
            return dout, nd

        return f

    def _split(
        self, p: Point, convert: Callable[[Any], torch.Tensor] = to_torch
    ) -> tuple[Tree, Tree]:
        d = {k: convert(p.values[k]) for k in p.diff}
        return d, {k: convert(v) for k, v in p.values.items() if k not in d}

    def apply(self, p: Point, keep: bool) -> tuple[Any, Residual | None]:
        box: dict[str, Any] = {}
        if not keep:
            d, c = self._split(p)
            with torch.no_grad():
                dout, nd = self._f(p, c, box)(d)
            return replace_leaves(box["template"], numpy_views({**dout, **nd})), None
        # The kept graph gets its own copies of the inputs: from_numpy views would let the
        # caller change it in place (and pin a request body the budget does not count).
        d, c = self._split(p, owned)
        f = self._f(p, c, box)
        graph = Graph.record(f, d)
        out = replace_leaves(box["template"], read_only({**graph.detached(), **graph.rest}))
        return out, Residual(graph, graph.nbytes(c), None)

    batched_provenance = "native (torch.func.vmap)"

    def batched_apply(self, p: Point, stacks: dict[str, np.ndarray]) -> Tree | None:
        """Every array output at each point of a batch, by `torch.func.vmap` (None if the
        function cannot be mapped: `.item()`, data-dependent control flow; then a loop)."""
        keys = tuple(stacks)
        const = {k: to_torch(v) for k, v in p.values.items() if k not in stacks}
        f = self._f(p, const, {})

        def one(*xs: torch.Tensor) -> Tree:
            dout, nd = f(dict(zip(keys, xs, strict=True)))
            return {**dout, **nd}

        try:
            with torch.no_grad():
                out = torch.func.vmap(one)(*(to_torch(stacks[k]) for k in keys))
        except Exception:  # not mappable; the loop runs it (and raises its own errors)
            return None
        return numpy_views(out)

    def points(self, name: str, p: Point, stacks: dict[str, np.ndarray], request: Tree) -> Any:
        """A vjp (or batched vjp) at each point of a batch (`chainrule._component.points`):
        `torch.func.vmap` of `torch.func.vjp`, reverse mode only. None for a jvp (no
        forward-mode AD here) or a function vmap cannot map; then a loop of vjps."""
        if not name.endswith("vjp"):
            return None
        base = {k: to_torch(v) for k, v in p.values.items()}
        wrt, batched = tuple(request["wrt"]), name.startswith("batched_")

        def one(s: Tree, ct: Tree) -> Tree:
            values = {**base, **s}
            f = self._f(p, {k: v for k, v in values.items() if k not in wrt}, {})
            pair = torch.func.vjp(lambda d: f(d)[0], pick(values, wrt))  # (outputs, pullback)
            out, pull = pair[0], pair[1]

            def back(c: Tree) -> Tree:
                full = {
                    o: c[o].to(y.dtype) if o in c else torch.zeros_like(y) for o, y in out.items()
                }
                return dict(pull(full)[0])

            return torch.func.vmap(back)(ct) if batched else back(ct)

        cts = {k: to_torch(v) for k, v in request["cotangents"].items()}
        try:
            found = torch.func.vmap(one)({k: to_torch(v) for k, v in stacks.items()}, cts)
        except Exception:  # not mappable; the loop runs it (and raises its own errors)
            return None
        return numpy_views({k: v.detach() for k, v in found.items()})

    def eval_shape(self, p: Point) -> Any:
        meta = {
            k: torch.empty(v.shape, dtype=DTYPES[v.dtype], device="meta")
            for k, v in p.values.items()
        }
        box: dict[str, Any] = {}
        try:
            with torch.no_grad():
                dout, nd = self._f(p, {}, box)(meta)
        except Exception as e:
            raise EndpointUnavailableError(
                f"eval_shape of torch component '{p.component.name}' failed on meta tensors "
                f"({type(e).__name__}: {e}); create tensors with device=x.device and avoid "
                ".item()/.numpy() in apply, or call apply"
            ) from e
        # A float output is the dtype its schema declares (apply casts it so), not torch's.
        specs = {leaf.path: leaf.spec for leaf in leaves(box["template"])}
        shapes = {
            k: ShapeDtype(tuple(v.shape), _declared(NP_DTYPES[v.dtype], specs[k].dtype))
            for k, v in {**dout, **nd}.items()
        }
        return replace_leaves(box["template"], shapes)

    def _graph(self, p: Point, res: Residual | None, keys: tuple[str, ...] | None = None) -> Graph:
        """The kept autograd graph, or a new forward pass recording one (with respect to the
        differentiable inputs `keys`, all by default)."""
        if res is not None and isinstance(res.data, Graph):
            return res.data
        d, c = self._split(p)
        keys = tuple(d) if keys is None else keys
        rest = {**c, **{k: v for k, v in d.items() if k not in keys}}
        return Graph.record(self._f(p, rest, {}), pick(d, keys))

    def jvp(self, p: Point, res: Residual | None, tangents: Tree, of: tuple[str, ...]) -> Tree:
        t = {k: to_torch(v) for k, v in tangents.items()}
        return self._graph(p, res, tuple(t)).jvp(t, of)

    def vjp(self, p: Point, res: Residual | None, cotangents: Tree, wrt: tuple[str, ...]) -> Tree:
        return self._pull(p, res, cotangents, wrt, batched=False)

    def _pull(
        self, p: Point, res: Residual | None, cotangents: Tree, wrt: tuple[str, ...], batched: bool
    ) -> Tree:
        watched: list[tuple[str, torch.Tensor]] = []  # autograd only reads the cotangents
        ct = {k: shared(v, watched, k) for k, v in cotangents.items()}
        grads = self._graph(p, res).vjp(ct, wrt, batched=batched)
        untouched(watched, f"the backward pass of component '{p.component.name}'")
        return grads

    def batched_jvp(
        self, p: Point, res: Residual | None, tangents: Tree, of: tuple[str, ...]
    ) -> Tree:
        t = {k: to_torch(v) for k, v in tangents.items()}
        return self._graph(p, res, tuple(t)).jvp(t, of, batched=True)

    def batched_vjp(
        self, p: Point, res: Residual | None, cotangents: Tree, wrt: tuple[str, ...]
    ) -> Tree:
        return self._pull(p, res, cotangents, wrt, batched=True)

    def jacobian(
        self, p: Point, res: Residual | None, wrt: tuple[str, ...], of: tuple[str, ...]
    ) -> Tree:
        graph = self._graph(p, res, wrt)
        n_in = sum(int(np.size(p.values[w])) for w in wrt)
        n_out = sum(graph.outputs[o].numel() for o in of)
        if not n_in or not n_out:  # an empty Jacobian: no batch of zero rows to run
            return {o: _zero_blocks(graph.outputs[o], p, wrt) for o in of}
        at = GraphPoint(p.values, graph)
        if n_in < n_out:  # by columns: one batched jvp over the inputs' basis
            cols = jacobian_from_batched_jvp(
                lambda _p, _r, tangents, of: graph.jvp(
                    {k: to_torch(v) for k, v in tangents.items()}, of, batched=True
                )
            )
            result: Tree = cols(at, None, wrt=wrt, of=of)
            return result
        rows = jacobian_from_batched_vjp(
            lambda _p, _r, cotangents, wrt: graph.vjp(
                {k: to_torch(v) for k, v in cotangents.items()}, wrt, batched=True
            )
        )
        found: Tree = rows(at, None, wrt=wrt, of=of)
        return found

    def hvp(
        self,
        p: Point,
        res: Residual | None,
        tangents: Tree,
        cotangents: Tree,
        wrt: tuple[str, ...],
    ) -> Tree:
        # Reverse over reverse: H·t = ∇⟨∇(Σ⟨c_o, y_o⟩), t⟩.
        graph = self._graph(p, None)
        xs, t = graph.inputs, {k: to_torch(v) for k, v in tangents.items()}
        found: Sequence[torch.Tensor | None] = [None] * len(wrt)
        with torch.enable_grad():
            total = weighted(graph.outputs, {k: to_torch(v) for k, v in cotangents.items()})
            moved = [k for k in t if k in xs]
            if total is not None and moved:
                grads = torch.autograd.grad(
                    total, [xs[k] for k in moved], create_graph=True, allow_unused=True
                )
                dot = weighted(dict(zip(moved, grads, strict=True)), t)
                if dot is not None:
                    found = torch.autograd.grad(dot, [xs[w] for w in wrt], allow_unused=True)
        return {
            w: torch.zeros_like(xs[w]) if h is None else h.detach()
            for w, h in zip(wrt, found, strict=True)
        }

    def host_lane(
        self, component: Component, in_paths: tuple[str, ...], out_paths: tuple[str, ...]
    ) -> Lane | None:
        """A `HostLane` for a call site over every array leaf of flat schemas."""
        from .torch_lane import HostLane

        usable = flat_site(component, in_paths, out_paths)
        return HostLane(component, in_paths, out_paths) if usable else None


BACKEND = TorchBackend
