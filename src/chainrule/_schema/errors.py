"""The one exception tree of chainrule.

```
ChainruleError
├── ValidationError              input, tangent or cotangent does not match the schema
│   ├── UnknownPathError         a path names no leaf of the schema
│   ├── NotDifferentiableError   a derivative asked of/with respect to a non-differentiable leaf
│   └── WireFormatError          a request or response body cannot be decoded
├── EndpointUnavailableError     the component cannot provide this endpoint
│   └── ShapesUnknownError       output shapes are needed while tracing but not known yet
├── ComponentError               the component's own code raised, or returned bad outputs
│   ├── OutputValidationError    the outputs do not match the output schema
│   └── NonFiniteError           with check_finite on: a NaN or inf went in or came out
├── SchemaDefinitionError        a schema class itself is malformed (raised at definition)
├── TransportError               a remote component could not be reached or answered badly
│   └── AuthenticationError      the server refused the bearer token
└── LaunchError                  a component's environment or server could not be started
```

Every error carries a message that says what happened, expected vs got, the field path and
how to fix it. Errors raised across a transport are re-raised client-side as the same class
(`error_from_dict` / `ChainruleError.to_dict`).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthenticationError",
    "ChainruleError",
    "ComponentError",
    "EndpointUnavailableError",
    "LaunchError",
    "NonFiniteError",
    "NotDifferentiableError",
    "OutputValidationError",
    "SchemaDefinitionError",
    "ShapesUnknownError",
    "TransportError",
    "UnknownPathError",
    "ValidationError",
    "WireFormatError",
    "error_from_dict",
]


class ChainruleError(Exception):
    """Base class of every error chainrule raises on purpose.

    Arguments:
        message: the whole human-readable message.
        errors: structured detail, one dict per problem (`path`, `expected`, `got`, `message`).
    """

    def __init__(self, message: str, *, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors: list[dict[str, Any]] = errors or []

    def to_dict(self) -> dict[str, Any]:
        """Structured form sent over a transport; `error_from_dict` rebuilds the same class."""
        return {"type": type(self).__name__, "message": self.message, "errors": self.errors}


class ValidationError(ChainruleError, ValueError):
    """Inputs, tangents or cotangents do not match the component's schema."""


class UnknownPathError(ValidationError, KeyError):
    """A path (`"mesh.points"`) names no leaf of the schema."""

    def __str__(self) -> str:  # KeyError would quote the message otherwise
        return self.message


class NotDifferentiableError(ValidationError):
    """A derivative was asked of, or with respect to, a leaf not marked `Differentiable`."""


class WireFormatError(ValidationError):
    """A body could not be decoded (truncated, bad header, unsupported dtype, too large)."""


class EndpointUnavailableError(ChainruleError, NotImplementedError):
    """The component neither provides this endpoint nor can derive it from the ones it has."""


class ShapesUnknownError(EndpointUnavailableError):
    """Output shapes of a component are needed while tracing but cannot be known yet."""


class ComponentError(ChainruleError, RuntimeError):
    """The component's own code raised; the original exception is chained as `__cause__`."""


class OutputValidationError(ComponentError):
    """The component returned outputs that do not match its output schema."""


class NonFiniteError(ComponentError, FloatingPointError):
    """With `check_finite` on: a NaN or inf went into or came out of a component call."""


class SchemaDefinitionError(ChainruleError, TypeError):
    """A schema or component definition is malformed (raised when it is defined)."""


class TransportError(ChainruleError, ConnectionError):
    """A remote component could not be reached, timed out, or sent an unreadable answer."""


class AuthenticationError(TransportError):
    """The server refused the request's bearer token (HTTP 401)."""


class LaunchError(ChainruleError, RuntimeError):
    """A component's environment could not be built, or its server did not start."""


_CLASSES: dict[str, type[ChainruleError]] = {
    cls.__name__: cls
    for cls in (
        ChainruleError,
        ValidationError,
        UnknownPathError,
        NotDifferentiableError,
        WireFormatError,
        EndpointUnavailableError,
        ShapesUnknownError,
        ComponentError,
        OutputValidationError,
        NonFiniteError,
        SchemaDefinitionError,
        TransportError,
        AuthenticationError,
        LaunchError,
    )
}


def error_from_dict(data: dict[str, Any]) -> ChainruleError:
    """Rebuild an error sent by `ChainruleError.to_dict` (unknown types become the base)."""
    cls = _CLASSES.get(str(data.get("type")), ChainruleError)
    return cls(str(data.get("message", "")), errors=list(data.get("errors") or []))
