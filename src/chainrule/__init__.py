"""chainrule: pipeline-level differentiable programming.

Wrap simulators, solvers and models written in JAX, PyTorch or NumPy as typed, differentiable
components, and compose them into pipelines whose gradients flow end to end.
"""

from ._backends import FiniteDifferences
from ._check import GradientReport, check_gradients
from ._component import Component, component
from ._endpoints import ENDPOINTS
from ._errors import (
    ChainruleError,
    ComponentError,
    EndpointUnavailableError,
    NotDifferentiableError,
    OutputValidationError,
    SchemaDefinitionError,
    UnknownPathError,
    ValidationError,
    WireFormatError,
)
from ._residuals import Handle, ResidualCache
from ._schema import (
    Array,
    ArraySpec,
    Bool,
    Complex64,
    Complex128,
    Differentiable,
    Float16,
    Float32,
    Float64,
    Int8,
    Int16,
    Int32,
    Int64,
    Schema,
    ShapeDtype,
    UInt8,
)

__version__ = "0.1.0"

__all__ = [
    "ENDPOINTS",
    "Array",
    "ArraySpec",
    "Bool",
    "ChainruleError",
    "Complex64",
    "Complex128",
    "Component",
    "ComponentError",
    "Differentiable",
    "EndpointUnavailableError",
    "FiniteDifferences",
    "Float16",
    "Float32",
    "Float64",
    "GradientReport",
    "Handle",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "NotDifferentiableError",
    "OutputValidationError",
    "ResidualCache",
    "Schema",
    "SchemaDefinitionError",
    "ShapeDtype",
    "UInt8",
    "UnknownPathError",
    "ValidationError",
    "WireFormatError",
    "__version__",
    "check_gradients",
    "component",
]
