"""`chainrule.connect` on real tesseract-runtime 1.15.0 servers (Tesseract's own examples and
a list/dict one of ours), under every JAX transformation and torch autograd, against finite
differences of the peer's own `apply`.

The servers run from the peer's own venv (`tests/tesseract_peer.py`, built from the package
index on first use), one per example, started together once for the module.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pydantic
import pytest
import torch

import chainrule as cr
import chainrule.jax as crj
import chainrule.torch as crt
import tesseract_peer
from chainrule._transport.tesseract import codec
from chainrule._transport.tesseract.paths import expand, from_tesseract, to_tesseract

pytestmark = pytest.mark.usefixtures("x64")

NAMES = ["listdict", "vectoradd", "vectoradd_jax", "univariate", "meshstats"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, str], Path]]:
    out = tmp_path_factory.mktemp("tesseract")
    with tesseract_peer.servers(NAMES, out) as urls:
        yield urls, out


@pytest.fixture(scope="module")
def peers(served: tuple[dict[str, str], Path]) -> Iterator[dict[str, cr.Component]]:
    comps = {name: cr.connect(url) for name, url in served[0].items()}
    yield comps
    for comp in comps.values():
        comp.close()


def _fd(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float) -> np.ndarray:
    """Central differences of scalar `f` at `x` (float64)."""
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = eps
        grad[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return grad


# ---- listdict: list and dict differentiable paths, float64, every endpoint -------------------

W0, W1 = np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.1, 0.2])
TEMP, P = np.array([0.3, 0.4, 0.5]), np.array([1.0, 2.0, 3.0])


def _ld_inputs(w: Any, temp: Any = TEMP) -> dict[str, Any]:
    return {"layers": [{"w": w}, {"w": W1}], "fields": {"temp": temp, "p": P}, "scale": 2.0}


def _ld_loss_np(comp: cr.Component) -> Callable[[np.ndarray], float]:
    def loss(w: np.ndarray) -> float:
        out = comp.apply(_ld_inputs(w))
        return float((out.total**2).sum() + out.per_field["temp"].sum())

    return loss


def _ld_loss_jax(comp: cr.Component) -> Callable[[jax.Array], jax.Array]:
    def loss(w: jax.Array) -> jax.Array:
        out = crj.call(comp, _ld_inputs(w))
        return (out["total"] ** 2).sum() + out["per_field.temp"].sum()

    return loss


def test_schema_is_mirrored_with_endpoints_and_derivations(peers: dict[str, cr.Component]) -> None:
    ld, va = peers["listdict"], peers["vectoradd"]
    assert ld.endpoints["vjp"] == "remote: tesseract: /vector_jacobian_product"
    assert ld.endpoints["eval_shape"] == "remote: tesseract: /abstract_eval"
    # vectoradd offers apply and jacobian only: the rest is derived from the jacobian
    assert va.endpoints["vjp"] == "derived: vjp <- jacobian <- remote: tesseract: /jacobian"
    assert "runs /apply" in va.endpoints["eval_shape"]
    p = ld.point(_ld_inputs(W0))
    assert p.diff == ("layers.0.w", "layers.1.w", "fields.temp", "fields.p", "scale")
    out = ld.apply(_ld_inputs(W0))
    assert (out.label, out.count) == ("run", 2)  # static outputs come back as values


def test_jit_grad_agrees_with_fd_of_the_peers_apply(peers: dict[str, cr.Component]) -> None:
    ld = peers["listdict"]
    got = jax.jit(jax.grad(_ld_loss_jax(ld)))(jnp.asarray(W0))
    np.testing.assert_allclose(got, _fd(_ld_loss_np(ld), W0, 1e-6), rtol=1e-6)


def test_jvp_and_jacrev_agree_with_fd(peers: dict[str, cr.Component]) -> None:
    ld = peers["listdict"]

    def total(temp: jax.Array) -> jax.Array:
        return crj.call(ld, _ld_inputs(W0, temp))["per_field.temp"]

    def total_np(temp: np.ndarray, i: int) -> float:
        return float(ld.apply(_ld_inputs(W0, temp)).per_field["temp"][i])

    fd = np.stack([_fd(lambda t, i=i: total_np(t, i), TEMP, 1e-6) for i in range(3)])
    np.testing.assert_allclose(jax.jacrev(total)(jnp.asarray(TEMP)), fd, rtol=1e-6, atol=1e-9)
    t = np.array([1.0, -2.0, 0.5])
    _, tangent_out = jax.jvp(total, (jnp.asarray(TEMP),), (jnp.asarray(t),))
    np.testing.assert_allclose(tangent_out, fd @ t, rtol=1e-6, atol=1e-9)


def test_vmap_of_grad_is_grad_per_row(peers: dict[str, cr.Component]) -> None:
    ld = peers["listdict"]
    rows = jnp.stack([jnp.asarray(W0), jnp.asarray(W0) * 2])
    got = jax.vmap(jax.grad(_ld_loss_jax(ld)))(rows)
    for row, g in zip(np.asarray(rows), got, strict=True):
        np.testing.assert_allclose(g, _fd(_ld_loss_np(ld), row, 1e-6), rtol=1e-6)


def test_torch_call_backward_agrees_with_fd(peers: dict[str, cr.Component]) -> None:
    ld = peers["listdict"]
    w = torch.tensor(W0, requires_grad=True)
    out = crt.call(ld, _ld_inputs(w))
    ((out["total"] ** 2).sum() + out["per_field.temp"].sum()).backward()
    assert w.grad is not None
    np.testing.assert_allclose(w.grad.numpy(), _fd(_ld_loss_np(ld), W0, 1e-6), rtol=1e-6)


def test_jacobian_paths_translate_both_ways(peers: dict[str, cr.Component]) -> None:
    jac = peers["listdict"].jacobian(_ld_inputs(W0), wrt=["layers.0.w", "fields.p"], of="total")
    np.testing.assert_allclose(jac["total"]["layers.0.w"], np.diag(2 * 2.0 * W0))
    np.testing.assert_allclose(jac["total"]["fields.p"], 2.0 * np.eye(3))


# ---- Tesseract's own examples ---------------------------------------------------------------


def test_jacobian_only_tesseract_gets_grad_through_derived_vjp(
    peers: dict[str, cr.Component],
) -> None:
    va = peers["vectoradd"]  # apply + jacobian; a, b float32, s a float32 scalar
    b = np.array([0.5, -1.0, 2.0], np.float32)

    def loss(a: jax.Array) -> jax.Array:
        return (crj.call(va, {"a": a, "b": b, "s": 3.0})["result"] ** 2).sum()

    def loss_np(a: np.ndarray) -> float:
        out = va.apply({"a": a.astype(np.float32), "b": b, "s": 3.0})
        return float((out.result**2).sum())

    a = np.array([1.0, 2.0, 3.0], np.float32)
    got = jax.jit(jax.grad(loss))(jnp.asarray(a))
    np.testing.assert_allclose(got, _fd(loss_np, a, 1e-2), rtol=1e-3)


def test_nested_models_under_jit_grad_and_jvp(peers: dict[str, cr.Component]) -> None:
    vj = peers["vectoradd_jax"]  # a, b: {v: float32[?], s: float32}; outputs nested twice
    bv = np.array([0.5, -1.0, 2.0], np.float32)

    def inputs(v: Any) -> dict[str, Any]:
        return {"a": {"v": v, "s": 2.0}, "b": {"v": bv, "s": 1.0}}

    def loss(v: jax.Array) -> jax.Array:
        out = crj.call(vj, inputs(v))
        return out["vector_add.result"].sum() + out["vector_min.normed_result"][0]

    def loss_np(v: np.ndarray) -> float:
        out = vj.apply(inputs(v.astype(np.float32)))
        return float(out.vector_add.result.sum() + out.vector_min.normed_result[0])

    v = np.array([1.0, 2.0, 3.0], np.float32)
    fd = _fd(loss_np, v, 1e-2)
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(jnp.asarray(v)), fd, rtol=2e-3, atol=1e-3)
    _, dt = jax.jvp(loss, (jnp.asarray(v),), (jnp.ones(3, jnp.float32),))
    np.testing.assert_allclose(dt, fd.sum(), rtol=2e-3, atol=1e-3)


def test_broken_abstract_eval_falls_back_to_apply(peers: dict[str, cr.Component]) -> None:
    uv = peers["univariate"]  # its /abstract_eval answers 500 as shipped (tesseract-core 1.15)

    def rosen(x: Any, y: Any) -> Any:
        return (1.0 - x) ** 2 + 100.0 * (y - x**2) ** 2

    grad = jax.jit(jax.grad(lambda x: crj.call(uv, {"x": x, "y": 2.0})["result"]))
    x = np.float32(0.5)
    np.testing.assert_allclose(grad(x), -2 * (1 - 0.5) - 400 * 0.5 * (2.0 - 0.25), rtol=1e-5)
    fd = _fd(lambda v: float(uv.apply({"x": v[0], "y": 2.0}).result), np.array([0.5]), 1e-2)
    np.testing.assert_allclose(grad(x), fd[0], rtol=1e-3)
    assert uv.eval_shape({"x": 1.0, "y": 2.0}).result.shape == ()
    assert float(rosen(0.5, 2.0)) == pytest.approx(float(uv.apply({"x": x, "y": 2.0}).result))


def test_dict_of_static_arrays_and_int_arrays(peers: dict[str, cr.Component]) -> None:
    ms = peers["meshstats"]  # nested model; dict[str, Array] static; Int32 connectivity
    points = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 4]], np.float32)
    mesh = {
        "n_points": 4, "n_cells": 1, "points": points,
        "num_points_per_cell": np.array([4.0], np.float32),
        "cell_connectivity": np.arange(4, dtype=np.int32),
        "cell_data": {"t": np.ones((1, 2), np.float32)}, "point_data": {},
    }  # fmt: skip
    out = ms.apply({"mesh": mesh})
    np.testing.assert_allclose(out.statistics.barycenter, points.mean(0))
    grads = ms.vjp({"mesh": mesh}, {"statistics.barycenter": np.ones(3, np.float32)})
    np.testing.assert_allclose(grads["mesh.points"], np.full((4, 3), 0.25), rtol=1e-6)
    assert grads["mesh.points"].dtype == np.float32  # the peer answers float64: cast back


# ---- errors, detection, run folders ---------------------------------------------------------


def test_bad_inputs_are_chainrule_errors_naming_the_field(peers: dict[str, cr.Component]) -> None:
    ld, va = peers["listdict"], peers["vectoradd"]
    with pytest.raises(cr.ValidationError, match=r"'label'.*valid string"):
        ld.apply({**_ld_inputs(W0), "label": 3})  # checked here, before the request
    with pytest.raises(cr.ValidationError, match=r"refused the request: inputs: .*same shape"):
        va.apply({"a": np.ones(3, np.float32), "b": np.ones(4, np.float32)})  # the peer's 422
    with pytest.raises(cr.ValidationError, match="cotangents"):
        ld.vjp(_ld_inputs(W0), {"total": np.ones(4)})  # the peer would answer 500
    with pytest.raises(cr.EndpointUnavailableError, match="hvp"):
        ld.hvp(_ld_inputs(W0), {"scale": 1.0}, of="total")


def test_peer_status_codes_map_to_the_exception_tree() -> None:
    detail = b'{"detail":[{"loc":["body","inputs","a","v"],"msg":"bad rank","input":3}]}'
    err = codec.error(422, detail, "http://h/apply")
    assert isinstance(err, cr.ValidationError) and "inputs.a.v: bad rank (got 3)" in str(err)
    assert isinstance(codec.error(404, b'{"detail":"Not Found"}', "u"), cr.EndpointUnavailableError)
    assert "TESSERACT_DEBUG" in str(codec.error(500, b"Internal Server Error", "u"))
    assert isinstance(codec.error(406, b'{"detail":{"message":"x"}}', "u"), cr.TransportError)


def test_detection_and_forced_protocols(served: tuple[dict[str, str], Path]) -> None:
    url = served[0]["vectoradd"]
    comp = cr.connect(url, protocol="tesseract")
    assert comp.endpoints["jacobian"] == "remote: tesseract: /jacobian"
    comp.close()
    with pytest.raises(cr.TransportError, match="HTTP 404"):
        cr.connect(url, protocol="chainrule")
    with pytest.raises(cr.ValidationError, match="protocol"):
        cr.connect(url, protocol="grpc")  # type: ignore[arg-type]


def test_one_run_folder_per_client(served: tuple[dict[str, str], Path]) -> None:
    urls, out = served
    comp = cr.connect(urls["vectoradd"])
    inputs = {"a": np.ones(3, np.float32), "b": np.ones(3, np.float32)}
    before = set((out / "vectoradd").glob("run_chainrule-*"))
    for _ in range(3):
        comp.apply(inputs)
        comp.jacobian(inputs)
    comp.close()
    assert len(set((out / "vectoradd").glob("run_chainrule-*")) - before) == 1


def test_paths_between_chainrule_and_tesseract() -> None:
    patterns = ["layers.[].w", "fields.{}", "scale"]
    assert to_tesseract("layers.0.w", patterns) == "layers.[0].w"
    assert to_tesseract("fields.we{ird}", patterns) == "fields.{we\\{ird\\}}"
    assert from_tesseract("fields.{we\\{ird\\}}") == "fields.we{ird}"
    assert from_tesseract("layers.[12].w") == "layers.12.w"
    with pytest.raises(cr.UnknownPathError, match=re.escape("layers.[].w")):
        to_tesseract("label", patterns)
    with pytest.raises(cr.ValidationError, match=re.escape("without '.'")):
        from_tesseract("fields.{a.b}")
    tree = {"layers": [{"w": 1}, {"w": 2}], "fields": {"t": 3}, "scale": None}
    assert expand(patterns, tree) == ["layers.0.w", "layers.1.w", "fields.t"]


def test_missing_array_defaults_are_validated_not_copied() -> None:
    """Regression: the exact-construction fast path copied an array field's raw default (a
    Tesseract's `s: Float32 = 1` arrives as the int 1) into the instance."""

    class In(cr.Schema):
        a: cr.Array[(None,), cr.Float32]
        s: cr.Array[(), cr.Float32] = pydantic.Field(1, validate_default=True)

    class Out(cr.Schema):
        y: cr.Array[(None,), cr.Float32]

    @cr.component(inputs=In, outputs=Out, backend="numpy")
    def scaled(x: In) -> Out:
        return Out(y=x.s * x.a)

    p = scaled.point({"a": np.ones(2, np.float32)})
    assert isinstance(p.inputs.s, np.ndarray) and p.inputs.s.dtype == np.float32


def test_guide_snippet_runs_against_a_real_tesseract(
    served: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    snippet = Path(__file__).parents[1] / "docs" / "tesseract" / "tesseract_connect.py"
    env = {**os.environ, "TESSERACT_URL": served[0]["vectoradd_jax"]}
    done = subprocess.run(
        [sys.executable, str(snippet)], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[10. 12. 32.]" in done.stdout
    assert "remote: tesseract: /vector_jacobian_product" in done.stdout
    assert "same shape" in done.stdout
