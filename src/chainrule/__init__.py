"""chainrule: pipeline-level differentiable programming.

Wrap simulators, solvers and models written in JAX, PyTorch or NumPy as typed, differentiable
components, and compose them into pipelines whose gradients flow end to end.
"""

import os
from typing import TYPE_CHECKING, Any

from chainrule._component.backends.base import FiniteDifferences
from chainrule._component.component import Component, component
from chainrule._component.endpoints import ENDPOINTS
from chainrule._component.finite import check_finite
from chainrule._component.residuals import Handle, ResidualCache
from chainrule._schema.errors import (
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
from chainrule._schema.schema import (
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
    UInt16,
    UInt32,
    UInt64,
)
from chainrule._tools.check import GradientReport, check_gradients
from chainrule._transport.connect import connect
from chainrule._transport.launch.env import ComponentSpec, build_env, load_spec
from chainrule._transport.launch.launch import Launched, launch
from chainrule._transport.tesseract.local import from_tesseract_api

if TYPE_CHECKING:
    from chainrule._tools.optimize.history import History, OptimizeResult
    from chainrule._tools.optimize.optimize import optimize
    from chainrule._transport.http.app import create_app
    from chainrule._transport.http.serving import Server, serve
    from chainrule._transport.settings import ServerSettings

__version__ = "0.1.0"

# The one environment variable the core reads, here at its edge: NaN hunting for a whole
# process, servers included (`chainrule.check_finite`).
if os.environ.get("CHAINRULE_CHECK_FINITE", "") not in ("", "0"):
    check_finite(True)

# Serving needs fastapi and uvicorn (the `serve` extra), optimization needs jax (the `jax`
# extra): import those only when asked for.
_LAZY = {
    "serve": ("._transport.http.serving", "serve"),
    "Server": ("._transport.http.serving", "serve"),
    "ServerSettings": ("._transport.settings", "serve"),
    "create_app": ("._transport.http.app", "serve"),
    "optimize": ("._tools.optimize.optimize", "jax"),
    "OptimizeResult": ("._tools.optimize.history", "jax"),
    "History": ("._tools.optimize.history", "jax"),
    "map": ("._scale.fanout", "ray"),
}
_SUBMODULES = ("ray",)  # reachable as `chainrule.ray` after `import chainrule`


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
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
    "UInt16",
    "UInt32",
    "UInt64",
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
    "from_tesseract_api",
    "launch",
    "load_spec",
    "map",
    "optimize",
    "serve",
]
