"""The one remote component: a `Component` whose backend forwards every endpoint over a
`Transport`.

`remote_component(transport)` fetches the served component's description (`schema()`),
rebuilds its schema classes (so inputs are validated here, before anything crosses) and makes
a `Component` over a `RemoteBackend`. The backend forwards each endpoint generically, by its
row of the endpoint table: the request tree is the validated point and request, the answer is
read by the row's result kind. What the remote side can do is what it *declares*: the
endpoints it offers, and its capabilities (`static_shapes`, `cheap_eval_shape`) from the
description's `capabilities`; a server that declares none gets the conservative answer
(shapes are learnt by running `apply`, never by asking `eval_shape`). Nothing the server
sends is trusted further than it must be: a description that is not a valid schema, or an
answer without the keys its row promises, is a `TransportError` saying so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pydantic

from chainrule._component.backends.base import Backend, Capabilities
from chainrule._component.component import Component
from chainrule._component.endpoints import ENDPOINTS, derivatives
from chainrule._component.residuals import Residual
from chainrule._schema import tree as _tree
from chainrule._schema.errors import ChainruleError, TransportError
from chainrule._schema.jsonschema import schema_from_json
from chainrule._schema.schema import Schema, ShapeDtype, passthrough

from .protocol import Transport

if TYPE_CHECKING:
    from chainrule._component.point import Point

__all__ = ["RemoteBackend", "remote_component"]


class RemoteBackend(Backend):
    """Forwards every endpoint over `transport` to the component it describes (`info`)."""

    name = "remote"
    provenance = "remote"
    cost = 1.0

    def __init__(
        self,
        transport: Transport,
        info: Mapping[str, Any],
        inputs: type[Schema],
        outputs: type[Schema],
    ) -> None:
        super().__init__(_not_local, inputs, outputs)
        self.transport = transport
        self.where = transport.where
        self.offered: dict[str, str] = dict(info["endpoints"])
        self.native = tuple(n for n in derivatives() if n in self.offered)
        self.eval_shape_provenance = f"remote: {self.offered.get('eval_shape', 'none')}"
        self.capabilities = _declared(info.get("capabilities"))
        found = info.get("capabilities")
        self.batches_points = isinstance(found, dict) and found.get("batched_points") is True

    def close(self) -> None:
        self.transport.close()

    def provenance_of(self, name: str) -> str:
        return f"remote: {self.offered.get(name, 'none')}"

    def endpoint(self, name: str) -> Callable[..., Any]:
        if name not in self.native:
            raise KeyError(name)
        return functools.partial(self._derivative, name)

    def _derivative(self, name: str, p: Point, res: Residual | None, **request: Any) -> Any:
        body: dict[str, Any] = {"inputs": _tree.dump(p.inputs)}
        body.update({k: list(v) if isinstance(v, tuple) else v for k, v in request.items()})
        if res is not None and isinstance(res.data, str) and "handle" in ENDPOINTS[name].request:
            body["handle"] = res.data
        return self._call(name, body)["result"]

    def apply(self, p: Point, keep: bool) -> tuple[Any, Residual | None]:
        answer = self._call("apply", {"inputs": _tree.dump(p.inputs), "keep": keep})
        if not keep:
            return answer["outputs"], None
        return answer["outputs"], Residual(answer["handle"], 0, None)

    @property
    def batched_provenance(self) -> str:
        return f"remote: {self.offered.get('batched_apply', 'loop')}"

    def batched_apply(self, p: Point, stacks: dict[str, np.ndarray]) -> Any:
        """One request for the whole batch (None: the server lacks it, so a loop of applies)."""
        if "batched_apply" not in self.offered:
            return None
        inputs = _tree.dump(p.inputs)
        for path, stack in stacks.items():
            _set_path(inputs, path, stack)
        return self._call("batched_apply", {"inputs": inputs, "batched": list(stacks)})["result"]

    def points(
        self, name: str, p: Point, stacks: dict[str, np.ndarray], request: dict[str, Any]
    ) -> Any:
        """Derivative `name` at B points in one request (`chainrule._component.points`);
        None if the server does not declare the keyword (then a request per point)."""
        if not self.batches_points:
            return None
        inputs = _tree.dump(p.inputs)
        for path, stack in stacks.items():
            _set_path(inputs, path, stack)
        body: dict[str, Any] = {"inputs": inputs, "batched": list(stacks)}
        body.update({k: list(v) if isinstance(v, tuple) else v for k, v in request.items()})
        return self._call(name, body)["result"]

    def eval_shape(self, p: Point) -> Any:
        answer = self._call("eval_shape", {"inputs": _tree.dump(p.inputs)})
        tree = answer["outputs"]
        for path in answer["leaves"]:
            info = _lookup(tree, path)
            _set_path(tree, path, ShapeDtype(tuple(info["shape"]), np.dtype(info["dtype"])))
        with passthrough():
            return self.outputs.model_validate(tree)

    def _call(self, endpoint: str, body: dict[str, Any]) -> Any:
        """The answer to `body`, refused unless it is an object with the keys its row
        promises (a TransportError naming where it came from)."""
        answer = self.transport.call(endpoint, body)
        expect = ENDPOINTS[endpoint].answer_keys(body)
        if not (isinstance(answer, dict) and all(k in answer for k in expect)):
            got = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
            raise TransportError(
                f"{self.where}/{endpoint} answered {got}, not an object with {list(expect)}; "
                "is it a chainrule server of the same version as this client?"
            )
        return answer


def _declared(found: Any) -> Capabilities:
    """The capabilities a description declares, conservative where it says nothing: shapes
    that are not declared static are never remembered, and `eval_shape` is asked only of a
    component whose shapes never need `apply` (else a round trip may buy nothing)."""
    caps = found if isinstance(found, dict) else {}
    static = caps.get("static_shapes") is True
    return Capabilities(
        static_shapes=static, cheap_eval_shape=static and caps.get("cheap_eval_shape") is True
    )


def _lookup(tree: Any, path: str) -> Any:
    for key in path.split("."):
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    return tree


def _set_path(tree: Any, path: str, value: Any) -> None:
    *head, last = path.split(".")
    for key in head:
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    if isinstance(tree, list):
        tree[int(last)] = value
    else:
        tree[last] = value


def _not_local(inputs: Any) -> Any:
    raise TransportError("a remote component runs on its server; call its endpoints instead")


class _ServerInfo(pydantic.BaseModel):
    """The parts of a served component's description the client uses (the rest is ignored)."""

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True, strict=True)

    name: str
    backend: str | None = None
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    endpoints: dict[str, str]
    capabilities: dict[str, Any] | None = None


_FETCH: Any = object()  # the document default: ask the transport for it


def remote_component(transport: Transport, document: Any = _FETCH) -> Component:
    """The component `transport` reaches, described by `document` (default: its `schema()`;
    any JSON value is a document, valid or not).

    Returns:
        The component; a `TransportError` saying why if the document is not a valid schema.
    """
    where = f"{transport.where}/schema"
    document = transport.schema() if document is _FETCH else document
    try:
        info = _ServerInfo.model_validate(document)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "the document"
        raise _bad_schema(where, f"{path}: {first['msg']}", e.error_count()) from e
    try:
        inputs = schema_from_json(info.inputs, "inputs")
        outputs = schema_from_json(info.outputs, "outputs")
        backend = RemoteBackend(transport, info.model_dump(), inputs, outputs)
        return Component(
            _not_local, inputs=inputs, outputs=outputs, backend=backend, name=info.name
        )
    except ChainruleError as e:
        raise _bad_schema(where, e.message, 1) from e


def _bad_schema(where: str, why: str, count: int) -> TransportError:
    more = f" (and {count - 1} more problems)" if count > 1 else ""
    return TransportError(
        f"{where} is not a valid chainrule schema: {why}{more}. Is it a chainrule server, "
        "of the same chainrule version as this client?"
    )
