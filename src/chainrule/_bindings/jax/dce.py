"""A kept linearization whose values nothing reads is not made.

`jit(grad(sum f))` and `jacrev(f)` read none of `f`'s outputs: only the token of the
linearization the forward kept reaches the derivative. Kept anyway, the forward would be a
host call (for a remote component, a request) made only to be differentiated from, where the
derivative can recompute it in its own call. JAX's dead-code elimination asks each equation
which of its outputs are used; for a `call_p` that keeps (`keep=True`) and of whose outputs
only the token is used, this rule answers with a `no_forward_p` equation instead: the token 0
("recompute"), with no inputs and no host call. The derivative then recomputes from the
primals (`fast`, `kept`, the generic host functions: the same path as after an eviction).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.extend as jax_extend
import jax.numpy as jnp
from jax.interpreters import mlir
from jax.interpreters import partial_eval as pe

from .primitives import TOKEN_DTYPE, call_p

__all__ = ["no_forward_p"]

no_forward_p = jax_extend.core.Primitive("chainrule_no_forward")
"""Token 0 of shape `sizes`: the linearization of a forward nothing read was not kept."""


def _zeros(*, sizes: tuple[int, ...]) -> Any:
    return jnp.zeros(sizes, TOKEN_DTYPE)


no_forward_p.def_impl(_zeros)
no_forward_p.def_abstract_eval(lambda *, sizes: jax.core.ShapedArray(sizes, TOKEN_DTYPE))
mlir.register_lowering(no_forward_p, mlir.lower_fun(_zeros, multiple_results=False))


def _call_dce(used: list[bool], eqn: Any) -> tuple[list[bool], Any]:
    if not any(used):
        return [False] * len(eqn.invars), None
    if eqn.params["keep"] and used[-1] and not any(used[:-1]):
        token = jax_extend.core.new_jaxpr_eqn(
            [],
            [eqn.outvars[-1]],
            no_forward_p,
            {"sizes": tuple(eqn.params["sizes"])},
            set(),
            eqn.source_info,
            eqn.ctx,
        )
        return [False] * len(eqn.invars), token
    return [True] * len(eqn.invars), eqn


pe.dce_rules[call_p] = _call_dce
