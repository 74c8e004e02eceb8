"""`chainrule.torch.call`: components inside PyTorch code, in reverse and forward mode.

An in-process torch component without author-written derivatives runs its function straight
on the caller's tensors, so autograd records it natively (no copies; double backward works).
Any other component (JAX, NumPy, remote, torch with written derivatives) crosses through one
`torch.autograd.Function`, `Host` (`function`), whose `Op` says which endpoint it runs:

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

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwad

from chainrule._component.backends.torch_graph import DTYPES, to_torch
from chainrule._component.component import Component
from chainrule._schema.errors import ValidationError
from chainrule._schema.schema import Schema, passthrough
from chainrule._schema.tree import Leaf, bind_dims, leaves, replace_leaves, static_values

from .function import Box, Host, Op, not_differentiable

__all__ = ["call"]


# ---- the public entry point -----------------------------------------------------------------


def _as_tensor(leaf: Leaf, component: Component) -> torch.Tensor:
    """The leaf as a tensor of the schema's dtype (a cast the schema allows, recorded by
    autograd); numpy arrays and numbers were already validated and cast by the schema."""
    value = leaf.value
    if not isinstance(value, torch.Tensor):
        return to_torch(np.asarray(value))
    want = DTYPES.get(leaf.spec.dtype)
    if value.dtype == want:
        return value
    got = next((k for k, v in DTYPES.items() if v == value.dtype), None)
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
            raise not_differentiable(component, x.path, _derivative(t))
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
    with component.errors("apply"), passthrough():
        raw = component.fn(replace_leaves(instance, tensors))
        out = component.traced_outputs(raw)
    result: dict[str, Any] = {}
    for x in leaves(out):
        value = x.value if isinstance(x.value, torch.Tensor) else to_torch(np.asarray(x.value))
        want = DTYPES.get(x.spec.dtype)
        if value.dtype != want and want is not None and (want.is_floating_point or want.is_complex):
            value = value.to(want)
        result[x.path] = value if x.spec.differentiable else value.detach()
    result.update(static_values(out))
    return result


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
    # Direct calls only when torch's own derivatives are the component's (`Component.inline`):
    # an author's written derivative must be honoured, so that component goes through `Host`.
    if component.inline("torch"):
        return _inline(component, instance, tensors)
    box = Box()
    paths = tuple(tensors)
    diff = tuple(x.spec.differentiable for x in leaves(instance))
    # Keep the linearization when an input may be differentiated (a refused tangent on an
    # input torch could not inspect here is refused by the forward-mode rule instead).
    keep = any(_derivative(t, "maybe") for t, d in zip(tensors.values(), diff, strict=True) if d)
    op = Op(component, instance, paths, diff, box, keep=keep)
    outs = Host.apply(op, *tensors.values())
    result: dict[str, Any] = dict(zip(box.out_paths, outs, strict=True))
    result.update(box.static)
    return result
