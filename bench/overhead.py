"""Where a call's time goes: the floors chainrule's figures are measured against.

1. A raw ASGI app under uvicorn, called by chainrule's own HTTP client: the least an HTTP
   round trip costs here (compare with `bench/transport.py`'s small calls).
2. The host-side work of one component crossing inside `jax.jit(jax.grad(...))`: the
   `apply(keep=True)` and `vjp` callbacks run directly, without JAX (compare with
   `bench/pipeline.py`).

Run: `python bench/overhead.py`.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np

_RAW_APP = textwrap.dedent(
    """
    import sys, uvicorn
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-length", b"2"), (b"content-type", b"application/octet-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning",
                access_log=False, lifespan="off")
    """
)


def _median_us(fn: Callable[[], Any], n: int = 3000) -> float:
    for _ in range(n // 10):
        fn()
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def raw_asgi_round_trip() -> float:
    from chainrule._transport.http.raw import RawConnection
    from chainrule._transport.launch.launch import free_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _RAW_APP, str(port)])
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        conn = RawConnection("127.0.0.1", port, 10)
        body = [b"x" * 400]
        result = _median_us(lambda: conn.request("POST", "/", body, {}))
        conn.close()
        return result
    finally:
        proc.terminate()
        proc.wait(10)


def host_crossing(make: Callable[[], Any]) -> float:
    import jax.numpy as jnp
    from pipeline import N

    import chainrule.jax as crj
    from chainrule._bindings.jax import call as _jax_call
    from chainrule._bindings.jax import primitives as prims

    comp = make()
    x = jnp.linspace(0.0, 1.0, N)
    crj.call(comp, {"x": x})
    spec = next(s for s in _jax_call.sites(comp) if s.component is comp)
    arrays, ct = [np.asarray(x)], [np.ones(N)]

    def crossing() -> None:
        token = prims._host_apply(spec, True, arrays)[-1]
        prims._host_vjp(spec, (0,), (0,), False, token, arrays, ct)

    return _median_us(crossing, 2000)


def main() -> None:
    from pipeline import _numpy_component, _torch_component

    print(f"raw uvicorn ASGI round trip (chainrule's client): {raw_asgi_round_trip():.0f} µs")
    for name, make in (("NumPy", _numpy_component), ("PyTorch", _torch_component)):
        print(f"host work of one {name} crossing (apply keep + vjp): {host_crossing(make):.0f} µs")


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    main()
