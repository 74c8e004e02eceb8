"""The plan of one call site of a framework binding: what runs on each host callback.

A jitted JAX program fixes, at each call of a component, every array path, shape and dtype,
the static values and the output avals. The generic endpoints re-derive all of that per call
(a validated Point, template rebuilds, the derivation table, output validation); at a small
size that work is most of a crossing. A `Plan` is built once per site (`Component.plan`) and
does per call only what the call needs:

- build the inputs instance from the site's template and the new arrays (no validation: JAX
  fixed their avals, and the template's static values were validated when the site was made);
- apply through the backend's `Lane` (the function on the arrays, an exact check of what it
  returned; anything else goes through the component's one output check);
- a derivative the author wrote (`vjp`, `jvp`), called directly with the request it accepts.

Plans exist for flat schemas only (every field at the top level); elsewhere the binding
runs the generic endpoints. With `check_finite` on, the binding runs the generic endpoints
too (their checks live there).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from chainrule._schema.schema import Schema

from . import dispatch
from .backends.base import Lane

if TYPE_CHECKING:
    from .component import Component

__all__ = ["Plan"]

_set = object.__setattr__

# The derivatives a plan calls directly when the author wrote them: request keyword → role.
_WRITTEN = {"vjp": ("cotangents", "wrt"), "jvp": ("tangents", "of")}


class Plan:
    """One call site's fast path (see the module docstring). Built by `Component.plan`."""

    def __init__(
        self,
        component: Component,
        template: Schema,
        in_paths: tuple[str, ...],
        out_paths: tuple[str, ...],
        lane: Lane | None,
    ) -> None:
        self.component = component
        self.cls = type(template)
        self.base = dict(template.__dict__)  # static values, and the array leaves replaced
        self.fields_set = template.model_fields_set
        self.in_paths, self.out_paths = in_paths, out_paths
        self.lane = lane
        # model_construct's work for a trusted flat instance, unless the schema has hooks.
        self.simple = not (self.cls.__pydantic_post_init__ or self.cls.__pydantic_root_model__)
        # The author's vjp/jvp, and whether it takes its `wrt`/`of` (asked once, not per call).
        self.written: dict[str, tuple[Callable[..., Any], bool]] = {}
        for name, (_, selector) in _WRITTEN.items():
            fn = component._written.get(name)  # (the same layer: its own member)
            if fn is not None:
                self.written[name] = (fn, selector in inspect.signature(fn).parameters)

    def inputs(self, arrays: Sequence[Any]) -> Schema:
        """The inputs instance at `arrays` (trusted: the site fixed their avals)."""
        fields = self.base.copy()
        paths = self.in_paths
        for i in range(len(paths)):
            fields[paths[i]] = arrays[i]
        if not self.simple:
            return self.cls.model_construct(self.fields_set, **fields)
        instance = self.cls.__new__(self.cls)
        _set(instance, "__dict__", fields)
        _set(instance, "__pydantic_fields_set__", self.fields_set)
        _set(instance, "__pydantic_extra__", None)
        _set(instance, "__pydantic_private__", None)
        return instance

    def has(self, endpoint: str) -> bool:
        """Whether the author wrote `endpoint` ("vjp", "jvp"), so the plan can call it."""
        return endpoint in self.written

    def derivative(
        self, endpoint: str, inputs: Schema, given: dict[str, Any], paths: tuple[str, ...]
    ) -> Any:
        """The author's `endpoint` at `inputs` (`Plan.inputs`): `given` are its cotangents
        (vjp) or tangents (jvp) by path, `paths` its `wrt` (vjp) or `of` (jvp). Its answer
        by path, as the author returned it (the caller converts each array it takes)."""
        fn, takes_paths = self.written[endpoint]
        role, selector = _WRITTEN[endpoint]
        with dispatch.guard(self.component.name, self.component.calls, endpoint):
            if takes_paths:
                return fn(inputs, **{role: given, selector: paths})
            return fn(inputs, **{role: given})
