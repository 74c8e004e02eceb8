"""A tiny hostile HTTP server on a raw socket, for client tests.

It answers `GET /schema` with the schema of a one-array component `sq` (so `cr.connect`
works) and every other request with whatever a test scripts: truncated bodies, lying
lengths, bad chunk sizes, bytes dripped one at a time. Scripts get the connection's socket
and the number of the request on that path (1 for the first), and write the answer
themselves.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import chainrule as cr


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


SCHEMA = {
    "name": "sq",
    "backend": "numpy",
    "inputs": In.model_json_schema(),
    "outputs": Out.model_json_schema(),
    "endpoints": {"apply": "author", "eval_shape": "none", "vjp": "derived"},
}

Script = Callable[[socket.socket, int], None]
"""Writes the answer to one request: (connection, how many requests on this path so far)."""


def answer(body: bytes, *, ctype: str = "application/json", status: int = 200) -> bytes:
    """A well-formed answer with a Content-Length."""
    head = (
        f"HTTP/1.1 {status} OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    )
    return head.encode() + b"\r\n" + body


def good(x: list[float]) -> bytes:
    """The right answer to `sq.apply({"x": x})`."""
    return answer(json.dumps({"outputs": {"y": [v * v for v in x]}}).encode())


def send(data: bytes) -> Script:
    """A script that sends `data` and closes the connection."""

    def script(sock: socket.socket, n: int) -> None:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    return script


def drip(head: bytes, every: float, total: float) -> Script:
    """Send `head`, then one byte every `every` seconds for `total` seconds."""

    def script(sock: socket.socket, n: int) -> None:
        sock.sendall(head)
        deadline = time.monotonic() + total
        while time.monotonic() < deadline:
            time.sleep(every)
            sock.sendall(b"1")

    return script


def first_then(first: Script, then: Script, times: int = 1) -> Script:
    """`first` for the first `times` requests, `then` after."""
    return lambda sock, n: (first if n <= times else then)(sock, n)


class Hostile:
    """The server: `routes` maps a path to its script (unknown paths get 404)."""

    def __init__(
        self, routes: dict[str, Script], schema: Any = SCHEMA, tls: ssl.SSLContext | None = None
    ) -> None:
        self.routes = {"/schema": send_json(schema), **routes}
        self.tls = tls
        self.hits: Counter[str] = Counter()
        self._listener = socket.create_server(("127.0.0.1", 0))
        scheme, host = ("https", "localhost") if tls else ("http", "127.0.0.1")
        self.url = f"{scheme}://{host}:{self._listener.getsockname()[1]}"
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()

    def _serve(self) -> None:
        self._listener.settimeout(0.05)  # closing a socket does not wake a blocked accept
        while not self._stop.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            thread = threading.Thread(target=self._answer, args=(sock,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _answer(self, sock: socket.socket) -> None:
        try:
            if self.tls is not None:
                sock = self.tls.wrap_socket(sock, server_side=True)
            path = _read_request(sock)
            if path is None:
                return
            self.hits[path] += 1
            script = self.routes.get(path, send(answer(b"{}", status=404)))
            script(sock, self.hits[path])
        except OSError:
            pass  # the client gave up first
        finally:
            sock.close()

    @contextmanager
    def running(self) -> Iterator[Hostile]:
        thread = threading.Thread(target=self._serve, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(5)
            self._listener.close()
            for t in self._threads:
                t.join(5)


def send_json(document: Any) -> Script:
    return send(answer(json.dumps(document).encode()))


def _read_request(sock: socket.socket) -> str | None:
    """Read one request (head and Content-Length body); its path, or None if none came."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-length":
            length = int(value)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        body += chunk
    return lines[0].split()[1]
