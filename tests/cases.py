"""Test components: the same functions written for every backend.

Each case is `(name, Inputs, Outputs, make_fn(xp), inputs)`, where `xp` is the backend's array
module (numpy, jax.numpy or torch); the functions use only operations all three share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

import chainrule as cr

F64 = cr.Float64


class VecIn(cr.Schema):
    x: cr.Differentiable[cr.Array[(None,), F64]]
    scale: float = 2.0


class VecOut(cr.Schema):
    y: cr.Differentiable[cr.Array[(None,), F64]]
    s: cr.Differentiable[float]
    n: int


def vector(xp: Any) -> Callable[[VecIn], VecOut]:
    def fn(inputs: VecIn) -> VecOut:
        x = inputs.x
        return VecOut(y=inputs.scale * xp.sin(x) + x**2, s=(x**3).sum(), n=x.shape[0])

    return fn


class MatIn(cr.Schema):
    a: cr.Differentiable[cr.Array[("n", "m"), F64]]
    b: cr.Differentiable[cr.Array[("m",), F64]]
    offset: cr.Array[("n",), F64]  # not differentiable


class MatOut(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), F64]]
    norm: cr.Differentiable[cr.Array[(), F64]]
    count: cr.Array[(), cr.Int64]


def matrix(xp: Any) -> Callable[[MatIn], MatOut]:
    def fn(inputs: MatIn) -> MatOut:
        y = xp.tanh(inputs.a @ inputs.b) + inputs.offset
        return MatOut(y=y, norm=(y * y).sum(), count=np.asarray(inputs.a.shape[0]))

    return fn


class Layer(cr.Schema):
    w: cr.Differentiable[cr.Array[(2, 3), F64]]
    b: cr.Differentiable[cr.Array[(2,), F64]]


class NestIn(cr.Schema):
    layers: list[Layer]
    x: cr.Differentiable[cr.Array[(3,), F64]]


class Pair(cr.Schema):
    first: cr.Differentiable[cr.Array[(2,), F64]]
    total: cr.Differentiable[cr.Array[(), F64]]


class NestOut(cr.Schema):
    pair: Pair
    layers_used: int


def nested(xp: Any) -> Callable[[NestIn], NestOut]:
    def fn(inputs: NestIn) -> NestOut:
        h = None
        for layer in inputs.layers:
            z = xp.tanh(layer.w @ inputs.x + layer.b)
            h = z if h is None else h * z
        return NestOut(pair=Pair(first=h, total=(h**2).sum()), layers_used=len(inputs.layers))

    return fn


class StaticIn(cr.Schema):
    x: cr.Differentiable[cr.Array[(None,), F64]]
    power: int = 2
    mode: str = "sum"


class StaticOut(cr.Schema):
    y: cr.Differentiable[cr.Array[(None,), F64]]
    label: str


def static(xp: Any) -> Callable[[StaticIn], StaticOut]:
    def fn(inputs: StaticIn) -> StaticOut:
        y = inputs.x**inputs.power
        if inputs.mode == "cumulative":
            y = y * y.sum()
        return StaticOut(y=y, label=f"{inputs.mode}-{inputs.power}")

    return fn


@dataclass(frozen=True)
class Case:
    name: str
    inputs: type[cr.Schema]
    outputs: type[cr.Schema]
    make: Callable[[Any], Callable[[Any], Any]]
    point: Callable[[], dict[str, Any]]


def _rng() -> np.random.Generator:
    return np.random.default_rng(42)


CASES = [
    Case("vector", VecIn, VecOut, vector, lambda: {"x": np.linspace(0.3, 1.7, 4), "scale": 1.5}),
    Case(
        "matrix",
        MatIn,
        MatOut,
        matrix,
        lambda: {
            "a": _rng().standard_normal((3, 2)),
            "b": np.array([0.4, -0.7]),
            "offset": np.array([1.0, 2.0, 3.0]),
        },
    ),
    Case(
        "nested",
        NestIn,
        NestOut,
        nested,
        lambda: {
            "layers": [
                {"w": _rng().standard_normal((2, 3)) * 0.5, "b": np.array([0.1, -0.2])},
                {"w": np.full((2, 3), 0.3), "b": np.array([0.5, 0.2])},
            ],
            "x": np.array([0.3, -0.1, 0.8]),
        },
    ),
    Case(
        "static",
        StaticIn,
        StaticOut,
        static,
        lambda: {"x": np.array([0.5, 1.2, -0.7]), "power": 3, "mode": "cumulative"},
    ),
]

BACKENDS = ["jax", "torch", "numpy", "written"]


def xp_of(backend: str) -> Any:
    if backend == "jax":
        import jax.numpy as jnp

        return jnp
    if backend == "torch":
        import torch

        return torch
    return np


def build(case: Case, backend: str) -> cr.Component:
    """The case as a component of `backend`; "written" is numpy with an author's Jacobian."""
    if backend != "written":
        return cr.component(
            case.make(xp_of(backend)),
            inputs=case.inputs,
            outputs=case.outputs,
            backend=backend,
            name=f"{case.name}_{backend}",
        )
    comp = cr.component(
        case.make(np),
        inputs=case.inputs,
        outputs=case.outputs,
        backend="numpy",
        name=f"{case.name}_written",
    )
    reference = cr.component(
        case.make(xp_of("jax")),
        inputs=case.inputs,
        outputs=case.outputs,
        backend="jax",
        name=f"{case.name}_reference",
    )

    @comp.def_jacobian
    def jacobian(inputs: Any, wrt: tuple[str, ...], of: tuple[str, ...]) -> Any:
        # Stands in for an author's hand-derived Jacobian (computed independently by JAX).
        return reference.jacobian(inputs, wrt=wrt, of=of)

    return comp
