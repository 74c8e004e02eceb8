"""Backends: what derives a component's endpoints from its `apply` function.

A backend declares the endpoints it provides natively (`native`); the component resolves the
rest through the derivation rules (`chainrule._component.endpoints.RULES`). `jax` and `torch`
are imported only when used, so the core needs neither.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import pydantic

from chainrule._schema.errors import OutputValidationError, SchemaDefinitionError
from chainrule._schema.messages import format_pydantic
from chainrule._schema.schema import ArraySpec, Schema, passthrough
from chainrule._schema.tree import flat_fields

if TYPE_CHECKING:
    from chainrule._component.component import Component
    from chainrule._component.point import Point
    from chainrule._component.residuals import Residual

__all__ = [
    "Backend",
    "Capabilities",
    "FiniteDifferences",
    "Lane",
    "array_specs",
    "as_outputs",
    "flat_site",
]


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares about itself. Components, bindings and transports choose their
    paths by these declarations, never by a backend's name.

    Arguments:
        static_shapes: output shapes depend only on the static signature (static values,
            array shapes and dtypes), so they may be remembered per signature.
        cheap_eval_shape: `eval_shape` does not run the function's arithmetic, so asking it
            costs less than `apply` (it may still fail; then apply tells the shapes).
        framework: the framework whose arrays the function computes on, under that
            framework's own differentiation (`"jax"`, `"torch"`): its binding may then run the
            function inline on the caller's arrays; None when none can (numpy, remote).
    """

    static_shapes: bool = True
    cheap_eval_shape: bool = True
    framework: str | None = None


class Lane(Protocol):
    """A backend's plan for one call site of a framework binding: `apply` and the `vjp` of a
    kept apply on trusted numpy arrays, without building a Point.

    A binding's call site fixes every array path, shape and dtype, so the generic endpoints'
    work (validating a point, rebuilding templates, checking tangents) is redundant there.
    A lane is built once per site (by `Component.plan`) and runs on the arrays alone; the
    outputs it returns are checked by the component's one output check when they are not
    exactly the declared arrays.
    """

    lends: bool
    """Whether `apply` without `keep` may be given views of a caller's buffers (read-only,
    valid during the call only): the lane keeps nothing of them, and the binding checks the
    author's code keeps nothing either (`chainrule._bindings.jax.lending`). Such a lane
    computes on the arrays as they are: the binding may call `component.fn(inputs)` itself."""

    vjps: bool
    """Whether `vjp` answers from residuals `apply` kept (else `owns` is always False)."""

    def apply(
        self,
        build: Callable[[Sequence[Any]], Schema],
        arrays: Sequence[np.ndarray],
        shapes: Sequence[tuple[int, ...]],
        keep: bool,
        measure: bool = True,
    ) -> tuple[list[np.ndarray], Residual | None]:
        """The output arrays (in the site's output order) of the function at `arrays` and,
        with `keep`, the residual to keep (`measure=False`: its size is not counted, for a
        residual used once and dropped, never cached). `build(values)` makes the inputs
        instance from values in the site's input order (the lane may convert the arrays
        first); `shapes` are the output shapes the site expects."""

    def fresh_copies(self) -> Lane:
        """This lane for a caller whose arrays are copies made for each call and held by no
        one else (the lane may keep them without copying again)."""

    def owns(self, residual: Residual | None) -> bool:
        """Whether `vjp` can answer from `residual`."""

    def vjp(
        self, residual: Residual, cotangents: dict[str, np.ndarray], wrt: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        """`{input path: Jᵀ·c}` from a residual this lane kept."""


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
    # What a backend declares (a remote backend reads them from its server, per instance).
    native: tuple[str, ...]
    capabilities: Capabilities = Capabilities()
    eval_shape_provenance: str = "native"
    where: str = "in-process"  # where the function runs (a remote backend: its server)

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

    def host_lane(
        self, component: Component, in_paths: tuple[str, ...], out_paths: tuple[str, ...]
    ) -> Lane | None:
        """This backend's `Lane` for a binding's call site with these array paths (None: the
        binding runs the component's generic endpoints)."""
        return None

    @abstractmethod
    def apply(self, p: Point, keep: bool) -> tuple[Any, Residual | None]:
        """Raw outputs (not yet validated) and, if `keep`, a residual."""

    @abstractmethod
    def eval_shape(self, p: Point) -> Any:
        """An output instance with `ShapeDtype` leaves (or EndpointUnavailableError)."""


def array_specs(schema: type[Schema]) -> dict[str, ArraySpec]:
    """`{field: spec}` of a flat schema's array fields (none for a nested schema)."""
    return {n: spec for n, spec in flat_fields(schema) or () if spec is not None}


def flat_site(
    component: Component, in_paths: Sequence[str], out_paths: Sequence[str] | None = None
) -> bool:
    """Whether a binding's call site over array leaves `in_paths` (and `out_paths`) is one a
    lane or a plan serves: flat schemas, every array leaf."""
    if flat_fields(component.inputs) is None or flat_fields(component.outputs) is None:
        return False
    outs_ok = out_paths is None or set(out_paths) == set(array_specs(component.outputs))
    return set(in_paths) == set(array_specs(component.inputs)) and outs_ok


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
