"""Pipeline benchmark: the cost of going through chainrule inside JAX, as ratios.

1. An in-process JAX component pipeline under `jit(grad)` vs the same pure JAX function
   (goal ≤ 1.1×: the component is traced inline).
2. The per-crossing cost of a NumPy and a PyTorch component under `jit(grad)` vs the floor: a
   bare `jax.pure_callback` forward and backward doing the same NumPy work (goal ≤ 1.5×). For
   context, the torch component is also set against the same torch work bridged by hand with
   bare pure_callbacks (forward, then record-and-backward), which is what it replaces.
3. `jacrev` of a remote component with 100 outputs: how many requests it sends (goal 1).

Run: `python bench/pipeline.py` (add `--quick` for a short run).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import chainrule as cr
import chainrule.jax as crj

jax.config.update("jax_enable_x64", True)  # the benchmarks compute in float64

N = 100


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


def _median(fn: Callable[[], Any], budget: float) -> float:
    jax.block_until_ready(fn())
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 20 or time.perf_counter() - start < budget:
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
        if len(times) > 20000:
            break
    return statistics.median(times)


def inline_ratio(budget: float) -> tuple[float, float]:
    """Pipeline of 5 in-process JAX components vs the same function in plain JAX."""

    @cr.component(inputs=In, outputs=Out, backend="jax")
    def stage(inputs: In) -> Out:
        return Out(y=jnp.tanh(inputs.x) * 1.1 + 0.1 * inputs.x**2)

    def plain(x: jax.Array) -> jax.Array:
        for _ in range(5):
            x = jnp.tanh(x) * 1.1 + 0.1 * x**2
        return jnp.sum(x)

    def piped(x: jax.Array) -> jax.Array:
        for _ in range(5):
            x = crj.call(stage, {"x": x})["y"]
        return jnp.sum(x)

    x = jnp.linspace(0.0, 1.0, N)
    f, g = jax.jit(jax.grad(piped)), jax.jit(jax.grad(plain))
    # interleave the two so machine noise hits both alike
    a = _median(lambda: f(x), budget / 2)
    b = _median(lambda: g(x), budget / 2)
    a = min(a, _median(lambda: f(x), budget / 2))
    b = min(b, _median(lambda: g(x), budget / 2))
    return a, b


def _numpy_component() -> cr.Component:
    @cr.component(inputs=In, outputs=Out, backend="numpy", name="numpy_double")
    def double(inputs: In) -> Out:
        return Out(y=2.0 * inputs.x)

    @double.def_vjp
    def _vjp(inputs: In, cotangents: dict[str, Any]) -> dict[str, Any]:
        return {"x": 2.0 * cotangents["y"]}

    return double


def _torch_component() -> cr.Component:
    @cr.component(inputs=In, outputs=Out, backend="torch", name="torch_double")
    def double(inputs: In) -> Out:
        return Out(y=2.0 * inputs.x)

    return double


def _floor() -> Callable[[jax.Array], jax.Array]:
    """The least any host round trip costs: pure_callback forward and backward, no chainrule."""
    shape = jax.ShapeDtypeStruct((N,), jnp.float64)

    @jax.custom_vjp
    def double(x: jax.Array) -> jax.Array:
        return jax.pure_callback(lambda v: 2.0 * np.asarray(v), shape, x)

    def fwd(x: jax.Array) -> tuple[jax.Array, None]:
        return double(x), None

    def bwd(_: None, c: jax.Array) -> tuple[jax.Array]:
        return (jax.pure_callback(lambda v: 2.0 * np.asarray(v), shape, c),)

    double.defvjp(fwd, bwd)
    return double


def _torch_floor() -> Callable[[jax.Array], jax.Array]:
    """The same torch work bridged by hand, without chainrule: pure_callback forward (no
    autograd) and backward (record the forward again, then torch.autograd.grad), as one
    writes a torch-in-JAX bridge that keeps nothing between the two."""
    import torch

    shape = jax.ShapeDtypeStruct((N,), jnp.float64)

    def forward(v: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return (2.0 * torch.from_numpy(np.array(v))).numpy()

    def backward(v: np.ndarray, c: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.array(v)).requires_grad_(True)
        (g,) = torch.autograd.grad(2.0 * t, t, torch.from_numpy(np.array(c)))
        return g.numpy()

    @jax.custom_vjp
    def double(x: jax.Array) -> jax.Array:
        return jax.pure_callback(forward, shape, x)

    def fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return double(x), x

    def bwd(x: jax.Array, c: jax.Array) -> tuple[jax.Array]:
        return (jax.pure_callback(backward, shape, x, c),)

    double.defvjp(fwd, bwd)
    return double


def crossing_ratios(budget: float) -> dict[str, float]:
    x = jnp.linspace(0.0, 1.0, N)
    floor = _floor()
    base = jax.jit(jax.grad(lambda v: jnp.sum(floor(v))))
    results = {"floor": _median(lambda: base(x), budget)}
    by_hand = _torch_floor()
    bridge = jax.jit(jax.grad(lambda v: jnp.sum(by_hand(v))))
    np.testing.assert_allclose(bridge(x), base(x))
    results["torch by hand"] = _median(lambda: bridge(x), budget)
    for comp in (_numpy_component(), _torch_component()):
        grad = jax.jit(jax.grad(lambda v, c=comp: jnp.sum(crj.call(c, {"x": v})["y"])))
        results[comp.backend.name] = _median(lambda g=grad: g(x), budget)
    return results


def jacrev_requests() -> int:
    class Wide(cr.Schema):
        y: cr.Differentiable[cr.Array[(100,), cr.Float64]]

    class Small(cr.Schema):
        x: cr.Differentiable[cr.Array[(3,), cr.Float64]]

    @cr.component(inputs=Small, outputs=Wide, backend="torch", name="wide")
    def wide(inputs: Small) -> Wide:
        import torch

        k = torch.arange(100, dtype=torch.float64)
        return Wide(y=torch.sin(k * inputs.x[0]) + inputs.x[1] * k + inputs.x[2])

    with cr.serve(wide) as server:
        remote = cr.connect(server.url)
        jax.jacrev(lambda x: crj.call(remote, {"x": x})["y"])(jnp.array([0.1, 0.2, 0.3]))
        served = sum(wide.calls[e] for e in ("vjp", "batched_vjp", "jvp", "batched_jvp"))
        remote.close()
    return served


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    budget = 0.3 if args.quick else args.budget
    from rich.console import Console
    from rich.table import Table

    piped, plain = inline_ratio(budget)
    crossing = crossing_ratios(budget)
    requests = jacrev_requests()
    table = Table(title="chainrule inside JAX: jit(grad) median times, ratios in one run")
    for col in ("measurement", "chainrule", "reference", "ratio", "goal"):
        table.add_column(col, justify="right")
    table.add_row(
        "5 inline JAX components vs plain JAX",
        f"{piped * 1e6:.1f} µs",
        f"{plain * 1e6:.1f} µs",
        f"{piped / plain:.2f}×",
        "≤ 1.1×",
    )
    for name in ("numpy", "torch"):
        table.add_row(
            f"one {name} component vs bare pure_callback",
            f"{crossing[name] * 1e6:.1f} µs",
            f"{crossing['floor'] * 1e6:.1f} µs",
            f"{crossing[name] / crossing['floor']:.2f}×",
            "≤ 1.5×",
        )
    table.add_row(
        "(context) one torch component vs the same torch work in bare pure_callbacks",
        f"{crossing['torch'] * 1e6:.1f} µs",
        f"{crossing['torch by hand'] * 1e6:.1f} µs",
        f"{crossing['torch'] / crossing['torch by hand']:.2f}×",
        "",
    )
    table.add_row("jacrev of a remote 100-output component", f"{requests} request(s)", "", "", "1")
    Console().print(table)


if __name__ == "__main__":
    main()
