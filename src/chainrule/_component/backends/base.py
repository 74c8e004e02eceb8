"""Backends: what derives a component's endpoints from its `apply` function.

A backend declares the endpoints it provides natively (`native`); the component resolves the
rest through the derivation rules (`chainrule._component.endpoints.RULES`). `jax` and `torch`
are imported only when used, so the core needs neither.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pydantic

from chainrule._schema.errors import OutputValidationError, SchemaDefinitionError
from chainrule._schema.messages import format_pydantic
from chainrule._schema.schema import Schema, passthrough

if TYPE_CHECKING:
    from chainrule._component.point import Point
    from chainrule._component.residuals import Residual

__all__ = ["Backend", "FiniteDifferences", "as_outputs"]


@dataclass(frozen=True)
class FiniteDifferences:
    """Options of the `numpy` backend (finite differences).

    Arguments:
        method: `"central"` (default, error O(h²)) or `"forward"` (O(h), half the calls,
            reuses the base point kept by `apply(keep=True)`).
        step: absolute step, one for all leaves or `{path: step}`; by default each leaf's step
            is `eps**(1/3)` (central) or `eps**(1/2)` (forward) of its dtype times
            `max(1, max|x|)`.
    """

    method: Literal["central", "forward"] = "central"
    step: float | Mapping[str, float] | None = None

    def __post_init__(self) -> None:
        if self.method not in ("central", "forward"):
            raise SchemaDefinitionError(
                f"FiniteDifferences(method={self.method!r}): use 'central' or 'forward'"
            )


class Backend(ABC):
    """Derives endpoints of `fn(inputs) -> outputs` by one framework's means."""

    name: ClassVar[str]
    provenance: ClassVar[str]
    cost: ClassVar[float]
    native: ClassVar[tuple[str, ...]]
    cheap_eval_shape: ClassVar[bool] = True
    static_shapes: ClassVar[bool] = True  # output shapes depend only on the static signature
    eval_shape_provenance: ClassVar[str] = "native"

    def __init__(
        self, fn: Callable[[Any], Any], inputs: type[Schema], outputs: type[Schema]
    ) -> None:
        self.fn = fn
        self.inputs = inputs
        self.outputs = outputs

    def provenance_of(self, name: str) -> str:
        """Where native endpoint `name` comes from (shown by `Component.endpoints`)."""
        return "native" if name == "apply" else self.provenance

    def close(self) -> None:  # noqa: B027 (optional hook; most backends hold nothing open)
        """Release what the backend holds open (connections of a remote backend)."""

    def endpoint(self, name: str) -> Callable[..., Any]:
        """The bound method implementing native endpoint `name` (declared in `native`)."""
        if name not in self.native:
            raise KeyError(name)
        method: Callable[..., Any] = getattr(self, name)
        return method

    @abstractmethod
    def apply(self, p: Point, keep: bool) -> tuple[Any, Residual | None]:
        """Raw outputs (not yet validated) and, if `keep`, a residual."""

    @abstractmethod
    def eval_shape(self, p: Point) -> Any:
        """An output instance with `ShapeDtype` leaves (or EndpointUnavailableError)."""


def as_outputs(raw: Any, outputs: type[Schema], name: str) -> Schema:
    """The author's return value as an outputs instance; arrays pass through unconverted."""
    if isinstance(raw, outputs):
        return raw
    if not isinstance(raw, Mapping):
        raise OutputValidationError(
            f"component '{name}' returned {type(raw).__name__}; return an "
            f"{outputs.__name__} instance or a dict of its fields"
        )
    with passthrough():
        try:
            return outputs.model_validate(raw)
        except pydantic.ValidationError as e:
            message, errors = format_pydantic(e, f"component '{name}' returned bad outputs")
            raise OutputValidationError(message, errors=errors) from None
