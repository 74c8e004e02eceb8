"""The transports every behaviour is checked over: the component itself (in-process), the
in-process wire transport (every request and answer through the wire codec, no socket) and
HTTP (a served component and `chainrule.connect`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import chainrule as cr
from chainrule._transport import wire
from chainrule._transport.local import WireTransport
from chainrule._transport.remote import remote_component
from chainrule._transport.settings import ServerSettings

TRANSPORTS = ("in-process", "wire", "http")


@contextmanager
def reach(
    component: cr.Component, transport: str, content_type: str = wire.BINARY, **settings: Any
) -> Iterator[cr.Component]:
    """`component` as a caller reaches it over `transport` (server `settings` apply to the
    wire and HTTP transports); servers and connections end with the block."""
    if transport == "in-process":
        yield component
        return
    if transport == "wire":
        served = WireTransport(component, ServerSettings(**settings), content_type)
        remote = remote_component(served)
        yield remote
        remote.close()
        return
    with cr.serve(component, **settings) as server:
        remote = cr.connect(server.url, content_type=content_type)
        try:
            yield remote
        finally:
            remote.close()
