"""Security of a served component, beyond test_server.py's basics: who may bind where, that a
refused token stops a request before anything else happens, that an oversized body is refused
before it is read (or buffered) whole, that the OpenAPI pages are guarded like the rest, and
that decoding a body never imports, executes or opens anything (checked with an audit hook)."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import pickle
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import chainrule as cr
import hostile
from chainrule._transport import wire as _wire
from chainrule._transport.http.serving import check_bind
from chainrule._transport.settings import ServerSettings, is_loopback

TOKEN = "s3cret"
LIMIT = 8192


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


CALLS: list[str] = []


def _counted(name: str) -> cr.Component:
    """A numpy component that records every call of its function and written derivatives."""

    def fn(inputs: In) -> Out:
        CALLS.append("apply")
        return Out(y=2.0 * inputs.x)

    comp = cr.component(fn, inputs=In, outputs=Out, backend="numpy", name=name)

    @comp.def_vjp
    def vjp(inputs: In, cotangents: dict[str, Any]) -> dict[str, Any]:
        CALLS.append("vjp")
        return {"x": 2.0 * cotangents["y"]}

    return comp


@pytest.fixture(scope="module")
def guarded() -> Iterator[cr.Server]:
    with cr.serve(_counted("guarded"), token=TOKEN, max_body_bytes=LIMIT) as server:
        yield server


@pytest.fixture(scope="module")
def small() -> Iterator[cr.Server]:
    with cr.serve(_counted("small"), max_body_bytes=LIMIT) as server:
        yield server


X = {"x": np.array([1.0, 2.0, 3.0])}
BODIES: dict[str, dict[str, Any]] = {
    "apply": {"inputs": X},
    "eval_shape": {"inputs": X},
    "jvp": {"inputs": X, "tangents": {"x": np.ones(3)}},
    "vjp": {"inputs": X, "cotangents": {"y": np.ones(3)}},
    "jacobian": {"inputs": X},
    "batched_jvp": {"inputs": X, "tangents": {"x": np.ones((2, 3))}},
    "batched_vjp": {"inputs": X, "cotangents": {"y": np.ones((2, 3))}},
}


def _request(
    server: cr.Server,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read(), response.getheader("content-type") or ""
    finally:
        conn.close()


def _error_type(status: int, data: bytes, code: int) -> str:
    assert status == code, data[:300]
    error = json.loads(data)["error"]
    assert set(error) == {"type", "message", "errors"}, error
    return str(error["type"])


# ---- where a server may listen -----------------------------------------------------------------


@pytest.mark.parametrize("token", [None, ""], ids=["no-token", "empty-token"])
@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "192.0.2.7", "10.0.0.1", "example.com", "localhost.example.com"]
)
def test_non_loopback_bind_without_a_token_refuses_to_start(host: str, token: str | None) -> None:
    before = set(threading.enumerate())
    with pytest.raises(cr.LaunchError, match=r"refusing to serve on .* without a token"):
        cr.serve(_counted("open"), host=host, token=token)
    assert not set(threading.enumerate()) - before  # refused before a server thread started


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("127.0.0.1.example.com", False),
        ("LOCALHOST.example.com", False),
        ("::ffff:10.0.0.1", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback
    if not loopback:
        with pytest.raises(cr.LaunchError, match="without a token"):
            check_bind(ServerSettings(host=host))
        check_bind(ServerSettings(host=host, token=TOKEN))


def test_cli_serve_refuses_a_non_loopback_bind_without_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from chainrule._cli.app import app
    from chainrule._transport.http import serving as _serving

    started: list[Any] = []
    monkeypatch.setattr(_serving, "serve_forever", lambda *a, **k: started.append(a))
    monkeypatch.delenv("CHAINRULE_TOKEN", raising=False)
    module = tmp_path / "comp.py"
    module.write_text(
        "import chainrule as cr\n\n"
        "class In(cr.Schema):\n    x: float\n\n"
        "class Out(cr.Schema):\n    y: float\n\n"
        "comp = cr.component(lambda i: Out(y=i.x), inputs=In, outputs=Out, backend='numpy',"
        " name='cli')\n"
    )
    result = CliRunner().invoke(app, ["serve", f"{module}:comp", "--host", "0.0.0.0"])
    assert result.exit_code != 0
    assert "without a token" in result.output
    assert started == []
    result = CliRunner().invoke(
        app, ["serve", f"{module}:comp", "--host", "0.0.0.0", "--token", TOKEN, "--port", "0"]
    )
    assert result.exit_code == 0, result.output
    assert len(started) == 1  # with a token it gets as far as starting the server


# ---- tokens ------------------------------------------------------------------------------------

BAD_AUTH: list[dict[str, str]] = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN} "},
    {"Authorization": f"Bearer  {TOKEN}"},
    {"Authorization": f"bearer{TOKEN}"},
    {"Authorization": TOKEN},
    {"Authorization": f"Basic {base64.b64encode(f'user:{TOKEN}'.encode()).decode()}"},
    {"Authorization": f"Token {TOKEN}"},
    {"Authorization": f"Bearer {TOKEN.upper()}"},
    {"Authorization": "Bearer s3cr\u00e9t"},
    {"X-Token": TOKEN},
    {"Cookie": f"token={TOKEN}"},
]


def test_wrong_and_missing_tokens_never_reach_the_component(guarded: cr.Server) -> None:
    comp = guarded.component
    calls_before, counted_before = dict(comp.calls), len(CALLS)
    for route, tree in BODIES.items():
        for ctype in (_wire.JSON, _wire.BINARY):
            body = _wire.encode(tree, ctype)
            for auth in BAD_AUTH:
                status, data, _ = _request(
                    guarded, "POST", f"/{route}", body, {"Content-Type": ctype, **auth}
                )
                assert _error_type(status, data, 401) == "AuthenticationError", (route, auth)
    for auth in BAD_AUTH:
        status, data, _ = _request(guarded, "POST", f"/apply?token={TOKEN}", b"{}", auth)
        assert status == 401
        status, data, _ = _request(guarded, "GET", "/schema", None, auth)
        assert _error_type(status, data, 401) == "AuthenticationError"
    assert len(CALLS) == counted_before
    assert dict(comp.calls) == calls_before  # no endpoint was even entered
    status, data, ctype = _request(
        guarded,
        "POST",
        "/vjp",
        _wire.encode(BODIES["vjp"]),
        {"Content-Type": _wire.BINARY, "Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 200, data
    np.testing.assert_array_equal(_wire.decode(data, ctype)["result"]["x"], 2.0 * np.ones(3))
    assert CALLS[counted_before:] == ["vjp"]


def test_the_token_is_checked_before_the_body_is_read_or_decoded(guarded: cr.Server) -> None:
    """A refused token gets 401 whatever the body: too large, malformed or of an unsupported
    type: nothing about the body is looked at for an unauthenticated caller."""
    for body, headers in [
        (b"x" * (2 * LIMIT), {"Content-Type": _wire.JSON}),
        (b"{not json", {"Content-Type": _wire.JSON}),
        (b"CHRULE01" + b"\xff" * 8, {"Content-Type": _wire.BINARY}),
        (pickle.dumps({"a": 1}), {"Content-Type": "application/python-pickle"}),
    ]:
        status, data, _ = _request(guarded, "POST", "/apply", body, headers)
        assert _error_type(status, data, 401) == "AuthenticationError"
    # Over a raw socket: the 401 comes back although most of the declared body never arrives.
    status, data, _ = _partial_post(guarded.port, "/apply", declared=10 * LIMIT, sent=100)
    assert _error_type(status, data, 401) == "AuthenticationError"


def test_several_authorization_headers_do_not_help(guarded: cr.Server) -> None:
    """A wrong first Authorization header is refused even if a right one follows."""
    body = json.dumps({"inputs": {"x": [1.0]}}).encode()
    request = (
        b"POST /apply HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer wrong\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    status, data = _exchange(guarded.port, request)
    assert status in (400, 401), data  # refused either by uvicorn or by the token check


def test_openapi_and_docs_pages_need_the_token_too(guarded: cr.Server) -> None:
    """`ServerSettings.token` is "the bearer token every request must carry"; /schema asks for
    it, but FastAPI's /openapi.json, /docs and /redoc (the same schemas, and more) did not."""
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        status, data, _ = _request(guarded, "GET", path)
        assert _error_type(status, data, 401) == "AuthenticationError", path
        status, _, _ = _request(guarded, "GET", path, None, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200, path
    assert _request(guarded, "GET", "/health")[0] == 200


# ---- body size ---------------------------------------------------------------------------------


def _exchange(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, bytes]:
    """Send raw bytes; read one response (status, body) without sending anything more."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        return _read_response(sock)


def _read_response(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


def _partial_post(
    port: int, path: str, declared: int, sent: int, headers: bytes = b""
) -> tuple[int, bytes, float]:
    """POST declaring `declared` bytes but sending only `sent` of them, keeping the connection
    open: the answer must come without the rest of the body."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n"
    ).encode()
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + headers + b"\r\n" + b"[" * sent)
        status, body = _read_response(sock)
    return status, body, time.monotonic() - start


@pytest.mark.parametrize("declared", [LIMIT + 1, 10 * LIMIT, 2**40, 2**63 - 1])
def test_oversized_content_length_gets_413_before_the_body_arrives(
    small: cr.Server, declared: int
) -> None:
    counted = len(CALLS)
    status, data, elapsed = _partial_post(small.port, "/apply", declared=declared, sent=100)
    error = json.loads(data)["error"]
    assert status == 413 and error["type"] == "WireFormatError", data
    assert f"limit of {LIMIT} bytes" in error["message"]
    assert elapsed < 4  # answered at once, not after a read timeout
    assert len(CALLS) == counted
    assert _request(small, "GET", "/health")[0] == 200


@pytest.mark.parametrize("declared", ["1" + "0" * 30, "-1", "+9000", "9e9", "0x2000", " 9000 9"])
def test_unreadable_content_lengths_are_refused(small: cr.Server, declared: str) -> None:
    """Lengths beyond 64 bits or not in digits are refused by the HTTP parser, never read."""
    request = (
        "POST /apply HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {declared}\r\n\r\n[1"
    ).encode()
    status, _ = _exchange(small.port, request)
    assert 400 <= status < 500
    assert _request(small, "GET", "/health")[0] == 200


def test_oversized_chunked_body_gets_413_before_it_ends(small: cr.Server) -> None:
    """No Content-Length: the server counts what arrives and stops at the limit; the last
    chunk is never sent."""
    chunk = b"[" * 1000
    request = (
        b"POST /apply HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    request += b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(LIMIT // 1000 + 2))
    start = time.monotonic()
    status, data = _exchange(small.port, request)  # no terminating 0-length chunk
    assert time.monotonic() - start < 4
    error = json.loads(data)["error"]
    assert status == 413 and error["type"] == "WireFormatError", data
    assert _request(small, "GET", "/health")[0] == 200


def test_a_lying_content_length_is_refused(small: cr.Server) -> None:
    """More bytes than declared, or a connection closed early, never reach the decoder as a
    valid body; the server keeps serving."""
    body = json.dumps({"inputs": {"x": [1.0]}}).encode()
    status, _ = _exchange(
        small.port,
        b"POST /apply HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: "
        + str(len(body) - 5).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body,
    )
    assert 400 <= status < 500
    with socket.create_connection(("127.0.0.1", small.port), timeout=5) as sock:
        sock.sendall(
            b"POST /apply HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 4000\r\n\r\n" + body
        )
    assert _request(small, "GET", "/health")[0] == 200


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_a_declared_length_is_not_allocated_before_the_bytes_arrive() -> None:
    """A request declaring a body just under `max_body_bytes` (default 1 GiB) and then sending
    nothing made the server allocate (and zero) the whole buffer at once, per connection: a
    few idle connections could exhaust the server's memory."""
    declared, connections = 64 * 2**20, 4
    with cr.serve(_counted("alloc"), max_body_bytes=2**30) as server:
        socks = []
        before = _rss()
        try:
            for _ in range(connections):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                sock.sendall(
                    b"POST /apply HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: " + str(declared).encode() + b"\r\n\r\n[1"
                )
                socks.append(sock)
            time.sleep(0.5)
            grown = _rss() - before
        finally:
            for sock in socks:
                sock.close()
        assert grown < declared, f"RSS grew by {grown / 2**20:.0f} MiB for idle connections"


def test_json_bodies_have_their_own_smaller_limit() -> None:
    """Plain JSON numbers take 15-18x their text in memory once parsed, so the 1 GiB body
    limit let a JSON request grow to ~16 GiB: JSON bodies have their own limit, and the 413
    says which limit was hit. A binary body of the same size is still accepted."""
    x = np.linspace(0.0, 1.0, 2000)
    with cr.serve(_counted("json_limit"), max_json_bytes=LIMIT) as server:
        status, data, _ = _request(
            server,
            "POST",
            "/apply",
            _wire.encode({"inputs": {"x": x}}, _wire.JSON),
            {"Content-Type": _wire.JSON},
        )
        assert _error_type(status, data, 413) == "WireFormatError"
        message = json.loads(data)["error"]["message"]
        assert f"limit of {LIMIT} bytes (max_json_bytes)" in message, message
        assert "~16x their text in memory" in message and "--max-json-bytes" in message
        status, data, elapsed = _partial_post(server.port, "/apply", declared=2 * LIMIT, sent=10)
        assert status == 413 and b"max_json_bytes" in data and elapsed < 4
        binary = _wire.encode({"inputs": {"x": x}}, _wire.BINARY)
        assert len(binary) > LIMIT
        status, data, _ = _request(server, "POST", "/apply", binary, {"Content-Type": _wire.BINARY})
        assert status == 200, data[:300]
    assert ServerSettings().max_json_bytes * 18 <= 1.2 * ServerSettings().max_body_bytes


# ---- declared work -----------------------------------------------------------------------------


def _binary_body(tree: Any, shapes: list[list[int]], data: bytes = b"") -> bytes:
    """A binary body whose arrays are described by `shapes` (float64; their bytes in `data`)."""
    arrays, offset = [], 0
    for shape in shapes:
        nbytes = int(np.prod(shape, dtype=object)) * 8
        arrays.append({"dtype": "float64", "shape": shape, "offset": offset, "nbytes": nbytes})
        offset += -(-nbytes // 64) * 64
    header = json.dumps({"tree": tree, "arrays": arrays}).encode()
    prefix = _wire.MAGIC + struct.pack("<Q", len(header)) + header
    return prefix + bytes(-len(prefix) % 64) + data


EMPTY_ROWS = {"inputs": {"x": {"$array": 0}}, "cotangents": {"y": {"$array": 1}}}


@pytest.mark.parametrize(
    ("rows", "setting", "path"),
    [(2**40, "max_elements", "cotangents.y"), (2**20, "max_batch", "cotangents.y")],
)
@pytest.mark.parametrize("ctype", [_wire.BINARY, _wire.JSON], ids=["binary", "json"])
def test_a_batch_of_empty_rows_is_refused_by_its_declared_size(
    small: cr.Server, rows: int, setting: str, path: str, ctype: str
) -> None:
    """A ~250-byte /batched_vjp declaring 2**40 empty rows (0 data bytes) passed every size
    check and looped 2**40 times in a worker; four of them stopped every endpoint. The work
    a request asks for is now bounded by its declared sizes: 413, naming field and limit."""
    if ctype == _wire.BINARY:
        body = _binary_body(EMPTY_ROWS, [[0], [rows, 0]])
    else:
        empty = {"dtype": "float64", "data": ""}
        body = json.dumps(
            {
                "inputs": {"x": {"$array": {**empty, "shape": [0]}}},
                "cotangents": {"y": {"$array": {**empty, "shape": [rows, 0]}}},
            }
        ).encode()
    assert len(body) < 300
    counted = len(CALLS)
    start = time.monotonic()
    status, data, _ = _request(small, "POST", "/batched_vjp", body, {"Content-Type": ctype})
    assert time.monotonic() - start < 5 and len(CALLS) == counted
    assert _error_type(status, data, 413) == "WireFormatError"
    error = json.loads(data)["error"]
    assert f"({setting})" in error["message"] and error["errors"][0]["path"] == path, error
    assert _request(small, "GET", "/health")[0] == 200


def test_a_batch_times_its_inputs_is_bounded_and_the_limits_are_settings() -> None:
    """A batched vjp answers batch × input elements: a large input with many empty rows asks
    for a huge answer from a small body. Both limits are settings."""
    with cr.serve(_counted("work"), max_batch=4, max_elements=10_000) as server:
        x = np.ones(3)
        for rows, status in ((4, 200), (5, 413)):
            body = _wire.encode({"inputs": {"x": x}, "cotangents": {"y": np.ones((rows, 3))}})
            answer = _request(server, "POST", "/batched_vjp", body, {"Content-Type": _wire.BINARY})
            assert answer[0] == status, answer[1][:300]
        assert b"(max_batch)" in answer[1] and b"--max-batch" in answer[1]
        big = np.ones(5000)  # 3 rows x 5000 input elements > 10_000
        body = _binary_body(EMPTY_ROWS, [[5000], [3, 0]], big.tobytes())
        status, data, _ = _request(
            server, "POST", "/batched_vjp", body, {"Content-Type": _wire.BINARY}
        )
        assert _error_type(status, data, 413) == "WireFormatError"
        message = json.loads(data)["error"]["message"]
        assert "a batch of 3 rows × 5000 input elements" in message, message
        body = _binary_body(EMPTY_ROWS, [[0], [2**14, 0]])  # declared 16384 > 10_000
        status, data, _ = _request(
            server, "POST", "/batched_vjp", body, {"Content-Type": _wire.BINARY}
        )
        assert _error_type(status, data, 413) == "WireFormatError" and b"(max_elements)" in data


# ---- decoding never imports, executes or opens anything ----------------------------------------

WATCHED = (
    "import",
    "exec",
    "compile",
    "pickle.find_class",
    "marshal.load",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "subprocess.Popen",
    "open",
    "os.open",
    "ctypes",
    "code.__new__",
    "function.__new__",
    "builtins.input",
    "socket.",
    "urllib.Request",
)
_AUDIT: dict[str, Any] = {"threads": frozenset(), "events": []}
_HOOKED: list[bool] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    watched = _AUDIT["threads"]
    if watched and threading.get_ident() in watched and event.startswith(WATCHED):
        _AUDIT["events"].append((event, repr(args)[:200]))


@pytest.fixture
def audit() -> Iterator[Any]:
    """`with audit(thread_ids): ...` records the watched audit events of those threads."""
    if not _HOOKED:  # an audit hook cannot be removed: install one, switched by _AUDIT
        sys.addaudithook(_audit)
        _HOOKED.append(True)

    class Recorder:
        def __init__(self) -> None:
            self.events: list[tuple[str, str]] = []

        def __call__(self, threads: set[int]) -> Recorder:
            _AUDIT["threads"] = frozenset(threads)
            return self

        def __enter__(self) -> Recorder:
            _AUDIT["events"] = self.events
            return self

        def __exit__(self, *exc: object) -> None:
            _AUDIT["threads"] = frozenset()

    yield Recorder()
    _AUDIT["threads"] = frozenset()


PWNED: list[str] = []


def _pwned(*args: Any) -> None:
    PWNED.append("executed")


class _Evil:
    """Unpickling this calls `_pwned`; nothing chainrule decodes may unpickle."""

    def __reduce__(self) -> tuple[Any, ...]:
        return (_pwned, ("pickle",))


def _craft(header: dict[str, Any], data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    prefix = _wire.MAGIC + struct.pack("<Q", len(raw)) + raw
    return prefix + bytes(-len(prefix) % 64) + data


def _malicious_bodies() -> list[tuple[bytes, str]]:
    payload = pickle.dumps(_Evil(), protocol=pickle.HIGHEST_PROTOCOL)
    payload0 = pickle.dumps(_Evil(), protocol=0)
    padded = payload + bytes(-len(payload) % 8)
    saved = io.BytesIO()
    np.save(saved, np.array([_Evil()], dtype=object), allow_pickle=True)
    npy = saved.getvalue()
    descriptor = {"shape": [len(padded) // 8], "offset": 0, "nbytes": len(padded)}
    bodies: list[tuple[bytes, str]] = [
        (payload, _wire.BINARY),
        (payload0, _wire.BINARY),
        (payload, _wire.JSON),
        (npy, _wire.BINARY),
        (npy, _wire.JSON),
        (_wire.MAGIC + struct.pack("<Q", len(payload)) + payload, _wire.BINARY),
    ]
    for dtype in ("O", "|O", "object", "O8", "V", "V8", "|V8", "<f8", "float128", "U2", "S8"):
        bodies.append(
            (
                _craft({"tree": {"$array": 0}, "arrays": [{**descriptor, "dtype": dtype}]}, padded),
                _wire.BINARY,
            )
        )
        bodies.append(
            (
                json.dumps(
                    {
                        "$array": {
                            "dtype": dtype,
                            "shape": [1],
                            "data": base64.b64encode(payload).decode(),
                        }
                    }
                ).encode(),
                _wire.JSON,
            )
        )
    structured: list[Any] = [[["a", "O"]], {"names": ["a"], "formats": ["O"]}, [["b", "O"]]]
    for spec in structured:
        bodies.append(
            (
                _craft({"tree": {"$array": 0}, "arrays": [{**descriptor, "dtype": spec}]}, padded),
                _wire.BINARY,
            )
        )
    for tree in (
        {"py/object": "os.system", "py/reduce": [{"py/function": "os.system"}, ["true"]]},
        {"__class__": "subprocess.Popen", "__reduce__": ["os.system", ["true"]]},
        {"$$array": {"dtype": "O", "shape": [1], "data": "gAQ="}},
        {"!!python/object/apply:os.system": ["true"]},
    ):
        bodies.append((_craft({"tree": tree, "arrays": []}), _wire.BINARY))
        bodies.append((json.dumps(tree).encode(), _wire.JSON))
    bodies.append((("[" * 50_000 + "]" * 50_000).encode(), _wire.JSON))
    bodies.append((_craft({"tree": 1, "arrays": []})[:-3] + b"\xff\xfe\x00", _wire.BINARY))
    return bodies


MALICIOUS = _malicious_bodies()


def _decode_all(bodies: list[tuple[bytes, str]]) -> list[Any]:
    decoded = []
    for body, ctype in bodies:
        try:
            decoded.append(_wire.decode(body, ctype))
        except cr.WireFormatError:
            decoded.append(None)
    return decoded


def test_decoding_malicious_bodies_imports_and_runs_nothing(audit: Any) -> None:
    _decode_all(
        [(_wire.encode({"a": np.ones(3), "b": [1, "x"]}, c), c) for c in (_wire.BINARY, _wire.JSON)]
    )
    with audit({threading.get_ident()}) as recorder:
        decoded = _decode_all(MALICIOUS)
    assert recorder.events == []
    assert PWNED == []
    for tree in decoded:  # what did decode holds only plain data
        _assert_plain(tree)
    # The hook does see these events (so an empty list above means something):
    with audit({threading.get_ident()}) as recorder:
        pickle.loads(pickle.dumps(_Evil()))
    assert any(event == "pickle.find_class" for event, _ in recorder.events)
    PWNED.clear()


def _assert_plain(tree: Any) -> None:
    if isinstance(tree, dict):
        for value in tree.values():
            _assert_plain(value)
    elif isinstance(tree, list):
        for value in tree:
            _assert_plain(value)
    elif isinstance(tree, np.ndarray):
        assert not tree.dtype.hasobject and tree.dtype.name in _wire.DTYPES
    else:
        assert tree is None or isinstance(tree, (bool, int, float, str)), type(tree)


def test_decoding_fuzzed_bodies_imports_and_runs_nothing(audit: Any) -> None:
    """Thousands of corrupted bodies (each byte of a valid body flipped, every truncation) are
    decoded while the audit hook watches."""
    rng = np.random.default_rng(7)
    valid = _wire.encode(
        {"a": np.arange(6.0).reshape(2, 3), "b": [np.int8(3), {"$array": "x"}], "c": "t\u00e9"}
    )
    bodies = [(valid[:cut], _wire.BINARY) for cut in range(len(valid))]
    for _ in range(2000):
        body = bytearray(valid)
        for index in rng.integers(0, len(body), size=rng.integers(1, 4)):
            body[index] = int(rng.integers(0, 256))
        bodies.append((bytes(body), _wire.BINARY))
        bodies.append((bytes(body), _wire.JSON))
    _decode_all(bodies[:50])
    with audit({threading.get_ident()}) as recorder:
        _decode_all(bodies)
    assert recorder.events == []


def test_the_server_imports_and_runs_nothing_for_malicious_bodies(
    small: cr.Server, audit: Any
) -> None:
    """The server's event-loop thread (which reads and decodes every body) raises none of the
    watched audit events while it answers the malicious bodies."""
    loop_threads = {
        t.ident for t in threading.enumerate() if t.name == "chainrule-serve-small" and t.ident
    }
    assert loop_threads
    conn = http.client.HTTPConnection("127.0.0.1", small.port, timeout=10)
    try:

        def post(body: bytes, ctype: str) -> int:
            conn.request("POST", "/apply", body=body, headers={"Content-Type": ctype})
            response = conn.getresponse()
            response.read()
            return response.status

        for body, ctype in [(b"{", _wire.JSON), (b"CHRULE01", _wire.BINARY), *MALICIOUS[:3]]:
            post(body, ctype)  # warm up: the error paths' own first-use imports
        counted = len(CALLS)
        with audit(loop_threads) as recorder:
            statuses = [post(body, ctype) for body, ctype in MALICIOUS]
        assert recorder.events == []
        assert PWNED == []
        assert all(400 <= s < 500 for s in statuses), statuses
        assert len(CALLS) == counted
    finally:
        conn.close()


# ---- the client trusts a server no further than it must (tests/hostile.py) --------------------

_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
_X = {"x": np.array([1.0, 2.0])}


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs /proc (Linux)")
def test_a_claimed_answer_length_is_not_allocated_before_the_bytes_arrive() -> None:
    """An answer claiming 1 GiB and then sending 10 bytes made the client allocate (and zero)
    the whole GiB at once."""
    release = threading.Event()

    def claim_and_wait(sock: socket.socket, n: int) -> None:
        sock.sendall(_HEAD + b"Content-Length: 1073741824\r\n\r\n" + b'{"outputs"')
        release.wait(10)

    errors: list[Exception] = []
    with hostile.Hostile({"/apply": claim_and_wait}).running() as server:
        remote = cr.connect(server.url, retries=0)

        def call() -> None:
            try:
                remote.apply(_X)
            except cr.TransportError as e:
                errors.append(e)

        before = _rss()
        caller = threading.Thread(target=call)
        caller.start()
        try:
            deadline = time.monotonic() + 10
            while not server.hits["/apply"] and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)  # the client has the head and the 10 bytes now
            grown = _rss() - before
        finally:
            release.set()
            caller.join(10)
        remote.close()
    # What is allocated at once is bounded (by _http.PREALLOC, 128 MiB), not the claimed 1 GiB.
    assert grown < 192 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB for a 10-byte answer"
    assert errors and "the body ended after 10 of 1073741824 bytes" in str(errors[0])


def test_an_answer_over_the_limit_is_refused_before_it_is_read() -> None:
    claim = _HEAD + b"Content-Length: " + str(2**50).encode() + b"\r\n\r\n"
    with hostile.Hostile({"/apply": hostile.send(claim)}).running() as server:
        remote = cr.connect(server.url)
        with pytest.raises(cr.TransportError) as caught:
            remote.apply(_X)
        remote.close()
    message = str(caught.value)
    assert f"the answer of {server.url}/apply is too large: " in message
    assert "declares 1125899906842624 body bytes; the limit is 4294967296" in message
    assert "up to max_response_bytes=4294967296; raise it in chainrule.connect" in message
    assert server.hits["/apply"] == 1  # not retried: it would be as large again


_FRAMED = {
    "content-length": _HEAD + b"Content-Length: 5000\r\n\r\n" + b"x" * 5000,
    "chunked": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + (b"3e8\r\n" + b"x" * 1000 + b"\r\n") * 5
    + b"0\r\n\r\n",
    "until close": _HEAD + b"\r\n" + b"x" * 5000,
}


@pytest.mark.parametrize("framing", list(_FRAMED))
def test_the_answer_limit_holds_however_the_body_is_framed(framing: str) -> None:
    from chainrule._transport.http.client import Connection

    with hostile.Hostile({"/apply": hostile.send(_FRAMED[framing])}).running() as server:
        small = Connection(server.url, max_response_bytes=4999)
        with pytest.raises(cr.TransportError, match=r"up to max_response_bytes=4999; raise it"):
            small.request("POST", "/apply", b"{}")
        exact = Connection(server.url, max_response_bytes=5000)
        assert exact.request("POST", "/apply", b"{}")[2] == b"x" * 5000
        small.close()
        exact.close()


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("s3cret\r\nX-Injected: yes", "a line break (CR or LF), which would inject HTTP headers"),
        ("s3cret\nX-Injected: yes", "a line break (CR or LF)"),
        ("s3cret\x00", "the control character U+0000"),
        ("секрет", "a character outside Latin-1"),
    ],
    ids=["crlf", "lf", "nul", "cyrillic"],
)
def test_a_token_that_is_no_header_value_is_refused_at_connect(token: str, problem: str) -> None:
    with hostile.Hostile({}).running() as server, pytest.raises(cr.TransportError) as caught:
        cr.connect(server.url, token=token)
    message = str(caught.value)
    assert message.startswith("token cannot be sent in an HTTP header: expected printable")
    assert problem in message
    assert token not in message and "s3cret" not in message  # the secret is not echoed
    assert not server.hits, "a request went out with the bad token"


def test_a_latin1_token_reaches_the_server_intact() -> None:
    with cr.serve(_counted("latin1"), token="café-s3cret") as server:
        remote = cr.connect(server.url, token="café-s3cret")
        np.testing.assert_array_equal(remote.apply({"x": [1.0]}).y, [2.0])
        remote.close()
