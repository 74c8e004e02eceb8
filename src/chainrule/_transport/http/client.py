"""`connect(url)`: a remote component that is a `Component` like any other.

The client fetches `GET /schema`, rebuilds the schema classes (so inputs are validated here,
before anything crosses the network) and forwards every endpoint over HTTP with a
`RemoteBackend`. Connections are kept alive, one per thread (`raw.RawConnection`, measured
faster than `http.client` and httpx for small calls); every endpoint call is idempotent, so
calls are retried on connection errors, which is what lets a restarted server pick up where a
dead one left off, and (twice) on broken answers. Nothing the server sends is trusted further
than it must be: see `raw` for the answer itself, `remote_component` for its schema.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.parse
import weakref
from typing import TYPE_CHECKING, Any

import pydantic

from chainrule._component import finite as _finite
from chainrule._component.backends.base import Backend
from chainrule._component.component import Component
from chainrule._component.endpoints import DERIVATIVES
from chainrule._component.residuals import Residual
from chainrule._schema import tree as _tree
from chainrule._schema.errors import ChainruleError, TransportError, error_from_dict
from chainrule._schema.jsonschema import schema_from_json
from chainrule._schema.schema import Schema, ShapeDtype, passthrough
from chainrule._transport import wire as _wire

from .raw import MAX_BYTES, RawConnection, TooLarge

if TYPE_CHECKING:
    from chainrule._component.component import Point

__all__ = ["Connection", "RemoteBackend", "connect", "remote_component"]

_RETRYABLE = (
    ConnectionRefusedError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    http.client.RemoteDisconnected,
    http.client.CannotSendRequest,
)
# A broken answer (a body cut short, a bad length or chunk size, an overlong header line) is
# retried too, as every endpoint call is idempotent (same inputs, same answer), but only this
# many times: a server that keeps answering badly will not get better in the next 26 s.
_BROKEN_RETRIES = 2


def _check_header_value(name: str, value: str) -> None:
    """Refuse what HTTP cannot carry in a header value: a line break (which would inject
    headers), other control characters, or characters outside Latin-1."""
    for i, char in enumerate(value):
        # The character itself is not shown: the value may be a secret.
        if char in "\r\n":
            problem = "a line break (CR or LF), which would inject HTTP headers"
        elif ord(char) > 0xFF:
            problem = "a character outside Latin-1 (HTTP header values are bytes)"
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            problem = f"the control character U+{ord(char):04X}"
        else:
            continue
        raise TransportError(
            f"{name} cannot be sent in an HTTP header: expected printable Latin-1 characters, "
            f"got {problem} at position {i}. Fix: use the {name} the server was given, "
            "without line breaks, e.g. `secrets.token_urlsafe()`."
        )


def _parse_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of `http://host:port`; TransportError naming what is wrong."""
    parsed = urllib.parse.urlsplit(url)
    try:
        port = parsed.port
    except ValueError as e:
        raise TransportError(f"cannot connect to {url!r}: {e}; expected http://host:port") from e
    host = parsed.hostname
    if parsed.scheme not in ("http", "https") or not host:
        raise TransportError(f"cannot connect to {url!r}: expected http://host:port")
    if not host.isascii() or not host.isprintable() or " " in host:
        raise TransportError(
            f"cannot connect to {url!r}: expected an ASCII host name or address, got {host!r}"
            " (write an international domain name in its xn-- form)"
        )
    return parsed.scheme, host, port or (443 if parsed.scheme == "https" else 80)


class Connection:
    """Keep-alive HTTP connections to one server (one per thread), with retries.

    Arguments:
        url: `http://host:port` of the server.
        token: bearer token, if the server requires one.
        timeout: seconds one request may take, from sending it to the last byte of the answer
            (a call that takes longer fails, not retried).
        retries: attempts after a connection error (refused, reset), with growing pauses; a
            broken answer (a truncated body, a bad length) is retried at most twice.
        content_type: body format of requests and responses (`wire.BINARY` or `_wire.JSON`).
        max_response_bytes: the largest answer body accepted.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 300.0,
        retries: int = 4,
        content_type: str = _wire.BINARY,
        max_response_bytes: int = MAX_BYTES,
    ) -> None:
        self.scheme, self.host, self.port = _parse_url(url)
        if token is not None:
            _check_header_value("token", token)
        self.url = url.rstrip("/")
        self.token, self.timeout, self.retries = token, timeout, retries
        self.max_response_bytes = max_response_bytes
        self.content_type = _wire.content_type_of(content_type)
        self._local = threading.local()
        # Every thread's connection, so close() (or garbage collection) closes them all
        # instead of leaving sockets for the interpreter to warn about.
        self._open: set[RawConnection] = set()
        self._lock = threading.Lock()
        weakref.finalize(self, _close_all, self._open, self._lock)

    def _conn(self) -> RawConnection:
        conn: RawConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            tls = ssl.create_default_context() if self.scheme == "https" else None
            conn = RawConnection(
                self.host, self.port, self.timeout, max_bytes=self.max_response_bytes, tls=tls
            )
            self._local.conn = conn
            with self._lock:
                self._open.add(conn)
        return conn

    def _drop(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            with self._lock:
                self._open.discard(conn)
        self._local.conn = None

    def close(self) -> None:
        """Close the connections of every thread (a later call opens a new one)."""
        _close_all(self._open, self._lock)

    def _headers(self, body: object) -> dict[str, str]:
        headers = {"Accept": self.content_type}
        if body is not None:
            headers["Content-Type"] = self.content_type
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if _finite.active():  # the server checks too, naming the component where NaN appears
            headers[_finite.HEADER] = "1"
        return headers

    def _once(
        self, method: str, path: str, body: bytes | list[bytes | memoryview] | None
    ) -> tuple[int, str, bytearray]:
        status, headers, data = self._conn().request(method, path, body, self._headers(body))
        return status, headers.get("content-type", ""), data

    def request(
        self,
        method: str,
        path: str,
        body: bytes | list[bytes | memoryview] | None = None,
        retries: int | None = None,
    ) -> tuple[int, str, bytearray]:
        """(status, content type, body) of one request, retried on connection errors and
        (at most twice) on broken answers."""
        retries = self.retries if retries is None else retries
        broken = 0
        for attempt in range(retries + 1):
            try:
                return self._once(method, path, body)
            except _RETRYABLE as e:
                error: Exception = e
            except TooLarge as e:
                self._drop()
                raise self._too_large(path, e) from e
            except http.client.HTTPException as e:
                error, broken = e, broken + 1
                if broken > min(retries, _BROKEN_RETRIES):
                    self._drop()
                    raise self._broken(path, e, broken) from e
            except TimeoutError as e:  # socket.timeout is TimeoutError
                self._drop()
                raise TransportError(
                    f"{self.url}{path} did not answer within {self.timeout} s; raise "
                    "timeout= in chainrule.connect, or check the server's log"
                ) from e
            except OSError as e:
                self._drop()
                raise TransportError(f"request to {self.url}{path} failed: {e}") from e
            self._drop()
            if attempt == retries:
                raise self._unreachable(path, error, attempt + 1) from error
            # Pauses of 0.05 s doubling up to 1 s: the default 4 retries wait 0.75 s in all;
            # launch's client makes 30 (~26 s), long enough for its supervisor to restart
            # the server on a busy machine.
            time.sleep(min(0.05 * 2**attempt, 1.0))
        raise AssertionError("unreachable")

    def _unreachable(self, path: str, e: Exception, attempts: int) -> TransportError:
        if isinstance(e, http.client.HTTPException) and not isinstance(e, _RETRYABLE):
            return self._broken(path, e, attempts)
        return TransportError(
            f"could not reach {self.url}{path} after {attempts} attempts "
            f"({type(e).__name__}: {e}); is the server running?"
        )

    def _broken(self, path: str, e: Exception, times: int) -> TransportError:
        return TransportError(
            f"{self.url}{path} sent a broken HTTP answer {times} times, last: "
            f"{type(e).__name__}: {e}. The server (or a proxy on the way) cut the answer "
            "short or garbled it; check the server's log."
        )

    def _too_large(self, path: str, e: TooLarge) -> TransportError:
        return TransportError(
            f"the answer of {self.url}{path} is too large: {e}. This client accepts answers "
            f"up to max_response_bytes={self.max_response_bytes}; raise it in "
            "chainrule.connect if answers this large are expected."
        )

    def call(self, path: str, tree: Any, expect: tuple[str, ...] = ()) -> Any:
        """POST `tree` to `path` and decode the answer, re-raising server errors as themselves;
        an answer that is not an object with the keys `expect` is a TransportError."""
        parts = _wire.encode_parts(tree, self.content_type)
        status, ctype, data = self.request("POST", path, parts)
        if status >= 400:
            raise _server_error(status, data, f"{self.url}{path}")
        answer = _wire.decode(data, ctype)
        if expect and not (isinstance(answer, dict) and all(k in answer for k in expect)):
            got = sorted(answer) if isinstance(answer, dict) else type(answer).__name__
            raise TransportError(
                f"{self.url}{path} answered {got}, not an object with {list(expect)}; is it a "
                "chainrule server of the same version as this client?"
            )
        return answer

    def get_json(self, path: str) -> Any:
        """GET `path` and decode its JSON answer (TransportError if it is not JSON)."""
        # Used to connect: a server that is not there should fail fast, not after ~26 s.
        status, _, data = self.request("GET", path, retries=min(self.retries, 3))
        if status >= 400:
            raise _server_error(status, data, f"{self.url}{path}")
        try:
            return json.loads(bytes(data))
        except (ValueError, RecursionError) as e:
            snippet = bytes(data[:80]).decode("utf-8", "replace")
            raise TransportError(
                f"{self.url}{path} answered with a body that is not JSON ({e}): {snippet!r}; "
                "is this a chainrule server?"
            ) from e


def _close_all(conns: set[RawConnection], lock: threading.Lock) -> None:
    with lock:  # closed connections reopen on their thread's next call: keep them listed
        for conn in conns:
            conn.close()


def _server_error(status: int, data: bytearray, where: str) -> ChainruleError:
    try:
        info = json.loads(bytes(data))["error"]
        return error_from_dict(info)
    except (ValueError, LookupError, TypeError, AttributeError, RecursionError):
        snippet = bytes(data[:200]).decode("utf-8", "replace")
        return TransportError(f"{where} answered HTTP {status}: {snippet}")


def _set_path(tree: Any, path: str, value: Any) -> None:
    *head, last = path.split(".")
    for key in head:
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    if isinstance(tree, list):
        tree[int(last)] = value
    else:
        tree[last] = value


class RemoteBackend(Backend):
    """Forwards every endpoint to a chainrule server."""

    name = "remote"
    provenance = "remote"
    cost = 1.0
    native: tuple[str, ...] = ()  # type: ignore[misc]  # set per server below

    def __init__(
        self, conn: Connection, info: dict[str, Any], inputs: type[Schema], outputs: type[Schema]
    ) -> None:
        super().__init__(_not_local, inputs, outputs)
        self.conn = conn
        self.offered: dict[str, str] = dict(info["endpoints"])
        self.native = tuple(n for n in DERIVATIVES if n in self.offered)
        self.eval_shape_provenance = f"remote: {self.offered.get('eval_shape', 'none')}"  # type: ignore[misc]
        self.static_shapes = info.get("backend") in ("jax", "torch")  # type: ignore[misc]
        self.cheap_eval_shape = self.static_shapes  # type: ignore[misc]

    def close(self) -> None:
        self.conn.close()

    def provenance_of(self, name: str) -> str:
        return f"remote: {self.offered.get(name, 'none')}"

    @staticmethod
    def _body(p: Point, res: Residual | None, **request: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"inputs": _tree.dump(p.inputs)}
        body.update({k: list(v) if isinstance(v, tuple) else v for k, v in request.items()})
        if res is not None and isinstance(res.data, str):
            body["handle"] = res.data
        return body

    def apply(self, p: Point, keep: bool) -> tuple[Any, Residual | None]:
        body = {"inputs": _tree.dump(p.inputs), "keep": keep}
        answer = self.conn.call("/apply", body, ("outputs", "handle") if keep else ("outputs",))
        if not keep:
            return answer["outputs"], None
        return answer["outputs"], Residual(answer["handle"], 0, None)

    def eval_shape(self, p: Point) -> Any:
        answer = self.conn.call(
            "/eval_shape", {"inputs": _tree.dump(p.inputs)}, ("outputs", "leaves")
        )
        tree = answer["outputs"]
        for path in answer["leaves"]:
            info = _lookup(tree, path)
            _set_path(tree, path, ShapeDtype(tuple(info["shape"]), _wire_dtype(info["dtype"])))
        with passthrough():
            return self.outputs.model_validate(tree)

    def _post(self, name: str, p: Point, res: Residual | None, **request: Any) -> Any:
        return self.conn.call(f"/{name}", self._body(p, res, **request), ("result",))["result"]

    def jvp(self, p: Point, res: Residual | None, **request: Any) -> Any:
        return self._post("jvp", p, res, **request)

    def vjp(self, p: Point, res: Residual | None, **request: Any) -> Any:
        return self._post("vjp", p, res, **request)

    def jacobian(self, p: Point, res: Residual | None, **request: Any) -> Any:
        return self._post("jacobian", p, res, **request)

    def batched_jvp(self, p: Point, res: Residual | None, **request: Any) -> Any:
        return self._post("batched_jvp", p, res, **request)

    def batched_vjp(self, p: Point, res: Residual | None, **request: Any) -> Any:
        return self._post("batched_vjp", p, res, **request)

    def hvp(self, p: Point, res: Residual | None, **request: Any) -> Any:
        return self._post("hvp", p, None, **request)


def _lookup(tree: Any, path: str) -> Any:
    for key in path.split("."):
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    return tree


def _wire_dtype(name: str) -> Any:
    import numpy as np

    return np.dtype(name)


def _not_local(inputs: Any) -> Any:
    raise TransportError("a remote component runs on its server; call its endpoints instead")


def connect(
    url: str,
    *,
    token: str | None = None,
    timeout: float = 300.0,
    retries: int = 4,
    content_type: str = _wire.BINARY,
    max_response_bytes: int = MAX_BYTES,
) -> Component:
    """A component served at `url` (by `chainrule serve`, `chainrule.serve` or `launch`).

    Arguments:
        url: `http://host:port` of the server.
        token: bearer token, if the server was started with one.
        timeout: seconds one call may take, from sending the request to the last byte of
            the answer (per attempt; a call that times out is not retried).
        retries: reconnection attempts on connection errors (calls are idempotent); the
            default 4 wait 0.75 s in all (the client `launch` gives waits ~26 s, while its
            supervisor restarts a dead server); a broken answer (a body cut short, a bad
            length) is retried at most twice.
        content_type: `"application/x-chainrule"` (binary, default) or `"application/json"`.
        max_response_bytes: the largest answer accepted (default 4 GiB); a larger one is a
            `TransportError` naming this limit, before its bytes are read.

    Example:
        ```python
        remote = chainrule.connect("http://127.0.0.1:8000")
        remote.vjp({"x": x}, cotangents={"y": c})
        ```
    """
    conn = Connection(
        url,
        token=token,
        timeout=timeout,
        retries=retries,
        content_type=content_type,
        max_response_bytes=max_response_bytes,
    )
    try:
        return remote_component(conn, conn.get_json("/schema"))
    except BaseException:
        conn.close()
        raise


class _ServerInfo(pydantic.BaseModel):
    """The parts of a server's `GET /schema` answer the client uses (the rest is ignored)."""

    model_config = pydantic.ConfigDict(extra="ignore", frozen=True, strict=True)

    name: str
    backend: str | None = None
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    endpoints: dict[str, str]


def remote_component(conn: Connection, document: Any) -> Component:
    """The component described by a server's `GET /schema` answer, called through `conn`.

    Returns:
        The component; a `TransportError` saying why if the document is not a valid schema.
    """
    where = f"{conn.url}/schema"
    try:
        info = _ServerInfo.model_validate(document)
    except pydantic.ValidationError as e:
        first = e.errors()[0]
        path = ".".join(str(p) for p in first["loc"]) or "the document"
        raise _bad_schema(where, f"{path}: {first['msg']}", e.error_count()) from e
    try:
        inputs = schema_from_json(info.inputs, "inputs")
        outputs = schema_from_json(info.outputs, "outputs")
        backend = RemoteBackend(conn, info.model_dump(), inputs, outputs)
        component = Component(
            _not_local, inputs=inputs, outputs=outputs, backend=backend, name=info.name
        )
    except ChainruleError as e:
        raise _bad_schema(where, e.message, 1) from e
    component.url = conn.url  # type: ignore[attr-defined]
    return component


def _bad_schema(where: str, why: str, count: int) -> TransportError:
    more = f" (and {count - 1} more problems)" if count > 1 else ""
    return TransportError(
        f"{where} is not a valid chainrule schema: {why}{more}. Is it a chainrule server, "
        "of the same chainrule version as this client?"
    )
