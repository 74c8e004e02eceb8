"""chainrule: pipeline-level differentiable programming.

Wrap simulators, solvers and models written in JAX, PyTorch or NumPy as typed, differentiable
components, and compose them into pipelines whose gradients flow end to end.
"""

from typing import TYPE_CHECKING, Any

from ._backends import FiniteDifferences
from ._check import GradientReport, check_gradients
from ._client import connect
from ._component import Component, component
from ._endpoints import ENDPOINTS
from ._env import ComponentSpec, build_env, load_spec
from ._errors import (
    AuthenticationError,
    ChainruleError,
    ComponentError,
    EndpointUnavailableError,
    LaunchError,
    NonFiniteError,
    NotDifferentiableError,
    OutputValidationError,
    SchemaDefinitionError,
    ShapesUnknownError,
    TransportError,
    UnknownPathError,
    ValidationError,
    WireFormatError,
)
from ._finite import check_finite
from ._launch import Launched, launch
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

if TYPE_CHECKING:
    from ._history import History, OptimizeResult
    from ._optimize import optimize
    from ._server import ServerSettings, create_app
    from ._serving import Server, serve

__version__ = "0.1.0"

# Serving needs fastapi and uvicorn (the `serve` extra), optimization needs jax (the `jax`
# extra): import those only when asked for.
_LAZY = {
    "serve": ("._serving", "serve"),
    "Server": ("._serving", "serve"),
    "ServerSettings": ("._server", "serve"),
    "create_app": ("._server", "serve"),
    "optimize": ("._optimize", "jax"),
    "OptimizeResult": ("._history", "jax"),
    "History": ("._history", "jax"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        where, extra = _LAZY[name]
        try:
            module = importlib.import_module(where, __name__)
        except ModuleNotFoundError as e:
            raise ImportError(
                f"chainrule.{name} needs {e.name}, which is not installed; "
                f"pip install 'chainrule[{extra}]'"
            ) from e
        return getattr(module, name)
    raise AttributeError(f"module 'chainrule' has no attribute {name!r}")


__all__ = [
    "ENDPOINTS",
    "Array",
    "ArraySpec",
    "AuthenticationError",
    "Bool",
    "ChainruleError",
    "Complex64",
    "Complex128",
    "Component",
    "ComponentError",
    "ComponentSpec",
    "Differentiable",
    "EndpointUnavailableError",
    "FiniteDifferences",
    "Float16",
    "Float32",
    "Float64",
    "GradientReport",
    "Handle",
    "History",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "LaunchError",
    "Launched",
    "NonFiniteError",
    "NotDifferentiableError",
    "OptimizeResult",
    "OutputValidationError",
    "ResidualCache",
    "Schema",
    "SchemaDefinitionError",
    "Server",
    "ServerSettings",
    "ShapeDtype",
    "ShapesUnknownError",
    "TransportError",
    "UInt8",
    "UnknownPathError",
    "ValidationError",
    "WireFormatError",
    "__version__",
    "build_env",
    "check_finite",
    "check_gradients",
    "component",
    "connect",
    "create_app",
    "launch",
    "load_spec",
    "optimize",
    "serve",
]
