"""A minimal HTTP/1.1 keep-alive client connection over a plain socket.

`http.client` parses every response's headers with the `email` package, which costs more
than a whole small component call; this connection speaks just what a chainrule server
answers (status line, headers, a Content-Length or chunked body) and reads bodies straight
into one preallocated buffer. It raises the same exceptions as `http.client` for a closed or
broken connection, so callers retry the same way.
"""

from __future__ import annotations

import http.client
import socket

__all__ = ["RawConnection"]

_MAX_LINE = 65536
_SMALL = 64 * 1024  # bodies up to this size go out in the same send as the headers


_IOV_MAX = 512  # pieces per sendmsg call (Linux allows 1024)


def _send_pieces(sock: socket.socket, pieces: list[bytes | memoryview]) -> None:
    """Send `pieces` in order with scatter/gather `sendmsg`: one system call for the whole
    body where the kernel takes it, and no joining copy in user space."""
    views = [memoryview(p).cast("B") for p in pieces if len(p)]
    while views:
        sent = sock.sendmsg(views[:_IOV_MAX])
        while views and sent >= views[0].nbytes:
            sent -= views[0].nbytes
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


class RawConnection:
    """One keep-alive connection to `host:port` (reconnects after a close)."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = None
        self._file: object = None

    def _connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock, self._file = sock, sock.makefile("rb")

    def close(self) -> None:
        """Close the socket; the next request opens a new one."""
        if self._sock is not None:
            self._file.close()  # type: ignore[attr-defined]
            self._sock.close()
        self._sock = self._file = None

    def request(
        self,
        method: str,
        path: str,
        body: bytes | list[bytes | memoryview] | None,
        headers: dict[str, str],
    ) -> tuple[int, dict[str, str], bytearray]:
        """Send one request (a body may be a list of pieces, sent without joining them);
        return (status, lower-cased headers, body)."""
        parts = body if isinstance(body, list) else [body] if body is not None else []
        size = sum(len(p) for p in parts)
        if self._sock is None:
            self._connect()
        assert self._sock is not None
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        lines.append(f"Content-Length: {size}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if size > _SMALL:
            _send_pieces(self._sock, [head, *parts])
        else:
            self._sock.sendall(b"".join([head, *parts]))
        status, response_headers = self._read_head()
        data = self._read_body(response_headers)
        if response_headers.get("connection", "").lower() == "close":
            self.close()
        return status, response_headers, data

    def _readline(self) -> bytes:
        line: bytes = self._file.readline(_MAX_LINE + 1)  # type: ignore[attr-defined]
        if len(line) > _MAX_LINE:
            raise http.client.LineTooLong("header line")
        return line

    def _read_head(self) -> tuple[int, dict[str, str]]:
        line = self._readline()
        if not line:
            self.close()
            raise http.client.RemoteDisconnected("the server closed the connection")
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            self.close()
            raise http.client.BadStatusLine(line.decode("latin-1", "replace"))
        headers: dict[str, str] = {}
        while (line := self._readline()) not in (b"\r\n", b"\n", b""):
            key, _, value = line.decode("latin-1").partition(":")
            headers[key.strip().lower()] = value.strip()
        return int(parts[1]), headers

    def _read_exact(self, n: int) -> bytearray:
        data = bytearray(n)
        view, got = memoryview(data), 0
        while got < n:
            k = self._file.readinto(view[got:])  # type: ignore[attr-defined]
            if not k:
                self.close()
                raise http.client.IncompleteRead(bytes(data[:got]), n - got)
            got += k
        return data

    def _read_body(self, headers: dict[str, str]) -> bytearray:
        length = headers.get("content-length")
        if length is not None:
            return self._read_exact(int(length))
        if headers.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while size := int(self._readline().split(b";")[0].strip() or b"0", 16):
                out += self._read_exact(size)
                self._readline()
            while self._readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return out
        data = bytearray(self._file.read())  # type: ignore[attr-defined]
        self.close()  # a body delimited by the end of the connection
        return data
