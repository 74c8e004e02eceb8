"""Peer-side worker of `bench/peer_runtimes.py`: Tesseract's own client, timing two servers of
the same Tesseract in interleaved rounds. Runs in the peer venv; prints JSON.

Usage: python runtimes_worker.py CONFIG_JSON
  config: {"urls": {label: url}, "sizes": [..], "reps": {n: reps}, "rounds": R, "grad_n": N}
"""

import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tesseract_core import Tesseract
from tesseract_jax import apply_tesseract

jax.config.update("jax_enable_x64", True)

config = json.loads(sys.argv[1])
clients = {
    label: Tesseract.from_url(url).with_encoding(output_format="json+base64")
    for label, url in config["urls"].items()
}


def calls(t, n):
    rng = np.random.default_rng(n)
    x = {"a": rng.standard_normal(n), "b": rng.standard_normal(n)}
    c = {"c": np.ones(n)}
    apply = lambda: t.apply(x)  # noqa: E731
    vjp = lambda: t.vector_jacobian_product(x, ["a", "b"], ["c"], c)  # noqa: E731
    return {"apply": apply, "vjp": vjp}


def grad_call(t, n):
    b = jnp.linspace(0.0, 1.0, n)
    grad = jax.jit(jax.grad(lambda a: (apply_tesseract(t, {"a": a, "b": b})["c"] ** 2).sum()))
    a = jnp.linspace(-1.0, 1.0, n)
    return lambda: jax.block_until_ready(grad(a))


work = {}
for label, t in clients.items():
    for n in config["sizes"]:
        for name, fn in calls(t, n).items():
            work[(f"{name} n={n}", label)] = (fn, config["reps"][str(n)])
    work[(f"jit(grad) tesseract-jax n={config['grad_n']}", label)] = (
        grad_call(t, config["grad_n"]), config["reps"]["grad"]
    )  # fmt: skip
checks = {}
for (case, label), (fn, _) in work.items():  # warm, and the same answers from both runtimes
    out = fn()
    checks.setdefault(case, {})[label] = float(
        np.sum([np.sum(np.asarray(v)) for v in jax.tree.leaves(out)])
    )
times = {f"{case}|{label}": [] for case, label in work}
labels = list(clients)
for r in range(config["rounds"]):
    for case in dict.fromkeys(c for c, _ in work):
        order = labels if r % 2 == 0 else labels[::-1]
        for label in order:
            fn, reps = work[(case, label)]
            for _ in range(reps):
                t0 = time.perf_counter()
                fn()
                times[f"{case}|{label}"].append(time.perf_counter() - t0)
print(json.dumps({"times": times, "checks": checks}))
