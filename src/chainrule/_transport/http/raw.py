"""A minimal HTTP/1.1 keep-alive client connection over a plain or TLS socket.

`http.client` parses every response's headers with the `email` package, which costs more
than a whole small component call; this connection speaks just what a chainrule server
answers (status line, headers, a Content-Length, chunked or read-to-close body). It trusts
the server no further than it must:

- `timeout` bounds the whole exchange: one deadline, checked before every socket operation
  (a socket timeout alone is per read, renewed by every byte a dripping server sends);
- a body is read into one buffer (no joining copy): a claimed length is allocated at once
  up to `PREALLOC`, as fast as it gets for arrays up to 16M float64; beyond it the buffer
  grows as the bytes arrive (measured ~10% more client CPU per byte past `PREALLOC`), so a
  claimed length costs memory only once it is sent; nothing is read past `max_bytes`;
- a malformed answer (status line, header line, length, chunk size, a body cut short) raises
  an `http.client.HTTPException`, a body over `max_bytes` the `TooLarge` one of them, and a
  closed or broken connection the same exceptions as `http.client`, so callers retry the same
  way.
"""

from __future__ import annotations

import http.client
import io
import math
import re
import socket
import ssl
import time

__all__ = ["MAX_BYTES", "PREALLOC", "BadResponse", "RawConnection", "TooLarge"]

MAX_BYTES = 2**32  # default limit of a response body
PREALLOC = 128 * 2**20  # a claimed Content-Length is allocated at once up to this many bytes
_MIN_GROWTH = 64 * 1024  # a buffer without a claimed length starts (and grows) at least this
_MAX_LINE = 65536
_MAX_HEADERS = 100
_SLACK = 0.005  # seconds a socket operation may end before or after the deadline
_SMALL = 64 * 1024  # bodies up to this size go out in the same send as the headers
_IOV_MAX = 512  # pieces per sendmsg call (Linux allows 1024)
_CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")


class BadResponse(http.client.HTTPException):
    """The answer breaks HTTP/1.1: a bad Content-Length or chunk size, too many header lines,
    or a body that ends before its declared length."""


class TooLarge(http.client.HTTPException):
    """The answer's body is larger than the connection's `max_bytes`.

    Attributes:
        size: the declared length, or how many bytes arrived before the limit was passed.
        limit: the connection's `max_bytes`.
        declared: whether `size` was declared by a Content-Length header.
    """

    def __init__(self, size: int, limit: int, *, declared: bool) -> None:
        self.size, self.limit, self.declared = size, limit, declared
        what = "declares" if declared else "has more than"
        super().__init__(f"the answer {what} {size} body bytes; the limit is {limit}")


class _DeadlineReader(io.RawIOBase):
    """The socket as a raw stream whose every operation ends by `deadline` (set per request).

    `arm` gives the socket the time left as its timeout, but only when that differs from the
    timeout it has by more than `_SLACK`: setting a timeout is a system call, and a small call
    makes a few socket operations well within that slack of each other.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.deadline = sock, math.inf
        self._timeout = sock.gettimeout() or math.inf

    def arm(self) -> None:
        """Let the next socket operation block until the deadline (within `_SLACK`) at most."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the deadline of the request passed")
        if abs(remaining - self._timeout) > _SLACK:
            self.sock.settimeout(remaining)
            self._timeout = remaining

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        self.arm()
        return self.sock.recv_into(buffer)


def _send_pieces(reader: _DeadlineReader, pieces: list[bytes | memoryview]) -> None:
    """Send `pieces` in order with scatter/gather `sendmsg`: one system call for the whole
    body where the kernel takes it, and no joining copy in user space."""
    views = [memoryview(p).cast("B") for p in pieces if len(p)]
    while views:
        reader.arm()
        sent = reader.sock.sendmsg(views[:_IOV_MAX])
        while views and sent >= views[0].nbytes:
            sent -= views[0].nbytes
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


def _grow(data: bytearray, end: int) -> None:
    """Extend `data` towards `end` bytes: double it (at least `_MIN_GROWTH`), never past `end`.

    The bytearray is resized with `realloc`, which moves a large block's pages without copying
    them; only the added zeros are written.
    """
    data += bytes(min(end, max(2 * len(data), _MIN_GROWTH)) - len(data))


class RawConnection:
    """One keep-alive connection to `host:port` (reconnects after a close).

    Arguments:
        host, port: the server.
        timeout: seconds one request may take in all (connect, send, read the answer).
        max_bytes: the largest response body accepted (`TooLarge` beyond it).
        tls: a context to speak TLS with (https), or None for plain HTTP.
    """

    def __init__(
        self,
        host: str,
        port: int,
        timeout: float,
        *,
        max_bytes: int = MAX_BYTES,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.max_bytes, self.tls = max_bytes, tls
        self._host_header = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._sock: socket.socket | None = None
        self._reader: _DeadlineReader | None = None
        self._file: io.BufferedReader | None = None

    def _connect(self, deadline: float) -> None:
        timeout = max(deadline - time.monotonic(), 1e-3)
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:
            sock = self.tls.wrap_socket(sock, server_hostname=self.host)
        self._sock, self._reader = sock, _DeadlineReader(sock)
        self._file = io.BufferedReader(self._reader)

    def close(self) -> None:
        """Close the socket; the next request opens a new one."""
        if self._sock is not None:
            assert self._file is not None  # set together with the socket
            self._file.close()
            self._sock.close()
        self._sock = self._reader = self._file = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | list[bytes | memoryview] | None,
        headers: dict[str, str],
    ) -> tuple[int, dict[str, str], bytearray]:
        """Send one request (a body may be a list of pieces, sent without joining them);
        return (status, lower-cased headers, body). The whole exchange ends by `timeout`."""
        deadline = time.monotonic() + self.timeout
        parts: list[bytes | memoryview] = (
            body if isinstance(body, list) else [body] if body is not None else []
        )
        size = sum(len(p) for p in parts)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._host_header}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {size}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            return self._exchange(head, parts, size, deadline)
        except BaseException:
            self.close()  # whatever is left of the answer would be read as the next one
            raise

    def _exchange(
        self, head: bytes, parts: list[bytes | memoryview], size: int, deadline: float
    ) -> tuple[int, dict[str, str], bytearray]:
        if self._sock is None:
            self._connect(deadline)
        assert self._sock is not None and self._reader is not None
        self._reader.deadline = deadline
        if size > _SMALL and self.tls is None:  # SSL sockets have no sendmsg
            _send_pieces(self._reader, [head, *parts])
        else:
            self._reader.arm()  # sendall's timeout bounds the whole send
            self._sock.sendall(b"".join([head, *parts]))
        status, headers = self._read_head()
        data = self._read_body(headers)
        if headers.get("connection", "").lower() == "close":
            self.close()
        return status, headers, data

    def _readline(self) -> bytes:
        assert self._file is not None  # only called while connected
        line = self._file.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        return line

    def _read_head(self) -> tuple[int, dict[str, str]]:
        line = self._readline()
        if not line:
            raise http.client.RemoteDisconnected("the server closed the connection")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise http.client.BadStatusLine(line.decode("latin-1", "replace"))
        headers: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            line = self._readline()
            if line in (b"\r\n", b"\n", b""):
                return int(parts[1]), headers
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        raise BadResponse(f"the answer has more than {_MAX_HEADERS} header lines")

    def _read_body(self, headers: dict[str, str]) -> bytearray:
        length = headers.get("content-length")
        if length is not None:
            return self._read_sized(length)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return self._read_chunked()
        data = bytearray()
        size = self._read_into(data, 0, self.max_bytes + 1, to_end=True)
        self.close()  # a body delimited by the end of the connection
        if size > self.max_bytes:
            raise TooLarge(self.max_bytes, self.max_bytes, declared=False)
        del data[size:]
        return data

    def _read_sized(self, length: str) -> bytearray:
        if not (length.isascii() and length.isdigit() and len(length) < 20):
            raise BadResponse(f"bad Content-Length {length[:40]!r}: expected a byte count")
        n = int(length)
        if n > self.max_bytes:
            raise TooLarge(n, self.max_bytes, declared=True)
        assert self._file is not None  # only called while connected
        data = bytearray(min(n, PREALLOC))
        got = self._file.readinto(data)  # all of it, unless it is larger than PREALLOC
        if got < n:
            self._read_into(data, got, n - got)
        return data

    def _read_chunked(self) -> bytearray:
        data, size = bytearray(), 0
        while n := self._chunk_size():
            if size + n > self.max_bytes:
                raise TooLarge(size + n, self.max_bytes, declared=False)
            size = self._read_into(data, size, n)
            if self._readline() not in (b"\r\n", b"\n"):
                raise BadResponse(f"chunk data longer than its size {n:#x}")
        while self._readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        del data[size:]
        return data

    def _chunk_size(self) -> int:
        line = self._readline()
        digits = line.split(b";", 1)[0].strip()
        if not _CHUNK_SIZE.fullmatch(digits):
            raise BadResponse(f"bad chunk size line {line[:40]!r}: expected hex digits")
        return int(digits, 16)

    def _read_into(self, data: bytearray, size: int, n: int, *, to_end: bool = False) -> int:
        """Read `n` bytes into `data` after its first `size`, growing it as they arrive; the
        new size. A stream that ends first is a truncated body, unless `to_end`."""
        assert self._file is not None  # only called while connected
        end = size + n
        while size < end:
            if size == len(data):
                _grow(data, end)
            with memoryview(data) as view:
                got = self._file.readinto(view[size : min(len(data), end)])
            if not got:
                if to_end:
                    return size
                raise BadResponse(f"the body ended after {size} of {end} bytes")
            size += got
        return size
