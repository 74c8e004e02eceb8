"""The tesseract-jax way of `bench/pipeline.py`: runs in the peer's venv (`bench/.peer-venv`).

`jax.jit(jax.grad(sum(f)))` of y = 2x where f is tesseract-jax's `apply_tesseract` on an
in-process Tesseract (`Tesseract.from_tesseract_api`): `double_numpy` (written vjp) and
`double_torch` (torch autograd), the twins of the pipeline's NumPy and torch components. Each
`jit(grad)` call makes one call of the Tesseract, its vjp (XLA drops the forward, whose value
the gradient of a sum does not use; the torch vjp recomputes it inside `torch.func.vjp`).

`bench/pipeline.py` keeps this process alive for the whole run and sends one JSON command per
line on stdin; each answer is one JSON line on stdout (whatever the peer's libraries print goes
to stderr). Timings are taken here, around the jitted call, so they hold no IPC cost:

- `init {sizes}`: build the jitted gradients, run each once; answer the versions and each
  gradient (float64 bytes, base64) for the driver to check against the other ways.
- `time {kind, n, budget}`: the median seconds per call, measured as the driver measures its own.
"""

from __future__ import annotations

import base64
import statistics
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
KINDS = ("numpy", "torch")


def median_time(fn: Callable[[], Any], budget: float) -> float:
    """The pipeline's `_median`: one warm call, then at least 5 calls and `budget` seconds."""
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


class Worker:
    def __init__(self) -> None:
        self.calls: dict[tuple[str, int], Callable[[], Any]] = {}

    def init(self, sizes: list[int]) -> dict[str, Any]:
        jax.config.update("jax_enable_x64", True)  # as the driver: float64 throughout
        from tesseract_core import Tesseract
        from tesseract_jax import apply_tesseract

        answers: dict[str, str] = {}
        for kind in KINDS:
            tesseract = Tesseract.from_tesseract_api(HERE / f"double_{kind}" / "tesseract_api.py")

            def total(v: jax.Array, t: Any = tesseract) -> jax.Array:
                return jnp.sum(apply_tesseract(t, {"x": v})["y"])

            grad = jax.jit(jax.grad(total))
            for n in sizes:
                x = jnp.linspace(0.0, 1.0, n)
                self.calls[kind, n] = lambda g=grad, x=x: g(x)
                g = np.asarray(self.calls[kind, n](), dtype=np.float64)
                answers[f"{kind} {n}"] = base64.b64encode(g.tobytes()).decode()
        versions = {p: version(p) for p in ("tesseract-core", "tesseract-jax", "jax", "torch")}
        return {"versions": versions, "answers": answers}

    def time(self, kind: str, n: int, budget: float) -> float:
        return median_time(self.calls[kind, n], budget)


def main() -> None:
    from tesseract_worker import serve  # (this folder: the same loop as bench/peer.py's worker)

    serve(Worker())


if __name__ == "__main__":
    main()
