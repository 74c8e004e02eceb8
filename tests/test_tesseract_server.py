"""Every chainrule server answers the Tesseract HTTP API under `/tesseract`: driven here by
Tesseract's own clients (tesseract-core's `Tesseract.from_url`, tesseract-jax's
`apply_tesseract` under jit(grad), jvp and jacrev) from the peer's venv, on a JAX and a
PyTorch component with list and dict differentiable paths, against finite differences."""

from __future__ import annotations

import base64
import json
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import chainrule as cr
import tesseract_peer

pytestmark = pytest.mark.usefixtures("x64")

DRIVE = Path(__file__).parent / "fixtures" / "tesseract" / "drive.py"
W0, W1 = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.1, 0.2])
TEMP = np.array([0.3, 0.4, 0.5])


class Layer(cr.Schema):
    w: cr.Differentiable[cr.Array[(None,), cr.Float64]]
    tag: str = "layer"


class In(cr.Schema):
    layers: list[Layer]
    fields: dict[str, cr.Differentiable[cr.Array[(None,), cr.Float64]]]
    scale: cr.Differentiable[cr.Array[(), cr.Float64]]
    label: str = "run"


class Out(cr.Schema):
    total: cr.Differentiable[cr.Array[(None,), cr.Float64]]
    per_field: dict[str, cr.Differentiable[cr.Array[(None,), cr.Float64]]]


def _model(xp: Any, sin: Callable[[Any], Any]) -> Callable[[In], Out]:
    def model(x: In) -> Out:
        acc = sum(layer.w**2 for layer in x.layers) + sum(x.fields.values())
        per_field = {k: x.scale * sin(v) for k, v in x.fields.items()}
        return Out(total=x.scale * acc, per_field=per_field)

    return model


COMPONENTS = {
    "jax": cr.component(inputs=In, outputs=Out, backend="jax", name="model")(_model(jnp, jnp.sin)),
    "torch": cr.component(inputs=In, outputs=Out, backend="torch", name="model")(
        _model(torch, torch.sin)
    ),
}


def _inputs(w: Any, temp: Any = TEMP) -> dict[str, Any]:
    return {"layers": [{"w": w}, {"w": W1}], "fields": {"temp": temp}, "scale": 2.0}


def _fd(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = eps
        grad[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return grad


@pytest.fixture(scope="module", params=sorted(COMPONENTS))
def driven(request: pytest.FixtureRequest) -> tuple[cr.Component, dict[str, Any]]:
    """What Tesseract's own clients computed against the served component."""
    comp = COMPONENTS[request.param]
    python = tesseract_peer.python()
    with cr.serve(comp) as server:
        done = subprocess.run(
            [str(python), str(DRIVE), f"{server.url}/tesseract"], capture_output=True, text=True
        )
    assert done.returncode == 0, done.stderr[-4000:]
    return comp, json.loads(done.stdout)


def test_tesseract_sdk_calls_every_endpoint(driven: tuple[cr.Component, dict[str, Any]]) -> None:
    comp, got = driven
    out = comp.apply(_inputs(W0))
    np.testing.assert_allclose(got["apply_total"], out.total)
    assert got["apply_keys"] == ["per_field", "total"]
    assert got["abstract_total"] == {"shape": [3], "dtype": "float64"}
    assert {"apply", "abstract_eval", "jacobian", "vector_jacobian_product"} <= set(
        got["endpoints"]
    )
    mine = comp.vjp(_inputs(W0), {"total": np.ones(3)}, wrt=["layers.0.w", "fields.temp"])
    np.testing.assert_allclose(got["vjp"]["layers.[0].w"], mine["layers.0.w"])
    np.testing.assert_allclose(got["vjp"]["fields.{temp}"], mine["fields.temp"])
    np.testing.assert_allclose(got["jvp"]["per_field.{temp}"], np.sin(TEMP))  # d/dscale
    np.testing.assert_allclose(got["jacobian"], np.diag(2 * 2.0 * W0))
    assert "ValidationError" in got["error"] and "body.layers.0.w" in got["error"]


def test_tesseract_jax_transformations_agree_with_fd(
    driven: tuple[cr.Component, dict[str, Any]],
) -> None:
    comp, got = driven

    def loss(w: np.ndarray) -> float:
        out = comp.apply(_inputs(w))
        return float((out.total**2).sum() + out.per_field["temp"].sum())

    fd = _fd(loss, W0.copy())
    np.testing.assert_allclose(got["jit_grad"], fd, rtol=1e-6)
    np.testing.assert_allclose(got["jvp_loss"], fd.sum(), rtol=1e-6)
    np.testing.assert_allclose(got["jacrev"], np.diag(2.0 * np.cos(TEMP)), rtol=1e-9)


# ---- the API itself, without the peer ----------------------------------------------------


def _post(url: str, body: Any, accept: str | None = None) -> tuple[int, str, Any]:
    headers = {"Content-Type": "application/json"} | ({"Accept": accept} if accept else {})
    req = urllib.request.Request(url, json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers["content-type"], json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers["content-type"], e.read()


def test_openapi_accept_and_errors_take_tesseracts_shapes() -> None:
    with cr.serve(COMPONENTS["jax"]) as server:
        base = f"{server.url}/tesseract"
        with urllib.request.urlopen(f"{base}/openapi.json") as r:
            doc = json.loads(r.read())
        body = {"inputs": {"layers": [{"w": [1.0, 2.0]}], "fields": {"t": [0.5, 0.5]}, "scale": 1}}
        plain = _post(f"{base}/apply", body, "application/json")
        b64 = _post(f"{base}/apply", body, "application/*; gpu_transport=none")
        refused = _post(f"{base}/apply", body, "text/html")
        bad = _post(f"{base}/apply", {"inputs": {**body["inputs"], "layers": [{"w": [[1.0]]}]}})
        missing = _post(f"{base}/vector_jacobian_product", body)
    schemas = doc["components"]["schemas"]
    assert schemas["ApplyOutputSchema"]["differentiable_arrays"]["per_field.{}"]["dtype"] == (
        "float64"
    )
    layer = schemas["Apply_Layer"]["properties"]["w"]
    assert layer["array_flags"] == ["DIFFERENTIABLE"]
    assert layer["properties"]["object_type"]["const"] == "array"
    assert {"/apply", "/abstract_eval", "/vector_jacobian_product"} <= set(doc["paths"])
    assert plain[:2] == (200, "application/json")
    assert plain[2]["total"]["data"] == {"buffer": [1.5, 4.5], "encoding": "json"}
    assert b64[1] == "application/json+base64"
    raw = base64.b64decode(b64[2]["total"]["data"]["buffer"])
    np.testing.assert_allclose(np.frombuffer(raw, "<f8"), [1.5, 4.5])
    assert refused[0] == 406 and b"available_formats" in refused[2]
    assert bad[0] == 422
    assert json.loads(bad[2])["detail"][0]["loc"] == ["body", "layers", 0, "w"]
    assert missing[0] == 422 and json.loads(missing[2])["detail"][0]["loc"][1] == "vjp_inputs"


def test_apply_then_vjp_runs_one_forward_pass() -> None:
    """Tesseract's clients send apply, then vjp at the same inputs: the kept linearization
    answers the vjp (and a vjp at other inputs recomputes)."""
    forwards = []

    @cr.component(inputs=In, outputs=Out, backend="torch", name="counted")
    def counted(x: In) -> Out:
        forwards.append(1)
        return _model(torch, torch.sin)(x)

    body = {"inputs": {"layers": [{"w": [1.0, 2.0]}], "fields": {"t": [0.5, 0.5]}, "scale": 2}}
    vjp = {**body, "vjp_inputs": ["layers.[0].w"], "vjp_outputs": ["total"]}
    vjp["cotangent_vector"] = {"total": [1.0, 1.0]}
    with cr.serve(counted) as server:
        base = f"{server.url}/tesseract"
        assert _post(f"{base}/apply", body)[0] == 200
        status, _, answer = _post(f"{base}/vector_jacobian_product", vjp, "application/json")
        assert (status, len(forwards)) == (200, 1)
        other = {**vjp, "inputs": {**body["inputs"], "scale": 3}}
        moved = _post(f"{base}/vector_jacobian_product", other, "application/json")
    assert answer["layers.[0].w"]["data"]["buffer"] == [4.0, 8.0]  # 2·scale·w
    assert moved[2]["layers.[0].w"]["data"]["buffer"] == [6.0, 12.0]
    assert len(forwards) == 2
