"""One component, `y = tile(scale·sin(x)·x, copies)`, on each backend the handle tests cover.

`scale` and `copies` are static: another value of either is another point (and `copies`
another output shape). Importable by the tests and servable by `chainrule serve
tests/handle_components.py:<backend>` (each attribute is built on first use, so a server of
the numpy one does not import jax or torch).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import chainrule as cr

BACKENDS = ("jax", "torch", "numpy", "written")


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[(None,), cr.Float64]]
    scale: float = 2.0
    copies: int = 1


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[(None,), cr.Float64]]


def exact_vjp(inputs: dict[str, Any], ct: np.ndarray) -> np.ndarray:
    """The exact input cotangent at `inputs` for output cotangent `ct`."""
    x = np.asarray(inputs["x"])
    scale, copies = inputs.get("scale", 2.0), inputs.get("copies", 1)
    return scale * (np.cos(x) * x + np.sin(x)) * np.asarray(ct).reshape(copies, -1).sum(0)


def make(backend: str, **options: Any) -> cr.Component:
    """A fresh component (its own residual cache) on `backend`."""
    if backend == "jax":
        import jax.numpy as jnp

        def fn(i: In) -> Out:
            return Out(y=jnp.tile(i.scale * jnp.sin(i.x) * i.x, i.copies))
    elif backend == "torch":
        import torch

        def fn(i: In) -> Out:
            return Out(y=(i.scale * torch.sin(i.x) * i.x).repeat(i.copies))
    else:

        def fn(i: In) -> Out:
            return Out(y=np.tile(i.scale * np.sin(i.x) * i.x, i.copies))

    chosen = "numpy" if backend == "written" else backend
    comp = cr.component(fn, inputs=In, outputs=Out, backend=chosen, name=backend, **options)
    if backend == "written":

        @comp.def_vjp
        def vjp(inputs: In, cotangents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            i, ct = inputs, cotangents["y"].reshape(inputs.copies, -1).sum(0)
            return {"x": i.scale * (np.cos(i.x) * i.x + np.sin(i.x)) * ct}

    return comp


def __getattr__(name: str) -> cr.Component:
    if name in BACKENDS:
        comp = make(name)
        globals()[name] = comp
        return comp
    raise AttributeError(name)
