"""The tesseract-jax column of `bench/pipeline.py`: a worker in the peer's venv, kept alive.

The worker (`bench/peer/pipeline_worker.py`) runs tesseract-jax's `apply_tesseract` on in-process
Tesseracts (`bench/peer/double_numpy`, `bench/peer/double_torch`) inside `jax.jit(jax.grad)`;
the pipeline asks it for one timing per round, in turn with its own ways, so every ratio is
taken within one round. The peer's venv is `bench/.peer-venv` (`python bench/peer_env.py`).
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
WORKER = HERE / "peer" / "pipeline_worker.py"
sys.path.insert(0, str(HERE))
import peer_env  # noqa: E402

HOW_TO_BUILD = (
    f"no peer venv at {peer_env.VENV}: build it with `python bench/peer_env.py` "
    "(`make bench-peer` builds it too) to add the tesseract-jax column"
)


def python() -> Path | None:
    """The peer venv's interpreter, or None when it is not built."""
    return peer_env.python() if peer_env.is_built() else None


class TesseractJax:
    """The worker process: started at once (it imports JAX, torch and Tesseract while the
    pipeline builds its own ways), answering one JSON line per command."""

    def __init__(self, python: Path, sizes: list[int]) -> None:
        self.proc = subprocess.Popen(
            [str(python), str(WORKER)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=sys.stderr,
            text=True,
        )
        self.versions: dict[str, str] = {}
        self._send("init", sizes=sizes)

    def describe(self) -> str:
        """The versions its worker runs, once started."""
        return ", ".join(f"{k} {v}" for k, v in self.versions.items())

    def _send(self, op: str, **kw: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
        self.proc.stdin.flush()

    def _answer(self, op: str) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the tesseract-jax worker ({WORKER}) died during {op!r}")
        answer = json.loads(line)
        if isinstance(answer, dict) and "error" in answer:
            raise RuntimeError(f"tesseract-jax worker, {op}: {answer['error']}")
        return answer

    def started(self) -> tuple[dict[str, str], dict[tuple[str, int], np.ndarray]]:
        """The versions the worker runs and its gradient per (kind, n), for checking."""
        answer = self._answer("init")
        self.versions = answer["versions"]
        grads = {}
        for key, data in answer["answers"].items():
            kind, n = key.split()
            grads[kind, int(n)] = np.frombuffer(base64.b64decode(data), dtype=np.float64)
        return answer["versions"], grads

    def time(self, kind: str, n: int, budget: float) -> float:
        """The worker's median seconds per `jit(grad)` call of (kind, n)."""
        self._send("time", kind=kind, n=n, budget=budget)
        seconds: float = self._answer("time")
        return seconds

    def close(self) -> None:
        try:
            self._send("quit")
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
