"""The HTTP face of a component, driven with raw requests: the bad-input table (every route ×
every kind of bad body answers a structured 4xx naming the field, expected and got, and the
server keeps serving), security, and the published schema / OpenAPI document."""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import chainrule as cr
from chainrule._transport import wire as _wire

SNAPSHOT = Path(__file__).parent / "snapshots" / "openapi.json"
LIMIT = 4096


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    k: cr.Array[("n",), cr.Float64]
    scale: float = 1.0


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    total: cr.Differentiable[cr.Array[(), cr.Float64]]


CALLS: list[int] = []


def _make(backend: str, name: str) -> cr.Component:
    xp: Any = np
    if backend == "torch":
        import torch as xp

    def fn(inputs: In) -> Out:
        CALLS.append(1)
        y = inputs.scale * xp.sin(inputs.x) * inputs.k
        return Out(y=y, total=(y * y).sum())

    return cr.component(fn, inputs=In, outputs=Out, backend=backend, name=name)


@pytest.fixture(scope="module")
def strict() -> Iterator[cr.Server]:
    """Offers every endpoint (torch), refuses NaN, small body limit."""
    comp = _make("torch", "strict")
    with cr.serve(comp, max_body_bytes=LIMIT, allow_nonfinite=False) as server:
        yield server


@pytest.fixture(scope="module")
def lenient() -> Iterator[cr.Server]:
    with cr.serve(_make("numpy", "lenient")) as server:
        yield server


@pytest.fixture(scope="module")
def guarded() -> Iterator[cr.Server]:
    with cr.serve(_make("numpy", "guarded"), token="s3cret") as server:
        yield server


def _raw(
    server: cr.Server,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        if chunked:
            assert body is not None
            pieces = [body[i : i + 1000] for i in range(0, len(body), 1000)]
            conn.request(
                method, path, body=iter(pieces), headers=headers or {}, encode_chunked=True
            )
        else:
            conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        ctype = resp.getheader("content-type") or ""
        if method == "GET" and "json" in ctype:  # /schema, /openapi.json: plain JSON
            return resp.status, json.loads(data)
        return resp.status, _wire.decode(data, ctype)
    finally:
        conn.close()


def _post(server: cr.Server, path: str, tree: Any, ctype: str = _wire.JSON, **kw: Any) -> Any:
    body = tree if isinstance(tree, bytes) else _wire.encode(tree, ctype)
    return _raw(server, "POST", path, body, {"Content-Type": ctype, **kw.pop("headers", {})}, **kw)


X = {"x": np.array([0.1, 0.2, 0.3]), "k": np.array([1.0, 2.0, 3.0])}
V = np.ones(3)
BODIES: dict[str, dict[str, Any]] = {
    "apply": {"inputs": X},
    "eval_shape": {"inputs": X},
    "jvp": {"inputs": X, "tangents": {"x": V}},
    "vjp": {"inputs": X, "cotangents": {"y": V}},
    "jacobian": {"inputs": X},
    "batched_jvp": {"inputs": X, "tangents": {"x": V[None]}},
    "batched_vjp": {"inputs": X, "cotangents": {"y": V[None]}},
    "hvp": {"inputs": X, "tangents": {"x": V}},
}
ROUTES = list(BODIES)
# Where each route takes paths, and how to name an unknown one.
UNKNOWN: dict[str, list[tuple[str, Any]]] = {
    "jvp": [("tangents", {"nope": V})],
    "batched_jvp": [("tangents", {"nope": V[None]})],
    "hvp": [("tangents", {"nope": V}), ("of", "nope"), ("wrt", ["nope"])],
    "vjp": [("cotangents", {"nope": V}), ("wrt", ["nope"])],
    "batched_vjp": [("cotangents", {"nope": V[None]}), ("wrt", "nope")],
    "jacobian": [("wrt", ["nope"]), ("of", ["nope"])],
}


def _error(status: int, answer: Any, code: int, kind: str, *needles: str) -> dict[str, Any]:
    assert status == code, answer
    error = answer["error"]
    assert set(error) == {"type", "message", "errors"}
    assert error["type"] == kind, error
    for needle in needles:
        assert needle in error["message"], (needle, error["message"])
    return error  # type: ignore[no-any-return]


def _inputs(route: str, **change: Any) -> dict[str, Any]:
    return {**BODIES[route], "inputs": {**X, **change}}


@pytest.mark.parametrize("ctype", [_wire.JSON, _wire.BINARY], ids=["json", "binary"])
@pytest.mark.parametrize("route", ROUTES)
def test_bad_inputs_are_named(strict: cr.Server, route: str, ctype: str) -> None:
    def check(body: Any, code: int, kind: str, *needles: str) -> dict[str, Any]:
        return _error(*_post(strict, f"/{route}", body, ctype), code, kind, *needles)

    e = check(_inputs(route, x=np.ones((3, 2))), 422, "ValidationError", "'x'", "got float64[3,2]")
    assert e["errors"][0]["path"] == "x" and e["errors"][0]["got"] == "float64[3,2]"
    e = check(_inputs(route, k=np.ones(4)), 422, "ValidationError", "'n'", "'k'")
    e = check(
        _inputs(route, x=np.ones(3, np.complex128)),
        422,
        "ValidationError",
        "'x'",
        "expected float64[n], got complex128[3]",
    )
    missing = {**BODIES[route], "inputs": {"x": X["x"]}}
    e = check(missing, 422, "ValidationError", "'k' is required but missing")
    assert e["errors"][0]["path"] == "k"
    e = check(_inputs(route, zzz=1), 422, "ValidationError", "'zzz' is not a field")
    for key, value in UNKNOWN.get(route, []):
        check({**BODIES[route], key: value}, 422, "UnknownPathError", "'nope'", key)
    for key, value in [
        ("inputs", {**X, "x": np.array([np.nan, 1, 2])}),
        *[
            (k, {p: np.full_like(v, np.inf)})
            for k in ("tangents", "cotangents")
            if k in BODIES[route]
            for p, v in BODIES[route][k].items()
        ],
    ]:
        e = check(
            {**BODIES[route], key: value},
            422,
            "ValidationError",
            "NaN or inf",
            "allow_nonfinite=False",
        )
        assert e["errors"][0]["path"].startswith(key)
    check({**BODIES[route], "bogus": 1}, 422, "ValidationError", "unknown keys ['bogus']")
    check(
        {k: v for k, v in BODIES[route].items() if k != "inputs"},
        422,
        "ValidationError",
        "missing keys ['inputs']",
    )
    check([1, 2], 422, "ValidationError", f"/{route} expects an object", "got list")
    check(b"\x00", 400, "WireFormatError", "body")
    for key in ("tangents", "cotangents"):
        if key in BODIES[route]:
            check({**BODIES[route], key: [1.0]}, 422, "ValidationError", f"'{key}' must be")
            check({"inputs": X}, 422, "ValidationError", f"missing keys ['{key}']")


@pytest.mark.parametrize("ctype", [_wire.JSON, _wire.BINARY], ids=["json", "binary"])
@pytest.mark.parametrize("route", ["jvp", "vjp", "batched_jvp", "batched_vjp"])
def test_a_derivative_at_b_points_is_checked_and_its_fields_named(
    strict: cr.Server, route: str, ctype: str
) -> None:
    """`batched`: the inputs named carry B points, the tangents or cotangents too."""
    key, path = ("tangents", "x") if "jvp" in route else ("cotangents", "y")
    row = (2,) if route.startswith("batched_") else ()
    xs = np.arange(12.0).reshape(4, 3)
    body = {"inputs": {**X, "x": xs}, "batched": ["x"], key: {path: np.ones((4, *row, 3))}}
    status, answer = _post(strict, f"/{route}", body, ctype)
    assert status == 200, answer
    assert np.shape(answer["result"]["y" if "jvp" in route else "x"]) == (4, *row, 3)

    def check(change: dict[str, Any], *needles: str) -> dict[str, Any]:
        return _error(*_post(strict, f"/{route}", {**body, **change}, ctype), 422, *needles)

    e = check({key: {path: np.ones((5, *row, 3))}}, "ValidationError", f"'{key}.{path}'", "4")
    assert e["errors"][0]["path"] == f"{key}.{path}" and e["errors"][0]["got"] == "5 rows"
    e = check({"inputs": {**X, "x": xs, "k": np.ones((3, 3))}, "batched": ["x", "k"]},
              "ValidationError", "'inputs.k'")  # fmt: skip
    assert e["errors"][0]["path"] == "inputs.k"
    check({"batched": "x"}, "ValidationError", "'batched' must be a list of input paths")
    check({"batched": ["nope"]}, "ValidationError", "'batched' must be paths of array inputs")
    check({"handle": "h"}, "ValidationError", "handle")


def test_non_differentiable_paths_are_named(strict: cr.Server) -> None:
    for route, body in [
        ("jvp", {**BODIES["jvp"], "tangents": {"k": V}}),
        ("vjp", {**BODIES["vjp"], "wrt": "k"}),
        ("jacobian", {"inputs": X, "wrt": ["k"]}),
    ]:
        _error(*_post(strict, f"/{route}", body), 422, "NotDifferentiableError", "'k'")


@pytest.mark.parametrize("route", ROUTES)
def test_malformed_bodies_and_protocol_errors(strict: cr.Server, route: str) -> None:
    path = f"/{route}"
    _error(*_post(strict, path, b"{not json"), 400, "WireFormatError", "invalid JSON")
    _error(
        *_post(strict, path, b"CHRULE01\xff\xff\xff\xff\xff\xff\xff\xff", _wire.BINARY),
        400,
        "WireFormatError",
    )
    _error(*_post(strict, path, b"NOTMAGIC" + bytes(40), _wire.BINARY), 400, "WireFormatError")
    big = {**BODIES[route], "inputs": {**X, "pad": "x" * LIMIT}}
    _error(*_post(strict, path, big), 413, "WireFormatError", f"limit of {LIMIT} bytes")
    _error(
        *_post(strict, path, big, chunked=True), 413, "WireFormatError", f"limit of {LIMIT} bytes"
    )
    _error(
        *_post(strict, path, BODIES[route], headers={"Content-Type": "text/plain"}),
        415,
        "WireFormatError",
        "text/plain",
    )
    _error(
        *_raw(strict, "GET", path), 405, "EndpointUnavailableError", f"GET {path}", "POST /apply"
    )
    for key, bad in [("of", 3), ("wrt", [1]), ("handle", 3), ("keep", "yes")]:
        if key in _route_keys(route):
            _error(
                *_post(strict, path, {**BODIES[route], key: bad}),
                422,
                "ValidationError",
                f"'{key}' must be",
            )


def _route_keys(route: str) -> tuple[str, ...]:
    return cr.ENDPOINTS[route].request


def test_the_server_keeps_serving_after_bad_input(strict: cr.Server) -> None:
    _error(*_post(strict, "/nope", {}), 404, "EndpointUnavailableError", "POST /nope", "/hvp")
    _error(*_raw(strict, "GET", "/nope"), 404, "EndpointUnavailableError")
    for route in ROUTES:  # chunked bodies under the limit are fine
        status, answer = _post(strict, f"/{route}", BODIES[route], _wire.BINARY, chunked=True)
        assert status == 200, answer
    status, health = _raw(strict, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["name"] == "strict"
    status, answer = _post(strict, "/apply", {"inputs": X}, _wire.BINARY)
    assert status == 200
    np.testing.assert_array_equal(answer["outputs"]["y"], np.sin(X["x"]) * X["k"])


def test_nonfinite_values_are_accepted_by_default(lenient: cr.Server) -> None:
    x = {"x": np.array([np.nan, 0.1, 1.0]), "k": np.array([1.0, np.inf, 1.0])}
    status, answer = _post(lenient, "/apply", {"inputs": x})
    assert status == 200, answer
    y = answer["outputs"]["y"]
    assert np.isnan(y[0]) and np.isposinf(y[1]) and np.isfinite(y[2])
    status, answer = _post(lenient, "/vjp", {"inputs": X, "cotangents": {"y": np.full(3, np.nan)}})
    assert status == 200


def test_plain_lists_and_accept_negotiation(lenient: cr.Server) -> None:
    body = json.dumps({"inputs": {"x": [0.1, 0.2, 0.3], "k": [1, 2, 3]}}).encode()
    status, answer = _raw(
        lenient, "POST", "/apply", body, {"Content-Type": _wire.JSON, "Accept": _wire.BINARY}
    )
    assert status == 200
    np.testing.assert_array_equal(answer["outputs"]["y"], np.sin(X["x"]) * X["k"])


def _json_answer(server: cr.Server, path: str, body: bytes, **headers: str) -> Any:
    """The answer to a POST as parsed JSON (no `$array` decoding: what curl shows)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def test_json_answers_carry_arrays_in_the_form_the_request_used(lenient: cr.Server) -> None:
    """A curl user sending plain lists got base64 back and could not read a number: a JSON
    answer now mirrors the request (lists for lists), or follows `Accept: application/json;
    arrays=lists|base64`."""
    plain = json.dumps({"inputs": {"x": [0.1, 0.2, 0.3], "k": [1, 2, 3]}}).encode()
    expected = (np.sin(X["x"]) * X["k"]).tolist()
    ctype = {"Content-Type": _wire.JSON}
    status, answer = _json_answer(lenient, "/apply", plain, **ctype)
    assert status == 200 and answer["outputs"]["y"] == expected, answer
    assert isinstance(answer["outputs"]["total"], float)
    base64 = {**ctype, "Accept": "application/json; arrays=base64"}
    status, answer = _json_answer(lenient, "/apply", plain, **base64)
    assert answer["outputs"]["y"]["$array"]["dtype"] == "float64", answer
    as_arrays = _wire.encode({"inputs": X}, _wire.JSON)  # $array objects in: $array out
    status, answer = _json_answer(lenient, "/apply", as_arrays, **ctype)
    assert "$array" in answer["outputs"]["y"], answer
    binary = _wire.encode({"inputs": X}, _wire.BINARY)
    lists = {"Content-Type": _wire.BINARY, "Accept": "application/json; arrays=lists"}
    status, answer = _json_answer(lenient, "/apply", binary, **lists)
    assert answer["outputs"]["y"] == expected, answer
    status, answer = _json_answer(
        lenient,
        "/vjp",
        json.dumps(
            {"inputs": {"x": [0.1, 0.2, 0.3], "k": [1, 2, 3]}, "cotangents": {"y": [1, 0, 0]}}
        ).encode(),
        **ctype,
    )
    assert status == 200 and isinstance(answer["result"]["x"], list), answer
    # NaN has no JSON number: an array holding one stays an $array object
    nan = _wire.encode({"inputs": {**X, "k": np.array([np.nan, 1.0, 1.0])}}, _wire.JSON)
    lists = {**ctype, "Accept": "application/json; arrays=lists"}
    status, answer = _json_answer(lenient, "/apply", nan, **lists)
    y = _wire.decode(json.dumps(answer["outputs"]).encode(), _wire.JSON)["y"]
    assert np.isnan(y[0]) and "$array" in answer["outputs"]["y"], answer
    status, answer = _json_answer(
        lenient, "/apply", plain, **{**ctype, "Accept": "application/json; arrays=hex"}
    )
    assert status == 415 and "arrays=lists" in answer["error"]["message"], answer


# ---- security --------------------------------------------------------------------------------


def test_non_loopback_bind_needs_a_token() -> None:
    with pytest.raises(cr.LaunchError, match=r"refusing to serve on '0\.0\.0\.0' without a token"):
        cr.serve(_make("numpy", "open"), host="0.0.0.0")


def test_token_guards_every_route_but_health(guarded: cr.Server) -> None:
    before = len(CALLS)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        _error(
            *_post(guarded, "/apply", {"inputs": X}, headers=headers),
            401,
            "AuthenticationError",
            "bearer token",
        )
        _error(*_raw(guarded, "GET", "/schema", headers=headers), 401, "AuthenticationError")
    assert len(CALLS) == before
    assert _raw(guarded, "GET", "/health")[0] == 200
    remote = cr.connect(guarded.url, token="s3cret")
    try:
        np.testing.assert_array_equal(remote.apply(X).y, np.sin(X["x"]) * X["k"])
    finally:
        remote.close()
    for token in ("wrong", None):
        with pytest.raises(cr.AuthenticationError, match="bearer token"):
            cr.connect(guarded.url, token=token)


# ---- schema and OpenAPI ----------------------------------------------------------------------


def test_schema_lists_endpoints_with_provenance(strict: cr.Server, lenient: cr.Server) -> None:
    status, info = _raw(strict, "GET", "/schema")
    assert status == 200 and info["name"] == "strict" and info["backend"] == "torch"
    assert set(info["endpoints"]) == set(cr.ENDPOINTS)
    assert info["endpoints"]["vjp"].startswith("native")
    assert info["max_body_bytes"] == LIMIT
    x = info["inputs"]["properties"]["x"]["x-chainrule-array"]
    assert x == {"shape": ["n"], "dtype": "float64", "differentiable": True, "casting": "safe"}
    k = info["inputs"]["properties"]["k"]["x-chainrule-array"]
    assert k["differentiable"] is False
    assert info["outputs"]["properties"]["total"]["x-chainrule-array"]["shape"] == []
    _, info = _raw(lenient, "GET", "/schema")
    assert "hvp" not in info["endpoints"]
    assert info["endpoints"]["vjp"] == "finite-difference"
    comp = _make("numpy", "written")
    comp.def_jacobian(lambda inputs, wrt, of: {})
    with cr.serve(comp) as server:
        _, info = _raw(server, "GET", "/schema")
    assert info["endpoints"]["jacobian"] == "written"
    assert info["endpoints"]["vjp"].startswith("derived: vjp <- jacobian")


def _openapi_summary(document: dict[str, Any]) -> dict[str, Any]:
    bodies = {
        path: {m: op["requestBody"] for m, op in ops.items() if "requestBody" in op}
        for path, ops in document["paths"].items()
    }
    return {
        "paths": {p: sorted(ops) for p, ops in document["paths"].items()},
        "request_bodies": bodies,
        "schemas": document.get("components", {}).get("schemas", {}),
    }


def test_openapi_is_valid_and_matches_snapshot(strict: cr.Server) -> None:
    status, document = _raw(strict, "GET", "/openapi.json")
    assert status == 200
    import openapi_spec_validator as validator

    validator.validate(document)
    summary = _openapi_summary(document)
    if os.environ.get("CHAINRULE_UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    assert summary == json.loads(SNAPSHOT.read_text()), (
        "OpenAPI document changed; if on purpose, rerun with CHAINRULE_UPDATE_SNAPSHOTS=1"
    )


def _get(server: cr.Server, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_work_offline(strict: cr.Server, page: str) -> None:
    """/docs loaded Swagger UI from a CDN: a blank page offline and on air-gapped clusters.
    The pages now reference nothing outside the server, and every asset they load answers."""
    status, html = _get(strict, page)
    assert status == 200 and b"openapi.json" in html
    assert re.search(rb"https?://", html) is None, html  # no CDN, no fonts, no validator
    assets = re.findall(rb'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith(b".js") for a in assets), assets
    for asset in assets:
        assert asset.startswith(b"/"), asset
        status, content = _get(strict, asset.decode())
        assert status == 200 and len(content) > 1000, asset
    if page == "/docs":
        assert b"swagger" in html.lower() and b'"validatorUrl": null' in html


def test_calls_run_in_worker_threads_and_health_answers_meanwhile() -> None:
    """A long call runs off the event loop: /health answers while it runs, and a call that
    fails in a worker comes back as its structured error."""
    threads: list[str] = []

    def fn(inputs: In) -> Out:
        threads.append(threading.current_thread().name)
        if inputs.scale < 0:
            raise ArithmeticError("negative scale")
        time.sleep(float(inputs.scale))
        return Out(y=inputs.x, total=inputs.x.sum())

    comp = cr.component(fn, inputs=In, outputs=Out, backend="numpy", name="timed")
    inputs = {"x": [1.0, 2.0], "k": [0.0, 0.0]}
    with cr.serve(comp) as server:
        remote = cr.connect(server.url)
        slow = threading.Thread(target=remote.apply, args=({**inputs, "scale": 1.0},))
        slow.start()
        time.sleep(0.2)
        start = time.perf_counter()
        with urllib.request.urlopen(f"{server.url}/health", timeout=5) as answer:
            assert answer.status == 200
        assert time.perf_counter() - start < 0.5, "/health waited for the long call"
        slow.join()
        with pytest.raises(cr.ComponentError, match="negative scale"):
            remote.apply({**inputs, "scale": -1.0})
        assert remote.apply({**inputs, "scale": 0.0}).total == 3.0
    assert threads and all(t.startswith("chainrule_") for t in threads)


def test_without_threads_small_calls_run_on_the_loop_and_large_json_bodies_do_not() -> None:
    """`threaded=False` saves the thread hop of small calls; a JSON body whose decoding costs
    more than a hop (over 2 KiB) still goes to a worker thread, off the event loop."""
    threads: list[str] = []

    def fn(inputs: In) -> Out:
        threads.append(threading.current_thread().name)
        return Out(y=inputs.x, total=inputs.x.sum())

    comp = cr.component(fn, inputs=In, outputs=Out, backend="numpy", name="inline")
    with cr.serve(comp, threaded=False) as server:
        small = {"inputs": {"x": np.ones(3), "k": np.ones(3)}}
        assert _post(server, "/apply", small, _wire.BINARY)[0] == 200
        large = {"inputs": {"x": np.ones(1000).tolist(), "k": np.ones(1000).tolist()}}
        assert _post(server, "/apply", json.dumps(large).encode())[0] == 200
    assert threads[0].startswith("chainrule-serve-") and threads[1].startswith("chainrule_")
