"""Load: concurrent clients get exactly the serial answers; memory and files stay flat.

Runs the functions of `bench/load.py` (which prints the figures) at a test-sized scale.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import chainrule as cr
from chainrule._transport.http.serving import load_component

sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
import load

pytestmark = pytest.mark.slow


def test_client_threads_against_one_server(tmp_path: Path) -> None:
    from components import scale

    proc, url = load.start_server(load.SCALE, tmpdir=str(tmp_path))
    try:
        run = load.concurrent(url, clients=6, calls=20, processes=False)
    finally:
        proc.terminate()
        proc.wait(10)
    assert run["calls"] == 6 * 20 * 2
    assert run["answers"] == load.serial_answers(scale, 6, 20)
    assert run["p99"] >= run["p50"] > 0 and run["throughput"] > 0


def test_client_processes_against_a_launched_component_with_two_workers(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cache = tmp_path_factory.mktemp("load-envs")
    square = load_component(str(load.SQUARE / "component.py") + ":square")
    launched = cr.launch(load.SQUARE, workers=2, cache_dir=cache, quiet=True)
    with launched:
        assert "with 2 worker processes" in launched.log
        run = load.concurrent(launched.url, clients=4, calls=15, processes=True)
    assert run["answers"] == load.serial_answers(square, 4, 15)


def test_memory_files_and_kept_residuals_stay_bounded_over_10000_calls() -> None:
    result = load.soak(10_000)
    grew = result["rss_after"] - result["rss_before"]
    assert grew < 16 * 2**20, f"server memory grew by {grew / 2**20:.1f} MiB over 10,000 calls"
    assert result["files_after"] == result["files_before"], "the server leaks file descriptors"
    assert result["tmp_left"] == [], "the server left files in its temporary folder"
    assert result["residuals"] <= 1024, "the residual cache is not bounded"


def test_a_large_json_body_does_not_stall_other_clients(tmp_path: Path) -> None:
    """A 7.6-15 MB JSON body once froze /health and every other client for 1-6 s: it was
    decoded (and its answer encoded) on the event loop, and json's C parser holds the GIL
    for a whole list of numbers. Both now run in the call's worker thread, in pieces that
    let the loop run: /health answers within a fraction of a second throughout."""
    proc, url = load.start_server(load.SCALE, tmpdir=str(tmp_path))
    x = np.random.default_rng(0).random(700_000)
    body = json.dumps({"inputs": {"x": x.tolist()}}).encode()  # ~14 MB of plain numbers
    big: dict[str, Any] = {}

    def post() -> None:
        request = urllib.request.Request(
            f"{url}/apply", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            big["answer"] = answer.read()  # parsed later: json would hold this process's GIL

    try:
        caller = threading.Thread(target=post)
        caller.start()
        worst, polls = 0.0, 0
        while caller.is_alive():
            start = time.monotonic()
            urllib.request.urlopen(f"{url}/health", timeout=60).close()
            worst, polls = max(worst, time.monotonic() - start), polls + 1
            time.sleep(0.02)
        caller.join()
    finally:
        proc.terminate()
        proc.wait(10)
    assert worst < 0.5, f"/health waited {worst:.2f} s while a large JSON body was handled"
    assert polls >= 5, "the large call was too quick to tell"
    answer = json.loads(big["answer"])
    np.testing.assert_array_equal(answer["outputs"]["y"], 2 * x)  # plain lists back
