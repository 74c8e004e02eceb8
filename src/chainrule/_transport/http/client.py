"""`connect(url)`: a remote component that is a `Component` like any other.

`connect` is the one remote component (`chainrule._transport.remote`) over
`HttpTransport`: `GET /schema` describes the component, `POST /<endpoint>` carries each
call, its trees in the wire format (binary by default). Connections are kept alive, one per
thread (`raw.RawConnection`, measured faster than `http.client` and httpx for small calls);
every endpoint call is idempotent, so calls are retried on connection errors, which is what
lets a restarted server pick up where a dead one left off, and (twice) on broken answers.
Nothing the server sends is trusted further than it must be: see `raw` for the answer itself,
`remote` for its schema.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.parse
import weakref
from typing import Any

from chainrule._component import finite as _finite
from chainrule._component.component import Component
from chainrule._schema.errors import ChainruleError, TransportError, error_from_dict
from chainrule._transport import wire as _wire
from chainrule._transport.remote import remote_component

from .raw import MAX_BYTES, RawConnection, TooLarge

__all__ = ["Connection", "HttpTransport", "connect"]

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

    def call(self, path: str, tree: Any) -> Any:
        """POST `tree` to `path` and decode the answer, re-raising server errors as themselves
        (what the answer holds is for the caller to check: `remote.RemoteBackend`)."""
        parts = _wire.encode_parts(tree, self.content_type)
        status, ctype, data = self.request("POST", path, parts)
        if status >= 400:
            raise _server_error(status, data, f"{self.url}{path}")
        return _wire.decode(data, ctype)

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


class HttpTransport:
    """The `Transport` of a chainrule HTTP server: one request per call over `conn`
    (keep-alive, retried on connection errors), trees in the wire format it negotiates."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.where = conn.url

    def schema(self) -> dict[str, Any]:
        document: dict[str, Any] = self.conn.get_json("/schema")
        return document

    def call(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self.conn.call(f"/{endpoint}", request)
        return answer

    def close(self) -> None:
        self.conn.close()


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
        return remote_component(HttpTransport(conn))
    except BaseException:
        conn.close()
        raise
