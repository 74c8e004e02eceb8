"""The `torch` backend: every endpoint by a `torch.func` transform.

Arrays cross as `torch.from_numpy` views (no copy); `eval_shape` runs the function on meta
tensors, which carry shapes and dtypes but no data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.func as tf

from .._errors import EndpointUnavailableError
from .._residuals import Residual
from .._schema import ShapeDtype, passthrough
from .._tree import leaves, replace_leaves
from . import Backend, as_outputs

if TYPE_CHECKING:
    from .._component import Point

Tree = dict[str, Any]
_vjp: Any = tf.vjp  # its stubs do not know has_aux's three results

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


def to_torch(x: Any) -> torch.Tensor:
    """A tensor sharing memory with numpy array `x` (copied only if it is read-only)."""
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _pick(tree: Tree, keys: tuple[str, ...]) -> Tree:
    return {k: tree[k] for k in keys}


def _fill(given: Tree, like: Tree) -> Tree:
    return {k: given[k].to(v.dtype) if k in given else torch.zeros_like(v) for k, v in like.items()}


class TorchBackend(Backend):
    """`torch.func` transforms of the author's function (jvp, vjp, jacrev, vmap)."""

    name = "torch"
    provenance = "native (torch.func)"
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

    def _split(self, p: Point) -> tuple[Tree, Tree]:
        d = {k: to_torch(p.values[k]) for k in p.diff}
        return d, {k: to_torch(v) for k, v in p.values.items() if k not in d}

    def _diff_fn(self, p: Point, keys: tuple[str, ...] | None = None) -> tuple[Callable, Tree]:
        d, c = self._split(p)
        keys = tuple(d) if keys is None else keys
        rest = {**c, **{k: v for k, v in d.items() if k not in keys}}
        f = self._f(p, rest, {})
        return (lambda s: f(s)[0]), _pick(d, keys)

    def apply(self, p: Point, keep: bool) -> tuple[Any, Residual | None]:
        d, c = self._split(p)
        box: dict[str, Any] = {}
        f = self._f(p, c, box)
        if not keep:
            with torch.no_grad():
                dout, nd = f(d)
            return replace_leaves(box["template"], {**dout, **nd}), None
        dout, pull, nd = _vjp(f, d, has_aux=True)
        out = replace_leaves(box["template"], {**dout, **nd})
        out_like = {k: v.detach() for k, v in dout.items()}
        nbytes = sum(int(v.nbytes) for v in {**d, **dout}.values())
        return out, Residual((pull, out_like, d), nbytes, out, p.values)

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
        shapes = {
            k: ShapeDtype(tuple(v.shape), _NP_DTYPES[v.dtype]) for k, v in {**dout, **nd}.items()
        }
        return replace_leaves(box["template"], shapes)

    def _kept_vjp(self, res: Residual, ct: Tree) -> Tree:
        pull, out_like, _ = res.data
        return pull(_fill(ct, out_like))[0]

    def jvp(self, p: Point, res: Residual | None, tangents: Tree, of: tuple[str, ...]) -> Tree:
        t = {k: to_torch(v) for k, v in tangents.items()}
        if res is not None:
            return _pick(self._kept_jvp(res, t), of)
        g, primals = self._diff_fn(p, tuple(t))
        return _pick(tf.jvp(g, (primals,), (t,))[1], of)

    def _kept_jvp(self, res: Residual, t: Tree) -> Tree:
        # The jvp is the vjp of the (linear) kept pullback: no forward pass needed.
        pull, out_like, in_like = res.data
        zeros = {k: torch.zeros_like(v) for k, v in out_like.items()}
        _, transpose = _vjp(lambda ct: pull(ct)[0], zeros)
        return transpose(_fill(t, in_like))[0]

    def vjp(self, p: Point, res: Residual | None, cotangents: Tree, wrt: tuple[str, ...]) -> Tree:
        ct = {k: to_torch(v) for k, v in cotangents.items()}
        if res is not None:
            return _pick(self._kept_vjp(res, ct), wrt)
        g, primals = self._diff_fn(p, wrt)
        out, pull = _vjp(g, primals)
        return pull(_fill(ct, out))[0]

    def batched_jvp(
        self, p: Point, res: Residual | None, tangents: Tree, of: tuple[str, ...]
    ) -> Tree:
        t = {k: to_torch(v) for k, v in tangents.items()}
        if res is not None:
            return _pick(tf.vmap(lambda u: self._kept_jvp(res, u))(t), of)
        g, primals = self._diff_fn(p, tuple(t))
        return _pick(tf.vmap(lambda u: tf.jvp(g, (primals,), (u,))[1])(t), of)

    def batched_vjp(
        self, p: Point, res: Residual | None, cotangents: Tree, wrt: tuple[str, ...]
    ) -> Tree:
        ct = {k: to_torch(v) for k, v in cotangents.items()}
        if res is not None:
            return _pick(tf.vmap(lambda u: self._kept_vjp(res, u))(ct), wrt)
        g, primals = self._diff_fn(p, wrt)
        out, pull = _vjp(g, primals)
        return tf.vmap(lambda u: pull(_fill(u, out))[0])(ct)

    def jacobian(
        self, p: Point, res: Residual | None, wrt: tuple[str, ...], of: tuple[str, ...]
    ) -> Tree:
        g, primals = self._diff_fn(p, wrt)
        n_in = sum(v.numel() for v in primals.values())
        with torch.no_grad():
            n_out = sum(v.numel() for k, v in g(primals).items() if k in of)
        jac = tf.jacfwd if n_in < n_out else tf.jacrev
        result: Tree = jac(lambda s: _pick(g(s), of))(primals)
        return result

    def hvp(
        self, p: Point, res: Residual | None, tangents: Tree, of: str, wrt: tuple[str, ...]
    ) -> Tree:
        g, primals = self._diff_fn(p)
        t = _fill({k: to_torch(v) for k, v in tangents.items()}, primals)
        grad = tf.grad(lambda s: g(s)[of].reshape(()))
        return _pick(tf.jvp(grad, (primals,), (t,))[1], wrt)


BACKEND = TorchBackend
