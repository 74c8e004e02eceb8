"""The transport-neutral request handler every server side shares.

A transport's server side turns what arrived into a request tree (a dict with numpy arrays:
`{"inputs": {...}, "cotangents": {...}, ...}`) and hands it to `Handler.handle(endpoint,
tree)`. The handler checks it against the endpoint's row of the endpoint table (its keywords
and their wire-level types), against the server's limits on the work it declares
(`limits`) and, when the settings refuse them, NaN/inf; parses a handle; runs the endpoint
through `Component.call`; and shapes the answer tree by the row's result kind:
`{"outputs": ..., "handle": ...}` for `apply`, `{"outputs": ..., "leaves": [...]}` for
`eval_shape`, `{"result": ...}` for the derivatives. Failures are raised as chainrule's
exceptions: the transport sends them back (`ChainruleError.to_dict`) and its client raises
them again as the same class (`error_from_dict`).

`describe(component, settings)` is the document a server answers `GET /schema` with, and what
`chainrule schema` prints for a component file: the one description of a served component,
its declared capabilities included (a remote component reads them, `remote`).

The HTTP app decodes a body, calls `handle` and encodes the answer (`http.app`); the in-process
wire transport does the same without a socket (`local`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from chainrule._component import finite
from chainrule._component.component import Component
from chainrule._component.endpoints import ENDPOINTS, Endpoint
from chainrule._component.residuals import Handle
from chainrule._schema import tree as _tree
from chainrule._schema.errors import ValidationError
from chainrule._schema.messages import MAX_REPORTED
from chainrule._schema.schema import ShapeDtype

from . import wire
from .limits import check_work, declared_in, limits_of
from .settings import ServerSettings

__all__ = ["Handler", "check_request", "describe"]


class Handler:
    """Answers requests to one component, whatever carried them (HTTP, a queue, an actor).

    Arguments:
        component: the component served.
        settings: the server's settings (its limits, NaN policy, residual budget).
    """

    def __init__(self, component: Component, settings: ServerSettings | None = None) -> None:
        self.component = component
        self.settings = settings or ServerSettings()
        self.limits = limits_of(self.settings)
        component.residuals.max_bytes = self.settings.residual_bytes
        component.residuals.ttl = self.settings.residual_ttl

    def handle(
        self, endpoint: str, tree: Any, *, declared: int | None = None, check_finite: bool = False
    ) -> dict[str, Any]:
        """The answer tree to request `tree` for `endpoint` (a route the component offers).

        Arguments:
            endpoint: the endpoint's name.
            tree: the decoded request: `{"inputs": ..., <keyword>: ...}`.
            declared: the elements its arrays declare, if the decoder counted them already.
            check_finite: the client asked for `check_finite` (NaN hunting) on this call.
        """
        request = check_request(endpoint, tree)
        work = declared_in(tree) if declared is None else declared
        check_work(endpoint, request, work, self.limits)
        if not self.settings.allow_nonfinite:
            _check_finite(request, "")
        with finite.scoped(check_finite):
            return self.run(endpoint, request)

    def run(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        """Run a checked request and shape its answer tree (see `answer`)."""
        handle = request.pop("handle", None)
        if handle is not None:
            request["handle"] = Handle.parse(handle, self.component.name)  # 422 if malformed
        inputs = request.pop("inputs")
        row = ENDPOINTS[endpoint]
        return answer(row, self.component.call(endpoint, inputs, **request))

    def describe(self) -> dict[str, Any]:
        """The document `GET /schema` answers (see `describe`)."""
        return describe(self.component, self.settings)


def answer(row: Endpoint, result: Any) -> dict[str, Any]:
    """The answer tree of `result`, shaped by the row's result kind."""
    if row.result == "outputs":
        if isinstance(result, tuple):  # apply with keep: (outputs, handle)
            out, kept = result
            return {"outputs": _tree.dump(out), "handle": kept.id}
        return {"outputs": _tree.dump(result)}
    if row.result == "shapes":
        return _shapes_tree(result)
    return {"result": result}


def describe(component: Component, settings: ServerSettings) -> dict[str, Any]:
    """A served component, as `GET /schema` answers: its name, backend, input and output JSON
    schemas, endpoints (and where each comes from), declared capabilities, the content types
    and limits of its server."""
    caps = component.backend.capabilities
    return {
        "name": component.name,
        "backend": component.backend.name,
        "inputs": component.inputs.model_json_schema(),
        "outputs": component.outputs.model_json_schema(),
        "endpoints": component.endpoints,
        "capabilities": {
            "static_shapes": caps.static_shapes,
            "cheap_eval_shape": caps.cheap_eval_shape,
            # Its derivative endpoints take `batched` (B points in one request).
            "batched_points": True,
        },
        "content_types": [wire.BINARY, wire.JSON],
        "max_body_bytes": settings.max_body_bytes,
        "max_json_bytes": settings.max_json_bytes,
        "max_elements": settings.max_elements,
        "max_batch": settings.max_batch,
        "call_timeout": settings.call_timeout,
    }


def check_request(name: str, payload: Any) -> dict[str, Any]:
    """The keyword arguments of endpoint `name` from a decoded request, checked against its
    row: an object with `inputs` and the row's keywords (required ones present), each of the
    type its keyword checks for."""
    row = ENDPOINTS[name]
    allowed = {"inputs", *row.request}
    if not isinstance(payload, dict):
        raise ValidationError(
            f"/{name} expects an object with keys {sorted(allowed)}, got {type(payload).__name__}",
            errors=[{"path": "(body)", "expected": "an object", "got": type(payload).__name__}],
        )
    required = {"inputs", *(k.name for k in row.keywords if k.required)}
    unknown, missing = set(payload) - allowed, required - set(payload)
    if unknown or missing:
        problem = f"unknown keys {_some(unknown)}" if unknown else f"missing keys {sorted(missing)}"
        raise ValidationError(
            f"/{name}: {problem}; the body must be an object with keys {sorted(allowed)}",
            errors=[{"path": "(body)", "expected": sorted(allowed), "got": _some(payload)}],
        )
    keywords = {k.name: k for k in row.keywords}
    for key in set(payload) - {"inputs"}:
        keyword = keywords[key]
        if not keyword.check(payload[key]):
            got = type(payload[key]).__name__
            raise ValidationError(
                f"/{name}: '{key}' must be {keyword.expected}, got {got}",
                errors=[{"path": key, "expected": keyword.expected, "got": got}],
            )
    return dict(payload)


def _some(names: Any, most: int = MAX_REPORTED) -> str:
    """`names` sorted, the first `most` of them shown: a body of 50,000 unknown keys gets an
    answer of bounded size."""
    shown = sorted(names)[:most] if len(names) > most else sorted(names)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return f"{shown}{more}"


def _check_finite(tree: Any, path: str) -> None:
    if isinstance(tree, dict):
        for k, v in tree.items():
            _check_finite(v, f"{path}.{k}" if path else str(k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            _check_finite(v, f"{path}.{i}")
    elif isinstance(tree, np.ndarray) and tree.dtype.kind in "fc" and not np.isfinite(tree).all():
        raise ValidationError(
            f"'{path}' holds NaN or inf, which this server refuses (allow_nonfinite=False); "
            "send finite values",
            errors=[{"path": path, "expected": "finite values", "got": "NaN/inf"}],
        )
    elif isinstance(tree, float) and not np.isfinite(tree):
        raise ValidationError(
            f"'{path}' is {tree}, which this server refuses (allow_nonfinite=False)",
            errors=[{"path": path, "expected": "a finite number", "got": str(tree)}],
        )


def _shapes_tree(out: Any) -> dict[str, Any]:
    leaves = _tree.leaves(out)
    described = {
        x.path: {"shape": list(x.value.shape), "dtype": np.dtype(x.value.dtype).name}
        for x in leaves
        if isinstance(x.value, ShapeDtype)
    }
    return {"outputs": _tree.replace_leaves(out, described).model_dump(), "leaves": list(described)}
