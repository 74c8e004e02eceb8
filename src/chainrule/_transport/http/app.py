"""The HTTP face of a component: a FastAPI app built from any component and frozen settings.

Routes: `POST /<endpoint>` for every endpoint the component offers (its rows of
`chainrule._component.endpoints.ENDPOINTS`), `GET /health`, `GET /schema`, plus
`/openapi.json`, `/docs` and `/redoc` (`openapi`). The endpoint routes are answered by the
app's `Router` (`edge`), the way requests are served; FastAPI routes the rest and describes
every route for OpenAPI. Bodies use the wire format of `chainrule._transport.wire` (binary or
JSON, negotiated by `Content-Type` and `Accept`; `edge`); the request trees go to the
transport-neutral `Handler` (`chainrule._transport.handler`), which checks and runs them.
Every error is a JSON body `{"error": {"type", "message", "errors"}}` that the client
re-raises as the same `ChainruleError` subclass; no request can stop the server.

A request's body is read on the event loop within its size limit; decoding it, the handler's
checks and the call, and encoding the answer then run in one worker thread (`pool`, which
times calls out and keeps serving while some hang), so neither a large body nor a long call
stalls other clients.
"""

from __future__ import annotations

import hmac
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive

from chainrule._component import finite as _finite
from chainrule._component.component import Component
from chainrule._schema.errors import AuthenticationError, ChainruleError, EndpointUnavailableError
from chainrule._transport import wire as _wire
from chainrule._transport.handler import Handler
from chainrule._transport.refusals import Answered, Saturated, TimedOut
from chainrule._transport.settings import ServerSettings
from chainrule._transport.tesseract.server import TesseractRoutes
from chainrule._transport.wire.decoder import decode_counted

from .edge import (
    Answer,
    PartsResponse,
    Router,
    Types,
    content_types,
    error_response,
    read_body,
)
from .openapi import app_with_docs, install_openapi, openapi_body
from .pool import Busy, Expired, Pool

__all__ = ["asgi_app", "create_app"]

_CHECK_HEADER = _finite.HEADER.lower()


_INLINE_JSON_BYTES = 2048


def _cheap(body: bytes | bytearray, incoming: str) -> bool:
    """Whether decoding `body` costs less than a hop to a worker thread (~25-80 µs): always
    for a binary body (zero-copy: ~3 µs whatever its size, measured), for JSON up to
    `_INLINE_JSON_BYTES` (plain numbers parse at ~10-30 µs per KiB, measured)."""
    return incoming == _wire.BINARY or len(body) <= _INLINE_JSON_BYTES


class _Service:
    """State shared by the routes: the component's transport-neutral handler, the settings,
    the pool of worker threads."""

    def __init__(self, component: Component, settings: ServerSettings) -> None:
        self.component = component
        self.settings = settings
        self.handler = Handler(component, settings)
        self.limits = self.handler.limits
        self.pool = Pool(settings.max_threads, settings.call_timeout, "chainrule")

    def authorize(self, headers: Mapping[str, str]) -> None:
        token = self.settings.token
        if token is None:
            return
        given = headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise AuthenticationError(
                "missing or wrong bearer token; send 'Authorization: Bearer <token>' "
                "(chainrule.connect(url, token=...))"
            )

    def route(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        """Endpoint `name` as a FastAPI route (for the OpenAPI document; the `Router` answers
        the requests themselves with `answer`)."""
        answer = self.answer(name)

        async def endpoint(request: Request) -> Response:
            return await answer(request.headers, request.receive)

        endpoint.__name__ = name
        return endpoint

    def answer(self, name: str) -> Answer:
        """The answer of endpoint `name`: from the request headers and the ASGI `receive`
        channel of its body, the response."""
        what = f"/{name} of component '{self.component.name}'"

        async def endpoint(headers: Mapping[str, str], receive: Receive) -> Response:
            try:
                self.authorize(headers)
                types = content_types(headers)
                limit = self.limits.binary if types.incoming == _wire.BINARY else self.limits.json
                body = await read_body(headers, receive, limit)
                check = headers.get(_CHECK_HEADER) == "1"  # the client's check_finite
                if not self.settings.threaded and _cheap(body, types.incoming):
                    return self.respond(name, body, types, check)
                # Decoding, the call and encoding, all in one worker thread: off the loop,
                # so a large body or answer does not stall other clients, and one thread
                # hop per call, as when only the call ran there.
                response: Response = await self.pool.run(self.respond, name, body, types, check)
                return response
            except Expired:
                return self._timed_out(what)
            except Busy as e:
                return self._saturated(what, e)
            except (Answered, TimedOut) as e:
                return error_response(e, e.status)
            except ChainruleError as e:
                return error_response(e)
            except Exception as e:  # a bug of ours: report it, keep serving
                traceback.print_exc(file=sys.stderr)
                return error_response(ChainruleError(f"internal error in /{name}: {e!r}"), 500)

        endpoint.__name__ = name
        return endpoint

    def respond(self, name: str, body: bytes | bytearray, types: Types, check: bool) -> Response:
        """Decode the body, hand it to the handler, encode the answer."""
        decoded = decode_counted(body, types.incoming)
        result = self.handler.handle(
            name, decoded.tree, declared=decoded.elements, check_finite=check
        )
        lists = types.lists
        if lists is None:  # answer in the form the request used: plain lists for plain lists
            lists = types.incoming == _wire.JSON and decoded.arrays == 0
        parts = _wire.encode_parts(result, types.outgoing, lists=lists)
        return PartsResponse(parts, types.outgoing)

    def _timed_out(self, what: str) -> Response:
        timeout = self.settings.call_timeout
        error = TimedOut(
            f"{what} did not finish within the server's call_timeout of {timeout} s; it may "
            "be hung (its worker thread goes on until it returns). Check the component, or "
            "raise call_timeout (chainrule serve --call-timeout)",
            errors=[{"path": what, "expected": f"<= {timeout} s", "got": "more"}],
        )
        return error_response(error, error.status)

    def _saturated(self, what: str, busy: Busy) -> Response:
        threads = self.settings.max_threads
        cause = (
            f"all {threads} worker threads are running calls past the call_timeout"
            if busy.waited is None
            else f"no worker thread became free within {busy.waited} s ({busy.hung} of "
            f"{threads} are hung past the call_timeout)"
        )
        error = Saturated(
            f"{what} was not run: {cause}. Retry later; restart the server to free hung "
            "threads, or raise max_threads (chainrule serve --max-threads)",
            errors=[{"path": what, "expected": "a free worker thread", "got": cause}],
        )
        return error_response(error, error.status)


def _tesseract_routes(app: FastAPI, service: _Service) -> dict[str, Answer]:
    """Tesseract's HTTP API under /tesseract (`tesseract.server`): its POST routes for the
    router, its GET /openapi.json and /health here."""
    tess = TesseractRoutes(
        service.component, service.handler, service.authorize, service.pool.run,
        service.limits.json,
    )  # fmt: skip

    def tesseract_openapi() -> dict[str, Any]:
        return tess.openapi()

    def tesseract_health() -> dict[str, str]:
        return {"status": "ok"}

    app.add_api_route("/tesseract/openapi.json", tesseract_openapi, include_in_schema=False)
    app.add_api_route("/tesseract/health", tesseract_health, include_in_schema=False)
    return tess.routes()


def asgi_app(component: Component, settings: ServerSettings | None = None) -> Any:
    """The ASGI application `chainrule serve` runs: `create_app`'s FastAPI app behind its
    `Router`, so the endpoint routes are answered before any of FastAPI's middleware (~0.1 ms
    less per call)."""
    app = create_app(component, settings)
    return Router(app, app.state.chainrule_routes)


def create_app(component: Component, settings: ServerSettings | None = None) -> FastAPI:
    """A FastAPI app serving `component` (run it with uvicorn, or use `chainrule.serve`).

    Example:
        ```python
        app = create_app(affine, ServerSettings(token="s3cret"))
        ```
    """
    settings = settings or ServerSettings()
    service = _Service(component, settings)
    app = app_with_docs(
        f"chainrule component '{component.name}'", (component.__doc__ or "").strip()
    )
    defs: dict[str, Any] = {}
    for name in component.endpoints:
        app.add_api_route(
            f"/{name}",
            service.route(name),
            methods=["POST"],
            openapi_extra=openapi_body(component, name, defs),
            summary=name,
            response_class=Response,
        )
    install_openapi(app, defs)
    routes = {f"/{n}": service.answer(n) for n in component.endpoints}
    routes.update(_tesseract_routes(app, service))
    app.add_middleware(Router, routes=routes)
    app.state.chainrule_routes = routes

    if settings.token is not None:  # /openapi.json, /docs and /redoc describe it too

        @app.middleware("http")
        async def require_token(request: Request, call_next: Any) -> Response:
            if request.url.path != "/health" and request.url.path not in routes:
                try:
                    service.authorize(request.headers)
                except AuthenticationError as e:
                    return error_response(e)
            response: Response = await call_next(request)
            return response

    @app.get("/health")
    def health() -> dict[str, Any]:
        cache = component.residuals  # kept linearizations: bounded by count, bytes and TTL
        return {
            "status": "ok",
            "name": component.name,
            "residuals": len(cache),
            "residual_bytes": cache.nbytes,
            "threads": service.pool.threads,  # worker threads started (hung ones included)
            "hung": service.pool.hung(),  # running past the call_timeout
        }

    @app.get("/schema")
    def schema(request: Request) -> Response:
        try:
            service.authorize(request.headers)
        except AuthenticationError as e:
            return error_response(e)
        return JSONResponse(service.handler.describe())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        offered = ", ".join(f"/{n}" for n in component.endpoints)
        message = f"{request.method} {request.url.path}: {exc.detail}; this server offers " + (
            f"POST {offered}, GET /health, GET /schema"
        )
        return error_response(EndpointUnavailableError(message), exc.status_code)

    return app
