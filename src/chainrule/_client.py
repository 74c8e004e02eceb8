"""`connect(url)`: a remote component that is a `Component` like any other.

The client fetches `GET /schema`, rebuilds the schema classes (so inputs are validated here,
before anything crosses the network) and forwards every endpoint over HTTP with a
`RemoteBackend`. Connections are kept alive, one per thread (`http.client`, measured faster
than httpx for small calls); idempotent calls are retried on connection errors, which is what
lets a restarted server pick up where a dead one left off.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.parse
import weakref
from typing import TYPE_CHECKING, Any

from . import _finite, _tree, _wire
from ._backends import Backend
from ._component import Component
from ._endpoints import DERIVATIVES
from ._errors import ChainruleError, TransportError, error_from_dict
from ._http import RawConnection
from ._jsonschema import schema_from_json
from ._residuals import Residual
from ._schema import Schema, ShapeDtype, passthrough

if TYPE_CHECKING:
    from ._component import Point

__all__ = ["Connection", "RemoteBackend", "connect"]

_RETRYABLE = (
    ConnectionRefusedError,
    ConnectionResetError,
    ConnectionAbortedError,
    BrokenPipeError,
    http.client.RemoteDisconnected,
    http.client.CannotSendRequest,
    http.client.BadStatusLine,
)


class Connection:
    """Keep-alive HTTP connections to one server (one per thread), with retries.

    Arguments:
        url: `http://host:port` of the server.
        token: bearer token, if the server requires one.
        timeout: seconds to wait for an answer (a call that takes longer fails, not retried).
        retries: attempts after a connection error (refused, reset), with growing pauses.
        content_type: body format of requests and responses (`_wire.BINARY` or `_wire.JSON`).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 300.0,
        retries: int = 30,
        content_type: str = _wire.BINARY,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise TransportError(f"cannot connect to {url!r}: expected http://host:port")
        self.url = url.rstrip("/")
        self.scheme, self.host, self.port = parsed.scheme, parsed.hostname, parsed.port
        self.token, self.timeout, self.retries = token, timeout, retries
        self.content_type = _wire.content_type_of(content_type)
        self._local = threading.local()
        # Every thread's connection, so close() (or garbage collection) closes them all
        # instead of leaving sockets for the interpreter to warn about.
        self._open: set[RawConnection | _TLSConnection] = set()
        self._lock = threading.Lock()
        weakref.finalize(self, _close_all, self._open, self._lock)

    def _conn(self) -> RawConnection | _TLSConnection:
        conn: RawConnection | _TLSConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            port = self.port or (443 if self.scheme == "https" else 80)
            cls = _TLSConnection if self.scheme == "https" else RawConnection
            conn = cls(self.host, port, self.timeout)
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
        """(status, content type, body) of one request, retried on connection errors."""
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                return self._once(method, path, body)
            except _RETRYABLE as e:
                self._drop()
                if attempt == retries:
                    raise TransportError(
                        f"could not reach {self.url}{path} after {attempt + 1} attempts "
                        f"({type(e).__name__}: {e}); is the server running?"
                    ) from e
                # Pauses of 0.05 s doubling up to 1 s: the default 30 retries wait ~26 s in all,
                # long enough for a launched server to be restarted on a busy machine.
                time.sleep(min(0.05 * 2**attempt, 1.0))
            except TimeoutError as e:  # socket.timeout is TimeoutError
                self._drop()
                raise TransportError(
                    f"{self.url}{path} did not answer within {self.timeout} s; raise "
                    "timeout= in chainrule.connect, or check the server's log"
                ) from e
            except OSError as e:
                self._drop()
                raise TransportError(f"request to {self.url}{path} failed: {e}") from e
        raise AssertionError("unreachable")

    def call(self, path: str, tree: Any) -> Any:
        """POST `tree` to `path` and decode the answer, re-raising server errors as themselves."""
        parts = _wire.encode_parts(tree, self.content_type)
        status, ctype, data = self.request("POST", path, parts)
        if status >= 400:
            raise _server_error(status, data, f"{self.url}{path}")
        return _wire.decode(data, ctype)

    def get_json(self, path: str) -> Any:
        # Used to connect: a server that is not there should fail fast, not after ~26 s.
        status, _, data = self.request("GET", path, retries=min(self.retries, 3))
        if status >= 400:
            raise _server_error(status, data, f"{self.url}{path}")
        return json.loads(bytes(data))


class _TLSConnection:
    """`http.client` over TLS, with RawConnection's `request` signature."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self._conn = http.client.HTTPSConnection(host, port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | list[bytes | memoryview] | None,
        headers: dict[str, str],
    ) -> tuple[int, dict[str, str], bytearray]:
        sent = b"".join(body) if isinstance(body, list) else body
        self._conn.request(method, path, body=sent, headers=headers)
        resp = self._conn.getresponse()
        data = bytearray(resp.read())
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

    def close(self) -> None:
        self._conn.close()


def _close_all(conns: set[RawConnection | _TLSConnection], lock: threading.Lock) -> None:
    with lock:  # closed connections reopen on their thread's next call: keep them listed
        for conn in conns:
            conn.close()


def _server_error(status: int, data: bytearray, where: str) -> ChainruleError:
    try:
        info = json.loads(bytes(data))["error"]
        return error_from_dict(info)
    except (ValueError, KeyError, TypeError):
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
        answer = self.conn.call("/apply", body)
        if not keep:
            return answer["outputs"], None
        return answer["outputs"], Residual(answer["handle"], 0, None)

    def eval_shape(self, p: Point) -> Any:
        answer = self.conn.call("/eval_shape", {"inputs": _tree.dump(p.inputs)})
        tree = answer["outputs"]
        for path in answer["leaves"]:
            info = _lookup(tree, path)
            _set_path(tree, path, ShapeDtype(tuple(info["shape"]), _wire_dtype(info["dtype"])))
        with passthrough():
            return self.outputs.model_validate(tree)

    def _post(self, name: str, p: Point, res: Residual | None, **request: Any) -> Any:
        return self.conn.call(f"/{name}", self._body(p, res, **request))["result"]

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
    retries: int = 30,
    content_type: str = _wire.BINARY,
) -> Component:
    """A component served at `url` (by `chainrule serve`, `chainrule.serve` or `launch`).

    Arguments:
        url: `http://host:port` of the server.
        token: bearer token, if the server was started with one.
        timeout: seconds to wait for one answer.
        retries: reconnection attempts on connection errors (calls are idempotent).
        content_type: `"application/x-chainrule"` (binary, default) or `"application/json"`.

    Example:
        ```python
        remote = chainrule.connect("http://127.0.0.1:8000")
        remote.vjp({"x": x}, cotangents={"y": c})
        ```
    """
    conn = Connection(url, token=token, timeout=timeout, retries=retries, content_type=content_type)
    info = conn.get_json("/schema")
    inputs = schema_from_json(info["inputs"])
    outputs = schema_from_json(info["outputs"])
    backend = RemoteBackend(conn, info, inputs, outputs)
    component = Component(
        _not_local, inputs=inputs, outputs=outputs, backend=backend, name=str(info["name"])
    )
    component.url = conn.url  # type: ignore[attr-defined]
    return component
