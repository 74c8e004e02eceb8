"""Components for the Ray tests: one that says which process ran it, one that takes its time
(or hangs on request)."""

from __future__ import annotations

import os
import time

import numpy as np

import chainrule as cr


class PidIn(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    delay: float = 0.0  # seconds each call sleeps; 1000 or more: hang


class PidOut(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    pid: int
    process: cr.Array[(), cr.Int64]  # the pid again, as an array: a batched apply stacks it


@cr.component(inputs=PidIn, outputs=PidOut, backend="numpy")
def where(inputs: PidIn) -> PidOut:
    """y = x³ - x, and the process that computed it."""
    time.sleep(inputs.delay)
    pid = os.getpid()
    return PidOut(y=inputs.x**3 - inputs.x, pid=pid, process=np.int64(pid))


@where.def_vjp
def where_vjp(inputs: PidIn, cotangents: dict, wrt: tuple[str, ...]) -> dict:
    time.sleep(inputs.delay)
    return {"x": np.asarray(cotangents["y"]) * (3 * inputs.x**2 - 1)}


class Buffer(cr.Schema):
    x: cr.Array[("n",), cr.Float64]


@cr.component(inputs=Buffer, outputs=Buffer, backend="numpy")
def in_place(inputs: Buffer) -> Buffer:
    """Writes into its input array (as some legacy code does)."""
    inputs.x *= 2.0
    return Buffer(x=inputs.x)
