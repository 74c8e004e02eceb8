"""Load benchmark: many concurrent clients against one component server.

Three runs, each checked against the same calls made serially in-process (bit for bit):

1. N client threads against one server (`chainrule serve`, its own process);
2. N client processes against a launched component (`cr.launch(..., workers=2)`: two server
   processes sharing the port, in the component's own environment);
3. 10,000 calls (apply keeping a linearization + vjp with its handle) against one server, with
   the server's resident memory, open files and temporary folder measured before and after.

Each run prints p50/p99 latency and throughput. Run: `python bench/load.py` (`--quick` for a
short run). `tests/test_load.py` runs the same functions at a smaller size.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from transport import start_server

import chainrule as cr

HERE = Path(__file__).parent
ROOT = HERE.parent
SQUARE = ROOT / "tests" / "fixtures" / "numpy2"  # y = x², a component folder with its own env
SCALE = f"{HERE / 'components.py'}:scale"  # y = 2·x, hand-written vjp


def inputs_of(client: int, call: int, n: int = 16) -> np.ndarray:
    """The x of one call: different for every client and call, so mixed-up answers show."""
    return np.linspace(-1.0, 1.0, n) * (1 + client) + 0.001 * call


def _client_calls(url: str, client: int, calls: int) -> tuple[list[bytes], list[float], float]:
    """One client's calls (apply then vjp): the answers' bytes, each call's seconds, and when
    (wall clock) the first call started, to measure throughput without start-up time."""
    comp = cr.connect(url)
    answers, times = [], []
    begin = time.time()
    for call in range(calls):
        x = inputs_of(client, call)
        start = time.perf_counter()
        y = comp.apply({"x": x}).y
        g = comp.vjp({"x": x}, {"y": np.ones_like(x)})["x"]
        times.append((time.perf_counter() - start) / 2)
        answers.append(y.tobytes() + g.tobytes())
    comp.close()
    return answers, times, begin


def _process_client(args: tuple[str, int, int]) -> tuple[list[bytes], list[float], float]:
    return _client_calls(*args)


def serial_answers(component: cr.Component, clients: int, calls: int) -> list[list[bytes]]:
    """What every client must get: the same calls made one by one, in-process."""
    out = []
    for client in range(clients):
        answers = []
        for call in range(calls):
            x = inputs_of(client, call)
            y = component.apply({"x": x}).y
            g = component.vjp({"x": x}, {"y": np.ones_like(x)})["x"]
            answers.append(y.tobytes() + g.tobytes())
        out.append(answers)
    return out


def concurrent(url: str, clients: int, calls: int, processes: bool) -> dict[str, Any]:
    """`clients` threads (or processes) calling at once; answers per client and latencies."""
    jobs = [(url, client, calls) for client in range(clients)]
    if processes:
        with multiprocessing.get_context("spawn").Pool(clients) as pool:
            results = pool.map(_process_client, jobs)
    else:
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(_process_client, jobs))
    wall = time.time() - min(begin for _, _, begin in results)
    times = [t for _, ts, _ in results for t in ts]
    return {
        "answers": [a for a, _, _ in results],
        "calls": len(times) * 2,
        "p50": statistics.median(times),
        "p99": float(np.percentile(times, 99)),
        "throughput": len(times) * 2 / wall,
    }


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def soak(calls: int, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """`calls` requests (apply keeping a linearization, then vjp with the handle) to one
    server; its memory, open files and temporary folder before and after."""
    with tempfile.TemporaryDirectory() as tmpdir:
        proc, url = start_server(SCALE, tmpdir=tmpdir)
        try:
            comp = cr.connect(url)
            x = np.linspace(0.0, 1.0, 1000)

            def pair(i: int) -> None:
                xi = x + i  # new inputs every time: every handle is a new kept residual
                _, handle = comp.apply({"x": xi}, keep=True)
                comp.vjp({"x": xi}, {"y": x}, handle=handle)

            # Warm up past the residual cache's 1024 entries, so it is full before measuring.
            for i in range(1500):
                pair(-i - 1)
            rss0, files0 = _rss_bytes(proc.pid), _open_files(proc.pid)
            start = time.perf_counter()
            for i in range(calls // 2):
                pair(i)
                if progress is not None and i % 500 == 0:
                    progress(2 * i)
            wall = time.perf_counter() - start
            rss1, files1 = _rss_bytes(proc.pid), _open_files(proc.pid)
            health = comp_health(url)
            comp.close()
            left = os.listdir(tmpdir)
        finally:
            proc.terminate()
            proc.wait(10)
    return {
        "calls": calls,
        "seconds": wall,
        "rss_before": rss0,
        "rss_after": rss1,
        "files_before": files0,
        "files_after": files1,
        "tmp_left": left,
        "residuals": health.get("residuals"),
    }


def comp_health(url: str) -> dict[str, Any]:
    import json

    with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
        result: dict[str, Any] = json.loads(answer.read())
        return result


def _row(name: str, run: dict[str, Any]) -> str:
    return (
        f"{name:44s} {run['calls']:6d} calls  p50 {run['p50'] * 1e3:6.2f} ms  "
        f"p99 {run['p99'] * 1e3:6.2f} ms  {run['throughput']:7.0f} calls/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    calls = 25 if args.quick else 200
    soak_calls = 2000 if args.quick else 10_000
    clients = args.clients
    sys.path.insert(0, str(HERE))
    from components import scale

    from chainrule._transport.http.serving import load_component

    print(f"chainrule load benchmark: {clients} clients x {calls} (apply + vjp)")
    with tempfile.TemporaryDirectory() as tmpdir:
        proc, url = start_server(SCALE, tmpdir=tmpdir)
        try:
            run = concurrent(url, clients, calls, processes=False)
        finally:
            proc.terminate()
            proc.wait(10)
    same = run["answers"] == serial_answers(scale, clients, calls)
    print(_row(f"{clients} threads -> chainrule serve", run), "| identical:", same)

    square = load_component(str(SQUARE / "component.py") + ":square")
    launched = cr.launch(SQUARE, workers=2, quiet=True)
    with launched:
        run = concurrent(launched.url, clients, calls, processes=True)
    same = run["answers"] == serial_answers(square, clients, calls)
    print(_row(f"{clients} processes -> launched, 2 workers", run), "| identical:", same)

    result = soak(soak_calls)
    grew = (result["rss_after"] - result["rss_before"]) / 2**20
    print(
        f"{soak_calls} calls (apply keep + vjp with handle) in {result['seconds']:.1f} s: "
        f"server RSS {result['rss_before'] / 2**20:.1f} -> {result['rss_after'] / 2**20:.1f} MiB "
        f"({grew:+.1f}), open files {result['files_before']} -> {result['files_after']}, "
        f"kept residuals {result['residuals']}, files left in its TMPDIR: {result['tmp_left']}"
    )


if __name__ == "__main__":
    main()
