"""Tesseract API module for `bench/pipeline.py`: y = 2x on a float64 vector, in NumPy with a
written vjp (2c), the twin of the pipeline's NumPy component and of its jaxbind function."""

from typing import Any

import numpy as np
from pydantic import BaseModel
from tesseract_core.runtime import Array, Differentiable, Float64


class InputSchema(BaseModel):
    x: Differentiable[Array[(None,), Float64]]


class OutputSchema(BaseModel):
    y: Differentiable[Array[(None,), Float64]]


def apply(inputs: InputSchema) -> OutputSchema:
    return OutputSchema(y=2.0 * inputs.x)


def vector_jacobian_product(
    inputs: InputSchema,
    vjp_inputs: set[str],
    vjp_outputs: set[str],
    cotangent_vector: dict[str, Any],
) -> dict[str, Any]:
    return {"x": 2.0 * np.asarray(cotangent_vector["y"])}


def jacobian_vector_product(
    inputs: InputSchema,
    jvp_inputs: set[str],
    jvp_outputs: set[str],
    tangent_vector: dict[str, Any],
) -> dict[str, Any]:
    return {"y": 2.0 * np.asarray(tangent_vector["x"])}


def abstract_eval(abstract_inputs: Any) -> dict[str, Any]:
    return {"y": {"shape": list(abstract_inputs.x.shape), "dtype": "float64"}}
