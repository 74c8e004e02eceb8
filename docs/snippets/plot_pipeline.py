"""Plots: a pipeline of components drawn as a graph (which backend, where each runs)."""

import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import chainrule as cr
import chainrule.jax as crj
import chainrule.plot as crplot

jax.config.update("jax_enable_x64", True)  # this program computes in float64


class Signal(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Response(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Signal, outputs=Response, backend="jax")
def smooth(inputs):
    return Response(y=jnp.tanh(inputs.x))


@cr.component(inputs=Signal, outputs=Response, backend="numpy")
def legacy(inputs):
    return Response(y=np.exp(-inputs.x))


def loss(x, target):
    y = crj.call(smooth, {"x": x})["y"]
    z = crj.call(legacy, {"x": 2 * y})["y"]
    return jnp.sum((z - target) ** 2)


graph = crplot.pipeline_graph(loss, jnp.ones(3), jnp.zeros(3))
print([(n.name, n.backend, n.where) for n in graph.components])
# [('smooth', 'jax', 'in-process (inline)'), ('legacy', 'numpy', 'in-process')]

assert graph.named_edges() == {
    ("x", "smooth"),
    ("smooth", "legacy"),
    ("legacy", "output"),
    ("target", "output"),
}

with tempfile.TemporaryDirectory() as tmp:
    crplot.pipeline(loss, jnp.ones(3), jnp.zeros(3), save=Path(tmp) / "pipeline.png")
    assert (Path(tmp) / "pipeline.png").stat().st_size > 1000
