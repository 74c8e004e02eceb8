"""Tesseract API module for the peer benchmark: the Rosenbrock function of a float64 vector.

y = sum_i 100 (x[i+1] - x[i]^2)^2 + (1 - x[i])^2, in NumPy with hand-written derivatives (the
fastest way to write it for Tesseract: no JAX dispatch inside the endpoints).
"""

from typing import Any

import numpy as np
from pydantic import BaseModel
from tesseract_core.runtime import Array, Differentiable, Float64


class InputSchema(BaseModel):
    x: Differentiable[Array[(None,), Float64]]


class OutputSchema(BaseModel):
    y: Differentiable[Float64]


def _value(x: np.ndarray) -> np.ndarray:
    return np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


def _grad(x: np.ndarray) -> np.ndarray:
    d = x[1:] - x[:-1] ** 2
    g = np.zeros_like(x)
    g[:-1] = -400.0 * x[:-1] * d - 2.0 * (1.0 - x[:-1])
    g[1:] += 200.0 * d
    return g


def apply(inputs: InputSchema) -> OutputSchema:
    return OutputSchema(y=_value(inputs.x))


def vector_jacobian_product(
    inputs: InputSchema,
    vjp_inputs: set[str],
    vjp_outputs: set[str],
    cotangent_vector: dict[str, Any],
) -> dict[str, Any]:
    return {"x": _grad(inputs.x) * cotangent_vector["y"]}


def jacobian_vector_product(
    inputs: InputSchema,
    jvp_inputs: set[str],
    jvp_outputs: set[str],
    tangent_vector: dict[str, Any],
) -> dict[str, Any]:
    return {"y": np.dot(_grad(inputs.x), tangent_vector["x"])}


def jacobian(inputs: InputSchema, jac_inputs: set[str], jac_outputs: set[str]) -> dict[str, Any]:
    return {"y": {"x": _grad(inputs.x)}}


def abstract_eval(abstract_inputs: Any) -> dict[str, Any]:
    return {"y": {"shape": [], "dtype": "float64"}}
