"""One client, two runtimes: the same Tesseract (`bench/peer/vectoradd`, c = a + b in float64,
every endpoint written) served by `tesseract-runtime serve` and by chainrule (`launch` of the
Tesseract folder: chainrule's server running the same `tesseract_api.py`, answering
Tesseract's API under `/tesseract`), both called through **Tesseract's own client**
(`Tesseract.from_url`, json+base64) at 10, 1e4 and 1e6 elements, and through
`jax.jit(jax.grad)` with tesseract-jax's `apply_tesseract`. Rounds alternate between the two
runtimes inside one client process, so both see the same machine and the same client.

Run: `python bench/peer_runtimes.py` (`--quick` for a short run). Part of `make bench-peer`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import chainrule as cr

HERE = Path(__file__).resolve().parent
FOLDER = HERE / "peer" / "vectoradd"
sys.path.insert(0, str(HERE))
import peer_env  # noqa: E402

SIZES = (10, 10_000, 1_000_000)
GRAD_N = 100


def _free_port() -> int:
    from chainrule._transport.launch.launch import free_port

    return free_port()


def _runtime(python: Path, out: str) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    env = dict(os.environ, TESSERACT_API_PATH=str(FOLDER / "tesseract_api.py"))
    env["TESSERACT_OUTPUT_PATH"] = out
    proc = subprocess.Popen(
        [str(python.parent / "tesseract-runtime"), "serve", "--host", "127.0.0.1",
         "--port", str(port)],
        env=env, cwd=out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return url, proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("tesseract-runtime did not start")


def run(quick: bool, rounds: int) -> None:
    t0 = time.perf_counter()
    python = peer_env.python() if peer_env.is_built() else peer_env.build()
    reps = {"10": 30, "10000": 20, "1000000": 2, "grad": 20}
    if quick:
        reps = {"10": 10, "10000": 5, "1000000": 1, "grad": 5}
    with tempfile.TemporaryDirectory(prefix="peer-runtimes-") as out:
        peer_url, proc = _runtime(python, out)
        try:
            with cr.launch(FOLDER, quiet=True) as comp:
                urls = {
                    "tesseract-runtime": peer_url,
                    "chainrule": f"{comp.backend.where}/tesseract",
                }
                config = {"urls": urls, "sizes": list(SIZES), "reps": reps, "rounds": rounds,
                          "grad_n": GRAD_N}  # fmt: skip
                worker = HERE / "peer" / "runtimes_worker.py"
                done = subprocess.run(
                    [str(python), str(worker), json.dumps(config)], capture_output=True, text=True
                )
        finally:
            proc.terminate()
            proc.wait(10)
    if done.returncode != 0:
        raise RuntimeError(f"the peer worker failed:\n{done.stderr[-3000:]}")
    _report(json.loads(done.stdout), rounds, time.perf_counter() - t0)


def _report(result: dict, rounds: int, elapsed: float) -> None:
    from rich.console import Console
    from rich.table import Table

    for case, sums in result["checks"].items():
        values = list(sums.values())
        assert abs(values[0] - values[1]) <= 1e-9 * max(1.0, abs(values[0])), (case, sums)
    table = Table(
        title="One client (Tesseract's own), two runtimes: median / p10 ms per call, "
        f"{rounds} interleaved rounds"
    )
    for col in ("case", "tesseract-runtime", "chainrule", "ratio (median)", "ratio (p10)"):
        table.add_column(col, justify="left" if col == "case" else "right")
    cases = dict.fromkeys(k.split("|")[0] for k in result["times"])
    for case in cases:
        theirs, ours = (result["times"][f"{case}|{s}"] for s in ("tesseract-runtime", "chainrule"))
        med = statistics.median(theirs) / statistics.median(ours)
        p10 = _p10(theirs) / _p10(ours)
        table.add_row(
            case,
            f"{statistics.median(theirs) * 1e3:.2f} / {_p10(theirs) * 1e3:.2f}",
            f"{statistics.median(ours) * 1e3:.2f} / {_p10(ours) * 1e3:.2f}",
            f"{med:.1f}×",
            f"{p10:.1f}×",
        )
    Console(width=132).print(table)
    print(f"whole run {elapsed:.0f} s (goal on small calls: ≥ 5× with the peer's own client)")


def _p10(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 10]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    args = parser.parse_args()
    run(args.quick, args.rounds or (3 if args.quick else 8))


if __name__ == "__main__":
    main()
