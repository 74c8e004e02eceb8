"""The autograd Function of `chainrule.torch.call`: `Host` runs an `Op` (which endpoint, on
which leaves, over which batch levels) on the host, and its backward, forward-mode and vmap
rules bind `Host` again with other ops (see `chainrule._bindings.torch.call` for what each op
computes; second order in `curvature`).

The host functions run the component through its interface for bindings: the arrays are the
validated inputs' own (tensors cast to their declared dtypes by `call`), and the tangents and
cotangents come from autograd at that call, so they are trusted (`Component.at`, `apply_at`,
`run`), as in the JAX binding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from chainrule._bindings.levels import run_levels
from chainrule._component.backends.torch_graph import to_torch
from chainrule._component.component import Component
from chainrule._component.residuals import Handle
from chainrule._schema.errors import NotDifferentiableError
from chainrule._schema.schema import Schema
from chainrule._schema.tree import leaves, replace_leaves, static_values

from . import curvature

__all__ = ["Box", "Host", "Op", "not_differentiable"]

Kind = Literal["apply", "jvp", "vjp", "hvp"]


@dataclass(eq=False)
class Box:
    """What the forward pass learns about the outputs (and the handle it kept)."""

    out_paths: tuple[str, ...] = ()
    out_diff: tuple[bool, ...] = ()
    out_dtypes: tuple[np.dtype, ...] = ()
    out_shapes: tuple[tuple[int, ...], ...] = ()
    static: dict[str, Any] = field(default_factory=dict)
    handle: Handle | None = None


@dataclass(frozen=True, eq=False)
class Op:
    """One host computation: which endpoint, on which leaves, over which batch levels.

    `wrt` and `of` index inputs and outputs; `levels` lists leading batch axes, outermost
    first: "loop" (one call per element) or "batched" (one call to a batched endpoint). An
    hvp takes the point, weights of the outputs `of` and a vector on the inputs `moved`, and
    gives H·v on the inputs `wrt` (H the Hessian of the weighted sum of outputs).
    """

    component: Component
    template: Schema
    in_paths: tuple[str, ...]
    in_diff: tuple[bool, ...]
    box: Box
    kind: Kind = "apply"
    wrt: tuple[int, ...] = ()
    of: tuple[int, ...] = ()
    levels: tuple[str, ...] = ()
    keep: bool = True  # keep the linearization (some input is being differentiated)
    moved: tuple[int, ...] = ()

    def inputs(self, arrays: Sequence[np.ndarray]) -> Schema:
        return replace_leaves(self.template, dict(zip(self.in_paths, arrays, strict=True)))

    @property
    def n(self) -> int:
        return len(self.in_paths)


# ---- host functions (numpy in, numpy out) ---------------------------------------------------


def _host_apply(op: Op, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    comp, box = op.component, op.box
    # The arrays are the validated inputs' own, as tensors cast to their declared dtypes:
    # trusted (`Component.at`). A loop over a batch keeps nothing: one handle could not
    # serve it all.
    keep = op.keep and not op.levels
    out, handle = comp.apply_at(comp.at(op.inputs(arrays)), keep)
    if keep:
        box.handle = handle
    _learn(box, out)
    return [np.asarray(x.value, x.spec.dtype) for x in leaves(out)]


def _learn(box: Box, out: Schema) -> None:
    """What the outputs `out` (values or ShapeDtype leaves) tell about every call's outputs."""
    found = leaves(out)
    box.out_paths = tuple(x.path for x in found)
    box.out_diff = tuple(x.spec.differentiable for x in found)
    box.out_dtypes = tuple(x.spec.dtype for x in found)
    box.out_shapes = tuple(tuple(x.value.shape) for x in found)
    box.static = dict(static_values(out))


def _empty(op: Op, arrays: Sequence[np.ndarray]) -> list[np.ndarray] | None:
    """The results of a call over a batch level of size 0 (jacrev of a zero-size output,
    vmap over nothing): zeros of the right shapes, without calling the component. None when
    every level has elements."""
    depth = len(op.levels)
    carrier = arrays[op.n] if op.kind != "apply" and len(arrays) > op.n else arrays[0]
    sizes = tuple(carrier.shape[:depth])
    if 0 not in sizes:
        return None
    loops = sum(1 for level in op.levels if level == "loop")
    if op.kind in ("vjp", "hvp"):
        return [np.zeros(sizes + arrays[i].shape[loops:], arrays[i].dtype) for i in op.wrt]
    box = op.box
    if op.kind == "apply":  # nothing ran: the shapes come from eval_shape of one element
        element = [np.zeros(a.shape[depth:], a.dtype) for a in arrays]
        _learn(box, op.component.eval_shape(op.inputs(element)))
        return [np.zeros(sizes + s, d) for s, d in zip(box.out_shapes, box.out_dtypes, strict=True)]
    return [np.zeros(sizes + box.out_shapes[k], box.out_dtypes[k]) for k in op.of]


def _host_linear(op: Op, args: Sequence[np.ndarray], batched: bool) -> list[np.ndarray]:
    # Paths, tangents and cotangents come from autograd at a validated call: trusted.
    comp, box = op.component, op.box
    p, given = comp.at(op.inputs(args[: op.n])), args[op.n :]
    outs = tuple(box.out_paths[i] for i in op.of)
    ins = tuple(op.in_paths[i] for i in op.wrt)
    if op.kind == "jvp":
        res = comp.residuals.get(box.handle, p.inputs)
        t = dict(zip(ins, given, strict=True))
        result = comp.run("batched_jvp" if batched else "jvp", p, res, tangents=t, of=outs)
        dtypes = [box.out_dtypes[i] for i in op.of]
        return [np.asarray(result[o], d) for o, d in zip(outs, dtypes, strict=True)]
    if op.kind == "hvp":
        weights, vs = given[: len(op.of)], given[len(op.of) :]
        moved = dict(zip((op.in_paths[i] for i in op.moved), vs, strict=True))
        c = dict(zip(outs, weights, strict=True))
        result = comp.run("hvp", p, None, tangents=moved, cotangents=c, wrt=ins)
    else:
        res = comp.residuals.get(box.handle, p.inputs)
        c = dict(zip(outs, given, strict=True))
        result = comp.run("batched_vjp" if batched else "vjp", p, res, cotangents=c, wrt=ins)
    return [np.asarray(result[w], args[i].dtype) for w, i in zip(ins, op.wrt, strict=True)]


def _host(op: Op, args: list[np.ndarray], batched: bool) -> list[np.ndarray]:
    return _host_apply(op, args) if op.kind == "apply" else _host_linear(op, args, batched)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# ---- the autograd Function ------------------------------------------------------------------


class Host(torch.autograd.Function):
    """Runs `op` on the host; reverse, forward and vmap rules re-bind `Host` with other ops."""

    generate_vmap_rule = False

    @staticmethod
    def forward(op: Op, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arrays = [_numpy(a) for a in args]
        outs = _empty(op, arrays) if op.levels else None
        if outs is None:
            outs = run_levels(lambda xs, b: _host(op, xs, b), op.levels, arrays)
        device = args[0].device if args else torch.device("cpu")
        return tuple(to_torch(o).to(device) for o in outs)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        op, *args = inputs
        ctx.op = op
        ctx.save_for_backward(*args)
        ctx.save_for_forward(*args)
        ctx.set_materialize_grads(False)
        if op.kind == "apply":
            fixed = [o for o, d in zip(output, op.box.out_diff, strict=True) if not d]
            ctx.mark_non_differentiable(*fixed)

    @staticmethod
    def backward(ctx: Any, *cts: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        op: Op = ctx.op
        args = ctx.saved_tensors
        if op.kind == "apply":
            return (None, *_apply_vjp(op, args, cts, ctx.needs_input_grad[1:]))
        needs = ctx.needs_input_grad[1:]
        if op.kind == "hvp":
            return (None, *curvature.hvp_backward(op, args, cts, needs, _bind))
        linear = _transpose(op, args[: op.n], cts)
        point = curvature.point_backward(op, args, cts, needs[: op.n], _bind)
        return (None, *point, *linear)

    @staticmethod
    def jvp(ctx: Any, op_tangent: None, *tangents: torch.Tensor | None) -> Any:
        op: Op = ctx.op
        args = ctx.saved_tensors
        if op.kind == "apply":
            return tuple(_apply_jvp(op, args, tangents))
        if op.kind == "hvp":
            return tuple(curvature.hvp_jvp(op, args, tangents, _bind))
        # A linear map's own tangent is the map applied to the tangents of its linear part,
        # plus the curvature term when the point moves.
        given = tangents[op.n :]
        keep = tuple(k for k, t in enumerate(given) if t is not None)
        if op.kind == "jvp":
            new = replace(op, wrt=_sub(op.wrt, keep))
        else:
            new = replace(op, of=_sub(op.of, keep))
        linear = _bind(new, args[: op.n], [given[k] for k in keep])
        for i, t in enumerate(tangents[: op.n]):
            if t is not None and not op.in_diff[i]:
                raise not_differentiable(op.component, op.in_paths[i], "carries a tangent")
        curved = curvature.point_jvp(op, args, tangents[: op.n], _bind)
        return tuple(curvature.add(a, b) for a, b in zip(linear, curved, strict=True))

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], op: Op, *args: torch.Tensor) -> Any:
        dims, size = in_dims[1:], info.batch_size
        if op.kind in ("jvp", "vjp") and all(d is None for d in dims[: op.n]):
            return _batched(op, size, args, dims)
        moved = [_move(a, d, size) for a, d in zip(args, dims, strict=True)]
        outs = Host.apply(replace(op, levels=("loop", *op.levels)), *moved)
        return outs, (0,) * len(outs)


def _batched(op: Op, size: int, args: Sequence[torch.Tensor], dims: Sequence[Any]) -> Any:
    """vmap over tangents or cotangents alone: one call to a batched endpoint per element of
    the loops around it. The new axis goes after the loop axes, merged with a batched axis
    already there (vmap of jacrev: size·B rows in one call)."""
    depth = curvature.loop_depth(op.levels)
    inner = 1
    linear = []
    for a, d in zip(args[op.n :], dims[op.n :], strict=True):
        x = curvature.repeat_at(a, depth, size) if d is None else a.movedim(d, depth)
        if depth == len(op.levels):
            x = x.unsqueeze(depth + 1)
        inner = x.shape[depth + 1]
        linear.append(x.reshape(*x.shape[:depth], size * inner, *x.shape[depth + 2 :]))
    new = replace(op, levels=(*op.levels[:depth], "batched"))
    outs = Host.apply(new, *args[: op.n], *linear)
    split = [o.reshape(*o.shape[:depth], size, inner, *o.shape[depth + 1 :]) for o in outs]
    if depth == len(op.levels):
        split = [o.squeeze(depth + 1) for o in split]
    return tuple(split), (depth,) * len(split)


def _sub(indices: tuple[int, ...], keep: Sequence[int]) -> tuple[int, ...]:
    return tuple(indices[k] for k in keep)


def _apply_vjp(
    op: Op, args: Sequence[torch.Tensor], cts: Sequence[Any], needs: Sequence[bool]
) -> list[Any]:
    """Input cotangents of `apply` by one `vjp` call (None where none is needed)."""
    wrt = tuple(i for i in range(op.n) if op.in_diff[i] and needs[i])
    of = tuple(k for k, c in enumerate(cts) if c is not None and op.box.out_diff[k])
    grads: list[Any] = [None] * op.n
    new = replace(op, kind="vjp", wrt=wrt, of=of)
    for i, g in zip(wrt, _bind(new, args, [cts[k] for k in of]), strict=True):
        grads[i] = g
    return grads


def _apply_jvp(op: Op, args: Sequence[torch.Tensor], tangents: Sequence[Any]) -> list[Any]:
    """Output tangents of `apply` by one `jvp` call (None for outputs that do not move)."""
    wrt = tuple(i for i, t in enumerate(tangents) if t is not None)
    for i in wrt:
        if not op.in_diff[i]:
            raise not_differentiable(op.component, op.in_paths[i], "carries a tangent")
    of = tuple(k for k, d in enumerate(op.box.out_diff) if d)
    out: list[Any] = [None] * len(op.box.out_paths)
    new = replace(op, kind="jvp", wrt=wrt, of=of)
    for k, t in zip(of, _bind(new, args, [tangents[i] for i in wrt]), strict=True):
        out[k] = t
    return out


def _transpose(op: Op, primals: Sequence[torch.Tensor], cts: Sequence[Any]) -> list[Any]:
    """Backward of a linear op: the other linear op at the same point (jvp <-> vjp)."""
    keep = tuple(k for k, c in enumerate(cts) if c is not None)
    if op.kind == "jvp":  # cts are of outputs `of`; results are cotangents of tangents `wrt`
        new = replace(op, kind="vjp", of=_sub(op.of, keep))
    else:  # cts are of inputs `wrt`; results are cotangents of output cotangents `of`
        new = replace(op, kind="jvp", wrt=_sub(op.wrt, keep))
    return _bind(new, primals, [cts[k] for k in keep])


def _bind(op: Op, primals: Sequence[Any], linear: Sequence[Any]) -> list[Any]:
    """Run linear `op` (None results when it maps nothing to something)."""
    results = op.of if op.kind == "jvp" else op.wrt
    if not op.wrt or not op.of or (op.kind == "hvp" and not op.moved):
        return [None] * len(results)
    return list(Host.apply(op, *primals, *linear))


def _move(x: torch.Tensor, d: int | None, size: int) -> torch.Tensor:
    if d is None:
        return x.expand(size, *x.shape)
    return x.movedim(d, 0)


def not_differentiable(component: Component, path: str, how: str) -> NotDifferentiableError:
    return NotDifferentiableError(
        f"input '{path}' of component '{component.name}' is not differentiable, but the tensor "
        f"passed for it {how}; mark it Differentiable[...] in {component.inputs.__name__}, "
        "or pass value.detach()",
        errors=[{"path": path, "expected": "a tensor without gradient", "got": how}],
    )
