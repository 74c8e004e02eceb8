"""Where a crossing's time goes: `jit(grad(sum(f)))` of y = 2x split into JAX's part, the
host callbacks, and the steps inside them (the profile behind issue 17's remaining gap).

1. Per call: the whole `jit(grad)`, the time inside chainrule's host callbacks (wrapped with
   a timer at lowering), and the rest (JAX's dispatch, XLA, entering the callbacks), next to
   jaxbind's whole call, for the NumPy component with a written vjp and the torch component.
2. The steps a planned site's callback takes, each timed alone (`timeit`, the same objects the
   callbacks use): the read-only copy of an input, building the typed inputs instance, the
   author's function (its own `Outputs(...)` validation included), the written vjp, copying a
   result into XLA's buffer; for torch, the lane's recorded forward, the fingerprint of the
   point, keeping the graph, and the vjp from it.

Run: `python bench/crossing_profile.py` (`--n 10000` for another size).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import pipeline

from chainrule._bindings.jax import compat, fast

jax.config.update("jax_enable_x64", True)


def _us(fn: Callable[[], Any], number: int = 20000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=3)) / number * 1e6


def _timed_callbacks() -> list[list[float]]:
    """Wrap every host callback lowered from now on with a timer; their times, per callback."""
    found: list[list[float]] = []
    lower = compat.lower_buffer_callback

    def timed_lower(ctx: Any, callback: Any, args: Any) -> Any:
        times: list[float] = []
        found.append(times)

        def timed(*a: Any) -> None:
            t = time.perf_counter()
            callback(*a)
            times.append(time.perf_counter() - t)

        return lower(ctx, timed, args)

    compat.lower_buffer_callback = timed_lower  # type: ignore[assignment]
    return found


def whole_calls(kind: str, n: int, calls: int) -> dict[str, float]:
    found = _timed_callbacks()
    f = pipeline.MAKERS["chainrule"](kind, n)
    g = pipeline.MAKERS["jaxbind"](kind, n)
    x = jnp.linspace(0.0, 1.0, n)
    jax.block_until_ready(f(x))
    jax.block_until_ready(g(x))
    for times in found:
        times.clear()
    whole, theirs = [], []
    for _ in range(calls):
        t = time.perf_counter()
        jax.block_until_ready(f(x))
        whole.append(time.perf_counter() - t)
        t = time.perf_counter()
        jax.block_until_ready(g(x))
        theirs.append(time.perf_counter() - t)
    inside = sum(statistics.median(t) for t in found if t)
    med = statistics.median(whole)
    return {
        "jit(grad), chainrule": med * 1e6,
        "  inside chainrule's callbacks": inside * 1e6,
        "  the rest (JAX, XLA, entering the callbacks)": (med - inside) * 1e6,
        "  crossings per call": float(sum(1 for t in found if t)),
        "jit(grad), jaxbind": statistics.median(theirs) * 1e6,
    }


def numpy_steps(n: int) -> dict[str, float]:
    from chainrule._bindings.jax.buffers import _copy, put

    comp: Any = None

    @pipeline.cr.component(inputs=pipeline.In, outputs=pipeline.Out, backend="numpy", name="np2x")
    def double(inputs: pipeline.In) -> pipeline.Out:
        return pipeline.Out(y=2.0 * inputs.x)

    @double.def_vjp
    def _vjp(inputs: pipeline.In, cotangents: dict[str, Any]) -> dict[str, Any]:
        return {"x": 2.0 * cotangents["y"]}

    comp = double
    template = pipeline.In.model_construct(x=np.zeros(n))
    plan = comp.plan(template, ("x",), ("y",))
    x, target = np.linspace(0.0, 1.0, n), np.empty(n)
    inputs = plan.inputs([x])
    y = 2.0 * x
    return {
        "read-only copy of one input": _us(lambda: _copy(x)),
        "typed inputs instance (Plan.inputs)": _us(lambda: plan.inputs([x])),
        "author's function, Outputs(...) included": _us(lambda: double.fn(inputs)),
        "  of which Outputs(y=...) validation": _us(lambda: pipeline.Out(y=y)),
        "author's written vjp": _us(lambda: _vjp(inputs, {"y": x})),
        "copy a result into XLA's buffer": _us(lambda: put(target, y)),
        "NaN-check switch, call counter": _us(
            lambda: (fast.finite.active(), comp.calls.update(("vjp",)))
        ),
    }


def torch_steps(n: int) -> dict[str, float]:
    @pipeline.cr.component(inputs=pipeline.In, outputs=pipeline.Out, backend="torch", name="t2x")
    def double(inputs: pipeline.In) -> pipeline.Out:
        return pipeline.Out(y=2.0 * inputs.x)

    template = pipeline.In.model_construct(x=np.zeros(n))
    plan = double.plan(template, ("x",), ("y",))
    lane = plan.lane.fresh_copies()
    x = np.linspace(0.0, 1.0, n)
    x.flags.writeable = False
    c = {"y": np.ones(n)}
    shapes = [(n,)]
    from chainrule._component.residuals import digest

    def forward() -> Any:
        return lane.apply(plan.inputs, [x], shapes, True)[1]

    residual = forward()
    return {
        "recorded forward (lane.apply keep)": _us(forward, 5000),
        "fingerprint of the point (handle check)": _us(lambda: digest(b"site", [x])),
        "keep the graph (residual cache put)": _us(
            lambda: double.residuals.put("t2x", residual), 5000
        ),
        "vjp from the kept graph (lane.vjp)": _us(lambda: lane.vjp(residual, c, ("x",)), 5000),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for kind in ("numpy", "torch"):
        table = Table(title=f"{kind} component, n = {args.n}: µs per jit(grad) call (medians)")
        table.add_column("")
        table.add_column("µs", justify="right")
        for label, v in whole_calls(kind, args.n, args.calls).items():
            table.add_row(label, f"{v:.0f}" if "crossings" in label else f"{v:.1f}")
        steps = numpy_steps(args.n) if kind == "numpy" else torch_steps(args.n)
        table.add_section()
        for label, v in steps.items():
            table.add_row(f"step: {label}", f"{v:.2f}")
        console.print(table)


if __name__ == "__main__":
    main()
