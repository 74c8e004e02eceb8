"""Soak: a server's kept residuals hold no more memory than its residual budget says.

Arrays decoded from a binary body are views of the whole body; a residual that kept such a
view pinned the body, padding and all, outside the budget (issue 12, item 7: 10 keeps with
50 MB of padding grew a server by 551 MiB while /health reported 240 bytes).
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

from chainrule._transport.wire.format import BINARY, MAGIC

HERE = Path(__file__).parent
BUDGET = 16 * 2**20
PADDING = 48 * 2**20  # above glibc's largest mmap threshold: freed bodies leave the process
MARGIN = 128 * 2**20

SERVER = f"""
import sys, time
sys.path.insert(0, {str(HERE)!r})
import chainrule as cr
from handle_components import make

server = cr.serve(make("numpy"), residual_bytes={BUDGET})
print(server.url, flush=True)
time.sleep(600)
"""


def _padded_keep(x: np.ndarray, padding: int) -> bytes:
    """An /apply keep body whose one array sits after `padding` unreferenced bytes."""
    tree = {"inputs": {"x": {"$array": 0}, "scale": 2.0, "copies": 1}, "keep": True}
    arrays = [{"dtype": "float64", "shape": list(x.shape), "offset": padding, "nbytes": x.nbytes}]
    header = json.dumps({"tree": tree, "arrays": arrays}).encode()
    prefix = MAGIC + struct.pack("<Q", len(header)) + header
    return prefix + bytes(-len(prefix) % 64) + bytes(padding) + x.tobytes()


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(f"{url}/apply", body, {"Content-Type": BINARY})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        response.read()


def test_a_keep_flood_stays_within_the_residual_budget() -> None:
    proc = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().decode().strip()
        x = np.linspace(0.0, 1.0, 1000)
        for _ in range(2):  # warm up: imports, allocator arenas, caches
            _post(url, _padded_keep(x, PADDING))
        time.sleep(0.2)
        before = _rss(proc.pid)
        for i in range(12):  # 12 x 48 MB of bodies, each kept
            _post(url, _padded_keep(x + i, PADDING))
        time.sleep(0.2)
        grown = _rss(proc.pid) - before
        with urllib.request.urlopen(f"{url}/health") as response:
            counted = json.loads(response.read())["residual_bytes"]
        assert counted <= BUDGET
        assert grown < BUDGET + MARGIN, f"RSS grew {grown / 2**20:.0f} MiB under a keep flood"
    finally:
        proc.kill()
        proc.wait(30)
        if proc.stdout:
            proc.stdout.close()
