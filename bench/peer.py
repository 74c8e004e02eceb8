"""Peer benchmark: chainrule against Tesseract (tesseract-core, tesseract-jax), side by side.

The same work on both sides, in one run, as median wall times and the ratio peer/chainrule:

1. vector add (c = a + b) `apply` and `vjp` over loopback HTTP at 10, 1e4 and 1e6 float64
   elements: Tesseract served by `tesseract-runtime serve` and called by its own client
   (`Tesseract.from_url`) in the fastest array encoding it offers (each one is tried first), vs
   `chainrule serve` called through `chainrule.connect` (binary wire format).
2. in-process `apply`/`vjp` at 10 elements: `Tesseract.from_tesseract_api(module)` vs the
   chainrule component.
3. `jax.jit(jax.grad(loss))` of a small pipeline around the Rosenbrock function: tesseract-jax's
   `apply_tesseract` on the in-process Tesseract vs `chainrule.jax.call` on an in-process JAX
   component (and, for reference, on a NumPy component, a host callback like the peer's).

Each side's client runs in its own venv: the peer's in `bench/.peer-venv` (built by
`bench/peer_env.py` when missing) as the worker `bench/peer/tesseract_worker.py`, chainrule's
here. Measurements alternate between the two in rounds, so both see the same machine, and both
sides' results are compared before anything is timed.

Run: `python bench/peer.py` (`--quick` for a short run, `--profile` to add cProfile top costs of
chainrule's client side for each case).
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import chainrule as cr
import chainrule.jax as crj

jax.config.update("jax_enable_x64", True)  # the benchmarks compute in float64

HERE = Path(__file__).resolve().parent
PEER = HERE / "peer"
GRAD_N = 100  # elements of the jit(grad) pipeline's vector


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


peer_env = _load("peer_env", HERE / "peer_env.py")
shared = _load("tesseract_worker", PEER / "tesseract_worker.py")  # numpy-only at import
comps = _load("peer_chainrule_components", PEER / "chainrule_components.py")


@dataclass
class Case:
    label: str
    peer_case: str  # the worker's name for it
    ours: str  # chainrule's name for it
    n: int
    reps: int  # per round and side
    goal: float | None  # ratio peer/chainrule to reach
    peer: list[float] = field(default_factory=list)
    chainrule: list[float] = field(default_factory=list)


def _n(n: int) -> str:
    return str(n) if n < 1000 else f"1e{len(str(n)) - 1}"


def cases(quick: bool) -> list[Case]:
    s = 3 if quick else 1  # fewer repetitions per round with --quick
    out = []
    for ep in ("apply", "vjp"):
        for n, reps in ((10, 60), (10_000, 40), (1_000_000, 3)):
            label = f"HTTP {ep} n={_n(n)}"
            out.append(Case(label, f"http_{ep}", f"http_{ep}", n, reps, 5.0))
    for ep in ("apply", "vjp"):
        out.append(Case(f"in-process {ep} n=10", f"inproc_{ep}", f"inproc_{ep}", 10, 400, 20.0))
    out.append(Case(f"jit(grad) Rosenbrock n={GRAD_N}", "jit_grad", "jit_grad", GRAD_N, 300, 20.0))
    out.append(
        Case(
            "  same, chainrule NumPy component (callback; info)",
            "jit_grad",
            "jit_grad_numpy",
            GRAD_N,
            300,
            None,
        )
    )
    floor = Case(
        "  plain JAX, no component (the floor; info)", "", "jit_grad_plain", GRAD_N, 300, None
    )
    out.append(floor)
    for c in out:
        c.reps = max(1, c.reps // s)
    return out


class PeerWorker:
    """The worker process in the peer's venv, one JSON line per command and per answer."""

    def __init__(self, python: Path, cwd: str) -> None:
        self.proc = subprocess.Popen(
            [str(python), str(PEER / "tesseract_worker.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            text=True,
            cwd=cwd,
        )

    def __call__(self, op: str, **kw: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the peer worker died during {op!r}")
        answer = json.loads(line)
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"peer worker, {op} {kw}: {answer['error']}")
        return answer

    def close(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


def _wait_health(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not start")


class Ours:
    """chainrule's side: the callables for each case, in this process."""

    def __init__(self, url: str) -> None:
        self.remote = cr.connect(url)
        x = jnp.linspace(-1.0, 1.0, GRAD_N)

        def make_grad(comp: cr.Component) -> Callable[[jax.Array], jax.Array]:
            def loss(x: jax.Array) -> jax.Array:
                z = 1.5 * jnp.tanh(x)
                y = crj.call(comp, {"x": z})["y"]
                return y + 0.5 * jnp.sum(x**2)

            return jax.jit(jax.grad(loss))

        def plain(x: jax.Array) -> jax.Array:
            z = 1.5 * jnp.tanh(x)
            y = jnp.sum(100.0 * (z[1:] - z[:-1] ** 2) ** 2 + (1.0 - z[:-1]) ** 2)
            return y + 0.5 * jnp.sum(x**2)

        self.grad_x = x
        self.grads = {
            "jit_grad": make_grad(comps.rosenbrock_jax),
            "jit_grad_numpy": make_grad(comps.rosenbrock_numpy),
            "jit_grad_plain": jax.jit(jax.grad(plain)),
        }

    def call(self, case: str, n: int) -> Callable[[], Any]:
        d = shared.make_inputs(n)
        ab = {"a": d["a"], "b": d["b"]}
        cot = {"c": d["c"]}
        if case == "http_apply":
            return lambda: self.remote.apply(ab).c
        if case == "http_vjp":
            return lambda: self.remote.vjp(ab, cot)
        if case == "inproc_apply":
            return lambda: comps.vectoradd.apply(ab).c
        if case == "inproc_vjp":
            return lambda: comps.vectoradd.vjp(ab, cot)
        if case in self.grads:
            g, x = self.grads[case], self.grad_x
            return lambda: g(x).block_until_ready()
        raise ValueError(case)

    def check(self, case: str, n: int) -> dict[str, list[float]]:
        out = self.call(case, n)()
        if isinstance(out, dict):
            return {k: shared.summary(out[k]) for k in sorted(out)}
        return {"out": shared.summary(out)}

    def time(self, case: str, n: int, reps: int) -> list[float]:
        fn = self.call(case, n)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return times


def _fmt(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms"


def _profile(ours: Ours, case: Case, top: int = 12) -> str:
    fn = ours.call(case.ours, case.n)
    fn()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(max(case.reps * 5, 20)):
        fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def run(quick: bool, rounds: int, profile: bool) -> None:
    t0 = time.perf_counter()
    python = peer_env.python()
    if not peer_env.is_built():
        python = peer_env.build()
    from chainrule._transport.launch.launch import free_port

    tmp = tempfile.mkdtemp(prefix="peer-bench-")
    procs: list[subprocess.Popen[bytes]] = []
    worker: PeerWorker | None = None
    try:
        our_port, peer_port = free_port(), free_port()
        target = f"{PEER / 'chainrule_components.py'}:vectoradd"
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "chainrule", "serve", target, "--port", str(our_port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        env = dict(
            os.environ,
            TESSERACT_API_PATH=str(PEER / "vectoradd" / "tesseract_api.py"),
            TESSERACT_OUTPUT_PATH=tmp,
        )
        runtime = python.parent / "tesseract-runtime"
        procs.append(
            subprocess.Popen(
                [str(runtime), "serve", "--host", "127.0.0.1", "--port", str(peer_port)],
                env=env,
                cwd=tmp,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        our_url, peer_url = f"http://127.0.0.1:{our_port}", f"http://127.0.0.1:{peer_port}"
        _wait_health(our_url, procs[0], "chainrule serve")
        _wait_health(peer_url, procs[1], "tesseract-runtime serve")

        worker = PeerWorker(python, tmp)
        versions = worker("init", url=peer_url, output_path=tmp, grad_n=GRAD_N)
        ours = Ours(our_url)
        todo = cases(quick)

        # The peer's fastest encoding for each HTTP case, tried on the spot.
        encodings: dict[tuple[str, int], dict[str, Any]] = {}
        for c in todo:
            if c.peer_case.startswith("http"):
                budget = 0.05 if quick else 0.15
                encodings[(c.peer_case, c.n)] = worker(
                    "calibrate", case=c.peer_case, n=c.n, budget=budget
                )

        # Equal work: both sides' numbers agree (and every callable is warm) before timing.
        for c in todo:
            peer_case = c.peer_case or "jit_grad"  # the floor is checked against the peer too
            theirs, mine = worker("check", case=peer_case, n=c.n), ours.check(c.ours, c.n)
            assert theirs.keys() == mine.keys(), (c.label, theirs.keys(), mine.keys())
            for k in mine:
                np.testing.assert_allclose(theirs[k], mine[k], rtol=1e-12, atol=1e-12)

        for r in range(rounds):
            for c in todo:
                peer_first = (r % 2) == 0
                for side in ("peer", "ours") if peer_first else ("ours", "peer"):
                    if side == "peer" and not c.peer_case:
                        continue
                    if side == "peer":
                        c.peer += worker("time", case=c.peer_case, n=c.n, reps=c.reps)["times"]
                    else:
                        c.chainrule += ours.time(c.ours, c.n, c.reps)
        elapsed = time.perf_counter() - t0
        _report(todo, versions, encodings, rounds, elapsed)
        if profile:
            for c in todo:
                print(f"\n--- cProfile, chainrule client side: {c.label} ---")
                print(_profile(ours, c))
        ours.remote.close()
    finally:
        if worker is not None:
            worker.close()
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def _report(
    todo: list[Case],
    versions: dict[str, Any],
    encodings: dict[tuple[str, int], dict[str, Any]],
    rounds: int,
    elapsed: float,
) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=132)
    mine = {
        "python": sys.version.split()[0],
        "chainrule": _version("chainrule"),
        "jax": jax.__version__,
        "numpy": np.__version__,
    }
    peer = {k: v for k, v in versions.items() if k != "encodings"}
    console.print("chainrule side: " + ", ".join(f"{k} {v}" for k, v in mine.items()))
    console.print("peer side:      " + ", ".join(f"{k} {v}" for k, v in peer.items()))
    console.print("peer encodings tried (median ms per call; the fastest is used):")
    for (case, n), info in encodings.items():
        trials = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in info["trials"].items())
        console.print(f"  {case} n={_n(n)}: [bold]{info['encoding']}[/]  ({trials})")

    table = Table(
        title=f"chainrule vs Tesseract: median wall time per call, {rounds} interleaved rounds"
    )
    for col in ("case", "peer median", "chainrule median", "ratio peer/chainrule", "goal", "met?"):
        table.add_column(col, justify="right" if col != "case" else "left")
    for c in todo:
        m = statistics.median(c.chainrule)
        if not c.peer:
            table.add_row(c.label, "—", _fmt(m), "—", "—", "—")
            continue
        p = statistics.median(c.peer)
        ratio = p / m
        goal = f"≥ {c.goal:.0f}×" if c.goal else "—"
        met = "—" if c.goal is None else ("yes" if ratio >= c.goal else "NO")
        if c.peer_case.startswith("http"):
            label = f"{c.label} [{encodings[(c.peer_case, c.n)]['encoding']}]"
        else:
            label = c.label
        table.add_row(label, _fmt(p), _fmt(m), f"{ratio:.1f}×", goal, met)
    console.print(table)
    samples = ", ".join(str(len(c.chainrule)) for c in todo)
    console.print(f"samples per side: {samples}; whole run {elapsed:.0f} s")


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return getattr(cr, "__version__", "?")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    parser.add_argument("--profile", action="store_true", help="cProfile chainrule's side")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 8)
    run(args.quick, rounds, args.profile)


if __name__ == "__main__":
    main()
