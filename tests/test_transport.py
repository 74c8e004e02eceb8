"""The transport seam: the transport-neutral handler, the one remote component reading declared
capabilities, the in-process wire transport, and an endpoint added as one row flowing to the
server, the client, `/schema` and `check_gradients`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import chainrule as cr
from cases import CASES, build
from chainrule._cli import app
from chainrule._component.backends.base import Capabilities
from chainrule._component.endpoints import COTANGENTS, ENDPOINTS, WRT, Endpoint
from chainrule._transport import wire
from chainrule._transport.handler import Handler, describe
from chainrule._transport.local import WireTransport
from chainrule._transport.remote import remote_component
from chainrule._transport.settings import ServerSettings

X = {"x": np.array([0.3, 1.1, -0.4]), "scale": 1.5}
CT = {"y": np.array([1.0, -2.0, 0.5]), "s": np.array(0.7)}


# ---- the handler every server side shares --------------------------------------------------


def test_the_handler_answers_request_trees_without_any_transport() -> None:
    comp = build(CASES[0], "jax")
    handler = Handler(comp, ServerSettings())
    answer = handler.handle("vjp", {"inputs": X, "cotangents": CT, "wrt": ["x"]})
    np.testing.assert_array_equal(answer["result"]["x"], comp.vjp(X, CT, wrt=["x"])["x"])
    kept = handler.handle("apply", {"inputs": X, "keep": True})
    assert set(kept) == {"outputs", "handle"}
    again = handler.handle("vjp", {"inputs": X, "cotangents": CT, "handle": kept["handle"]})
    np.testing.assert_allclose(again["result"]["x"], answer["result"]["x"], rtol=1e-12)
    shapes = handler.handle("eval_shape", {"inputs": {"x": np.ones(2)}})
    assert shapes["leaves"] == ["y", "s"]
    assert shapes["outputs"]["y"] == {"shape": [2], "dtype": "float64"}


def test_the_handler_checks_requests_by_the_endpoint_rows() -> None:
    handler = Handler(build(CASES[0], "numpy"), ServerSettings(max_batch=2))
    with pytest.raises(cr.ValidationError, match="'wrt' must be a path, a list of paths or null"):
        handler.handle("vjp", {"inputs": X, "cotangents": CT, "wrt": 3})
    with pytest.raises(cr.ValidationError, match=r"missing keys \['cotangents'\]"):
        handler.handle("vjp", {"inputs": X})
    with pytest.raises(cr.ValidationError, match="'of' must be one scalar output path or null"):
        handler.handle("hvp", {"inputs": X, "tangents": {"x": X["x"]}, "of": ["s"]})
    batch = {"y": np.ones((3, 3)), "s": np.ones(3)}
    with pytest.raises(cr.WireFormatError, match=r"a batch of 3 rows .* \(max_batch\)"):
        handler.handle("batched_vjp", {"inputs": X, "cotangents": batch})


def test_schema_is_one_document_for_server_cli_and_wire(tmp_path: Any) -> None:
    """`GET /schema`, `chainrule schema file.py:obj` and a transport's `schema()` are the one
    description (`handler.describe`), declared capabilities included."""
    file = tmp_path / "comp.py"
    tests = str(Path(__file__).parent)
    file.write_text(
        f"import sys\nsys.path.insert(0, {tests!r})\n"
        "from cases import CASES, build\ncomp = build(CASES[0], 'jax')\n"
    )
    result = CliRunner().invoke(app, ["schema", f"{file}:comp"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    comp = build(CASES[0], "jax")
    assert printed == json.loads(json.dumps(describe(comp, ServerSettings())))
    with cr.serve(comp) as server:
        from chainrule._transport.http.client import Connection

        served = Connection(server.url).get_json("/schema")
    assert served == printed
    assert WireTransport(comp).schema() == printed
    assert printed["capabilities"] == {
        "static_shapes": True,
        "cheap_eval_shape": True,
        "batched_points": True,
    }


# ---- one remote component, declared capabilities -------------------------------------------


@pytest.mark.parametrize(
    ("backend", "declared"),
    [("jax", Capabilities(True, True)), ("torch", Capabilities(True, True)),
     ("numpy", Capabilities(False, False))],
)  # fmt: skip
def test_a_remote_component_takes_the_capabilities_its_server_declares(
    backend: str, declared: Capabilities
) -> None:
    remote = remote_component(WireTransport(build(CASES[0], backend)))
    assert remote.backend.capabilities == declared
    assert remote.backend.capabilities.framework is None  # never run inline by a binding


class _Older:
    """A transport to a server of an older chainrule: its schema declares no capabilities."""

    def __init__(self, component: cr.Component) -> None:
        self.inner = WireTransport(component)
        self.where = "older://server"
        self.asked: list[str] = []

    def schema(self) -> dict[str, Any]:
        document = self.inner.schema()
        del document["capabilities"]
        return document

    def call(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        self.asked.append(endpoint)
        return self.inner.call(endpoint, request)

    def close(self) -> None:
        self.inner.close()


def test_a_server_declaring_no_capabilities_gets_the_conservative_answer() -> None:
    """Shapes come from running apply, never from an eval_shape round trip that might buy
    nothing (today's servers declare theirs; guessing from the backend's name is gone)."""
    older = _Older(build(CASES[0], "jax"))
    remote = remote_component(older)
    assert remote.backend.capabilities == Capabilities(False, False)
    remote.hvp(X, {"x": np.ones(3)}, of="s")  # needs the shape of output s
    assert "eval_shape" not in older.asked
    assert older.asked[0] == "apply"


def test_a_wire_transport_raises_server_errors_as_their_own_class() -> None:
    remote = remote_component(WireTransport(build(CASES[0], "numpy"), content_type=wire.JSON))
    with pytest.raises(cr.UnknownPathError, match="'nope' is not an array input") as caught:
        remote.vjp(X, CT, wrt=["nope"])
    assert caught.value.errors[0]["path"] == "nope"
    with pytest.raises(cr.ValidationError, match="expected float64"):
        remote.apply({"x": ["a"]})


# ---- an endpoint is one row ------------------------------------------------------------------


VJP_BY_JACOBIAN = Endpoint(
    "vjp_by_jacobian",
    (COTANGENTS, WRT),
    "by_input",
    "{input path: Jᵀ·c}, from the Jacobian",
    derivative=True,
    check="vjp",
)


def _with_toy_endpoint(monkeypatch: pytest.MonkeyPatch) -> cr.Component:
    monkeypatch.setitem(ENDPOINTS, VJP_BY_JACOBIAN.name, VJP_BY_JACOBIAN)
    comp = build(CASES[0], "numpy")
    reference = build(CASES[0], "jax")

    def vjp_by_jacobian(inputs: Any, cotangents: Any, wrt: Any) -> dict[str, np.ndarray]:
        jac = reference.jacobian(inputs, wrt=wrt, of=tuple(cotangents))
        return {
            w: sum(np.tensordot(c, jac[o][w], axes=np.ndim(c)) for o, c in cotangents.items())
            for w in wrt
        }

    comp.define("vjp_by_jacobian", vjp_by_jacobian)
    return comp


def test_a_new_endpoint_is_one_row_and_flows_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """A row added to the table (and the author's function for it) is offered in process,
    routed, checked and described by the server (OpenAPI, /schema), forwarded by the remote
    client, and compared with finite differences by check_gradients."""
    comp = _with_toy_endpoint(monkeypatch)
    want = comp.vjp(X, CT)
    local = comp.call("vjp_by_jacobian", X, cotangents=CT)
    np.testing.assert_allclose(local["x"], want["x"], rtol=1e-5)
    assert comp.endpoints["vjp_by_jacobian"] == "written"
    with cr.serve(comp) as server:
        remote = cr.connect(server.url)
        assert remote.endpoints["vjp_by_jacobian"] == "remote: written"
        got = remote.call("vjp_by_jacobian", X, cotangents=CT)
        np.testing.assert_array_equal(got["x"], local["x"])
        with pytest.raises(cr.ValidationError, match="'cotangents' must be an object"):
            remote.backend.transport.conn.call("/vjp_by_jacobian", {"inputs": X, "cotangents": 1})
        openapi = remote.backend.transport.conn.get_json("/openapi.json")
        assert "/vjp_by_jacobian" in openapi["paths"]
        report = cr.check_gradients(remote, X, n_random=0)
        remote.close()
    checked = {c.endpoint for c in report.checks}
    assert "vjp_by_jacobian" in checked and report.ok, str(report)
