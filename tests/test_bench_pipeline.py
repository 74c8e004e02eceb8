"""The pipeline benchmark runs end to end, so it cannot rot: `bench/pipeline.py` at a tiny
scale (n = 10, one round, a millisecond per measurement), with the tesseract-jax column from
the peer's venv (built once for the suite by `tests/tesseract_peer.py`), in its own process as
a user runs it (it computes in float64 and must not switch this process's JAX to it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import tesseract_peer

pytestmark = pytest.mark.slow

Run = tuple[str, dict[str, Any]]  # the printed tables, the --json figures
ROOT = Path(__file__).resolve().parent.parent
KINDS = ("numpy", "torch")
WAYS = ("chainrule", "jaxbind", "hand", "pure", "tesseract-jax")

# Every request a served component receives, by call (the wire table).
WIRE = {
    "jit(jacrev) of a 100-output torch component": {"batched_vjp": 1},  # no forward: unread
    **{f"jit(f), one design ({b})": {"apply": 1} for b in ("torch", "jax", "numpy")},
    **{f"jit(vmap(f)), 64 designs ({b})": {"batched_apply": 1} for b in ("torch", "jax", "numpy")},
}
# Derivatives at batched primals: one request at every design (jit drops the unread forward;
# a gradient that reads the outputs needs it: a batched apply too).
VMAP_GRAD = {"vjp": 1}
VMAP_READS = {"batched_apply": 1, "vjp": 1}
VMAP_JACREV = {"batched_vjp": 1}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tesseract_peer.python()  # the peer's venv, so the tesseract-jax column is there
    out = tmp_path_factory.mktemp("pipeline") / "figures.json"
    cmd = [sys.executable, str(ROOT / "bench" / "pipeline.py"), "--sizes", "10", "--rounds", "1"]
    done = subprocess.run(
        [*cmd, "--budget", "0.001", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout, json.loads(out.read_text())


def test_every_way_is_checked_and_timed_including_tesseract_jax(run: Run) -> None:
    stdout, figures = run
    every = {f"{kind} 10 {way}" for kind in KINDS for way in WAYS}
    assert sorted(figures["checked"]) == sorted(every)  # each gradient equal to 2·ones
    assert set(figures["times"]) == every
    assert all(len(ts) == 1 and ts[0] > 0 for ts in figures["times"].values())
    assert "tesseract-jax" in stdout and "vs tesseract-jax" in stdout


def test_the_wire_table_counts_every_request(run: Run) -> None:
    stdout, figures = run
    wire = figures["wire"]
    for label, expected in WIRE.items():
        assert wire[label] == expected, label
    for backend in ("torch", "jax", "numpy"):
        assert wire[f"jit(vmap(grad(sum∘f))), 64 designs ({backend})"] == VMAP_GRAD
        assert wire[f"jit(vmap(grad(sum∘sin∘f))), 64 designs ({backend})"] == VMAP_READS
        assert wire[f"jit(vmap(jacrev(f))), 64 designs ({backend})"] == VMAP_JACREV
    assert "1 (batched_vjp 1)" in stdout
