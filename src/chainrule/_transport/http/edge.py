"""The HTTP edge of a served component: the router of its endpoint routes, content
negotiation, request bodies read within their size limit, answers sent in pieces, and errors
answered with their status codes.

Every error is a JSON body `{"error": {"type", "message", "errors"}}` that the client
re-raises as the same `ChainruleError` subclass: an error answered with a status of its own
(413, 415, 503, 504; `chainrule._transport.refusals`) names its public class in `type`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from fastapi.responses import JSONResponse, Response
from starlette.types import Receive

from chainrule._schema.errors import (
    AuthenticationError,
    ChainruleError,
    ComponentError,
    EndpointUnavailableError,
    ValidationError,
    WireFormatError,
)
from chainrule._transport import wire as _wire
from chainrule._transport.refusals import Limit, Unsupported, too_large

__all__ = [
    "Answer",
    "PartsResponse",
    "Router",
    "Types",
    "content_types",
    "error_response",
    "read_body",
]

# An endpoint handler: (request headers, ASGI receive) -> response.
Answer = Callable[[Mapping[str, str], Receive], Awaitable[Response]]


_STATUS: tuple[tuple[type[ChainruleError], int], ...] = (
    (AuthenticationError, 401),
    (WireFormatError, 400),
    (ValidationError, 422),
    (EndpointUnavailableError, 422),
    (ComponentError, 500),
)


def _status(error: ChainruleError) -> int:
    return next((code for cls, code in _STATUS if isinstance(error, cls)), 500)


class _ErrorResponse(JSONResponse):
    """JSON that always renders: text UTF-8 cannot carry (a lone surrogate in an author's
    exception message) is sent as `\\u` escapes instead of failing into a plain-text 500."""

    def render(self, content: Any) -> bytes:
        try:
            return super().render(content)
        except UnicodeEncodeError:
            return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode()


def error_response(error: ChainruleError, status: int | None = None) -> JSONResponse:
    """The structured JSON error body every failure is answered with."""
    return _ErrorResponse({"error": error.to_dict()}, status_code=status or _status(error))


async def read_body(
    headers: Mapping[str, str], receive: Receive, limit: Limit
) -> bytes | bytearray:
    """The request body, refused (413) as soon as it is known to exceed `limit`.

    Chunks are appended to one bytearray as they arrive (writable, so arrays decoded from it
    go to torch without a copy; growing it reallocates in place): memory grows only with what
    was received, so declaring a huge body and sending nothing costs the server nothing.
    Measured as fast as copying into a buffer preallocated to the declared size, and faster
    than joining the chunks at the end.
    """
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit.value:
        raise too_large(limit, f"a request body of {declared} bytes")
    buffer: bytearray | None = None
    while True:  # ASGI messages straight off `receive` (cheaper than Request.stream())
        message = await receive()
        if message["type"] == "http.disconnect":
            raise WireFormatError("the client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        last = not message.get("more_body", False)
        if buffer is None and last:  # the whole body in one message: no copy
            if len(chunk) > limit.value:
                raise too_large(limit, f"a request body of {len(chunk)} bytes")
            return chunk
        buffer = bytearray() if buffer is None else buffer
        buffer += chunk
        if len(buffer) > limit.value:
            raise too_large(limit, f"a request body of more than {limit.value} bytes")
        if last:
            return buffer


class Types(NamedTuple):
    """What was negotiated: the request body's type, the answer's, and how a JSON answer
    writes arrays (`True`: lists; `False`: base64; `None`: as the request did)."""

    incoming: str
    outgoing: str
    lists: bool | None


def content_types(headers: Mapping[str, str]) -> Types:
    """Request and response body types from Content-Type and Accept (with its `arrays`
    parameter: `application/json; arrays=lists` or `arrays=base64`)."""
    try:
        incoming = _wire.content_type_of(headers.get("content-type"))
        accept = headers.get("accept")
        if accept in (None, "", "*/*"):
            return Types(incoming, incoming, None)
        return Types(incoming, _wire.content_type_of(accept), _arrays_parameter(accept))
    except WireFormatError as e:
        raise Unsupported(e.message, errors=e.errors) from None


_ARRAYS = {"lists": True, "base64": False}


def _arrays_parameter(accept: str) -> bool | None:
    """The `arrays` parameter of an Accept header, if any (no parsing for a bare type)."""
    if "arrays" not in accept:
        return None
    for param in accept.replace(",", ";").split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "arrays":
            choice = _ARRAYS.get(value.strip().strip('"').lower())
            if choice is None:
                raise WireFormatError(
                    f"Accept parameter arrays={value.strip()!r} is not known; use "
                    "'application/json; arrays=lists' (nested lists of numbers) or "
                    "'arrays=base64' ($array objects)",
                    errors=[{"path": "accept", "expected": "lists or base64", "got": value}],
                )
            return choice
    return None


class PartsResponse(Response):
    """A response whose body goes out as pieces (headers, then views of the result arrays),
    so large arrays reach the socket without being joined into one copy first."""

    _SMALL = 256 * 1024  # below this, one joined send beats a send per piece (measured)

    def __init__(self, parts: list[bytes | memoryview], media_type: str) -> None:
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.parts = parts
        length = sum(len(p) for p in parts)
        if length <= self._SMALL:
            self.parts = [b"".join(parts)]
        self.body = b""
        self.raw_headers = [
            (b"content-type", media_type.encode("latin-1")),
            (b"content-length", str(length).encode("latin-1")),
        ]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        last = len(self.parts) - 1
        for i, part in enumerate(self.parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < last})


class Router:
    """The app's router: answers the endpoint routes (`POST /<endpoint>`) itself and passes
    every other request to the FastAPI app behind it.

    This is how requests are served, not a bypass: FastAPI's routing, dependency solving and
    middleware cost ~0.2 ms per request, a large share of a small call, so the FastAPI app only
    describes the endpoint routes (for /openapi.json and /docs) and serves the others.
    """

    def __init__(self, app: Any, routes: dict[str, Answer]):
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        handler = self.routes.get(scope.get("path", "")) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        # ASGI servers lower-case header names. Reversed, so the first of a repeated header
        # wins, as with Starlette's `Request.headers`; a plain dict costs a tenth of those.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in reversed(scope["headers"])}
        response = await handler(headers, receive)
        await response(scope, receive, send)
