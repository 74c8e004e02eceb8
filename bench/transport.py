"""Transport benchmark: round-trip time and throughput of apply and vjp, side by side.

For float64 arrays of 10, 1e4, 1e6 and 1e7 elements, the same component is called
in-process, over HTTP with the binary wire format and over HTTP with JSON. The server runs in
its own process (`python -m chainrule serve`), on loopback, as it would in a pipeline.

Run: `python bench/transport.py` (add `--quick` for a short run, `--sizes 10 10000`).
GB/s counts the array bytes that cross the wire per round trip (apply: x in, y out;
vjp: x and the cotangent in, the gradient out).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np

import chainrule as cr

HERE = Path(__file__).parent


def _median_time(fn: Callable[[], object], budget: float, max_repeats: int) -> float:
    fn()  # warm up: compilation, connection, allocator
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < 3 or time.perf_counter() - start < budget):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def start_server(
    target: str, *extra: str, tmpdir: str | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """`chainrule serve target` in its own process on a free port (its TMPDIR set if given),
    once `/health` answers; returns (process, url)."""
    from chainrule._transport.launch.launch import free_port

    port = free_port()
    env = {**os.environ, "TMPDIR": tmpdir} if tmpdir is not None else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "chainrule", "serve", target, "--port", str(port), *extra],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=1).read()
            return proc, url
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{target} did not start")


def run(sizes: list[int], budget: float) -> list[dict[str, object]]:
    sys.path.insert(0, str(HERE))
    from components import scale  # the same component the server serves

    target = f"{HERE / 'components.py'}:scale"
    server, url = start_server(target)
    inline, inline_url = start_server(target, "--no-threads")  # calls on the event loop
    rows: list[dict[str, object]] = []
    try:
        transports = {
            "in-process": scale,
            "http-binary": cr.connect(url),
            "http-json": cr.connect(url, content_type="application/json"),
            "http-binary, no threads": cr.connect(inline_url),
        }
        for n in sizes:
            x = {"x": np.linspace(0.0, 1.0, n)}
            c = {"y": np.ones(n)}
            moved = 2 * 8 * n  # apply: x in, y out
            moved_vjp = 3 * 8 * n  # vjp: x and the cotangent in, the gradient out
            for name, comp in transports.items():
                repeats = 200 if n <= 10_000 else 20 if n <= 1_000_000 else 5
                if name == "http-json" and n >= 10_000_000:
                    repeats = 3
                t_apply = _median_time(lambda comp=comp, x=x: comp.apply(x), budget, repeats)
                t_vjp = _median_time(lambda comp=comp, x=x, c=c: comp.vjp(x, c), budget, repeats)
                rows.append(
                    {
                        "n": n,
                        "transport": name,
                        "apply_ms": t_apply * 1e3,
                        "vjp_ms": t_vjp * 1e3,
                        "apply_GBps": moved / t_apply / 1e9,
                        "vjp_GBps": moved_vjp / t_vjp / 1e9,
                    }
                )
                print(
                    f"{n:>10,d} {name:<24} apply {t_apply * 1e3:9.3f} ms "
                    f"{moved / t_apply / 1e9:7.3f} GB/s   vjp {t_vjp * 1e3:9.3f} ms "
                    f"{moved_vjp / t_vjp / 1e9:7.3f} GB/s",
                    flush=True,
                )
        for comp in transports.values():
            comp.close()
    finally:
        for proc in (server, inline):
            proc.terminate()
            proc.wait(10)
    return rows


def _table(rows: list[dict[str, object]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="chainrule transport: median round trip (GB/s = array bytes in+out)")
    for col in ("elements", "transport", "apply ms", "apply GB/s", "vjp ms", "vjp GB/s"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            f"{r['n']:,}",
            str(r["transport"]),
            f"{r['apply_ms']:.3f}",
            f"{r['apply_GBps']:.3f}",
            f"{r['vjp_ms']:.3f}",
            f"{r['vjp_GBps']:.3f}",
        )
    Console().print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 10_000, 1_000_000, 10_000_000])
    parser.add_argument("--budget", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true", help="small sizes, short budget")
    args = parser.parse_args()
    sizes = [10, 10_000] if args.quick else args.sizes
    _table(run(sizes, 0.5 if args.quick else args.budget))


if __name__ == "__main__":
    main()
