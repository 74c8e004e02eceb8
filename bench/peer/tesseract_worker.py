"""The peer's side of `bench/peer.py`: runs in the peer's venv (`bench/.peer-venv`).

`bench/peer.py` starts this script and drives it with one JSON command per line on stdin; each
answer is one JSON line on stdout (anything the peer's libraries print goes to stderr). Every
timing is taken here, around the peer's own client calls, so the figures hold no IPC cost:

- `init`: connect to the served Tesseract (`Tesseract.from_url`), load the in-process ones
  (`Tesseract.from_tesseract_api`), build the tesseract-jax `jit(grad)` pipeline; report versions.
- `calibrate`: time every array encoding the server offers for one HTTP case, keep the fastest.
- `check`: run a case once and return its numbers, for `bench/peer.py` to compare.
- `time`: run a case `reps` times, return the wall times in seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def make_inputs(n: int) -> dict[str, np.ndarray]:
    """The inputs every case uses; `bench/peer.py` builds the same ones."""
    k = np.arange(n, dtype=np.float64)
    return {"a": np.linspace(0.0, 1.0, n), "b": np.cos(k), "c": np.sin(k)}


def summary(x: Any) -> list[float]:
    """A small fingerprint of an array (the whole array when it is small)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    if x.size <= 10_000:
        return x.tolist()
    return [float(x.sum()), float((x * x).sum()), *x[:3].tolist(), *x[-3:].tolist()]


# Encodings a client of `Tesseract.from_url` can ask for: output format, response compression.
# Requests always carry base64 arrays (binref inputs need a client-side input path that
# `from_url` does not take).
ENCODINGS = [
    ("json+base64", "none"),
    ("json+base64", "lz4"),
    ("json+binref", "none"),
    ("json+binref", "lz4"),
    ("json", "none"),
]


class Worker:
    def __init__(self) -> None:
        self.remote: Any = None
        self.views: dict[str, Any] = {}
        self.chosen: dict[tuple[str, int], str] = {}
        self.output_path: Path | None = None
        self.calls: dict[str, Callable[[int], Callable[[], Any]]] = {}

    def init(self, url: str, output_path: str, grad_n: int) -> dict[str, Any]:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
        import tesseract_core
        import tesseract_jax
        from tesseract_core import Tesseract
        from tesseract_jax import apply_tesseract

        self.output_path = Path(output_path)
        self.remote = Tesseract.from_url(url, server_output_path=output_path)
        accepted = self.remote.server_capabilities
        for fmt, compression in ENCODINGS:
            if fmt in accepted.output_formats and compression in accepted.compressions:
                label = fmt if compression == "none" else f"{fmt} + {compression}"
                self.views[label] = self.remote.with_encoding(
                    output_format=fmt, compression=compression
                )
        self.local_add = Tesseract.from_tesseract_api(HERE / "vectoradd" / "tesseract_api.py")
        self.local_rosen = Tesseract.from_tesseract_api(HERE / "rosenbrock" / "tesseract_api.py")
        rosen = self.local_rosen

        def loss(x: jax.Array) -> jax.Array:
            z = 1.5 * jnp.tanh(x)
            y = apply_tesseract(rosen, {"x": z})["y"]
            return y + 0.5 * jnp.sum(x**2)

        self.grad = jax.jit(jax.grad(loss))
        self.grad_x = jnp.linspace(-1.0, 1.0, grad_n)

        import fastapi
        import pydantic
        import uvicorn

        return {
            "python": sys.version.split()[0],
            "tesseract-core": tesseract_core.__version__,
            "tesseract-jax": getattr(tesseract_jax, "__version__", _dist_version("tesseract-jax")),
            "jax": jax.__version__,
            "numpy": np.__version__,
            "pydantic": pydantic.__version__,
            "fastapi": fastapi.__version__,
            "uvicorn": uvicorn.__version__,
            "encodings": list(self.views),
        }

    def _call(self, case: str, n: int, encoding: str | None = None) -> Callable[[], Any]:
        d = make_inputs(n)
        ab = {"a": d["a"], "b": d["b"]}
        if case.startswith("http"):
            view = self.views[encoding or self.chosen[(case, n)]]
            if case == "http_apply":
                return lambda: view.apply(ab)["c"]
            return lambda: view.vector_jacobian_product(
                ab, vjp_inputs=["a", "b"], vjp_outputs=["c"], cotangent_vector={"c": d["c"]}
            )
        if case == "inproc_apply":
            return lambda: self.local_add.apply(ab)["c"]
        if case == "inproc_vjp":
            return lambda: self.local_add.vector_jacobian_product(
                ab, vjp_inputs=["a", "b"], vjp_outputs=["c"], cotangent_vector={"c": d["c"]}
            )
        if case == "jit_grad":
            return lambda: self.grad(self.grad_x).block_until_ready()
        raise ValueError(f"unknown case {case!r}")

    def _clean(self) -> None:
        """Remove the run folders (and binref files) the server and clients leave behind."""
        if self.output_path is not None:
            for p in self.output_path.glob("run_*"):
                shutil.rmtree(p, ignore_errors=True)

    def calibrate(self, case: str, n: int, budget: float, passes: int = 3) -> dict[str, Any]:
        """Try each encoding in turn, `passes` times over (about `budget` seconds per pass
        and encoding), dropping after a pass those more than twice as slow as the best."""
        fns = {label: self._call(case, n, label) for label in self.views}
        times: dict[str, list[float]] = {label: [] for label in fns}
        for fn in fns.values():
            fn()  # warm up
        self._clean()
        live = list(fns)
        for _ in range(passes):
            for label in live:
                fn, start = fns[label], time.perf_counter()
                while True:
                    t = time.perf_counter()
                    fn()
                    times[label].append(time.perf_counter() - t)
                    if time.perf_counter() - start > budget or len(times[label]) > 1000:
                        break
                self._clean()
            best = min(statistics.median(times[k]) for k in live)
            live = [k for k in live if statistics.median(times[k]) <= 2 * best]
        trials = {k: statistics.median(v) for k, v in times.items()}
        chosen = min(live, key=trials.__getitem__)
        self.chosen[(case, n)] = chosen
        return {"encoding": chosen, "trials": trials}

    def check(self, case: str, n: int) -> dict[str, Any]:
        out = self._call(case, n)()
        self._clean()
        if isinstance(out, dict):
            return {k: summary(out[k]) for k in sorted(out)}
        return {"out": summary(out)}

    def time(self, case: str, n: int, reps: int) -> dict[str, Any]:
        fn = self._call(case, n)
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        self._clean()
        return {"times": times}


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def main() -> None:
    serve(Worker())


def serve(worker: Any) -> None:
    """Answer the driver's JSON commands on stdin with `worker`'s methods, one JSON line each
    (also `pipeline_worker.py`'s loop)."""
    # Answers go to the real stdout; whatever else writes to fd 1 lands on stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "quit":
            break
        try:
            answer = getattr(worker, op)(**cmd)
        except Exception as e:  # report to the driver, which raises
            answer = {"error": f"{type(e).__name__}: {e}"}
        answers.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
