"""Tesseract API module for the peer benchmark: c = a + b on float64 vectors.

The peer's twin of `vectoradd` in `bench/peer/chainrule_components.py`: NumPy, hand-written
derivatives, so both sides do the same (trivial) arithmetic and the figures show the overhead.
"""

from typing import Any

import numpy as np
from pydantic import BaseModel
from tesseract_core.runtime import Array, Differentiable, Float64


class InputSchema(BaseModel):
    a: Differentiable[Array[(None,), Float64]]
    b: Differentiable[Array[(None,), Float64]]


class OutputSchema(BaseModel):
    c: Differentiable[Array[(None,), Float64]]


def apply(inputs: InputSchema) -> OutputSchema:
    return OutputSchema(c=inputs.a + inputs.b)


def vector_jacobian_product(
    inputs: InputSchema,
    vjp_inputs: set[str],
    vjp_outputs: set[str],
    cotangent_vector: dict[str, Any],
) -> dict[str, Any]:
    cot = cotangent_vector["c"]
    return {name: cot for name in vjp_inputs}


def jacobian_vector_product(
    inputs: InputSchema,
    jvp_inputs: set[str],
    jvp_outputs: set[str],
    tangent_vector: dict[str, Any],
) -> dict[str, Any]:
    total = np.zeros_like(inputs.a)
    for name in jvp_inputs:
        total = total + tangent_vector[name]
    return {"c": total}


def jacobian(inputs: InputSchema, jac_inputs: set[str], jac_outputs: set[str]) -> dict[str, Any]:
    eye = np.eye(inputs.a.shape[0])
    return {"c": {name: eye for name in jac_inputs}}


def abstract_eval(abstract_inputs: Any) -> dict[str, Any]:
    return {"c": {"shape": list(abstract_inputs.a.shape), "dtype": "float64"}}
