"""chainrule's twins of the peer's Tesseract API modules in this folder.

`vectoradd` (c = a + b) and `rosenbrock_numpy` are NumPy components with hand-written vjps, the
same arithmetic as `vectoradd/tesseract_api.py` and `rosenbrock/tesseract_api.py`;
`rosenbrock_jax` is the JAX component the in-process `jit(grad)` comparison traces inline.
Served with `chainrule serve bench/peer/chainrule_components.py:vectoradd`.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

import chainrule as cr


class AddIn(cr.Schema):
    a: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    b: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class AddOut(cr.Schema):
    c: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=AddIn, outputs=AddOut, backend="numpy")
def vectoradd(inputs: AddIn) -> AddOut:
    return AddOut(c=inputs.a + inputs.b)


@vectoradd.def_vjp
def _vectoradd_vjp(inputs: AddIn, cotangents: dict[str, Any]) -> dict[str, Any]:
    return {"a": cotangents["c"], "b": cotangents["c"]}


class RosenIn(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class RosenOut(cr.Schema):
    y: cr.Differentiable[cr.Array[(), cr.Float64]]


@cr.component(inputs=RosenIn, outputs=RosenOut, backend="jax")
def rosenbrock_jax(inputs: RosenIn) -> RosenOut:
    x = inputs.x
    return RosenOut(y=jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))


@cr.component(inputs=RosenIn, outputs=RosenOut, backend="numpy")
def rosenbrock_numpy(inputs: RosenIn) -> RosenOut:
    x = inputs.x
    return RosenOut(y=np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2))


@rosenbrock_numpy.def_vjp
def _rosenbrock_vjp(inputs: RosenIn, cotangents: dict[str, Any]) -> dict[str, Any]:
    x = inputs.x
    d = x[1:] - x[:-1] ** 2
    g = np.zeros_like(x)
    g[:-1] = -400.0 * x[:-1] * d - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * d
    return {"x": g * cotangents["y"]}
