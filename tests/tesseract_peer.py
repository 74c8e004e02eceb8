"""Real tesseract-runtime servers for the tests (no Docker): the peer's own venv, built from
the package index by `bench/peer_env.py` (tesseract-core[runtime] 1.15.0, tesseract-jax, JAX,
equinox), and Tesseract's own example components from the tesseract-core sdist."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
OURS = Path(__file__).resolve().parent / "fixtures" / "tesseract"


def _peer_env() -> ModuleType:
    spec = importlib.util.spec_from_file_location("peer_env", ROOT / "bench" / "peer_env.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def python() -> Path:
    """The peer venv's interpreter (built on first use, then reused)."""
    env = _peer_env()
    return Path(env.python()) if env.is_built() else Path(env.build())


def example(name: str) -> Path:
    """The folder of one of Tesseract's own examples (or of ours, under fixtures/tesseract)."""
    if (OURS / name).is_dir():
        return OURS / name
    return Path(_peer_env().examples()) / name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start(folder: Path, out: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """Start `tesseract-runtime serve` on `folder`'s tesseract_api.py (not waiting)."""
    port = _free_port()
    out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "TESSERACT_API_PATH": str(folder / "tesseract_api.py"),
        "TESSERACT_OUTPUT_PATH": str(out),
        "TESSERACT_INPUT_PATH": str(folder),
        "JAX_PLATFORMS": "cpu",
    }
    cmd = [str(python().parent / "tesseract-runtime"), "serve", "--host", "127.0.0.1"]
    with open(out / "server.log", "wb") as log:  # the child keeps its own copy open
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=log
        )
    return f"http://127.0.0.1:{port}", proc


def wait(url: str, proc: subprocess.Popen[bytes], out: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = (out / "server.log").read_text()[-2000:]
            raise RuntimeError(f"tesseract-runtime at {url} exited: {log}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            if r.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"tesseract-runtime at {url} did not answer /health in {timeout} s")


@contextlib.contextmanager
def servers(names: list[str], tmp: Path) -> Iterator[dict[str, str]]:
    """Each named Tesseract served by tesseract-runtime (started together), by name → URL."""
    started: dict[str, tuple[str, subprocess.Popen[bytes]]] = {}
    try:
        for name in names:
            started[name] = start(example(name), tmp / name)
        for name, (url, proc) in started.items():
            wait(url, proc, tmp / name)
        yield {name: url for name, (url, _) in started.items()}
    finally:
        for _, proc in started.values():
            proc.terminate()
        for _, proc in started.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
