"""Pipeline benchmark: the crossing into JAX, set against the other ways to make it.

1. Five in-process JAX components under `jit(grad)` vs the same pure JAX function (goal 1.00×:
   the component is traced inline).
2. `jit(grad(sum(f)))` of y = 2x made by a NumPy component (written vjp: 2c) and by a torch
   component (autograd), at n = 10, 1e4 and 1e6, four ways (five with the peer), in interleaved
   rounds:
   - chainrule: `chainrule.jax.call` of the component;
   - jaxbind 1.3.1 (`get_nonlinear_call`, host functions writing into XLA's buffers; the same
     written vjp for NumPy, torch autograd for torch);
   - the hand bridge: `jax.pure_callback` + `jax.custom_vjp` (torch recomputes the forward in
     the backward, as a hand bridge that keeps nothing does);
   - pure JAX (y = 2x traced);
   - tesseract-jax 0.4.0, where the peer's venv exists (`bench/.peer-venv`, built by
     `python bench/peer_env.py`): `apply_tesseract` on an in-process Tesseract
     (`Tesseract.from_tesseract_api`: `bench/peer/double_numpy` with a written vjp,
     `bench/peer/double_torch` with torch autograd as Tesseract's torch example writes it),
     timed by a worker in that venv (`bench/pipeline_peer.py`) kept alive for the run and
     asked for its timing in turn with the other ways, so its ratio is taken within a round.
   Every way's gradient is checked equal to 2·ones before anything is timed. Ratios are taken
   within each round; the table gives their median and range over rounds.
   Goals (issue 17): ≤ 1.3× jaxbind; torch ≤ 1.0× the hand bridge, and ≤ 1.0× tesseract-jax at
   1e6.
3. Requests on the wire (every request a served component receives, not only derivative
   calls): `jit(jacrev)` of a 100-output component, and `vmap` over 64 designs of a small
   component (apply, and `grad` and `jacrev` under `vmap`), with the time of the vmap (of
   apply, and of grad) against 64 calls.

Run: `python bench/pipeline.py` (`--quick` for a short run; `--sizes 10 10000` to pick sizes;
`--no-peer` to leave tesseract-jax out; `--json FILE` to write the figures and checks too).
Needs the `bench` extra (`pip install -e '.[all,bench]'`) for jaxbind.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from pipeline_peer import HOW_TO_BUILD, TesseractJax
from pipeline_peer import python as peer_python

import chainrule as cr
import chainrule.jax as crj

jax.config.update("jax_enable_x64", True)  # the benchmarks compute in float64

Fn = Callable[[jax.Array], jax.Array]
KINDS = ("numpy", "torch")
WAYS = ("chainrule", "jaxbind", "hand", "pure")
PEER = "tesseract-jax"
Key = tuple[str, int, str]  # (kind, n, way)


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


def _median(fn: Callable[[], Any], budget: float) -> float:
    jax.block_until_ready(fn())
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < budget:
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
        if len(times) > 20000:
            break
    return statistics.median(times)


def _grad(f: Fn) -> Fn:
    return jax.jit(jax.grad(lambda v: jnp.sum(f(v))))


# ---- the four ways to make y = 2x ---------------------------------------------------------


def chainrule_way(kind: str, n: int) -> Fn:
    if kind == "numpy":

        @cr.component(inputs=In, outputs=Out, backend="numpy", name="numpy_double")
        def double(inputs: In) -> Out:
            return Out(y=2.0 * inputs.x)

        @double.def_vjp
        def _vjp(inputs: In, cotangents: dict[str, Any]) -> dict[str, Any]:
            return {"x": 2.0 * cotangents["y"]}

    else:

        @cr.component(inputs=In, outputs=Out, backend="torch", name="torch_double")
        def double(inputs: In) -> Out:
            return Out(y=2.0 * inputs.x)

    return _grad(lambda v: crj.call(double, {"x": v})["y"])


def pure_way(kind: str, n: int) -> Fn:
    return _grad(lambda v: 2.0 * v)


def _torch_forward(v: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return (2.0 * torch.from_numpy(np.array(v))).numpy()


def _torch_backward(v: np.ndarray, c: np.ndarray) -> np.ndarray:
    import torch

    t = torch.from_numpy(np.array(v)).requires_grad_(True)
    (g,) = torch.autograd.grad(2.0 * t, t, torch.from_numpy(np.array(c)))
    return g.numpy()


def hand_way(kind: str, n: int) -> Fn:
    """pure_callback forward and backward + custom_vjp, as one bridges by hand."""
    shape = jax.ShapeDtypeStruct((n,), jnp.float64)

    @jax.custom_vjp
    def f(x: jax.Array) -> jax.Array:
        fwd = (lambda v: 2.0 * np.asarray(v)) if kind == "numpy" else _torch_forward
        return jax.pure_callback(fwd, shape, x)

    def fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return f(x), x

    def bwd(x: jax.Array, c: jax.Array) -> tuple[jax.Array]:
        if kind == "numpy":
            return (jax.pure_callback(lambda w: 2.0 * np.asarray(w), shape, c),)
        return (jax.pure_callback(_torch_backward, shape, x, c),)

    f.defvjp(fwd, bwd)
    return _grad(f)


_ALIVE: list[Any] = []  # jaxbind keeps id(f) in the program, not f: keep f alive here


def _tensor(a: np.ndarray) -> Any:
    import torch

    return torch.from_dlpack(a)  # jaxbind's inputs are read-only: no copy, no warning


def _jaxbind_functions(kind: str) -> tuple[Callable[..., None], ...]:
    if kind == "numpy":

        def f(out: Any, args: Any, kw: Any) -> None:
            out[0][...] = 2.0 * args[0]

        def f_lin(out: Any, args: Any, kw: Any) -> None:  # jvp (x, t) and vjp (x, c)
            out[0][...] = 2.0 * args[1]

        return f, f_lin, f_lin
    import torch

    def g(out: Any, args: Any, kw: Any) -> None:
        with torch.no_grad():
            out[0][...] = (2.0 * _tensor(args[0])).numpy()

    def g_jvp(out: Any, args: Any, kw: Any) -> None:
        _, t = torch.func.jvp(lambda u: 2.0 * u, (_tensor(args[0]),), (_tensor(args[1]),))
        out[0][...] = t.numpy()

    def g_vjp(out: Any, args: Any, kw: Any) -> None:
        t = _tensor(args[0]).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(2.0 * t, t, _tensor(args[1]))
        out[0][...] = grad.numpy()

    return g, g_jvp, g_vjp


def jaxbind_way(kind: str, n: int) -> Fn:
    import jaxbind

    f, f_jvp, f_vjp = _jaxbind_functions(kind)

    def abstract(*args: Any, **kw: Any) -> Any:
        return ((args[0].shape, args[0].dtype),)

    op = jaxbind.get_nonlinear_call(f, (f_jvp, f_vjp), abstract, abstract)
    _ALIVE.append((f, f_jvp, f_vjp, op))
    return _grad(lambda v: op(v)[0])


MAKERS: dict[str, Callable[[str, int], Fn]] = {
    "chainrule": chainrule_way,
    "jaxbind": jaxbind_way,
    "hand": hand_way,
    "pure": pure_way,
}


# ---- 1. inline JAX components -----------------------------------------------------------------


def inline_rounds(rounds: int, budget: float, n: int = 100) -> list[float]:
    """Per round: 5 inline JAX components under jit(grad) / the same function in pure JAX."""

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

    x = jnp.linspace(0.0, 1.0, n)
    f, g = jax.jit(jax.grad(piped)), jax.jit(jax.grad(plain))
    np.testing.assert_allclose(f(x), g(x))
    return [_median(lambda: f(x), budget) / _median(lambda: g(x), budget) for _ in range(rounds)]


# ---- 2. the crossing ------------------------------------------------------------------------


def _check(g: Any, n: int, key: Key, checked: list[str]) -> None:
    np.testing.assert_allclose(np.asarray(g), 2.0 * np.ones(n), err_msg=" ".join(map(str, key)))
    checked.append(" ".join(map(str, key)))


def crossing_rounds(
    sizes: list[int], rounds: int, budget: float, peer: TesseractJax | None = None
) -> tuple[dict[Key, list[float]], list[str]]:
    """Per (kind, n, way): the median time of each round, ways interleaved within a round
    (tesseract-jax, timed in its worker, in turn with the rest); and the ways checked."""
    measure: dict[Key, Callable[[], float]] = {}
    checked: list[str] = []
    args: dict[int, jax.Array] = {n: jnp.linspace(0.0, 1.0, n) for n in sizes}
    for kind in KINDS:
        for n in sizes:
            for way in WAYS:
                fn = MAKERS[way](kind, n)
                _check(fn(args[n]), n, (kind, n, way), checked)
                measure[kind, n, way] = lambda f=fn, x=args[n]: _median(lambda: f(x), budget)
    if peer is not None:
        _, grads = peer.started()
        for kind in KINDS:
            for n in sizes:
                _check(grads[kind, n], n, (kind, n, PEER), checked)
                measure[kind, n, PEER] = lambda k=kind, m=n: peer.time(k, m, budget)
    order = sorted(measure, key=lambda key: (KINDS.index(key[0]), sizes.index(key[1])))
    times: dict[Key, list[float]] = {key: [] for key in order}
    for _ in range(rounds):
        for key in order:
            times[key].append(measure[key]())
    return times, checked


def _ratio(times: dict[Any, list[float]], a: Any, b: Any) -> str:
    r = [x / y for x, y in zip(times[a], times[b], strict=True)]
    return f"{statistics.median(r):.2f}× \\[{min(r):.2f}–{max(r):.2f}]"


def _us(ts: list[float]) -> str:
    return f"{statistics.median(ts) * 1e6:,.1f} \\[{min(ts) * 1e6:,.0f}–{max(ts) * 1e6:,.0f}]"


# ---- 3. requests on the wire ---------------------------------------------------------------


@contextmanager
def counting(remote: cr.Component) -> Iterator[Counter[str]]:
    """Count every request the remote component sends over its transport, by endpoint."""
    transport = remote.backend.transport  # type: ignore[attr-defined]
    sent: Counter[str] = Counter()
    call = transport.call

    def counted(endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        sent[endpoint] += 1
        return call(endpoint, request)

    transport.call = counted
    try:
        yield sent
    finally:
        del transport.call


@contextmanager
def connected(url: str) -> Iterator[cr.Component]:
    remote = cr.connect(url)
    try:
        yield remote
    finally:
        remote.close()


def _wire(sent: Counter[str]) -> str:
    return f"{sum(sent.values())} ({', '.join(f'{k} {v}' for k, v in sorted(sent.items()))})"


def jacrev_wire() -> Counter[str]:
    class Wide(cr.Schema):
        y: cr.Differentiable[cr.Array[(100,), cr.Float64]]

    class Small(cr.Schema):
        x: cr.Differentiable[cr.Array[(3,), cr.Float64]]

    @cr.component(inputs=Small, outputs=Wide, backend="torch", name="wide")
    def wide(inputs: Small) -> Wide:
        import torch

        k = torch.arange(100, dtype=torch.float64)
        return Wide(y=torch.sin(k * inputs.x[0]) + inputs.x[1] * k + inputs.x[2])

    with cr.serve(wide) as server, connected(server.url) as remote:
        f = jax.jit(jax.jacrev(lambda x: crj.call(remote, {"x": x})["y"]))
        with counting(remote) as sent:
            f(jnp.array([0.1, 0.2, 0.3]))
    return sent


class Design(cr.Schema):
    x: cr.Differentiable[cr.Array[(3,), cr.Float64]]


class Response(cr.Schema):
    y: cr.Differentiable[cr.Array[(3,), cr.Float64]]


def _small(backend: str) -> cr.Component:
    import torch

    m: Any = {"jax": jnp, "torch": torch, "numpy": np}[backend]

    def small(inputs: Design) -> Response:
        return Response(y=m.tanh(inputs.x) * 1.1 + 0.1 * inputs.x**2)

    return cr.component(small, inputs=Design, outputs=Response, backend=backend, name="small")


def vmap_wire(budget: float, backend: str = "torch", designs: int = 64) -> dict[str, Any]:
    """vmap over 64 designs of a small served component: requests sent (by call: one design,
    vmap's apply, vmap's grad), and its time against 64 calls of the same jitted function one
    design at a time."""
    xs = jnp.linspace(0.0, 1.0, designs * 3).reshape(designs, 3)
    with cr.serve(_small(backend)) as server, connected(server.url) as remote:

        def one(x: jax.Array) -> jax.Array:
            return crj.call(remote, {"x": x})["y"]

        batched, single = jax.jit(jax.vmap(one)), jax.jit(one)
        grad = jax.grad(lambda x: jnp.sum(one(x)))
        grads, grad_one = jax.jit(jax.vmap(grad)), jax.jit(grad)
        jacs = jax.jit(jax.vmap(jax.jacrev(one)))
        reads = jax.jit(jax.vmap(jax.grad(lambda x: jnp.sum(jnp.sin(one(x))))))
        np.testing.assert_allclose(batched(xs), np.stack([single(x) for x in xs]))
        np.testing.assert_allclose(grads(xs), np.stack([grad_one(x) for x in xs]), rtol=1e-6)
        out: dict[str, Any] = {}
        for name, fn in (("apply", batched), ("grad", grads), ("reads", reads), ("jacrev", jacs)):
            with counting(remote) as sent:
                fn(xs)
            out[name] = sent
        with counting(remote) as sent:
            single(xs[0])
        out["one"] = sent
        out["time"] = _versus(batched, single, xs, budget)
        out["grad time"] = _versus(grads, grad_one, xs, budget)
    return out


def _versus(batched: Fn, single: Fn, xs: jax.Array, budget: float) -> str:
    """The time of `batched(xs)` against `single` on each design in turn."""
    t_vmap = _median(lambda: batched(xs), budget)
    t_loop = _median(lambda: [single(x) for x in xs], budget)
    return f"{t_vmap * 1e3:.2f} ms vs {t_loop * 1e3:.2f} ms: {t_loop / t_vmap:.1f}×"


# ---- the report -------------------------------------------------------------------------------


def wire_counts(budget: float) -> tuple[dict[str, Counter[str]], dict[str, str]]:
    """Requests on the wire by call, and the vmap-of-64 times, for the wire table."""
    counts = {"jit(jacrev) of a 100-output torch component": jacrev_wire()}
    vmap_times: dict[str, str] = {}
    for backend in ("torch", "jax", "numpy"):
        v = vmap_wire(budget, backend)
        counts[f"jit(f), one design ({backend})"] = v["one"]
        counts[f"jit(vmap(f)), 64 designs ({backend})"] = v["apply"]
        counts[f"jit(vmap(grad(sum∘f))), 64 designs ({backend})"] = v["grad"]
        counts[f"jit(vmap(grad(sum∘sin∘f))), 64 designs ({backend})"] = v["reads"]
        counts[f"jit(vmap(jacrev(f))), 64 designs ({backend})"] = v["jacrev"]
        vmap_times[f"vmap of 64 vs 64 calls, goal ≥ 10× ({backend})"] = v["time"]
        vmap_times[f"vmap(grad) of 64 vs 64 grad calls ({backend})"] = v["grad time"]
    return counts, vmap_times


def _crossing_table(times: dict[Key, list[float]], sizes: list[int], rounds: int) -> Any:
    from rich.table import Table

    ways = [*WAYS, PEER] if any(way == PEER for _, _, way in times) else list(WAYS)
    head = f"jit(grad) of y = 2x, µs per call: median \\[range] over {rounds} interleaved rounds"
    table = Table(title=head)
    vs = {"jaxbind": "vs jaxbind (≤ 1.3×)", "hand": "vs hand (torch ≤ 1.0×)"}
    if PEER in ways:
        vs[PEER] = "vs tesseract-jax (torch 1e6 ≤ 1.0×)"
    for col in ("component", "n", *ways, *vs.values()):
        table.add_column(col, justify="right")
    for kind in KINDS:
        for n in sizes:
            row = [_us(times[kind, n, way]) for way in ways]
            ratios = [_ratio(times, (kind, n, "chainrule"), (kind, n, w)) for w in vs]
            table.add_row(kind, f"{n:g}", *row, *ratios)
    return table


def _wire_table(counts: dict[str, Counter[str]], vmap_times: dict[str, str]) -> Any:
    from rich.table import Table

    wire = Table(title="requests on the wire (every request a served component receives)")
    wire.add_column("call")
    wire.add_column("requests", justify="right")
    for label, sent in counts.items():
        wire.add_row(label, _wire(sent))
    for label, t in vmap_times.items():
        wire.add_row(f"time: {label}", t)
    return wire


def _peer(sizes: list[int], skip: bool) -> TesseractJax | None:
    python = None if skip else peer_python()
    if python is None and not skip:
        print(f"tesseract-jax: {HOW_TO_BUILD}", flush=True)
    return None if python is None else TesseractJax(python, sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", type=float, default=0.3, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 10_000, 1_000_000])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.1 s")
    parser.add_argument("--no-peer", action="store_true", help="leave tesseract-jax out")
    parser.add_argument("--json", help="also write the figures and checks to this file")
    args = parser.parse_args()
    rounds, budget = (3, 0.1) if args.quick else (args.rounds, args.budget)
    from rich.console import Console

    console = Console(width=220)
    # The peer's worker starts up (~10 s: JAX, torch, Tesseract) while we build our ways; the
    # timing starts once it is ready, and it then idles between its turns.
    peer = _peer(args.sizes, args.no_peer)
    try:
        times, checked = crossing_rounds(args.sizes, rounds, budget, peer)
    finally:
        if peer is not None:
            peer.close()
    inline = inline_rounds(rounds, budget)
    console.print(_crossing_table(times, args.sizes, rounds))
    if peer is not None:
        console.print(f"tesseract-jax: in the peer's venv ({peer.describe()})")
    r = inline
    console.print(
        f"5 inline JAX components vs pure JAX (goal 1.00×): "
        f"{statistics.median(r):.2f}× [{min(r):.2f}–{max(r):.2f}]"
    )
    counts, vmap_times = wire_counts(budget * 3)
    console.print(_wire_table(counts, vmap_times))
    if args.json:
        figures = {
            "rounds": rounds,
            "sizes": args.sizes,
            "times": {" ".join(map(str, key)): ts for key, ts in times.items()},
            "checked": checked,
            "inline": inline,
            "wire": {label: dict(sent) for label, sent in counts.items()},
        }
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
