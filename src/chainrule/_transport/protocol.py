"""`Transport`: how a remote component reaches the component it stands for.

A transport carries one request to a served component and brings its answer back. Requests
and answers are *trees*: dicts with `str` keys, lists, strings, numbers, booleans, None and
numpy arrays (`{"inputs": {"x": array}, "cotangents": {"y": array}}` in,
`{"result": {"x": array}}` out; each endpoint's keywords and answer are its row of
`chainrule.ENDPOINTS`). How the trees travel (a wire format, a socket, a queue, an actor call)
is the transport's business, as is what a call costs.

The server side of any transport hands each request to a `Handler` (`handler`), which checks
it, runs the endpoint and shapes the answer; the client side is one `RemoteBackend` over the
transport (`remote.remote_component(transport)`), so a new transport is one file: a class
with the four members below, and a way to start its server side. See the guide's page
"Writing a transport".
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["Transport"]


class Transport(Protocol):
    """Carries requests to one served component.

    Attributes:
        where: where the component is reached, for messages (`http://127.0.0.1:8000`).
    """

    where: str

    def schema(self) -> dict[str, Any]:
        """The served component's description (`Handler.describe()`: what `GET /schema`
        answers over HTTP)."""
        ...

    def call(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        """The answer tree to `request` for `endpoint`; the server's error raised as the same
        `ChainruleError` subclass, a failure of the transport itself as a `TransportError`."""
        ...

    def close(self) -> None:
        """Release what the transport holds open (a later call may open it again)."""
        ...
