"""`WireTransport`: a component served in this process, every request and answer round-tripped
through the wire codec, with no socket in between.

It is the test transport: a component reached through it behaves as one reached over HTTP
(the same `Handler` checks the same request trees; arrays cross as the codec writes and reads
them, binary or JSON; errors come back as the same classes, rebuilt from their structured
form) at in-process speed, so the test suite runs every behaviour over it as well as over the
component itself and over HTTP. It is also the smallest complete transport, the one the guide
page "Writing a transport" starts from.

Example:
    ```python
    remote = remote_component(WireTransport(component))  # as chainrule.connect(url) would
    remote.vjp({"x": x}, {"y": ct})
    ```
"""

from __future__ import annotations

import json
from typing import Any

from chainrule._component import finite
from chainrule._component.component import Component
from chainrule._schema.errors import ChainruleError, error_from_dict

from . import wire
from .handler import Handler
from .settings import ServerSettings
from .wire.decoder import decode_counted

__all__ = ["WireTransport"]


class WireTransport:
    """A `Transport` to `component` in this process, through the wire codec.

    Arguments:
        component: the component served.
        settings: the server side's settings (limits, NaN policy, residual budget).
        content_type: the body format, `wire.BINARY` (default) or `wire.JSON`.
    """

    def __init__(
        self,
        component: Component,
        settings: ServerSettings | None = None,
        content_type: str = wire.BINARY,
    ) -> None:
        self.handler = Handler(component, settings)
        self.content_type = wire.content_type_of(content_type)
        self.where = f"wire://{component.name}"

    def schema(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(json.dumps(self.handler.describe()))
        return document

    def call(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        body = decode_counted(wire.encode(request, self.content_type), self.content_type)
        try:
            answer = self.handler.handle(
                endpoint, body.tree, declared=body.elements, check_finite=finite.active()
            )
        except ChainruleError as e:  # as a client rebuilds a server's error: from its dict
            raise error_from_dict(json.loads(json.dumps(e.to_dict()))) from None
        back: dict[str, Any] = wire.decode(
            wire.encode(answer, self.content_type), self.content_type
        )
        return back

    def close(self) -> None:
        """Nothing to release: there is no connection."""
