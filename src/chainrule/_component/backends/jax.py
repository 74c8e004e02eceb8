"""The `jax` backend: every endpoint by a JAX transform, jit-compiled per static signature.

Components declare float64 fields, and JAX's default (64-bit mode off: float32 everywhere)
would silently change their precision. The user's JAX configuration is theirs, so nothing here
changes it: the backend runs its compiled programs with 64-bit mode on in the calling thread
only (`jax.enable_x64`, a thread-local scope; JAX keys its compilation caches on the mode).
Inside a user's own JAX program (`chainrule.jax.call`) the program's mode rules; a component
with 64-bit leaves refuses a program in 32-bit mode (`check_x64`) rather than compute in
float32 under a float64 label.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from chainrule._component.residuals import Residual
from chainrule._schema.errors import ShapesUnknownError, ValidationError
from chainrule._schema.schema import Schema, ShapeDtype, passthrough
from chainrule._schema.tree import Leaf, leaves, replace_leaves

from .base import Backend, Capabilities, as_outputs

if TYPE_CHECKING:
    from chainrule._component.component import Point

Tree = dict[str, Any]
_MAX_ENTRIES = 64


def _pick(tree: Tree, keys: tuple[str, ...]) -> Tree:
    return {k: tree[k] for k in keys}


def _fill(given: Tree, avals: Tree) -> Tree:
    """`given` completed with zeros for the leaves of `avals` it lacks, cast to their dtype."""
    return {
        k: jnp.asarray(given[k], a.dtype) if k in given else jnp.zeros(a.shape, a.dtype)
        for k, a in avals.items()
    }


def output_value(leaf: Leaf) -> jax.Array:
    """An output leaf as a JAX array, a float leaf cast to its declared dtype."""
    value = jnp.asarray(leaf.value)
    if value.dtype != leaf.spec.dtype and leaf.spec.dtype.kind in "fc":
        value = value.astype(leaf.spec.dtype)
    return value


def needs_x64(dtype: Any) -> bool:
    """Whether JAX, in its current mode, cannot hold `dtype` (float64 or int64 with x64 off)."""
    if jax.enable_x64.value:  # every dtype fits (the common case: a cheap check first)
        return False
    return bool(jax.dtypes.canonicalize_dtype(dtype) != np.dtype(dtype))


def check_x64(component: str, role: str, path: str, dtype: Any, declared: str) -> None:
    """Refuse a 64-bit leaf in a JAX program whose 64-bit mode is off: JAX would compute it in
    32 bits while the schema says 64, a silent loss of precision.

    Arguments:
        component: the component's name; role: `"input"` or `"output"`; path: the leaf.
        dtype: the leaf's declared dtype; declared: how the schema declares it (`float64[n]`).
    """
    if not needs_x64(dtype):
        return
    canonical = jax.dtypes.canonicalize_dtype(dtype).name
    raise ValidationError(
        f"{role} '{path}' of component '{component}' is declared {declared}, but JAX's 64-bit "
        f"mode is off in this program, so JAX would carry it as {canonical}. Fix: turn 64-bit "
        'mode on for the program, `jax.config.update("jax_enable_x64", True)` at its start or '
        "`with jax.enable_x64(True):` around it (arrays you make float32 stay float32), or "
        f"declare the field {canonical.capitalize()} if that is the precision you want.",
        errors=[{"path": path, "expected": "jax_enable_x64 on", "got": "jax_enable_x64 off"}],
    )


def _nbytes(tree: Any) -> int:
    return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree_util.tree_leaves(tree))


class _Programs:
    """The jitted programs of one static signature (static values, shapes, dtypes)."""

    def __init__(self, fn: Callable[[Any], Any], outputs: type[Schema], p: Point) -> None:
        self.template: Schema | None = None
        self.out_avals: Tree = {}
        self.in_avals = {
            k: jax.ShapeDtypeStruct(p.values[k].shape, p.values[k].dtype) for k in p.diff
        }
        # The template of the inputs holds shapes, not the first caller's arrays: this cache
        # outlives the call (on a server, the arrays would pin a request body per signature).
        shapes = {k: ShapeDtype(v.shape, v.dtype) for k, v in p.values.items()}
        inputs, name = replace_leaves(p.inputs, shapes), p.component.name

        def f(d: Tree, c: Tree) -> tuple[Tree, Tree]:
            with passthrough():
                out = as_outputs(fn(replace_leaves(inputs, {**d, **c})), outputs, name)
            dout: Tree = {}
            nd: Tree = {}
            for leaf in leaves(out):
                (dout if leaf.spec.differentiable else nd)[leaf.path] = output_value(leaf)
            self.template = out  # static output values, captured while tracing
            self.out_avals = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in dout.items()}
            return dout, nd

        self.f = f
        self.apply = jax.jit(f)
        self.forward = jax.jit(lambda d, c: jax.vjp(lambda s: f(s, c), d, has_aux=True))
        self.backward = jax.jit(lambda pull, ct: pull(_fill(ct, self.out_avals))[0])
        self.jvp_kept = jax.jit(self._jvp_kept)
        self.jvp = jax.jit(self._jvp, static_argnames="of")
        self.vjp = jax.jit(self._vjp, static_argnames="wrt")
        self.jacobian = jax.jit(self._jacobian, static_argnames=("wrt", "of", "forward"))
        self.batched_jvp = jax.jit(
            lambda d, c, t, of: jax.vmap(lambda u: self._jvp(d, c, u, of))(t),
            static_argnames="of",
        )
        self.batched_vjp = jax.jit(
            lambda d, c, ct, wrt: jax.vmap(lambda u: self._vjp(d, c, u, wrt))(ct),
            static_argnames="wrt",
        )
        self.batched_apply = jax.jit(
            lambda b, rest: jax.vmap(lambda u: _merged(f({**rest, **u}, {})))(b)
        )
        self.batched_backward = jax.jit(jax.vmap(self.backward, in_axes=(None, 0)))
        self.batched_jvp_kept = jax.jit(jax.vmap(self._jvp_kept, in_axes=(None, 0)))
        self.hvp = jax.jit(self._hvp, static_argnames="wrt")
        self.points = jax.jit(self._points, static_argnames=("name", "sel"))

    def _restricted(self, d: Tree, c: Tree, keys: tuple[str, ...]) -> Callable[[Tree], Tree]:
        return lambda s: self.f({**d, **s}, c)[0]

    def _jvp(self, d: Tree, c: Tree, t: Tree, of: tuple[str, ...]) -> Tree:
        g = self._restricted(d, c, tuple(t))
        return _pick(jax.jvp(g, (_pick(d, tuple(t)),), (t,))[1], of)

    def _vjp(self, d: Tree, c: Tree, ct: Tree, wrt: tuple[str, ...]) -> Tree:
        out, pull = jax.vjp(self._restricted(d, c, wrt), _pick(d, wrt))
        return pull(_fill(ct, {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in out.items()}))[
            0
        ]

    def _points(self, stacks: Tree, rest: Tree, linear: Tree, name: str, sel: Any) -> Tree:
        """Derivative `name` at each point of a batch (`chainrule._component.points`): vmap
        over the points' rows and their tangents or cotangents (a batched row: vmap again)."""
        inner = self._jvp if name.endswith("jvp") else self._vjp

        def one(s: Tree, u: Tree) -> Tree:
            values = {**rest, **s}
            d = {k: values[k] for k in self.in_avals}
            c = {k: v for k, v in values.items() if k not in d}
            if name.startswith("batched_"):
                return jax.vmap(lambda w: inner(d, c, w, sel))(u)
            return inner(d, c, u, sel)

        return jax.vmap(one)(stacks, linear)

    def _jvp_kept(self, pull: Any, t: Tree) -> Tree:
        # The jvp is the transpose of the kept (linear) pullback: no forward pass needed.
        transpose = jax.linear_transpose(pull, self.out_avals)
        return transpose((_fill(t, self.in_avals),))[0]

    def _jacobian(
        self, d: Tree, c: Tree, wrt: tuple[str, ...], of: tuple[str, ...], forward: bool
    ) -> Tree:
        g = lambda s: _pick(self.f({**d, **s}, c)[0], of)  # noqa: E731
        return (jax.jacfwd if forward else jax.jacrev)(g)(_pick(d, wrt))

    def _hvp(self, d: Tree, c: Tree, t: Tree, ct: Tree, wrt: tuple[str, ...]) -> Tree:
        # The Hessian of Σ⟨ct_o, y_o⟩ along t: forward over reverse, as jax.hessian does.
        def weighted(s: Tree) -> jax.Array:
            out = self.f({**d, **s}, c)[0]
            terms = [jnp.sum(ct[o] * out[o]) for o in ct]
            return sum(terms[1:], terms[0])

        keys = tuple(self.in_avals)
        grad = jax.grad(weighted)
        return _pick(jax.jvp(grad, (_pick(d, keys),), (_fill(t, self.in_avals),))[1], wrt)


class JaxBackend(Backend):
    """JAX transforms of the author's function (`jax.jvp`, `jax.vjp`, `jacrev`, `vmap`)."""

    name = "jax"
    provenance = "native (jax)"
    cost = 1.0
    native = ("jvp", "vjp", "jacobian", "batched_jvp", "batched_vjp", "hvp")
    eval_shape_provenance = "native (jax.eval_shape)"
    capabilities = Capabilities(framework="jax")

    def __init__(
        self, fn: Callable[[Any], Any], inputs: type[Schema], outputs: type[Schema]
    ) -> None:
        super().__init__(fn, inputs, outputs)
        self._programs: OrderedDict[Any, _Programs] = OrderedDict()

    def _run(self, p: Point, call: Callable[[], Any]) -> Any:
        """Run a compiled program with JAX's 64-bit mode on in this thread (only)."""
        if jax.enable_x64.value:  # already on (the user's setting, or an outer call)
            return self._run_x64(p, call)
        with jax.enable_x64(True):
            return self._run_x64(p, call)

    def _run_x64(self, p: Point, call: Callable[[], Any]) -> Any:
        """Run a compiled program; on first use, let nested components learn their shapes.

        A NumPy component inside this function may only know its output shapes by running,
        which tracing cannot do: then the function runs once eagerly (on the concrete inputs)
        and is traced again.
        """
        try:
            return call()
        except ShapesUnknownError:
            progs, (d, c) = self.programs(p), self._split(p)
            progs.f(d, c)
            return call()

    batched_provenance = "native (jax.vmap)"

    def batched_apply(self, p: Point, stacks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every array output at each point of a batch (`chainrule._component.batched`)."""
        progs = self.programs(p)
        rest = {k: v for k, v in p.values.items() if k not in stacks}
        out = self._run(p, lambda: progs.batched_apply(stacks, rest))
        return {k: np.asarray(v) for k, v in out.items()}

    def points(
        self, name: str, p: Point, stacks: dict[str, np.ndarray], request: dict[str, Any]
    ) -> Tree:
        """Derivative `name` at each point of a batch, by vmap (`_component.points`)."""
        progs = self.programs(p)
        rest = {k: v for k, v in p.values.items() if k not in stacks}
        linear = request["tangents"] if "tangents" in request else request["cotangents"]
        sel = request["of"] if "of" in request else request["wrt"]
        out = self._run(p, lambda: progs.points(stacks, rest, linear, name=name, sel=sel))
        return {k: np.asarray(v) for k, v in out.items()}

    def programs(self, p: Point) -> _Programs:
        """The compiled programs for the static signature of `p` (LRU-cached)."""
        key = p.signature
        progs = self._programs.get(key)
        if progs is None:
            progs = self._programs[key] = _Programs(self.fn, self.outputs, p)
            while len(self._programs) > _MAX_ENTRIES:
                self._programs.popitem(last=False)
        self._programs.move_to_end(key)
        return progs

    @staticmethod
    def _split(p: Point) -> tuple[Tree, Tree]:
        d = {k: p.values[k] for k in p.diff}
        return d, {k: v for k, v in p.values.items() if k not in d}

    def _outputs(self, progs: _Programs, dout: Tree, nd: Tree) -> Any:
        assert progs.template is not None  # set by tracing
        return replace_leaves(progs.template, {**dout, **nd})

    def endpoint(self, name: str) -> Callable[..., Any]:
        method = super().endpoint(name)

        def run(p: Point, res: Residual | None, **request: Any) -> Any:
            return self._run(p, lambda: method(p, res, **request))

        return run

    def apply(self, p: Point, keep: bool) -> tuple[Any, Residual | None]:
        result: tuple[Any, Residual | None] = self._run(p, lambda: self._apply(p, keep))
        return result

    def _apply(self, p: Point, keep: bool) -> tuple[Any, Residual | None]:
        progs, (d, c) = self.programs(p), self._split(p)
        if not keep:
            return self._outputs(progs, *progs.apply(d, c)), None
        # JAX may wrap a large aligned numpy array without copying it (and a program may
        # hand an input back as a residual): the kept closure must not see the caller change
        # an array in place (or pin a request body), so it gets its own copies.
        own = {k: np.array(v) for k, v in d.items()}, {k: np.array(v) for k, v in c.items()}
        dout, pull, nd = progs.forward(*own)
        return self._outputs(progs, dout, nd), Residual(pull, _nbytes(pull), None)

    def eval_shape(self, p: Point) -> Any:
        return self._run(p, lambda: self._eval_shape(p))

    def _eval_shape(self, p: Point) -> Any:
        progs, (d, c) = self.programs(p), self._split(p)
        dout, nd = jax.eval_shape(progs.f, d, c)
        shapes = {
            k: ShapeDtype(tuple(v.shape), np.dtype(v.dtype)) for k, v in {**dout, **nd}.items()
        }
        return self._outputs(progs, shapes, {})

    def jvp(self, p: Point, res: Residual | None, tangents: Tree, of: tuple[str, ...]) -> Tree:
        progs = self.programs(p)
        if res is not None:
            return _pick(progs.jvp_kept(res.data, tangents), of)
        return progs.jvp(*self._split(p), tangents, of=of)

    def vjp(self, p: Point, res: Residual | None, cotangents: Tree, wrt: tuple[str, ...]) -> Tree:
        progs = self.programs(p)
        if res is not None:
            return _pick(progs.backward(res.data, cotangents), wrt)
        return progs.vjp(*self._split(p), cotangents, wrt=wrt)

    def batched_jvp(
        self, p: Point, res: Residual | None, tangents: Tree, of: tuple[str, ...]
    ) -> Tree:
        progs = self.programs(p)
        if res is not None:
            return _pick(progs.batched_jvp_kept(res.data, tangents), of)
        return progs.batched_jvp(*self._split(p), tangents, of=of)

    def batched_vjp(
        self, p: Point, res: Residual | None, cotangents: Tree, wrt: tuple[str, ...]
    ) -> Tree:
        progs = self.programs(p)
        if res is not None:
            return _pick(progs.batched_backward(res.data, cotangents), wrt)
        return progs.batched_vjp(*self._split(p), cotangents, wrt=wrt)

    def jacobian(
        self, p: Point, res: Residual | None, wrt: tuple[str, ...], of: tuple[str, ...]
    ) -> Tree:
        progs = self.programs(p)
        d, c = self._split(p)
        if not progs.out_avals:
            jax.eval_shape(progs.f, d, c)
        n_in = sum(int(np.prod(p.values[w].shape)) for w in wrt)
        n_out = sum(int(np.prod(progs.out_avals[o].shape)) for o in of)
        return progs.jacobian(d, c, wrt=wrt, of=of, forward=n_in < n_out)

    def hvp(
        self,
        p: Point,
        res: Residual | None,
        tangents: Tree,
        cotangents: Tree,
        wrt: tuple[str, ...],
    ) -> Tree:
        if not cotangents:  # no output weighted: the Hessian of zero
            return {w: np.zeros_like(p.values[w]) for w in wrt}
        return self.programs(p).hvp(*self._split(p), tangents, cotangents, wrt=wrt)


BACKEND = JaxBackend


def _merged(outs: tuple[Tree, Tree]) -> Tree:
    return {**outs[0], **outs[1]}
