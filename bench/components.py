"""Components the benchmarks serve: cheap to compute, so transport dominates."""

from __future__ import annotations

from typing import Any

import chainrule as cr


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=In, outputs=Out, backend="numpy")
def scale(inputs: In) -> Out:
    """y = 2·x: memory-bound, so the figures show the transport."""
    return Out(y=inputs.x * 2.0)


@scale.def_vjp
def _scale_vjp(inputs: In, cotangents: dict[str, Any]) -> dict[str, Any]:
    return {"x": 2.0 * cotangents["y"]}


class Wait(cr.Schema):
    x: cr.Differentiable[cr.Array[(3,), cr.Float64]]


@cr.component(inputs=Wait, outputs=Wait, backend="numpy")
def sleepy(inputs: Wait) -> Wait:
    """50 ms per call, waiting rather than computing: a latency-bound component (an external
    solver, I/O), whose calls overlap even on a machine with few cores."""
    import time

    time.sleep(0.05)
    return Wait(x=inputs.x + 1.0)
