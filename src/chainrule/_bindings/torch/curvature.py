"""Second order through `chainrule.torch.call`: the curvature terms, by the component's hvp.

A linear op of the binding (`jvp`: J·t, `vjp`: Jᵀ·c) depends on its point too; differentiating
it there needs the Hessian of the outputs weighted by some cotangents, which the component's
`hvp` endpoint gives (an `hvp` op: the point, output weights, a vector on some inputs → H·v
on others):

- reverse over reverse (double backward, `grad(grad)`): the point's cotangent of `vjp` is
  H(c)·ḡ, of `jvp` H(ȳ)·t;
- forward over reverse (`hessian` = jacfwd(jacrev), `jvp(grad)`): d(Jᵀ·c) = H(c)·dx;
- forward over forward (jacfwd(jacfwd)): d(J·t)_k = tᵀ·H_k·dx, one hvp per output element;
- an `hvp` op is symmetric in its vector and bilinear in (weights, vector); moving its point
  would need third derivatives, which are refused.

Ops are run by the `bind(op, primals, linear)` the binding passes in (its autograd Function).
Under a batched level (jacrev's cotangents) the hvp loops over it with the point repeated.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from chainrule._component.backends.torch_graph import DTYPES
from chainrule._schema.errors import EndpointUnavailableError

if TYPE_CHECKING:
    from .function import Op

Bind = Callable[["Op", Sequence[Any], Sequence[Any]], list[Any]]


def add(a: Any, b: Any) -> Any:
    """a + b, where None is zero."""
    return b if a is None else a if b is None else a + b


def loop_depth(levels: tuple[str, ...]) -> int:
    """The number of loop levels (all but an innermost batched one)."""
    return len(levels) - (1 if levels and levels[-1] == "batched" else 0)


def repeat_at(x: torch.Tensor, at: int, size: int) -> torch.Tensor:
    """`x` repeated `size` times along a new axis at `at` (a view)."""
    return x.unsqueeze(at).expand(*x.shape[:at], size, *x.shape[at:])


def _hvp(
    op: Op,
    primals: Sequence[torch.Tensor],
    weights: dict[int, torch.Tensor],
    vs: dict[int, torch.Tensor],
    wrt: tuple[int, ...],
    bind: Bind,
) -> list[Any]:
    """H·v on the inputs `wrt`, H the Hessian of Σ⟨weights_o, y_o⟩, under the levels of `op`.

    The primals carry the loop axes; the weights also the batched axis if there is one, and
    then the hvp loops over it with the point (and a v without that axis) repeated.
    """
    depth = loop_depth(op.levels)
    if depth < len(op.levels):
        size = next(iter(weights.values())).shape[depth]
        vs = {
            i: v if v.dim() > primals[i].dim() else repeat_at(v, depth, size) for i, v in vs.items()
        }
        primals = [repeat_at(x, depth, size) for x in primals]
    levels = ("loop",) * len(op.levels)
    new = replace(op, kind="hvp", moved=tuple(vs), wrt=wrt, of=tuple(weights), levels=levels)
    return bind(new, primals, [*weights.values(), *vs.values()])


def point_backward(
    op: Op, args: Sequence[torch.Tensor], cts: Sequence[Any], needs: Sequence[bool], bind: Bind
) -> list[Any]:
    """The cotangents of the point of a linear op: H·v, H of the outputs weighted by the op's
    cotangents (vjp) or by the cotangents of its results (jvp)."""
    wrt = tuple(i for i in range(op.n) if needs[i] and op.in_diff[i])
    linear = args[op.n :]
    if op.kind == "vjp":
        weights = dict(zip(op.of, linear, strict=True))
        vs = {i: c for i, c in zip(op.wrt, cts, strict=True) if c is not None}
    else:
        weights = {o: c for o, c in zip(op.of, cts, strict=True) if c is not None}
        vs = dict(zip(op.wrt, linear, strict=True))
    grads: list[Any] = [None] * op.n
    if not wrt or not weights or not vs:
        return grads
    depth = loop_depth(op.levels)
    for i, g in zip(wrt, _hvp(op, args[: op.n], weights, vs, wrt, bind), strict=True):
        # the point has no batched axis: its cotangent sums over it
        grads[i] = g if g is None or depth == len(op.levels) else g.sum(depth)
    return grads


def point_jvp(op: Op, args: Sequence[torch.Tensor], dx: Sequence[Any], bind: Bind) -> list[Any]:
    """The tangent of a linear op's result as its point moves by dx."""
    moved = {i: t for i, t in enumerate(dx) if t is not None}
    if not moved:
        return [None] * len(op.of if op.kind == "jvp" else op.wrt)
    primals, linear = args[: op.n], args[op.n :]
    if op.kind == "vjp":  # d(Jᵀ·c) = H(c)·dx
        return _hvp(op, primals, dict(zip(op.of, linear, strict=True)), moved, op.wrt, bind)
    return _jvp_curvature(op, primals, dict(zip(op.wrt, linear, strict=True)), moved, bind)


def _jvp_curvature(
    op: Op,
    primals: Sequence[torch.Tensor],
    ts: dict[int, torch.Tensor],
    dx: dict[int, Any],
    bind: Bind,
) -> list[Any]:
    """d(J·t)_k = tᵀ·H_k·dx for each element k of the outputs `of`: one hvp per output
    element (weights one row of the identity), contracted with t."""
    box, depth = op.box, loop_depth(op.levels)
    sizes = [int(np.prod(box.out_shapes[o])) for o in op.of]
    rows = sum(sizes)
    lead = tuple(primals[0].shape[:depth]) if primals else ()
    eye = torch.eye(rows, dtype=torch.float64)
    weights, start = {}, 0
    for o, n in zip(op.of, sizes, strict=True):
        block = eye[:, start : start + n].reshape(rows, *box.out_shapes[o])
        weights[o] = block.expand(*lead, *block.shape).to(DTYPES[box.out_dtypes[o]])
        start += n
    basis = replace(op, levels=(*op.levels[:depth], "batched"))  # rows after the loop axes
    hv = _hvp(basis, primals, weights, dx, tuple(ts), bind)
    batch = () if depth == len(op.levels) else (next(iter(ts.values())).shape[depth],)
    total: Any = None
    for t, h in zip(ts.values(), hv, strict=True):
        if h is not None:
            flat = t.reshape(*lead, *(batch or (1,)), -1)
            term = torch.einsum("...bn,...mn->...bm", flat, h.reshape(*lead, rows, -1).to(t.dtype))
            total = term if total is None else total + term
    if total is None:
        return [None] * len(op.of)
    out, start = [], 0
    for o, n in zip(op.of, sizes, strict=True):
        block = total[..., start : start + n].reshape(*lead, *batch, *box.out_shapes[o])
        out.append(block.to(DTYPES[box.out_dtypes[o]]))
        start += n
    return out


def _split(op: Op, args: Sequence[Any]) -> tuple[list[Any], list[Any], list[Any]]:
    n, m = op.n, len(op.of)
    return list(args[:n]), list(args[n : n + m]), list(args[n + m :])


def hvp_backward(
    op: Op, args: Sequence[torch.Tensor], cts: Sequence[Any], needs: Sequence[bool], bind: Bind
) -> list[Any]:
    """The backward of an hvp op: symmetric in v (a Hessian is), so v's cotangent is another
    hvp; the point's or the weights' would be third order."""
    n, m = op.n, len(op.of)
    if any(needs[: n + m]):
        raise third_order(op)
    primals, weights, _ = _split(op, args)
    keep = tuple(k for k, c in enumerate(cts) if c is not None)
    new = replace(op, moved=tuple(op.wrt[k] for k in keep), wrt=op.moved)
    return [None] * (n + m) + bind(new, primals, [*weights, *[cts[k] for k in keep]])


def hvp_jvp(op: Op, args: Sequence[torch.Tensor], tangents: Sequence[Any], bind: Bind) -> list[Any]:
    """The tangent of an hvp op: bilinear in (weights, v), so two hvps along those."""
    primals, weights, vs = _split(op, args)
    dx, dw, dv = _split(op, tangents)
    if any(t is not None for t in dx):
        raise third_order(op)
    out: list[Any] = [None] * len(op.wrt)
    if any(t is not None for t in dw):
        w = [torch.zeros_like(a) if t is None else t for t, a in zip(dw, weights, strict=True)]
        out = bind(op, primals, [*w, *vs])
    if any(t is not None for t in dv):
        v = [torch.zeros_like(a) if t is None else t for t, a in zip(dv, vs, strict=True)]
        out = [add(a, b) for a, b in zip(out, bind(op, primals, [*weights, *v]), strict=True)]
    return out


def third_order(op: Op) -> EndpointUnavailableError:
    return EndpointUnavailableError(
        f"third derivatives of component '{op.component.name}' "
        f"({op.component.backend.name} backend) through chainrule.torch.call are not "
        "supported: its hvp endpoint gives second order only; differentiate at most twice"
    )
