"""`chainrule.connect`: a served component answers every endpoint exactly like the in-process
one (bit for bit over the binary wire), keeps residual handles, re-raises server errors as
their own class, and survives a server restart."""

from __future__ import annotations

import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import chainrule as cr
import hostile
from cases import BACKENDS, CASES, Case, build
from chainrule._schema import tree as _tree
from chainrule._transport import wire as _wire
from chainrule._transport.http.client import Connection
from chainrule._transport.local import WireTransport
from chainrule._transport.remote import remote_component

CONTENT_TYPES = [_wire.BINARY, _wire.JSON]


class Served:
    """Every case × backend served once per module (started on first use), reached over HTTP
    or the in-process wire transport."""

    def __init__(self) -> None:
        self.servers: dict[tuple[str, str], Any] = {}
        self.remotes: dict[tuple[str, ...], cr.Component] = {}

    def get(
        self, case: Case, backend: str, content_type: str, transport: str = "http"
    ) -> tuple[cr.Component, Any]:
        key = (case.name, backend)
        if key not in self.servers:
            self.servers[key] = cr.serve(build(case, backend))
        server = self.servers[key]
        if (*key, content_type, transport) not in self.remotes:
            if transport == "wire":  # the served component, through the codec, no socket
                remote = remote_component(WireTransport(server.component, None, content_type))
            else:
                remote = cr.connect(server.url, content_type=content_type)
            self.remotes[(*key, content_type, transport)] = remote
        return server.component, self.remotes[(*key, content_type, transport)]

    def stop(self) -> None:
        for remote in self.remotes.values():
            remote.close()
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    s = Served()
    yield s
    s.stop()


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, f"{prefix}/{k}" if prefix else str(k)))
        return out
    if isinstance(tree, list):
        return _flat(dict(enumerate(tree)), prefix)
    return {prefix: tree}


def _same(got: Any, want: Any, exact: bool) -> None:
    got, want = _flat(got), _flat(want)
    assert got.keys() == want.keys()
    for k, w in want.items():
        g = got[k]
        if isinstance(w, np.ndarray | np.generic | float):
            assert np.asarray(g).dtype == np.asarray(w).dtype, k
            if exact:
                np.testing.assert_array_equal(g, w, err_msg=k, strict=True)
            else:
                np.testing.assert_allclose(g, w, rtol=1e-15, atol=0, err_msg=k, strict=True)
        else:
            assert g == w, k


def _random_like(arrays: dict[str, Any], rng: np.random.Generator, batch: int = 0) -> dict:
    lead = (batch,) if batch else ()
    return {k: rng.standard_normal(lead + np.shape(v)) for k, v in arrays.items()}


def _calls(comp: cr.Component, x: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    """Every endpoint's arguments at `x` (random tangents/cotangents of the right shapes)."""
    p = comp.point(x)
    t = _random_like({k: p.values[k] for k in p.diff}, rng)
    outs = comp.jvp(x, t)
    ct = _random_like(outs, rng)
    return {
        "jvp": ((x, t), {}),
        "vjp": ((x, ct), {}),
        "jacobian": ((x,), {}),
        "batched_jvp": ((x, _random_like(t, rng, 3)), {}),
        "batched_vjp": ((x, _random_like(ct, rng, 2)), {}),
        "hvp": ((x, t), {}),
        "hvp_weighted": ((x, t), {"cotangents": ct}),
        "jvp_of": ((x, t), {"of": next(iter(outs))}),
        "vjp_wrt": ((x, ct), {"wrt": [next(iter(p.diff))]}),
    }


@pytest.mark.parametrize("transport", ["wire", "http"])
@pytest.mark.parametrize("content_type", CONTENT_TYPES, ids=["binary", "json"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_every_endpoint_agrees_with_in_process(
    served: Served, case: Case, backend: str, content_type: str, transport: str
) -> None:
    local, remote = served.get(case, backend, content_type, transport)
    exact = content_type == _wire.BINARY
    x = case.point()
    out = remote.apply(x)
    assert isinstance(out, remote.outputs)
    _same(out.model_dump(), local.apply(x).model_dump(), exact)
    try:
        want_shapes = local.eval_shape(x)
    except cr.EndpointUnavailableError as e:
        with pytest.raises(cr.EndpointUnavailableError) as got:
            remote.eval_shape(x)
        assert str(got.value) == str(e)
    else:
        shapes = remote.eval_shape(x)
        assert str(shapes) == str(want_shapes)
        assert {k.path: k.value for k in _tree.leaves(shapes)} == {
            k.path: k.value for k in _tree.leaves(want_shapes)
        }
    assert set(remote.endpoints) == set(local.endpoints)
    for name, (args, kwargs) in _calls(local, x, np.random.default_rng(0)).items():
        endpoint = name.removesuffix("_of").removesuffix("_wrt").removesuffix("_weighted")
        try:
            want = getattr(local, endpoint)(*args, **kwargs)
        except cr.ChainruleError as e:  # hvp of numpy, or of a component without a scalar
            if endpoint not in local.endpoints:
                # Which check fails first (a scalar output `of`, or the endpoint) depends on
                # whether the client knows output shapes without running: numpy servers'
                # shapes are not known client-side.
                with pytest.raises((cr.EndpointUnavailableError, cr.ValidationError)):
                    getattr(remote, endpoint)(*args, **kwargs)
                continue
            _same_error(_caller(endpoint, args, kwargs), local, remote, type(e))
            continue
        _same(getattr(remote, endpoint)(*args, **kwargs), want, exact)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_remote_gradients_match_finite_differences(
    served: Served, case: Case, backend: str
) -> None:
    _, remote = served.get(case, backend, _wire.BINARY)
    report = cr.check_gradients(remote, case.point(), n_random=1)
    assert report.ok, str(report)
    expected = {"jvp", "vjp", "jacobian", "batched_jvp", "batched_vjp", "dot product"}
    assert expected <= {c.endpoint for c in report.checks}


# ---- residual handles ------------------------------------------------------------------------


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


def _counted(backend: str, forwards: list[int]) -> cr.Component:
    """sin(x)·x, counting forward passes (also inside JAX transformations)."""
    if backend == "jax":
        import jax
        import jax.numpy as xp

        def count() -> None:
            jax.debug.callback(lambda: forwards.append(1))
    else:
        xp = {"torch": __import__("torch"), "numpy": np}[backend]  # type: ignore[assignment]

        def count() -> None:
            forwards.append(1)

    def fn(inputs: In) -> Out:
        count()
        return Out(y=xp.sin(inputs.x) * inputs.x)

    return cr.component(fn, inputs=In, outputs=Out, backend=backend, name=f"counted_{backend}")


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_residual_handle_skips_the_servers_forward(backend: str) -> None:
    forwards: list[int] = []
    comp = _counted(backend, forwards)
    x, c = {"x": np.linspace(0.1, 1.0, 5)}, {"y": np.arange(5.0)}
    want = comp.vjp(x, c)
    with cr.serve(comp) as server:
        remote = cr.connect(server.url)
        out, handle = remote.apply(x, keep=True)
        np.testing.assert_array_equal(out.y, comp.apply(x).y)
        assert len(comp.residuals) == 1
        forwards.clear()
        got = remote.vjp(x, c, handle=handle)
        if backend != "numpy":  # finite differences evaluate around the point, not at it
            assert forwards == [], "vjp with a handle ran the forward again"
        np.testing.assert_allclose(got["x"], want["x"], rtol=1e-14)
        # A kept linearization may round differently from a fresh jvp (last-bit differences).
        np.testing.assert_allclose(
            remote.jvp(x, {"x": np.ones(5)}, handle=handle)["y"],
            comp.jvp(x, {"x": np.ones(5)})["y"],
            rtol=1e-14,
        )
        assert comp.residuals.hits >= 2
        comp.residuals.clear()  # the server forgets the handle: recompute, same answer
        misses = comp.residuals.misses
        np.testing.assert_allclose(remote.vjp(x, c, handle=handle)["x"], want["x"], rtol=1e-14)
        assert comp.residuals.misses == misses + 1
        # A handle at other inputs is not used for them.
        other = {"x": np.linspace(0.2, 2.0, 5)}
        np.testing.assert_array_equal(
            remote.vjp(other, c, handle=handle)["x"], comp.vjp(other, c)["x"]
        )


# ---- errors ----------------------------------------------------------------------------------


class Boom(cr.Schema):
    x: cr.Differentiable[cr.Array[(3,), cr.Float64]]
    k: cr.Array[(3,), cr.Float64]


class BoomOut(cr.Schema):
    y: cr.Differentiable[cr.Array[(3,), cr.Float64]]
    z: cr.Array[(3,), cr.Float64]
    note: str  # known only by running: eval_shape needs apply


@pytest.fixture(scope="module")
def boom() -> Iterator[tuple[cr.Component, list[int], Any]]:
    calls: list[int] = []

    def fn(inputs: Boom) -> BoomOut:
        calls.append(1)
        if inputs.x[0] < 0:
            raise ArithmeticError("negative x[0] is not supported")
        return BoomOut(y=inputs.x * inputs.k, z=inputs.k, note="ok")

    comp = cr.component(fn, inputs=Boom, outputs=BoomOut, backend="numpy", name="boom")
    with cr.serve(comp) as server:
        yield comp, calls, server


@pytest.fixture
def remote(boom: Any) -> Iterator[cr.Component]:
    remote = cr.connect(boom[2].url)
    yield remote
    remote.close()


GOOD = {"x": np.ones(3), "k": np.arange(3.0)}


def _caller(endpoint: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return lambda c: getattr(c, endpoint)(*args, **kwargs)


def _same_error(call: Any, local: cr.Component, remote: cr.Component, cls: type) -> Exception:
    """`call(remote)` raises the class and message `call(local)` raises."""
    with pytest.raises(cls) as want:
        call(local)
    with pytest.raises(cls) as got:
        call(remote)
    assert type(got.value) is type(want.value) and str(got.value) == str(want.value)
    return got.value


def test_errors_are_reraised_as_their_own_class(boom: Any, remote: cr.Component) -> None:
    comp = boom[0]
    bad = {"x": -np.ones(3), "k": np.ones(3)}
    e = _same_error(lambda c: c.apply(bad), comp, remote, cr.ComponentError)
    assert "ArithmeticError: negative x[0] is not supported" in str(e)
    e = _same_error(lambda c: c.eval_shape(GOOD), comp, remote, cr.EndpointUnavailableError)
    assert "needs apply" in str(e)
    for call in (
        lambda c: c.jvp(GOOD, {"nope": np.ones(3)}),
        lambda c: c.vjp(GOOD, {"y": np.ones(3)}, wrt="nope"),
        lambda c: c.jacobian(GOOD, of="z"),
        lambda c: c.jvp(GOOD, {"k": np.ones(3)}),
        lambda c: c.apply({"x": np.ones(4), "k": np.ones(3)}),
    ):
        _same_error(call, comp, remote, cr.ValidationError)


def test_server_side_errors_keep_class_and_message(remote: cr.Component) -> None:
    """Bypass the client's own validation: the server's error arrives as the same class."""
    conn = remote.backend.transport.conn  # type: ignore[attr-defined]
    for path, body, cls in (
        ("/apply", {"inputs": {"x": np.ones(4), "k": np.ones(3)}}, cr.ValidationError),
        ("/jvp", {"inputs": GOOD, "tangents": {"nope": np.ones(3)}}, cr.UnknownPathError),
        (
            "/vjp",
            {"inputs": GOOD, "cotangents": {"y": np.ones(3)}, "wrt": "k"},
            cr.NotDifferentiableError,
        ),
        ("/jacobian", {"inputs": GOOD, "of": ["z"]}, cr.NotDifferentiableError),
        ("/apply", {"inputs": {"x": -np.ones(3), "k": np.ones(3)}}, cr.ComponentError),
        ("/eval_shape", {"inputs": GOOD}, cr.EndpointUnavailableError),
        ("/hvp", {"inputs": GOOD, "tangents": {}}, cr.EndpointUnavailableError),
    ):
        with pytest.raises(cls) as got:
            conn.call(path, body)
        assert type(got.value) is cls, (path, got.value)
        assert got.value.message and got.value.message in str(got.value)
    with pytest.raises(
        cr.UnknownPathError, match="'nope' is not an array input of component 'boom'"
    ):
        conn.call("/jvp", {"inputs": GOOD, "tangents": {"nope": np.ones(3)}})


def test_client_validates_before_sending(boom: Any, remote: cr.Component) -> None:
    comp, calls, _ = boom
    remote.apply(GOOD)
    before, counted = len(calls), dict(comp.calls)
    for call in (
        lambda: remote.apply({"x": np.ones(4), "k": np.ones(3)}),
        lambda: remote.apply({"x": np.ones(3)}),
        lambda: remote.jvp(GOOD, {"x": np.ones(2)}),
        lambda: remote.vjp(GOOD, {"y": np.ones(3)}, wrt="k"),
        lambda: remote.hvp(GOOD, {"x": np.ones(3)}),
    ):
        with pytest.raises((cr.ValidationError, cr.EndpointUnavailableError)):
            call()
    assert len(calls) == before and dict(comp.calls) == counted


# ---- retries and timeouts -------------------------------------------------------------------


def test_reconnects_after_a_restart_and_gives_up_on_a_dead_server() -> None:
    comp = build(CASES[0], "numpy")
    x = CASES[0].point()
    first = cr.serve(comp)
    remote = cr.connect(first.url, retries=6)
    want = remote.apply(x).y
    first.stop()
    second = cr.serve(comp, port=first.port)  # same port, fresh server
    try:
        np.testing.assert_array_equal(remote.apply(x).y, want)  # old keep-alive socket is dead
    finally:
        second.stop()
    remote.backend.transport.conn.retries = 2  # type: ignore[attr-defined]
    start = time.monotonic()
    with pytest.raises(cr.TransportError, match=f"could not reach {first.url}/apply") as e:
        remote.apply(x)
    assert time.monotonic() - start < 5
    assert "after 3 attempts" in str(e.value)


def test_connecting_to_nothing_is_a_transport_error() -> None:
    with cr.serve(build(CASES[0], "numpy")) as server:
        url = server.url
    start = time.monotonic()
    with pytest.raises(cr.TransportError, match=url):
        cr.connect(url, retries=1)
    assert time.monotonic() - start < 5
    with pytest.raises(cr.TransportError, match="expected http://host:port"):
        cr.connect("ftp://example")


def test_a_slow_answer_times_out() -> None:
    def slow(inputs: In) -> Out:
        time.sleep(0.6 if inputs.x[0] > 0 else 0)
        return Out(y=inputs.x)

    comp = cr.component(slow, inputs=In, outputs=Out, backend="numpy", name="slow")
    with cr.serve(comp) as server:
        remote = cr.connect(server.url, timeout=0.2)
        remote.apply({"x": -np.ones(2)})
        with pytest.raises(cr.TransportError, match=r"did not answer within 0.2 s") as e:
            remote.apply({"x": np.ones(2)})
        assert isinstance(e.value.__cause__, TimeoutError)
        np.testing.assert_array_equal(remote.apply({"x": -np.ones(2)}).y, -np.ones(2))


def test_undecodable_answer_is_a_transport_error() -> None:
    from chainrule._transport.http.client import _server_error

    error = _server_error(502, bytearray(b"<html>bad gateway</html>"), "http://h:1/apply")
    assert isinstance(error, cr.TransportError)
    assert "http://h:1/apply answered HTTP 502: <html>bad gateway" in str(error)


# ---- a server that answers badly (tests/hostile.py) -------------------------------------------

X = {"x": np.array([1.0, 2.0])}
_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
BROKEN = {
    "truncated body": hostile.good([1.0, 2.0])[:-4],
    "bad content-length": _HEAD + b"Content-Length: 12abc\r\n\r\n{}",
    "negative content-length": _HEAD + b"Content-Length: -1\r\n\r\n{}",
    "bad chunk size": _HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    "chunk longer than its size": _HEAD
    + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}}\r\n0\r\n\r\n",
    "overlong header line": _HEAD + b"X-Long: " + b"a" * 70_000 + b"\r\n\r\n",
    "too many header lines": _HEAD + b"X-Many: 1\r\n" * 200 + b"\r\n",
    "garbage status line": b"HTTTP/1.1 200 OK\r\n\r\n",
}


@pytest.mark.parametrize("broken", list(BROKEN), ids=list(BROKEN))
def test_a_broken_answer_is_retried_as_a_transport_problem(broken: str) -> None:
    """A body cut short, a bad length or chunk size, an overlong header line: the server's
    answer is broken, not the component. The call is retried (every endpoint call is
    idempotent) and succeeds once the server answers properly."""
    script = hostile.first_then(hostile.send(BROKEN[broken]), hostile.send(hostile.good([1, 2])))
    with hostile.Hostile({"/apply": script}).running() as server:
        remote = cr.connect(server.url)
        np.testing.assert_array_equal(remote.apply(X).y, [1.0, 4.0])
        remote.close()
    assert server.hits["/apply"] == 2


@pytest.mark.parametrize("broken", list(BROKEN), ids=list(BROKEN))
def test_a_server_that_keeps_answering_badly_is_a_transport_error(broken: str) -> None:
    with hostile.Hostile({"/apply": hostile.send(BROKEN[broken])}).running() as server:
        remote = cr.connect(server.url)
        with pytest.raises(cr.TransportError) as caught:
            remote.apply(X)
        remote.close()
    assert type(caught.value) is cr.TransportError  # not a ComponentError blaming 'sq'
    assert f"{server.url}/apply sent a broken HTTP answer 3 times, last: " in str(caught.value)
    assert server.hits["/apply"] == 3  # retried twice, not 30 times


@pytest.mark.parametrize("answer", [b"{}", b"[1, 2]", b'{"result": 1}'])
def test_an_answer_without_its_fields_is_a_transport_error(answer: bytes) -> None:
    """A 200 answer that lacks 'outputs' surfaced as ComponentError "KeyError: 'outputs'"."""
    route = {"/apply": hostile.send(hostile.answer(answer))}
    with hostile.Hostile(route).running() as server:
        remote = cr.connect(server.url)
        with pytest.raises(cr.TransportError) as caught:
            remote.apply(X)
        remote.close()
    assert type(caught.value) is cr.TransportError
    assert f"{server.url}/apply answered " in str(caught.value)
    assert "not an object with ['outputs']" in str(caught.value)


@pytest.mark.parametrize("where", ["body", "headers"])
def test_the_timeout_bounds_the_whole_call_not_each_read(where: str) -> None:
    """A server dripping one byte every 0.05 s never lets a per-read timeout expire; the
    timeout is a deadline for the whole exchange."""
    head = _HEAD + (b"Content-Length: 1000\r\n\r\n" if where == "body" else b"X-Slow: ")
    with hostile.Hostile({"/apply": hostile.drip(head, 0.05, 4.0)}).running() as server:
        remote = cr.connect(server.url, timeout=0.5)
        start = time.monotonic()
        with pytest.raises(cr.TransportError, match=r"did not answer within 0.5 s"):
            remote.apply(X)
        elapsed = time.monotonic() - start
        remote.close()
    assert elapsed < 2.0, f"the call took {elapsed:.1f} s with timeout=0.5"
    assert server.hits["/apply"] == 1  # a timeout is not retried


def test_the_timeout_bounds_sending_to_a_server_that_reads_slowly() -> None:
    """A server reading 64 KiB every 0.02 s: each send makes progress, none waits 2 s alone,
    and 32 MiB would take 10 s."""
    done = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def read_slowly() -> None:
            sock, _ = listener.accept()
            with sock:
                deadline = time.monotonic() + 4
                while time.monotonic() < deadline and not done.is_set() and sock.recv(2**16):
                    time.sleep(0.02)

        reader = threading.Thread(target=read_slowly, daemon=True)
        reader.start()
        conn = Connection(f"http://127.0.0.1:{port}", timeout=2.0, retries=0)
        start = time.monotonic()
        try:
            with pytest.raises(cr.TransportError, match=r"did not answer within 2.0 s"):
                conn.request("POST", "/apply", [b"x" * 32 * 2**20])
        finally:
            elapsed = time.monotonic() - start
            done.set()
            reader.join(5)
    assert elapsed < 3.5, f"sending took {elapsed:.1f} s with timeout=2"


def _deep(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "number"}
    for _ in range(levels):
        node = {"type": "array", "items": node}
    return node


def _with_inputs(inputs: Any) -> dict[str, Any]:
    return {**hostile.SCHEMA, "inputs": inputs}


BAD_SCHEMAS: dict[str, tuple[Any, str]] = {
    "a list": ([1, 2], "the document: Input should be a valid dictionary"),
    "no inputs": (
        {k: v for k, v in hostile.SCHEMA.items() if k != "inputs"},
        "inputs: Field required",
    ),
    "endpoints not strings": ({**hostile.SCHEMA, "endpoints": {"apply": 1}}, "endpoints.apply"),
    "properties not an object": (
        _with_inputs({"type": "object", "properties": 5}),
        "inputs.properties: expected an object, got 5",
    ),
    "a field not an object": (
        _with_inputs({"properties": {"x": "float"}}),
        "inputs.properties.x: expected a JSON schema object, got 'float'",
    ),
    "a bad dtype": (
        _with_inputs(
            {"properties": {"x": {"x-chainrule-array": {"shape": [2], "dtype": "float65"}}}}
        ),
        "inputs.properties.x: TypeError: data type 'float65' not understood",
    ),
    "an undefined $ref": (
        _with_inputs({"properties": {"x": {"$ref": "#/$defs/Nope"}}}),
        "'Nope' is not defined in $defs",
    ),
    "a $ref to itself": (
        _with_inputs(
            {
                "$defs": {"Node": {"properties": {"kids": {"$ref": "#/$defs/Node"}}}},
                "properties": {"x": {"$ref": "#/$defs/Node"}},
            }
        ),
        "'Node' refers to itself",
    ),
    "a field name pydantic refuses": (
        _with_inputs({"properties": {"_x": {"type": "number"}}}),
        "inputs: PydanticUserError: Fields must not use names with leading underscores",
    ),
    "nested 500 deep": (
        _with_inputs({"properties": {"x": _deep(500)}}),
        "nested deeper than 64 levels",
    ),
}


@pytest.mark.parametrize("bad", list(BAD_SCHEMAS), ids=list(BAD_SCHEMAS))
def test_a_bad_schema_is_refused_saying_why(bad: str) -> None:
    document, why = BAD_SCHEMAS[bad]
    server = hostile.Hostile({}, schema=document)
    with server.running(), pytest.raises(cr.TransportError) as caught:
        cr.connect(server.url)
    message = str(caught.value)
    assert message.startswith(f"{server.url}/schema is not a valid chainrule schema: ")
    assert why in message
    assert caught.value.__cause__ is not None


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"<html>not json</html>", "answered with a body that is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "answered with a body that is not JSON"),
    ],
    ids=["html", "nested 100000 deep"],
)
def test_a_schema_that_is_not_json_is_refused(body: bytes, why: str) -> None:
    schema_route = {"/schema": hostile.send(hostile.answer(body))}
    server = hostile.Hostile(schema_route)
    with server.running(), pytest.raises(cr.TransportError, match=why):
        cr.connect(server.url, retries=0)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ssl.SSLContext]:
    """A server context with a self-signed certificate for localhost, trusted by the client
    through SSL_CERT_FILE (read by `ssl.create_default_context`)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SSL_CERT_FILE", str(cert))
        yield context


def test_https_goes_through_the_same_connection(tls: ssl.SSLContext) -> None:
    """https answers are read like http ones: checked, bounded, with one deadline."""
    script = hostile.first_then(
        hostile.send(BROKEN["truncated body"]), hostile.send(hostile.good([1, 2]))
    )
    drip = hostile.drip(_HEAD + b"Content-Length: 1000\r\n\r\n", 0.05, 4.0)
    server = hostile.Hostile({"/apply": script, "/vjp": drip}, tls=tls)
    with server.running():
        assert server.url.startswith("https://localhost:")
        remote = cr.connect(server.url, timeout=0.5)
        np.testing.assert_array_equal(remote.apply(X).y, [1.0, 4.0])
        start = time.monotonic()
        with pytest.raises(cr.TransportError, match=r"did not answer within 0.5 s"):
            remote.vjp(X, {"y": np.ones(2)})
        assert time.monotonic() - start < 2.0
        remote.close()
    assert server.hits["/apply"] == 2
