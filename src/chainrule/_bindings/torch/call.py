"""`chainrule.torch.call`: components inside PyTorch code, in reverse and forward mode.

An in-process torch component without author-written derivatives runs its function straight
on the caller's tensors, so autograd records it natively (no copies; double backward works).
Any other component (JAX, NumPy, remote, torch with written derivatives) crosses through one
`torch.autograd.Function`, `_Host`, whose `_Op` says which endpoint it runs:

- `apply`   the outputs, by `apply(keep=True)`; the handle of the kept linearization is
            remembered for the derivative calls that follow;
- `vjp`     Jᵀ·c, linear in c (`vjp` with the kept handle): the backward of `apply`;
- `jvp`     J·t, linear in t (`jvp` with the kept handle): the forward-mode rule of `apply`;
- `hvp`     H·v, H the Hessian of the outputs weighted by some cotangents (`hvp`): what the
            derivatives of `jvp` and `vjp` with respect to their point add (second order,
            `curvature`); components without an `hvp` endpoint refuse it.

`jvp` and `vjp` are each other's backward, so one gradient costs one `apply` and one `vjp` per
component, and `torch.func.jacrev`/`jacfwd` (vmap over cotangents/tangents alone) map onto the
batched endpoints: one request per Jacobian (per element under an outer vmap). vmap over
anything else loops over the batch; a batch of size 0 calls nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.autograd.forward_ad as fwad

from chainrule._component.backends.base import as_outputs
from chainrule._component.backends.torch import _DTYPES, to_torch
from chainrule._component.component import Component
from chainrule._component.residuals import Handle
from chainrule._schema.errors import NotDifferentiableError, ValidationError
from chainrule._schema.schema import Schema, passthrough
from chainrule._schema.tree import Leaf, bind_dims, leaves, replace_leaves, static_values

from . import curvature

__all__ = ["call"]

Kind = Literal["apply", "jvp", "vjp", "hvp"]


@dataclass(eq=False)
class _Box:
    """What the forward pass learns about the outputs (and the handle it kept)."""

    out_paths: tuple[str, ...] = ()
    out_diff: tuple[bool, ...] = ()
    out_dtypes: tuple[np.dtype, ...] = ()
    out_shapes: tuple[tuple[int, ...], ...] = ()
    static: dict[str, Any] = field(default_factory=dict)
    handle: Handle | None = None


@dataclass(frozen=True, eq=False)
class _Op:
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
    box: _Box
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


def _host_apply(op: _Op, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    comp, box = op.component, op.box
    if op.levels or not op.keep:  # a loop over a batch: one handle could not serve it all
        out = comp.apply(op.inputs(arrays))
    else:
        out, box.handle = comp.apply(op.inputs(arrays), keep=True)
    _learn(box, out)
    return [np.asarray(x.value, x.spec.dtype) for x in leaves(out)]


def _learn(box: _Box, out: Schema) -> None:
    """What the outputs `out` (values or ShapeDtype leaves) tell about every call's outputs."""
    found = leaves(out)
    box.out_paths = tuple(x.path for x in found)
    box.out_diff = tuple(x.spec.differentiable for x in found)
    box.out_dtypes = tuple(x.spec.dtype for x in found)
    box.out_shapes = tuple(tuple(x.value.shape) for x in found)
    box.static = dict(static_values(out))


def _empty(op: _Op, arrays: Sequence[np.ndarray]) -> list[np.ndarray] | None:
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


def _host_linear(op: _Op, args: Sequence[np.ndarray], batched: bool) -> list[np.ndarray]:
    comp, box = op.component, op.box
    inputs, given = op.inputs(args[: op.n]), args[op.n :]
    outs = tuple(box.out_paths[i] for i in op.of)
    ins = tuple(op.in_paths[i] for i in op.wrt)
    if op.kind == "jvp":
        jvp = comp.batched_jvp if batched else comp.jvp
        result = jvp(inputs, dict(zip(ins, given, strict=True)), of=outs, handle=box.handle)
        dtypes = [box.out_dtypes[i] for i in op.of]
        return [np.asarray(result[p], d) for p, d in zip(outs, dtypes, strict=True)]
    if op.kind == "hvp":
        weights, vs = given[: len(op.of)], given[len(op.of) :]
        moved = tuple(op.in_paths[i] for i in op.moved)
        c = dict(zip(outs, weights, strict=True))
        result = comp.hvp(inputs, dict(zip(moved, vs, strict=True)), cotangents=c, wrt=ins)
    else:
        vjp = comp.batched_vjp if batched else comp.vjp
        result = vjp(inputs, dict(zip(outs, given, strict=True)), wrt=ins, handle=box.handle)
    return [np.asarray(result[p], args[i].dtype) for p, i in zip(ins, op.wrt, strict=True)]


def _run_levels(
    host: Callable[[list[np.ndarray], bool], list[np.ndarray]],
    levels: tuple[str, ...],
    args: list[np.ndarray],
) -> list[np.ndarray]:
    """Run `host` over the leading axes named by `levels`; only the innermost may be batched."""
    if not levels or levels == ("batched",):
        return host(args, bool(levels))
    rows = [_run_levels(host, levels[1:], [a[b] for a in args]) for b in range(len(args[0]))]
    return [np.stack([r[k] for r in rows]) for k in range(len(rows[0]))] if rows else []


def _host(op: _Op, args: list[np.ndarray], batched: bool) -> list[np.ndarray]:
    return _host_apply(op, args) if op.kind == "apply" else _host_linear(op, args, batched)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


# ---- the autograd Function ------------------------------------------------------------------


class _Host(torch.autograd.Function):
    """Runs `op` on the host; reverse, forward and vmap rules re-bind `_Host` with other ops."""

    generate_vmap_rule = False

    @staticmethod
    def forward(op: _Op, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arrays = [_numpy(a) for a in args]
        outs = _empty(op, arrays) if op.levels else None
        if outs is None:
            outs = _run_levels(lambda xs, b: _host(op, xs, b), op.levels, arrays)
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
        op: _Op = ctx.op
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
        op: _Op = ctx.op
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
                raise _not_differentiable(op.component, op.in_paths[i], "carries a tangent")
        curved = curvature.point_jvp(op, args, tangents[: op.n], _bind)
        return tuple(curvature.add(a, b) for a, b in zip(linear, curved, strict=True))

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], op: _Op, *args: torch.Tensor) -> Any:
        dims, size = in_dims[1:], info.batch_size
        if op.kind in ("jvp", "vjp") and all(d is None for d in dims[: op.n]):
            return _batched(op, size, args, dims)
        moved = [_move(a, d, size) for a, d in zip(args, dims, strict=True)]
        outs = _Host.apply(replace(op, levels=("loop", *op.levels)), *moved)
        return outs, (0,) * len(outs)


def _batched(op: _Op, size: int, args: Sequence[torch.Tensor], dims: Sequence[Any]) -> Any:
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
    outs = _Host.apply(new, *args[: op.n], *linear)
    split = [o.reshape(*o.shape[:depth], size, inner, *o.shape[depth + 1 :]) for o in outs]
    if depth == len(op.levels):
        split = [o.squeeze(depth + 1) for o in split]
    return tuple(split), (depth,) * len(split)


def _sub(indices: tuple[int, ...], keep: Sequence[int]) -> tuple[int, ...]:
    return tuple(indices[k] for k in keep)


def _apply_vjp(
    op: _Op, args: Sequence[torch.Tensor], cts: Sequence[Any], needs: Sequence[bool]
) -> list[Any]:
    """Input cotangents of `apply` by one `vjp` call (None where none is needed)."""
    wrt = tuple(i for i in range(op.n) if op.in_diff[i] and needs[i])
    of = tuple(k for k, c in enumerate(cts) if c is not None and op.box.out_diff[k])
    grads: list[Any] = [None] * op.n
    new = replace(op, kind="vjp", wrt=wrt, of=of)
    for i, g in zip(wrt, _bind(new, args, [cts[k] for k in of]), strict=True):
        grads[i] = g
    return grads


def _apply_jvp(op: _Op, args: Sequence[torch.Tensor], tangents: Sequence[Any]) -> list[Any]:
    """Output tangents of `apply` by one `jvp` call (None for outputs that do not move)."""
    wrt = tuple(i for i, t in enumerate(tangents) if t is not None)
    for i in wrt:
        if not op.in_diff[i]:
            raise _not_differentiable(op.component, op.in_paths[i], "carries a tangent")
    of = tuple(k for k, d in enumerate(op.box.out_diff) if d)
    out: list[Any] = [None] * len(op.box.out_paths)
    new = replace(op, kind="jvp", wrt=wrt, of=of)
    for k, t in zip(of, _bind(new, args, [tangents[i] for i in wrt]), strict=True):
        out[k] = t
    return out


def _transpose(op: _Op, primals: Sequence[torch.Tensor], cts: Sequence[Any]) -> list[Any]:
    """Backward of a linear op: the other linear op at the same point (jvp <-> vjp)."""
    keep = tuple(k for k, c in enumerate(cts) if c is not None)
    if op.kind == "jvp":  # cts are of outputs `of`; results are cotangents of tangents `wrt`
        new = replace(op, kind="vjp", of=_sub(op.of, keep))
    else:  # cts are of inputs `wrt`; results are cotangents of output cotangents `of`
        new = replace(op, kind="jvp", wrt=_sub(op.wrt, keep))
    return _bind(new, primals, [cts[k] for k in keep])


def _bind(op: _Op, primals: Sequence[Any], linear: Sequence[Any]) -> list[Any]:
    """Run linear `op` (None results when it maps nothing to something)."""
    results = op.of if op.kind == "jvp" else op.wrt
    if not op.wrt or not op.of or (op.kind == "hvp" and not op.moved):
        return [None] * len(results)
    return list(_Host.apply(op, *primals, *linear))


def _move(x: torch.Tensor, d: int | None, size: int) -> torch.Tensor:
    if d is None:
        return x.expand(size, *x.shape)
    return x.movedim(d, 0)


def _not_differentiable(component: Component, path: str, how: str) -> NotDifferentiableError:
    return NotDifferentiableError(
        f"input '{path}' of component '{component.name}' is not differentiable, but the tensor "
        f"passed for it {how}; mark it Differentiable[...] in {component.inputs.__name__}, "
        "or pass value.detach()",
        errors=[{"path": path, "expected": "a tensor without gradient", "got": how}],
    )


# ---- the public entry point -----------------------------------------------------------------


def _as_tensor(leaf: Leaf, component: Component) -> torch.Tensor:
    """The leaf as a tensor of the schema's dtype (a cast the schema allows, recorded by
    autograd); numpy arrays and numbers were already validated and cast by the schema."""
    value = leaf.value
    if not isinstance(value, torch.Tensor):
        return to_torch(np.asarray(value))
    want = _DTYPES.get(leaf.spec.dtype)
    if value.dtype == want:
        return value
    got = next((k for k, v in _DTYPES.items() if v == value.dtype), None)
    if want is None or got is None or not np.can_cast(got, leaf.spec.dtype, leaf.spec.casting):
        raise ValidationError(
            f"invalid inputs to component '{component.name}': '{leaf.path}': expected "
            f"{leaf.spec}, got {str(value.dtype).removeprefix('torch.')}{list(value.shape)} "
            f"(a {leaf.spec.casting} cast cannot make it so); convert it with .to(...)",
            errors=[{"path": leaf.path, "expected": str(leaf.spec), "got": str(value.dtype)}],
        )
    return value.to(want)


def _prepare(component: Component, inputs: Any) -> tuple[Schema, dict[str, torch.Tensor]]:
    """Validated inputs (static values filled in) and every array leaf as a tensor."""
    instance = component.traced_inputs(inputs, "chainrule.torch.call")
    found = leaves(instance)
    tensors = {x.path: _as_tensor(x, component) for x in found}
    for x in found:
        t = tensors[x.path]
        if not x.spec.differentiable and _derivative(t):
            raise _not_differentiable(component, x.path, _derivative(t))
    typed = [Leaf(x.path, x.spec, tensors[x.path]) for x in found]
    bind_dims([typed], _fail(ValidationError, f"invalid inputs to component '{component.name}'"))
    return instance, tensors


def _derivative(t: torch.Tensor, unknown: str = "") -> str:
    """How `t` is being differentiated ("" if it is not, `unknown` if torch cannot tell)."""
    if t.requires_grad and torch.is_grad_enabled():
        return "requires grad"
    if not t.is_floating_point():
        return ""
    try:
        tangent = fwad.unpack_dual(t).tangent
    except RuntimeError:  # vmapped under torch.func.jvp: unpack_dual has no batching rule
        return unknown
    return "carries a forward-mode tangent" if tangent is not None else ""


def _fail(cls: type[ValidationError], what: str) -> Callable[..., Exception]:
    def fail(message: str, errors: list[dict[str, Any]]) -> Exception:
        return cls(f"{what}: {message}", errors=errors)

    return fail


def _inline(component: Component, instance: Schema, tensors: dict[str, Any]) -> dict[str, Any]:
    """An in-process torch component run on the caller's tensors, recorded by autograd."""
    with component._guard("apply"), passthrough():
        raw = component.fn(replace_leaves(instance, tensors))
        out = as_outputs(raw, component.outputs, component.name)
    result: dict[str, Any] = {}
    for x in leaves(out):
        value = x.value if isinstance(x.value, torch.Tensor) else to_torch(np.asarray(x.value))
        want = _DTYPES.get(x.spec.dtype)
        if value.dtype != want and want is not None and (want.is_floating_point or want.is_complex):
            value = value.to(want)
        result[x.path] = value if x.spec.differentiable else value.detach()
    result.update(static_values(out))
    return result


def _native_torch(component: Component) -> bool:
    # Direct calls only when torch's own derivatives are the component's: an author's written
    # derivative endpoint must be honoured, so that component goes through `_Host`.
    return component.backend.name == "torch" and not component._written


def call(component: Component, inputs: Any) -> dict[str, Any]:
    """Call `component` from PyTorch code; differentiable by autograd, forward AD, torch.func.

    Arguments:
        component: any component (in-process PyTorch, JAX, NumPy, remote, launched).
        inputs: a dict of its inputs; arrays may be torch tensors, numpy arrays or numbers,
            static fields are ordinary Python values.

    Returns:
        `{output path: value}`: tensors for array outputs, Python values for static ones.
        Non-differentiable outputs carry no gradient.

    Example:
        ```python
        x = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
        loss = crt.call(jax_band, {"offset": x})["time"].sum()
        loss.backward()  # one apply and one vjp of jax_band
        ```
    """
    instance, tensors = _prepare(component, inputs)
    if _native_torch(component):
        return _inline(component, instance, tensors)
    box = _Box()
    paths = tuple(tensors)
    diff = tuple(x.spec.differentiable for x in leaves(instance))
    # Keep the linearization when an input may be differentiated (a refused tangent on an
    # input torch could not inspect here is refused by the forward-mode rule instead).
    keep = any(_derivative(t, "maybe") for t, d in zip(tensors.values(), diff, strict=True) if d)
    op = _Op(component, instance, paths, diff, box, keep=keep)
    outs = _Host.apply(op, *tensors.values())
    result: dict[str, Any] = dict(zip(box.out_paths, outs, strict=True))
    result.update(box.static)
    return result
