"""Torch tensors for the torch backend: dtypes, numpy views, and `Graph`, a forward pass
recorded by autograd and kept to answer vjp and jvp without running it again."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .torch_compat import RUN_BACKWARD, saved_names

__all__ = [
    "DTYPES",
    "NP_DTYPES",
    "Graph",
    "graph_bytes",
    "numpy_views",
    "owned",
    "pick",
    "read_only",
    "shared",
    "to_torch",
    "untouched",
    "weighted",
]

Tree = dict[str, Any]

DTYPES = {
    np.dtype(k): v
    for k, v in {
        "float16": torch.float16,
        "float32": torch.float32,
        "float64": torch.float64,
        "int8": torch.int8,
        "int16": torch.int16,
        "int32": torch.int32,
        "int64": torch.int64,
        "uint8": torch.uint8,
        "bool": torch.bool,
        "complex64": torch.complex64,
        "complex128": torch.complex128,
    }.items()
}
NP_DTYPES = {v: k for k, v in DTYPES.items()}


def to_torch(x: Any) -> torch.Tensor:
    """A tensor sharing memory with numpy array `x` (copied only if it is read-only)."""
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def shared(x: Any, watched: list[tuple[str, torch.Tensor]], name: str) -> torch.Tensor:
    """A tensor over `x`'s own memory even if `x` is read-only (XLA's buffers, a JAX array's
    values), for values torch only reads: no copy. Tensors over read-only memory go on
    `watched` (with their `name`), for `untouched` to check after the call."""
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    if arr.flags.writeable:
        return torch.from_numpy(arr)
    try:
        t = torch.from_dlpack(arr)  # numpy exports its read-only flag; torch takes it as is
    except (BufferError, TypeError, RuntimeError):  # a dtype DLPack lacks: copy
        return torch.from_numpy(arr.copy())
    watched.append((name, t))
    return t


def untouched(watched: Sequence[tuple[str, torch.Tensor]], what: str) -> None:
    """Raise if code wrote in place into a tensor `shared` made over read-only memory (its
    version counter moved): those values belong to the caller (a JAX array is immutable)."""
    for name, t in watched:
        if t._version:
            raise ValueError(
                f"{what} wrote in place into '{name}', a read-only array it shares with the "
                f"caller (JAX's own buffer): compute a new tensor instead (x * 2, not x.mul_(2))"
            )


def owned(x: Any) -> torch.Tensor:
    """A tensor with its own copy of `x`'s values (what a kept graph may hold)."""
    return torch.from_numpy(np.array(x))


def read_only(tree: Tree) -> Tree:
    """`numpy_views(tree)` with the arrays marked read-only: they are the kept graph's own outputs
    (backward passes may read them), so the caller must not change them in place."""
    out = numpy_views(tree)
    for v in out.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return out


def _add_storage(storages: dict[int, int], t: Any) -> None:
    if isinstance(t, torch.Tensor):
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    elif isinstance(t, list | tuple):
        for u in t:
            _add_storage(storages, u)


def graph_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes held by `tensors` and every tensor their autograd graph saved for backward
    (each storage once): what a kept graph really costs the residual budget (~4 µs for a
    small graph; tensors inlined, as this runs on every kept apply)."""
    storages: dict[int, int] = {}
    stack: list[Any] = []
    for t in tensors:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        if t.grad_fn is not None:
            stack.append(t.grad_fn)
    seen: set[Any] = set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for name in saved_names(node):
            saved = getattr(node, name)
            if type(saved) is torch.Tensor:
                storage = saved.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
            elif isinstance(saved, list | tuple):
                _add_storage(storages, saved)
        for f, _ in node.next_functions:
            if f is not None:
                stack.append(f)
    return sum(storages.values())


def numpy_views(tree: Tree) -> Tree:
    """CPU tensors as numpy views (no copy), so the outputs pass the exact-type check instead
    of a second validation that would convert them one by one."""
    return {
        k: v.numpy() if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v
        for k, v in tree.items()
    }


def pick(tree: Tree, keys: tuple[str, ...]) -> Tree:
    return {k: tree[k] for k in keys}


class Graph:
    """A forward pass recorded by autograd, kept to answer vjp/jvp without running it again.

    Plain autograd (`torch.autograd.grad` with `retain_graph`) is measured ~3× faster per call
    than `torch.func.vjp` for small tensors, which matters when a component is called every
    optimization step.
    """

    def __init__(self, inputs: Tree, outputs: Tree, rest: Tree) -> None:
        self.inputs, self.outputs, self.rest = inputs, outputs, rest

    @classmethod
    def record(cls, f: Callable[[Tree], tuple[Tree, Tree]], d: Tree) -> Graph:
        leaves = {k: v.detach().requires_grad_(True) for k, v in d.items()}
        with torch.enable_grad():
            dout, nd = f(leaves)
        return cls(leaves, dout, {k: v.detach() for k, v in nd.items()})

    def nbytes(self, const: Tree) -> int:
        """Bytes the graph holds: inputs, constants, outputs and saved intermediates."""
        held = [*self.inputs.values(), *const.values(), *self.outputs.values()]
        return graph_bytes([*held, *self.rest.values()])

    def detached(self) -> Tree:
        return {k: v.detach() for k, v in self.outputs.items()}

    def _linked(self, keys: Any) -> list[str]:
        return [k for k in keys if self.outputs[k].requires_grad]

    def vjp(self, ct: Tree, wrt: tuple[str, ...], batched: bool) -> Tree:
        keys = self._linked(ct)
        inputs = [self.inputs[w] for w in wrt]
        grads: Sequence[torch.Tensor | None] = [None] * len(wrt)
        if keys and inputs and not batched and RUN_BACKWARD is not None:
            # The engine itself, as torch.autograd.grad calls it: that wrapper's argument
            # checks cost ~25 of its ~35 µs on small tensors, and the engine checks each
            # cotangent's shape against its output and casts its dtype anyway.
            grads = RUN_BACKWARD(
                tuple(self.outputs[k] for k in keys),
                tuple(ct[k] for k in keys),
                True,  # retain the graph: one kept forward may answer several vjps
                False,
                tuple(inputs),
                True,  # unused inputs get None
                False,
            )
        elif keys and inputs:
            grads = torch.autograd.grad(
                [self.outputs[k] for k in keys],
                inputs,
                [ct[k].to(self.outputs[k].dtype) for k in keys],
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=batched,
            )
        size = (len(next(iter(ct.values()))),) if batched and ct else ()
        return {
            w: g
            if g is not None
            else torch.zeros(size + tuple(self.inputs[w].shape), dtype=self.inputs[w].dtype)
            for w, g in zip(wrt, grads, strict=True)
        }

    def jvp(self, t: Tree, of: tuple[str, ...], batched: bool = False) -> Tree:
        # J·t as the derivative of the linear map c ↦ Jᵀ·c (double backward): no new forward.
        keys = self._linked(self.outputs)
        dummies = [torch.zeros_like(self.outputs[k], requires_grad=True) for k in keys]
        names = list(t)
        pulled = (
            torch.autograd.grad(
                [self.outputs[k] for k in keys],
                [self.inputs[w] for w in names],
                dummies,
                retain_graph=True,
                create_graph=True,
                allow_unused=True,
            )
            if keys and names
            else [None] * len(names)
        )
        pairs = [
            (g, t[w].to(g.dtype))
            for g, w in zip(pulled, names, strict=True)
            if g is not None and g.requires_grad
        ]
        found: dict[str, torch.Tensor] = {}
        if pairs:
            back = torch.autograd.grad(
                [g for g, _ in pairs],
                dummies,
                [u for _, u in pairs],
                retain_graph=True,
                allow_unused=True,
                is_grads_batched=batched,
            )
            found = {k: b for k, b in zip(keys, back, strict=True) if b is not None}
        size = (len(next(iter(t.values()))),) if batched and t else ()
        return {
            o: found[o]
            if o in found
            else torch.zeros(size + tuple(self.outputs[o].shape), dtype=self.outputs[o].dtype)
            for o in of
        }


def weighted(values: dict[str, torch.Tensor | None], weights: Tree) -> torch.Tensor | None:
    """Σ⟨weights[k], values[k]⟩ over the values that depend on the graph's inputs (None if
    none does)."""
    terms = [
        (v * weights[k].to(v.dtype)).sum()
        for k, v in values.items()
        if k in weights and v is not None and v.requires_grad
    ]
    return torch.stack(terms).sum() if terms else None
