"""The HTTP face of a component: a FastAPI app built from any component and frozen settings.

Routes: `POST /<endpoint>` for every endpoint the component offers (see
`chainrule._component.endpoints.ENDPOINTS`), `GET /health`, `GET /schema`, plus
`/openapi.json`, `/docs` and `/redoc` (`openapi`). Bodies use the wire format of
`chainrule._transport.wire` (binary or JSON, negotiated by `Content-Type` and `Accept`;
`edge`). Every error is a JSON body `{"error": {"type", "message", "errors"}}` that
the client re-raises as the same `ChainruleError` subclass; no request can stop the server.

A request's body is read on the event loop within its size limit; decoding it, checking the
work it declares (`limits`), the call and encoding the answer then run in one worker
thread (`pool`, which times calls out and keeps serving while some hang), so neither a large
body nor a long call stalls other clients.
"""

from __future__ import annotations

import hmac
import ipaddress
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    ConfigDict,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
)
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive

from chainrule._component import finite as _finite
from chainrule._component.component import Component
from chainrule._component.endpoints import ENDPOINTS
from chainrule._component.residuals import Handle
from chainrule._schema import tree as _tree
from chainrule._schema.errors import (
    AuthenticationError,
    ChainruleError,
    EndpointUnavailableError,
    ValidationError,
)
from chainrule._schema.messages import MAX_REPORTED
from chainrule._schema.schema import ShapeDtype
from chainrule._transport import wire as _wire
from chainrule._transport.wire.decoder import decode_counted

from .edge import (
    Answer,
    Answered,
    FastPath,
    PartsResponse,
    Saturated,
    TimedOut,
    Types,
    content_types,
    error_response,
    read_body,
)
from .limits import check_work, limits_of
from .openapi import app_with_docs, install_openapi, openapi_body
from .pool import Busy, Expired, Pool

__all__ = ["ServerSettings", "asgi_app", "create_app", "is_loopback"]

_CHECK_HEADER = _finite.HEADER.lower()


class ServerSettings(BaseModel):
    """How a component is served (frozen; unknown keys refused).

    Arguments:
        host: interface to bind; anything but loopback requires `token`.
        port: TCP port (0: any free port).
        token: bearer token every request must carry (`Authorization: Bearer <token>`).
        max_body_bytes: larger request bodies get 413 before they are read whole.
        max_json_bytes: the same for JSON bodies, whose plain numbers take ~16x their text
            in memory once parsed (binary bodies are decoded in place): the default keeps a
            JSON request near 1 GiB of memory, like a binary one at `max_body_bytes`.
        max_elements: most array elements a request may ask for, counting what its shapes
            declare (a 0-length dimension as 1, so 2**40 empty rows count 2**40) and, for
            batched endpoints, batch size × input elements (the size of a batched vjp's
            answer). Above it: 413. The default is 2 GiB of float64.
        max_batch: most rows a batched request may have (each row may cost a call of the
            component's derivative), whatever their size. Above it: 413.
        allow_nonfinite: accept NaN/inf in input, tangent and cotangent arrays.
        residual_bytes: byte budget of kept linearizations (`apply` with `keep`).
        residual_ttl: seconds a kept linearization lives at most.
        threaded: run endpoints in worker threads, so `/health` and other requests are
            answered during a long (or hung) call; `False` runs calls with small bodies on the
            event loop (a few tens of µs less per call, but one long call blocks the server).
        call_timeout: seconds a call may take from its arrival; later, it is answered 504
            (naming the component and endpoint) and its worker thread counts as hung. `None`:
            no limit. The default is the client's (`chainrule.connect(timeout=300)`).
        max_threads: most worker threads, hung ones included; the pool grows up to it when
            calls are slow or hung, and answers 503 while every thread is hung.
        shutdown_timeout: seconds a stopping server (SIGTERM) waits for calls in progress
            before it cancels them and exits.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_body_bytes: PositiveInt = 2**30
    max_json_bytes: PositiveInt = 64 * 2**20
    max_elements: PositiveInt = 2**28
    max_batch: PositiveInt = 2**16
    allow_nonfinite: bool = True
    residual_bytes: int = 512 * 2**20
    residual_ttl: float = 600.0
    threaded: bool = True
    call_timeout: PositiveFloat | None = 300.0
    max_threads: PositiveInt = 32
    shutdown_timeout: NonNegativeInt = 10


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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


def _is_paths(value: Any) -> bool:
    return (
        value is None
        or isinstance(value, str)
        or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    )


# What each request keyword must be before it reaches the component: (check, expected).
_KEYWORDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "keep": (lambda v: isinstance(v, bool), "true or false"),
    "tangents": (lambda v: isinstance(v, dict), "an object {input path: array}"),
    "cotangents": (lambda v: isinstance(v, dict), "an object {output path: array}"),
    "of": (_is_paths, "a path, a list of paths or null"),
    "wrt": (_is_paths, "a path, a list of paths or null"),
    "handle": (lambda v: v is None or isinstance(v, str), "a handle string or null"),
}
# hvp weighs outputs by `cotangents` or names one scalar output `of` (then no cotangents).
_HVP: dict[str, tuple[Callable[[Any], bool], str]] = {
    "of": (lambda v: v is None or isinstance(v, str), "one scalar output path or null"),
    "cotangents": (lambda v: v is None or isinstance(v, dict), "an object {output path: array}"),
}
_REQUIRED = frozenset({"inputs", "tangents", "cotangents"})


def _some(names: Any, most: int = MAX_REPORTED) -> str:
    """`names` sorted, the first `most` of them shown: a body of 50,000 unknown keys gets an
    answer of bounded size."""
    shown = sorted(names)[:most] if len(names) > most else sorted(names)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return f"{shown}{more}"


def _request(name: str, payload: Any) -> dict[str, Any]:
    """The keyword arguments of endpoint `name` from a decoded body, checked."""
    allowed = {"inputs", *ENDPOINTS[name].request}
    if not isinstance(payload, dict):
        raise ValidationError(
            f"/{name} expects an object with keys {sorted(allowed)}, got {type(payload).__name__}",
            errors=[{"path": "(body)", "expected": "an object", "got": type(payload).__name__}],
        )
    required = _REQUIRED - {"cotangents"} if name == "hvp" else _REQUIRED
    unknown, missing = set(payload) - allowed, (allowed & required) - set(payload)
    if unknown or missing:
        problem = f"unknown keys {_some(unknown)}" if unknown else f"missing keys {sorted(missing)}"
        raise ValidationError(
            f"/{name}: {problem}; the body must be an object with keys {sorted(allowed)}",
            errors=[{"path": "(body)", "expected": sorted(allowed), "got": _some(payload)}],
        )
    for key in set(payload) - {"inputs"}:
        check, expected = _HVP[key] if name == "hvp" and key in _HVP else _KEYWORDS[key]
        if not check(payload[key]):
            got = type(payload[key]).__name__
            raise ValidationError(
                f"/{name}: '{key}' must be {expected}, got {got}",
                errors=[{"path": key, "expected": expected, "got": got}],
            )
    return dict(payload)


def _shapes_tree(out: Any) -> dict[str, Any]:
    leaves = _tree.leaves(out)
    described = {
        x.path: {"shape": list(x.value.shape), "dtype": np.dtype(x.value.dtype).name}
        for x in leaves
        if isinstance(x.value, ShapeDtype)
    }
    return {"outputs": _tree.replace_leaves(out, described).model_dump(), "leaves": list(described)}


def _call(component: Component, name: str, req: dict[str, Any], check: bool) -> dict[str, Any]:
    """Run endpoint `name` and shape its result as the response tree."""
    with _finite.scoped(check):
        return _run_endpoint(component, name, req)


def _run_endpoint(component: Component, name: str, req: dict[str, Any]) -> dict[str, Any]:
    handle = req.pop("handle", None)
    if handle is not None:
        req["handle"] = Handle.parse(handle, component.name)  # 422 if malformed
    inputs = req.pop("inputs")
    if name == "apply":
        if req.get("keep"):
            out, kept = component.apply(inputs, keep=True)
            return {"outputs": _tree.dump(out), "handle": kept.id}
        return {"outputs": _tree.dump(component.apply(inputs))}
    if name == "eval_shape":
        return _shapes_tree(component.eval_shape(inputs))
    method: Callable[..., Any] = getattr(component, name)
    return {"result": method(inputs, **req)}


_INLINE_JSON_BYTES = 2048


def _cheap(body: bytes | bytearray, incoming: str) -> bool:
    """Whether decoding `body` costs less than a hop to a worker thread (~25-80 µs): always
    for a binary body (zero-copy: ~3 µs whatever its size, measured), for JSON up to
    `_INLINE_JSON_BYTES` (plain numbers parse at ~10-30 µs per KiB, measured)."""
    return incoming == _wire.BINARY or len(body) <= _INLINE_JSON_BYTES


class _Service:
    """State shared by the routes: the component, its settings, the endpoint dispatch."""

    def __init__(self, component: Component, settings: ServerSettings) -> None:
        self.component = component
        self.settings = settings
        self.pool = Pool(settings.max_threads, settings.call_timeout, "chainrule")
        self.limits = limits_of(settings)
        component.residuals.max_bytes = settings.residual_bytes
        component.residuals.ttl = settings.residual_ttl

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
        """Endpoint `name` as a FastAPI route (for the OpenAPI document; `FastPath` answers
        the requests themselves with `answer`)."""
        answer = self.answer(name)

        async def endpoint(request: Request) -> Response:
            return await answer(request.headers, request.receive)

        endpoint.__name__ = name
        return endpoint

    def answer(self, name: str) -> Answer:
        """The handler of endpoint `name`: from the request headers and the ASGI `receive`
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
        """Decode the body, check it, run endpoint `name`, encode the answer."""
        decoded = decode_counted(body, types.incoming)
        req = _request(name, decoded.tree)
        check_work(name, req, decoded.elements, self.limits)
        if not self.settings.allow_nonfinite:
            _check_finite(req, "")
        result = _call(self.component, name, req, check)
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

    def schema(self) -> dict[str, Any]:
        comp = self.component
        return {
            "name": comp.name,
            "backend": comp.backend.name,
            "inputs": comp.inputs.model_json_schema(),
            "outputs": comp.outputs.model_json_schema(),
            "endpoints": comp.endpoints,
            "content_types": [_wire.BINARY, _wire.JSON],
            "max_body_bytes": self.settings.max_body_bytes,
            "max_json_bytes": self.settings.max_json_bytes,
            "max_elements": self.settings.max_elements,
            "max_batch": self.settings.max_batch,
            "call_timeout": self.settings.call_timeout,
        }


def asgi_app(component: Component, settings: ServerSettings | None = None) -> Any:
    """The ASGI application `chainrule serve` runs: `create_app`'s FastAPI app, with the
    endpoint routes answered before any of FastAPI's middleware (~0.1 ms less per call)."""
    app = create_app(component, settings)
    return FastPath(app, app.state.chainrule_routes)


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
    app.add_middleware(FastPath, routes=routes)
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
        return JSONResponse(service.schema())

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        offered = ", ".join(f"/{n}" for n in component.endpoints)
        message = f"{request.method} {request.url.path}: {exc.detail}; this server offers " + (
            f"POST {offered}, GET /health, GET /schema"
        )
        return error_response(EndpointUnavailableError(message), exc.status_code)

    return app
