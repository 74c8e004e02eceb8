"""Band 3 of the terrain-crossing demo, served over HTTP from its own environment.

The time to cross one band of width `d` at speed `v` with lateral offset `offset` is
`sqrt(offset² + d²) / v`. This module imports only numpy and chainrule (its environment holds
nothing else); the derivative is written by hand, so the server answers `vjp` exactly instead
of by finite differences.
"""

import numpy as np

import chainrule as cr


class Leg(cr.Schema):
    """One leg of the path: its lateral offset across the band, and the band itself."""

    offset: cr.Differentiable[cr.Array[(), cr.Float64]]
    speed: float
    width: float = 10.0


class Time(cr.Schema):
    time: cr.Differentiable[cr.Array[(), cr.Float64]]


@cr.component(inputs=Leg, outputs=Time, backend="numpy")
def remote_band(inputs: Leg) -> Time:
    """Travel time across the band."""
    return Time(time=np.hypot(inputs.offset, inputs.width) / inputs.speed)


@remote_band.def_vjp
def remote_band_vjp(inputs: Leg, cotangents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # d/dx sqrt(x² + d²)/v = x / (v·sqrt(x² + d²)) = sin θ / v: Snell's quantity itself.
    slope = inputs.offset / (inputs.speed * np.hypot(inputs.offset, inputs.width))
    return {"offset": slope * cotangents["time"]}
