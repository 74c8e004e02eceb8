"""tesseract-torch (Tesseract's PyTorch client, from the peer's venv) drives chainrule
components through `/tesseract`: a PyTorch and a NumPy component, forward,
`torch.autograd.grad`, `.backward()` and forward-mode AD, against finite differences in
float64 and the component's own answers; and one forward pass per gradient."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import chainrule as cr
import tesseract_peer

pytestmark = pytest.mark.usefixtures("x64")

DRIVE = Path(__file__).parent / "fixtures" / "tesseract" / "drive_torch.py"
A, B, C = np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, 3.0]), np.array([1.0, -2.0, 0.5])
LAYER = np.array([0.5, 0.1, 0.2])
SIZES: list[int] = []  # the size of `a.v` at every forward pass the components run


class Vec(cr.Schema):
    v: cr.Differentiable[cr.Array[(None,), cr.Float64]]


class In(cr.Schema):
    a: Vec
    b: Vec
    s: cr.Differentiable[cr.Array[(), cr.Float64]]
    layers: list[Vec]
    label: str = "run"


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[(None,), cr.Float64]]
    n: cr.Differentiable[cr.Array[(), cr.Float64]]


def _model(sin: Callable[[Any], Any]) -> Callable[[In], Out]:
    def model(x: In) -> Out:
        SIZES.append(x.a.v.shape[0])  # a shape is known under every tracing transform
        y = x.s * sin(x.a.v) * x.b.v + sum(layer.v**2 for layer in x.layers)
        return Out(y=y, n=(y**2).sum())

    return model


COMPONENTS = {
    "torch": cr.component(inputs=In, outputs=Out, backend="torch", name="model")(_model(torch.sin)),
    "numpy": cr.component(inputs=In, outputs=Out, backend="numpy", name="model")(_model(np.sin)),
}


def _inputs(a: Any, b: Any = B, s: Any = 2.0, layer: Any = LAYER) -> dict[str, Any]:
    return {"a": {"v": a}, "b": {"v": b}, "s": s, "layers": [{"v": layer}], "label": "x"}


def _fd(f: Callable[[np.ndarray], Any], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of f (scalar or array valued) along each element of x."""
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = eps
        cols.append((np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * eps))
    return np.stack(cols, axis=-1) if x.ndim else cols[0]


Run = tuple[cr.Component, dict[str, Any], list[int]]


def _drive(comp: cr.Component) -> Run:
    """What tesseract-torch computed against the served component, and the sizes of the
    points the component ran its forward pass at meanwhile."""
    SIZES.clear()
    with cr.serve(comp) as server:
        done = subprocess.run(
            [str(tesseract_peer.python()), str(DRIVE), f"{server.url}/tesseract"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    sizes = list(SIZES)
    assert done.returncode == 0, done.stderr[-4000:]
    return comp, json.loads(done.stdout), sizes


@pytest.fixture(scope="module")
def runs() -> dict[str, Run]:
    return {name: _drive(comp) for name, comp in COMPONENTS.items()}


@pytest.fixture(params=sorted(COMPONENTS))
def driven(request: pytest.FixtureRequest, runs: dict[str, Run]) -> Run:
    return runs[request.param]


def test_forward_and_autograd_grad_agree_with_fd(
    driven: Run,
) -> None:
    comp, got, _ = driven
    out = comp.apply(_inputs(A))
    np.testing.assert_allclose(got["y"], out.y, rtol=1e-12)
    np.testing.assert_allclose(got["n"], out.n, rtol=1e-12)
    fds = [
        _fd(lambda a: comp.apply(_inputs(a)).n, A),
        _fd(lambda b: comp.apply(_inputs(A, b)).n, B),
        _fd(lambda s: comp.apply(_inputs(A, s=s)).n, np.array(2.0)),
    ]
    mine = comp.vjp(_inputs(A), {"n": np.array(1.0)}, wrt=["a.v", "b.v", "s"])
    for grad, fd, path in zip(got["grad"], fds, ["a.v", "b.v", "s"], strict=True):
        np.testing.assert_allclose(grad, fd, rtol=1e-6, err_msg=path)
        np.testing.assert_allclose(grad, mine[path], rtol=1e-9, err_msg=path)


def test_backward_with_a_cotangent_agrees_with_fd(
    driven: Run,
) -> None:
    comp, got, _ = driven
    a4, b4, c4 = np.append(A, 0.4), np.append(B, 4.0), np.append(C, 1.0)
    x4 = _inputs(a4, b4, layer=np.ones(4))
    jac = _fd(lambda a: comp.apply({**x4, "a": {"v": a}}).y, a4)
    np.testing.assert_allclose(got["backward_a4"], c4 @ jac, rtol=1e-6)
    mine = comp.vjp(x4, {"y": c4}, wrt=["a.v"])["a.v"]
    np.testing.assert_allclose(got["backward_a4"], mine, rtol=1e-9)


def test_forward_mode_agrees_with_fd(
    driven: Run,
) -> None:
    comp, got, _ = driven
    a5, b5 = np.append(A, [0.4, 0.5]), np.append(B, [4.0, 5.0])

    def along(t: np.ndarray) -> Any:  # the point moved by t along (a.v, s) = (1, …, 1; 1)
        out = comp.apply(_inputs(a5 + t, b5, 2.0 + t, np.ones(5)))
        return np.append(out.y, out.n)

    fd = _fd(along, np.array(0.0))
    np.testing.assert_allclose(got["jvp_y"], fd[:5], rtol=1e-6)
    np.testing.assert_allclose(got["jvp_n"], fd[5], rtol=1e-6)
    mine = comp.jvp(_inputs(a5, b5, 2.0, np.ones(5)), {"a.v": np.ones(5), "s": np.array(1.0)})
    np.testing.assert_allclose(got["jvp_y"], mine["y"], rtol=1e-9)


def test_each_derivative_costs_one_forward_pass(runs: dict[str, Run]) -> None:
    """tesseract-torch's backward (forward mode) sends a vjp (jvp) at the inputs of its apply:
    the server answers it from the linearization kept by that apply (the PyTorch component
    ran once per point)."""
    _, _, sizes = runs["torch"]
    assert (sizes.count(3), sizes.count(4), sizes.count(5)) == (1, 1, 1)


def test_guide_snippet_runs_against_a_served_component(tmp_path: Path) -> None:
    docs = Path(__file__).parents[1] / "docs" / "tesseract"
    spec = importlib.util.spec_from_file_location("torch_component", docs / "torch_component.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with cr.serve(module.scaled_sum) as server:
        done = subprocess.run(
            [str(tesseract_peer.python()), str(docs / "tesseract_torch_client.py")],
            env={**os.environ, "CHAINRULE_URL": server.url},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.count("[ 2.0000,  1.0806, -0.8323]") == 2
