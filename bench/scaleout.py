"""Scale-out benchmark (`chainrule.ray`): fan-out, small and 80 MB calls, as ratios, in one run.

1. A latency-bound component (`sleepy`: 50 ms per call, waiting, not computing) over 64
   designs: one after another in-process, against 8 replicas (`chainrule.map`, and one batched
   apply split across the replicas). Parallel efficiency = sequential time / (8 × fanned time).
2. A small call (10 float64) through a deployed replica against the same call over HTTP to a
   server in its own process (`chainrule serve`), median of interleaved calls.
3. 80 MB in (1e7 float64) and 80 MB out (`scale`: y = 2x), Ray against HTTP; GB/s counts the
   160 MB that cross per call. Each call sends a new array (no reuse of a put object).

Run: `python bench/scaleout.py` (`--quick`: fewer repetitions). It starts a local Ray cluster on
127.0.0.1 in this process and stops it at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# (Not named bench/ray.py: every script here has bench/ first on its path, where a ray.py
# would shadow Ray itself, for this script and for any other bench script importing it.)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # stay on 127.0.0.1
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import numpy as np  # noqa: E402
import ray  # noqa: E402

import chainrule as cr  # noqa: E402
from chainrule._transport.http.serving import load_component  # noqa: E402

COMPONENTS = HERE / "components.py"


def _start_server(name: str) -> tuple[Any, str]:
    """`chainrule serve` of a bench component in its own process (see bench/transport.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_transport", HERE / "transport.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    proc, url = module.start_server(f"{COMPONENTS}:{name}")
    return proc, url


def _best_and_median(fn: Any, repeats: int) -> tuple[float, float]:
    fn()  # warm up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times)


def fan_out(repeats: int) -> None:
    sleepy = load_component(f"{COMPONENTS}:sleepy")
    designs = [{"x": np.full(3, float(i))} for i in range(64)]
    sequential = _best_and_median(lambda: [sleepy.apply(d) for d in designs], 1)[1]
    with cr.ray.deploy(sleepy, replicas=8) as deployed:
        mapped = _best_and_median(lambda: cr.map(deployed, designs), repeats)[1]
        batch = {"inputs": {"x": np.stack([d["x"] for d in designs])}, "batched": ["x"]}
        transport = deployed.backend.transport  # type: ignore[attr-defined]
        split = _best_and_median(lambda: transport.call("batched_apply", batch), repeats)[1]
    print("1. latency-bound component (50 ms/call), 64 designs, 8 replicas")
    print(f"   sequential in-process     {sequential * 1e3:8.0f} ms")
    for label, took in (("chainrule.map", mapped), ("batched apply, split", split)):
        print(
            f"   {label:<25} {took * 1e3:8.0f} ms   speed-up {sequential / took:5.2f}x   "
            f"parallel efficiency {sequential / (8 * took):6.1%}"
        )


def small_and_large(repeats: int) -> None:
    scale = load_component(f"{COMPONENTS}:scale")
    server, url = _start_server("scale")
    try:
        http = cr.connect(url)
        with cr.ray.deploy(scale) as deployed:
            _small(deployed, http, repeats * 100)
            _large(deployed, http, repeats)
        http.close()
    finally:
        server.terminate()
        server.wait(timeout=30)


def _interleaved(calls: dict[str, Any], repeats: int) -> dict[str, float]:
    """Median seconds of each call, the calls taking turns (also `<name>-best`: the fastest)."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for fn in calls.values():
        fn()  # warm up
    for _ in range(repeats):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    best = {f"{k}-best": min(v) for k, v in times.items()}
    return {k: statistics.median(v) for k, v in times.items()} | best


def _small(deployed: cr.Component, http: cr.Component, repeats: int) -> None:
    x = {"x": np.linspace(0.0, 1.0, 10)}
    med = _interleaved({"ray": lambda: deployed.apply(x), "http": lambda: http.apply(x)}, repeats)
    print("2. small call (10 float64), median of interleaved calls")
    print(f"   ray actor {med['ray'] * 1e3:7.3f} ms   http {med['http'] * 1e3:7.3f} ms   "
          f"ray/http {med['ray'] / med['http']:5.2f}")  # fmt: skip


def _large(deployed: cr.Component, http: cr.Component, repeats: int) -> None:
    n = 10_000_000  # 80 MB of float64
    fresh = iter([np.full(n, float(i)) for i in range(2 * (repeats + 1))])
    med = _interleaved(
        {
            "ray": lambda: deployed.apply({"x": next(fresh)}),
            "http": lambda: http.apply({"x": next(fresh)}),
        },
        repeats,
    )
    moved = 2 * 8 * n / 1e9  # GB in and out
    print("3. 80 MB in + 80 MB out (y = 2x), interleaved calls, a new array each")
    for kind in ("median", "best"):
        ray_s, http_s = (med[k if kind == "median" else f"{k}-best"] for k in ("ray", "http"))
        print(f"   {kind:<6} ray actor {ray_s * 1e3:7.1f} ms ({moved / ray_s:5.2f} GB/s)   "
              f"http {http_s * 1e3:7.1f} ms ({moved / http_s:5.2f} GB/s)   "
              f"ray/http {ray_s / http_s:5.2f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    repeats = 3 if args.quick else 9
    temp = tempfile.mkdtemp(prefix="ray-")
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp)
    try:
        fan_out(repeats)
        small_and_large(repeats)
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
