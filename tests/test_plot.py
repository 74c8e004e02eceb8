"""chainrule.plot: each figure has the expected artists, saves a PNG, and the pipeline graph
finds the components of a JAX / PyTorch / NumPy pipeline and what feeds what."""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib  # noqa: F401 (a required test dependency)
import numpy as np
import pytest
import torch

import chainrule as cr
import chainrule.jax as crj
import chainrule.plot as crplot

pytestmark = pytest.mark.usefixtures("x64")  # these JAX programs compute in float64


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=In, outputs=Out, backend="jax")
def squash(inputs: In) -> Out:
    return Out(y=jnp.tanh(inputs.x))


@cr.component(inputs=In, outputs=Out, backend="torch")
def wave(inputs: In) -> Out:
    return Out(y=torch.cos(inputs.x))


@cr.component(inputs=In, outputs=Out, backend="numpy")
def grow(inputs: In) -> Out:
    return Out(y=np.exp(inputs.x))


def three(x: jax.Array, z: jax.Array) -> jax.Array:
    """x → squash → (·2) → wave → (+z) → grow → sum, plus squash's output directly."""
    a = crj.call(squash, {"x": x})["y"]
    b = crj.call(wave, {"x": 2 * a})["y"]
    c = crj.call(grow, {"x": b + z})["y"]
    return jnp.sum(c) + jnp.sum(a)


def _texts(fig: object) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]  # type: ignore[attr-defined]


def _saved(fig: object, path: Path) -> None:
    assert fig is not None
    assert path.stat().st_size > 1000


def test_objective_from_values(tmp_path: Path) -> None:
    fig = crplot.objective([4.0, 2.0, 1.0, 0.5], log=True, save=tmp_path / "o.png")
    (ax,) = fig.axes
    assert ax.get_yscale() == "log" and len(ax.get_lines()) == 1
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), [4.0, 2.0, 1.0, 0.5])
    _saved(fig, tmp_path / "o.png")


def test_objective_from_history_with_grad_norm(tmp_path: Path) -> None:
    @dataclass
    class History:
        objective: list[float]
        grad_norm: list[float]

    history = History([3.0, 2.0, 1.5, 1.25], [1.0, 0.5, 0.25, 0.125])
    fig = crplot.objective(history, optimum=1.0, save=tmp_path / "o.png")
    main, twin = fig.axes
    np.testing.assert_allclose(main.get_lines()[0].get_ydata(), [2.0, 1.0, 0.5, 0.25])
    np.testing.assert_allclose(twin.get_lines()[0].get_ydata(), history.grad_norm)
    assert twin.get_yscale() == "log" and "gradient norm" in twin.get_ylabel()
    _saved(fig, tmp_path / "o.png")


@pytest.mark.parametrize("vectorized", [True, False])
def test_landscape_with_path(tmp_path: Path, vectorized: bool) -> None:
    def bowl(x: object, y: object) -> object:
        if not vectorized:
            x, y = float(x), float(y)  # type: ignore[arg-type]  # refuses arrays
        return (x - 1) ** 2 + 3 * (y + 0.5) ** 2  # type: ignore[operator]

    path = np.array([[-1.5, 1.0], [0.0, 0.0], [1.0, -0.5]])
    fig = crplot.landscape(bowl, (-2, 2), (-1, 1.5), path, resolution=25, save=tmp_path / "l.png")
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels == ["3 iterates", "start", "end"]
    np.testing.assert_allclose(ax.get_lines()[0].get_xydata(), path)
    _saved(fig, tmp_path / "l.png")


def test_landscape_log_scale(tmp_path: Path) -> None:
    rosenbrock = lambda x, y: (1 - x) ** 2 + 100 * (y - x**2) ** 2  # noqa: E731
    fig = crplot.landscape(rosenbrock, (-2, 2), (-1, 3), log=True, save=tmp_path / "r.png")
    assert fig.axes[1].get_ylabel() == "f − min f"  # the colour bar
    _saved(fig, tmp_path / "r.png")


def test_landscape_rejects_bad_path() -> None:
    with pytest.raises(ValueError, match=r"expected iterates of shape \(steps, 2\), got \(3,\)"):
        crplot.landscape(lambda x, y: x + y, (0, 1), (0, 1), path=[1.0, 2.0, 3.0], resolution=5)


def test_pipeline_graph_finds_components_and_edges() -> None:
    graph = crplot.pipeline_graph(three, jnp.ones(3), jnp.ones(3))
    found = [(n.name, n.backend, n.where) for n in graph.components]
    assert found == [
        ("squash", "jax", "in-process (inline)"),
        ("wave", "torch", "in-process"),
        ("grow", "numpy", "in-process"),
    ]
    assert graph.named_edges() == {
        ("x", "squash"),
        ("squash", "wave"),
        ("wave", "grow"),
        ("z", "grow"),
        ("grow", "output"),
        ("squash", "output"),
    }


def test_pipeline_graph_through_jit_and_pytrees() -> None:
    def nested(params: dict[str, jax.Array]) -> dict[str, jax.Array]:
        a = jax.jit(lambda v: crj.call(wave, {"x": v})["y"])(params["w"])
        return {"total": jnp.sum(a), "raw": params["b"] * 2}

    graph = crplot.pipeline_graph(nested, {"w": jnp.ones(2), "b": jnp.ones(2)})
    assert graph.named_edges() == {
        ("params['w']", "wave"),
        ("wave", "output['total']"),
        ("params['b']", "output['raw']"),
    }


def test_pipeline_figure(tmp_path: Path) -> None:
    fig = crplot.pipeline(three, jnp.ones(3), jnp.ones(3), save=tmp_path / "p.png")
    texts = _texts(fig)
    for label in ("squash\njax · in-process (inline)", "wave\ntorch · in-process", "x", "z"):
        assert label in texts
    arrows = [t for t in fig.axes[0].texts if getattr(t, "arrow_patch", None) is not None]
    assert len(arrows) == 6
    _saved(fig, tmp_path / "p.png")


def test_pipeline_shows_remote_url() -> None:
    serve = cr.serve
    with serve(grow, port=0) as server:
        remote = cr.connect(server.url)
        graph = crplot.pipeline_graph(lambda x: crj.call(remote, {"x": x})["y"], jnp.ones(2))
        remote.close()
    (node,) = graph.components
    assert (node.backend, node.where) == ("remote", server.url)


def test_gradient_check_figure(tmp_path: Path) -> None:
    report = cr.check_gradients(grow, {"x": np.array([0.1, 0.2])})
    report.checks[1] = replace(report.checks[1], error=0.5, ok=False)
    fig = crplot.gradient_check(report, save=tmp_path / "g.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log" and "1 FAILED" in ax.get_title()
    failed = [c for c in ax.collections if c.get_label() == "FAILED"]
    assert len(failed) == 1 and failed[0].get_offsets()[0][1] == pytest.approx(0.5)
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == list(dict.fromkeys(c.endpoint for c in report.checks))
    _saved(fig, tmp_path / "g.png")


def test_missing_matplotlib_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install 'chainrule\[plot\]'"):
        crplot.objective([1.0, 0.5])
