"""Tesseract API module for `bench/pipeline.py`: y = 2x on a float64 vector in PyTorch, the
derivatives by torch autograd, written the way Tesseract's own `vectoradd_torch` example
writes them (an `evaluate` on tensors; `apply` and the vjp/jvp convert the inputs with
`torch.tensor` and differentiate `evaluate` with `torch.func`). The twin of the pipeline's
torch component, whose derivatives chainrule also takes from autograd."""

from typing import Any

import numpy as np
import torch
from pydantic import BaseModel
from tesseract_core.runtime import Array, Differentiable, Float64


class InputSchema(BaseModel):
    x: Differentiable[Array[(None,), Float64]]


class OutputSchema(BaseModel):
    y: Differentiable[Array[(None,), Float64]]


def evaluate(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * x


def to_tensor(x: Any) -> Any:
    return torch.tensor(x) if isinstance(x, np.generic | np.ndarray) else x


def apply(inputs: InputSchema) -> dict[str, Any]:
    return {"y": evaluate(to_tensor(inputs.x))}


def vector_jacobian_product(
    inputs: InputSchema,
    vjp_inputs: set[str],
    vjp_outputs: set[str],
    cotangent_vector: dict[str, Any],
) -> dict[str, Any]:
    _, vjp = torch.func.vjp(evaluate, to_tensor(inputs.x))
    (grad,) = vjp(to_tensor(cotangent_vector["y"]))
    return {"x": grad}


def jacobian_vector_product(
    inputs: InputSchema,
    jvp_inputs: set[str],
    jvp_outputs: set[str],
    tangent_vector: dict[str, Any],
) -> dict[str, Any]:
    _, tangent = torch.func.jvp(evaluate, (to_tensor(inputs.x),), (to_tensor(tangent_vector["x"]),))
    return {"y": tangent}


def abstract_eval(abstract_inputs: Any) -> dict[str, Any]:
    return {"y": {"shape": list(abstract_inputs.x.shape), "dtype": "float64"}}
