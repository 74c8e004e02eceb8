"""The `torch` backend: every endpoint by reverse-mode autograd.

Arrays cross as `torch.from_numpy` views (no copy); `eval_shape` runs the function on meta
tensors, which carry shapes and dtypes but no data.

No endpoint uses forward-mode AD (`torch.func.jvp`/`jacfwd`, `torch.autograd.forward_ad`):
its dual levels are process-global, so two threads computing jvps at once (a server's
workers) corrupt each other's answers, and a caller inside `forward_ad.dual_level` could not
call an endpoint at all. J·t is the derivative of the linear map c ↦ Jᵀ·c instead (double
backward, `_Graph.jvp`), and H·t the gradient of ⟨∇, t⟩ (reverse over reverse): plain
grad mode, batched gradients and the autograd engine keep their state per thread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from chainrule._component.endpoints import _jacobian_from_batched_jvp, _jacobian_from_batched_vjp
from chainrule._component.residuals import Residual
from chainrule._schema.errors import EndpointUnavailableError
from chainrule._schema.schema import ShapeDtype, passthrough
from chainrule._schema.tree import flat_fields, leaves, replace_leaves

from .base import Backend, as_outputs

if TYPE_CHECKING:
    from chainrule._component.component import Point

Tree = dict[str, Any]

_DTYPES = {
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
_NP_DTYPES = {v: k for k, v in _DTYPES.items()}


def _engine_run_backward() -> Callable[..., Sequence[torch.Tensor | None]] | None:
    """torch's autograd engine entry point, where this torch has the one we know."""
    engine = getattr(getattr(torch.autograd, "Variable", None), "_execution_engine", None)
    return getattr(engine, "run_backward", None)


_RUN_BACKWARD = _engine_run_backward()


def to_torch(x: Any) -> torch.Tensor:
    """A tensor sharing memory with numpy array `x` (copied only if it is read-only)."""
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _owned(x: Any) -> torch.Tensor:
    """A tensor with its own copy of `x`'s values (what a kept graph may hold)."""
    return torch.from_numpy(np.array(x))


def _read_only(tree: Tree) -> Tree:
    """`_numpy(tree)` with the arrays marked read-only: they are the kept graph's own outputs
    (backward passes may read them), so the caller must not change them in place."""
    out = _numpy(tree)
    for v in out.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return out


# Autograd node type -> the attributes holding what it saved for backward (`_saved_self`,
# `_saved_result`, ...; a custom autograd.Function's node has `saved_tensors` instead).
_SAVED: dict[type, tuple[str, ...]] = {}


def _saved_names(node: Any) -> tuple[str, ...]:
    kind = type(node)
    names = _SAVED.get(kind)
    if names is None:
        names = tuple(a for a in dir(node) if a.startswith("_saved_"))
        if not names and hasattr(node, "saved_tensors"):
            names = ("saved_tensors",)
        _SAVED[kind] = names
    return names


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
        for name in _saved_names(node):
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


def _numpy(tree: Tree) -> Tree:
    """CPU tensors as numpy views (no copy), so the outputs pass the exact-type check instead
    of a second validation that would convert them one by one."""
    return {
        k: v.numpy() if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v
        for k, v in tree.items()
    }


def _pick(tree: Tree, keys: tuple[str, ...]) -> Tree:
    return {k: tree[k] for k in keys}


class _Graph:
    """A forward pass recorded by autograd, kept to answer vjp/jvp without running it again.

    Plain autograd (`torch.autograd.grad` with `retain_graph`) is measured ~3× faster per call
    than `torch.func.vjp` for small tensors, which matters when a component is called every
    optimization step.
    """

    def __init__(self, inputs: Tree, outputs: Tree, rest: Tree) -> None:
        self.inputs, self.outputs, self.rest = inputs, outputs, rest

    @classmethod
    def record(cls, f: Callable[[Tree], tuple[Tree, Tree]], d: Tree) -> _Graph:
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
        if keys and inputs and not batched and _RUN_BACKWARD is not None:
            # The engine itself, as torch.autograd.grad calls it: that wrapper's argument
            # checks cost ~25 of its ~35 µs on small tensors, and the engine checks each
            # cotangent's shape against its output and casts its dtype anyway.
            grads = _RUN_BACKWARD(
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


def _weighted(values: dict[str, torch.Tensor | None], weights: Tree) -> torch.Tensor | None:
    """Σ⟨weights[k], values[k]⟩ over the values that depend on the graph's inputs (None if
    none does)."""
    terms = [
        (v * weights[k].to(v.dtype)).sum()
        for k, v in values.items()
        if k in weights and v is not None and v.requires_grad
    ]
    return torch.stack(terms).sum() if terms else None


def _zero_blocks(out: torch.Tensor, p: Point, wrt: tuple[str, ...]) -> Tree:
    dtype = _NP_DTYPES[out.dtype]
    return {w: np.zeros((*out.shape, *np.shape(p.values[w])), dtype) for w in wrt}


class _GraphPoint:
    """What the Jacobian derivations of `endpoints` need of a point, from a recorded graph."""

    def __init__(self, values: Any, graph: _Graph) -> None:
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
            return replace_leaves(box["template"], _numpy({**dout, **nd})), None
        # The kept graph gets its own copies of the inputs: from_numpy views would let the
        # caller change it in place (and pin a request body the budget does not count).
        d, c = self._split(p, _owned)
        f = self._f(p, c, box)
        graph = _Graph.record(f, d)
        out = replace_leaves(box["template"], _read_only({**graph.detached(), **graph.rest}))
        return out, Residual(graph, graph.nbytes(c), None)

    def eval_shape(self, p: Point) -> Any:
        meta = {
            k: torch.empty(v.shape, dtype=_DTYPES[v.dtype], device="meta")
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
            k: ShapeDtype(tuple(v.shape), _declared(_NP_DTYPES[v.dtype], specs[k].dtype))
            for k, v in {**dout, **nd}.items()
        }
        return replace_leaves(box["template"], shapes)

    def _graph(self, p: Point, res: Residual | None, keys: tuple[str, ...] | None = None) -> _Graph:
        """The kept autograd graph, or a new forward pass recording one (with respect to the
        differentiable inputs `keys`, all by default)."""
        if res is not None and isinstance(res.data, _Graph):
            return res.data
        d, c = self._split(p)
        keys = tuple(d) if keys is None else keys
        rest = {**c, **{k: v for k, v in d.items() if k not in keys}}
        return _Graph.record(self._f(p, rest, {}), _pick(d, keys))

    def jvp(self, p: Point, res: Residual | None, tangents: Tree, of: tuple[str, ...]) -> Tree:
        t = {k: to_torch(v) for k, v in tangents.items()}
        return self._graph(p, res, tuple(t)).jvp(t, of)

    def vjp(self, p: Point, res: Residual | None, cotangents: Tree, wrt: tuple[str, ...]) -> Tree:
        ct = {k: to_torch(v) for k, v in cotangents.items()}
        return self._graph(p, res).vjp(ct, wrt, batched=False)

    def batched_jvp(
        self, p: Point, res: Residual | None, tangents: Tree, of: tuple[str, ...]
    ) -> Tree:
        t = {k: to_torch(v) for k, v in tangents.items()}
        return self._graph(p, res, tuple(t)).jvp(t, of, batched=True)

    def batched_vjp(
        self, p: Point, res: Residual | None, cotangents: Tree, wrt: tuple[str, ...]
    ) -> Tree:
        ct = {k: to_torch(v) for k, v in cotangents.items()}
        return self._graph(p, res).vjp(ct, wrt, batched=True)

    def jacobian(
        self, p: Point, res: Residual | None, wrt: tuple[str, ...], of: tuple[str, ...]
    ) -> Tree:
        graph = self._graph(p, res, wrt)
        n_in = sum(int(np.size(p.values[w])) for w in wrt)
        n_out = sum(graph.outputs[o].numel() for o in of)
        if not n_in or not n_out:  # an empty Jacobian: no batch of zero rows to run
            return {o: _zero_blocks(graph.outputs[o], p, wrt) for o in of}
        at = _GraphPoint(p.values, graph)
        if n_in < n_out:  # by columns: one batched jvp over the inputs' basis
            cols = _jacobian_from_batched_jvp(
                lambda _p, _r, tangents, of: graph.jvp(
                    {k: to_torch(v) for k, v in tangents.items()}, of, batched=True
                )
            )
            result: Tree = cols(at, None, wrt=wrt, of=of)
            return result
        rows = _jacobian_from_batched_vjp(
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
            weighted = _weighted(graph.outputs, {k: to_torch(v) for k, v in cotangents.items()})
            moved = [k for k in t if k in xs]
            if weighted is not None and moved:
                grads = torch.autograd.grad(
                    weighted, [xs[k] for k in moved], create_graph=True, allow_unused=True
                )
                dot = _weighted(dict(zip(moved, grads, strict=True)), t)
                if dot is not None:
                    found = torch.autograd.grad(dot, [xs[w] for w in wrt], allow_unused=True)
        return {
            w: torch.zeros_like(xs[w]) if h is None else h.detach()
            for w, h in zip(wrt, found, strict=True)
        }


class HostLane:
    """`apply(keep)` and `vjp` of a torch component called back from jitted JAX code.

    JAX has fixed the shape and dtype of every input before a callback runs, so the generic
    endpoints' work (a validated Point, template rebuilds, output validation, the tangent
    checks) is redundant there. Only for flat schemas (static outputs are not returned to JAX,
    so they are not checked here); outputs that are not exactly the declared tensors are
    validated the generic way, without running the function again.
    """

    def __init__(self, component: Any, in_paths: tuple[str, ...], out_paths: tuple[str, ...]):
        self.component = component
        self.backend: TorchBackend = component.backend
        self.in_paths, self.out_paths = in_paths, out_paths
        specs = {n: s for n, s in flat_fields(component.inputs) or () if s is not None}
        self.diff = tuple(p for p in in_paths if specs[p].differentiable)
        out_specs = {n: s for n, s in flat_fields(component.outputs) or () if s is not None}
        self.out_diff = {p: out_specs[p].differentiable for p in out_paths}
        self.out_dtypes = [_DTYPES.get(np.dtype(out_specs[p].dtype)) for p in out_paths]

    @staticmethod
    def usable(component: Any, in_paths: tuple[str, ...], out_paths: tuple[str, ...]) -> bool:
        """Whether the lane serves calls with these array paths."""
        ins, outs = flat_fields(component.inputs), flat_fields(component.outputs)
        if ins is None or outs is None:
            return False
        in_arrays = {n for n, s in ins if s is not None}
        out_arrays = {n for n, s in outs if s is not None}
        return set(in_paths) == in_arrays and set(out_paths) == out_arrays

    def apply(
        self, template: Any, arrays: Sequence[np.ndarray], keep: bool
    ) -> tuple[list[np.ndarray], Residual | None]:
        """Run the function on `arrays` (the inputs' other fields from `template`): the output
        arrays in `out_paths` order and, with `keep`, the recorded graph as a residual."""
        convert = _owned if keep else to_torch  # a kept graph holds its own copies
        tensors = {p: convert(a) for p, a in zip(self.in_paths, arrays, strict=True)}
        leaves = {p: tensors[p].detach().requires_grad_(True) for p in self.diff} if keep else {}
        inputs = replace_leaves(template, {**tensors, **leaves})
        comp = self.component
        grad = torch.enable_grad() if keep else torch.no_grad()
        with comp._guard("apply"), grad, passthrough():
            out = as_outputs(self.backend.fn(inputs), self.backend.outputs, comp.name)
        given = [out.__dict__[p] for p in self.out_paths]
        if all(
            isinstance(v, torch.Tensor) and v.dtype == d and v.device.type == "cpu"
            for v, d in zip(given, self.out_dtypes, strict=True)
        ):
            result = [v.detach().numpy() for v in given]
        else:
            result = self._validated(out, template, arrays)
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
        graph = _Graph(leaves, diff, rest)
        const = {p: t for p, t in tensors.items() if p not in leaves}
        return result, Residual(graph, graph.nbytes(const), None)

    def _validated(self, out: Any, template: Any, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs that are not exactly the declared CPU tensors, as numpy arrays converted (or
        refused) by the component's own output check."""
        from chainrule._component.component import Point

        inputs = replace_leaves(template, dict(zip(self.in_paths, arrays, strict=True)))
        given = {p: out.__dict__[p] for p in self.out_paths}
        detached = {p: v.detach() if isinstance(v, torch.Tensor) else v for p, v in given.items()}
        raw = replace_leaves(out, _numpy(detached))
        checked = self.component._check_outputs(raw, Point(self.component, inputs))
        return [np.asarray(checked.__dict__[p]) for p in self.out_paths]

    @staticmethod
    def owns(residual: Residual | None) -> bool:
        """Whether `vjp` can answer from `residual` (a kept autograd graph)."""
        return residual is not None and isinstance(residual.data, _Graph)

    def vjp(
        self, residual: Residual, cts: dict[str, np.ndarray], wrt: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        """Cotangents of `wrt` from the graph a kept `apply` recorded."""
        graph = residual.data
        with self.component._guard("vjp"):
            grads = graph.vjp({k: to_torch(v) for k, v in cts.items()}, wrt, batched=False)
        return {k: v.numpy() for k, v in grads.items()}


BACKEND = TorchBackend
