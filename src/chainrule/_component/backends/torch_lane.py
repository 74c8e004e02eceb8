"""The torch backend's `Lane`: `apply(keep)` and `vjp` of one call site of a framework binding
(jitted JAX calling a torch component back on the host), on the site's numpy arrays."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from chainrule._component.residuals import Residual
from chainrule._schema.schema import passthrough
from chainrule._schema.tree import replace_leaves

from .base import array_specs, as_outputs
from .torch_graph import DTYPES, Graph, numpy_views, owned, shared, to_torch, untouched

if TYPE_CHECKING:
    from chainrule._component.component import Component

__all__ = ["HostLane"]


def _wrap(a: np.ndarray) -> torch.Tensor:
    """A tensor over `a` (a fresh copy, maybe read-only: torch takes it through DLPack)."""
    return torch.from_dlpack(a) if not a.flags.writeable else torch.from_numpy(a)


Tree = dict[str, Any]


class HostLane:
    """`apply(keep)` and `vjp` of a torch component called back from jitted JAX code.

    JAX has fixed the shape and dtype of every input before a callback runs, so the generic
    endpoints' work (a validated Point, template rebuilds, output validation, the tangent
    checks) is redundant there. Only for flat schemas (static outputs are not returned to JAX,
    so they are not checked here); outputs that are not exactly the declared tensors are
    validated the generic way, without running the function again.
    """

    lends = False  # torch has no read-only tensors: it is given copies (see `apply`)
    vjps = True  # from the autograd graph a kept apply recorded
    fresh = False  # whether `apply` is given arrays of its own (set per site: `fresh_copies`)

    def __init__(
        self, component: Component, in_paths: tuple[str, ...], out_paths: tuple[str, ...]
    ) -> None:
        self.component = component
        self.fn = component.fn
        self.in_paths, self.out_paths = in_paths, out_paths
        specs = array_specs(component.inputs)
        self.diff = tuple(p for p in in_paths if specs[p].differentiable)
        out_specs = array_specs(component.outputs)
        self.out_diff = {p: out_specs[p].differentiable for p in out_paths}
        self.out_dtypes = [DTYPES.get(np.dtype(out_specs[p].dtype)) for p in out_paths]

    def apply(
        self,
        build: Callable[[Sequence[Any]], Any],
        arrays: Sequence[np.ndarray],
        shapes: Sequence[tuple[int, ...]],
        keep: bool,
        measure: bool = True,
    ) -> tuple[list[np.ndarray], Residual | None]:
        """Run the function on `arrays` (the inputs instance made by `build`): the output
        arrays in `out_paths` order and, with `keep`, the recorded graph as a residual."""
        # A kept graph holds its own copies. Read-only arrays (XLA's buffers) are copied even
        # then: torch has no read-only tensors, and an author's in-place op must not change a
        # JAX value (a check after the call would come too late). Arrays that are the lane's
        # own already (`fresh`: copies made for this call, held by nobody else) are wrapped.
        convert = _wrap if self.fresh else owned if keep else to_torch
        tensors = {p: convert(a) for p, a in zip(self.in_paths, arrays, strict=True)}
        leaves = {p: tensors[p].detach().requires_grad_(True) for p in self.diff} if keep else {}
        inputs = build([leaves.get(p, tensors[p]) for p in self.in_paths])
        comp = self.component
        grad = torch.enable_grad() if keep else torch.no_grad()
        with comp.errors("apply"), grad, passthrough():
            out = as_outputs(self.fn(inputs), comp.outputs, comp.name)
        given = [out.__dict__[p] for p in self.out_paths]
        if all(
            isinstance(v, torch.Tensor) and v.dtype == d and v.device.type == "cpu"
            for v, d in zip(given, self.out_dtypes, strict=True)
        ):
            result = [v.detach().numpy() for v in given]
        else:
            result = self._validated(out, build(arrays))
        if not keep:
            return result, None
        # The graph keeps the tensors the function returned (not converted copies), so the
        # backward pass reaches the inputs.
        diff: Tree = {}
        rest: Tree = {}
        for p, v in zip(self.out_paths, given, strict=True):
            if self.out_diff[p]:
                diff[p] = to_torch(v)
            else:
                rest[p] = to_torch(v).detach()
        graph = Graph(leaves, diff, rest)
        const = {p: t for p, t in tensors.items() if p not in leaves}
        return result, Residual(graph, graph.nbytes(const) if measure else 0, None)

    def _validated(self, out: Any, inputs: Any) -> list[np.ndarray]:
        """Outputs that are not exactly the declared CPU tensors, as numpy arrays converted (or
        refused) by the component's own output check."""
        given = {p: out.__dict__[p] for p in self.out_paths}
        detached = {p: v.detach() if isinstance(v, torch.Tensor) else v for p, v in given.items()}
        raw = replace_leaves(out, numpy_views(detached))
        checked = self.component.validate_outputs(raw, self.component.at(inputs))
        return [np.asarray(checked.__dict__[p]) for p in self.out_paths]

    def fresh_copies(self) -> HostLane:
        """This lane for a caller that hands `apply` fresh copies of its own (no copy again)."""
        lane = copy.copy(self)
        lane.fresh = True
        return lane

    @staticmethod
    def owns(residual: Residual | None) -> bool:
        """Whether `vjp` can answer from `residual` (a kept autograd graph)."""
        return residual is not None and isinstance(residual.data, Graph)

    def vjp(
        self, residual: Residual, cts: dict[str, np.ndarray], wrt: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        """Cotangents of `wrt` from the graph a kept `apply` recorded."""
        graph = residual.data
        watched: list[tuple[str, torch.Tensor]] = []
        with self.component.errors("vjp"):
            ct = {k: shared(v, watched, k) for k, v in cts.items()}  # autograd only reads them
            grads = graph.vjp(ct, wrt, batched=False)
            untouched(watched, f"the backward pass of component '{self.component.name}'")
        return {k: v.numpy() for k, v in grads.items()}
