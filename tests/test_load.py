"""Load: concurrent clients get exactly the serial answers; memory and files stay flat.

Runs the functions of `bench/load.py` (which prints the figures) at a test-sized scale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import chainrule as cr
from chainrule._serving import load_component

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
