"""Build the peer's own environment: `bench/.peer-venv` with Tesseract, Tesseract-JAX and
Tesseract-Torch.

The peer benchmark (`bench/peer.py`) runs Tesseract's server and client from this venv, never
from chainrule's, so neither side's dependencies leak into the other. The build is idempotent:
a stamp file records the pins it was built with, and a later run with the same pins does
nothing.

Run: `python bench/peer_env.py` (any Python 3.11+; `--force` rebuilds).
Uses `uv` when it is on PATH or next to this Python (e.g. in `.venv/bin`), else venv + pip.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".peer-venv"
STAMP = VENV / ".peer-pins.json"

# tesseract-jax 0.4.0 is the newest release; it needs jax>=0.7 and takes any tesseract-core.
# jax is pinned to the version chainrule's venv uses, so both sides trace with the same JAX.
PINS = [
    "tesseract-core[runtime]==1.15.0",
    "tesseract-jax==0.4.0",
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "equinox==0.13.8",  # Tesseract's vectoradd_jax example imports it
    "tesseract-torch==0.1.0",  # the PyTorch client (newest release; takes any tesseract-core)
    # torch as chainrule's own venv pins it: a CPU wheel found through find-links (other
    # versions pull multi-GB CUDA builds).
    "torch==2.13.0",
]
SDIST = "tesseract-core==1.15.0"  # its examples/ folder holds Tesseract's own example components


def python() -> Path:
    """The peer venv's interpreter."""
    return VENV / "bin" / "python"


def _find_uv() -> str | None:
    here = Path(sys.executable).parent / "uv"
    if here.exists():
        return str(here)
    repo_venv = HERE.parent / ".venv" / "bin" / "uv"
    if repo_venv.exists():
        return str(repo_venv)
    return shutil.which("uv")


def _uv_env() -> dict[str, str]:
    """uv does not read pip's settings: hand it pip's find-links (local wheel folders)."""
    env = dict(os.environ)
    links = [p for p in os.environ.get("PIP_FIND_LINKS", "").split() if Path(p).exists()]
    if links and "UV_FIND_LINKS" not in env:
        env["UV_FIND_LINKS"] = ",".join(links)
    env.setdefault("UV_PYTHON_DOWNLOADS", "never")
    return env


def _run(cmd: list[str], env: dict[str, str] | None = None) -> None:
    print("  $", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def is_built() -> bool:
    try:
        stamp = json.loads(STAMP.read_text())
    except (OSError, ValueError):
        return False
    return stamp.get("pins") == PINS and python().exists()


def build(force: bool = False) -> Path:
    """Create the peer venv unless it is already built with the same pins; return its python."""
    if is_built() and not force:
        print(f"peer env: {VENV} is up to date ({', '.join(PINS)})")
        return python()
    if VENV.exists():
        print(f"peer env: removing stale {VENV}")
        shutil.rmtree(VENV)
    uv = _find_uv()
    print(f"peer env: building {VENV} with {'uv' if uv else 'venv + pip'}: {', '.join(PINS)}")
    if uv:
        env = _uv_env()
        _run([uv, "venv", "--quiet", "--python", sys.executable, str(VENV)], env)
        _run([uv, "pip", "install", "--quiet", "--python", str(python()), *PINS], env)
    else:
        _run([sys.executable, "-m", "venv", str(VENV)])
        _run([str(python()), "-m", "pip", "install", "--quiet", *PINS])
    STAMP.write_text(json.dumps({"pins": PINS}))
    print(f"peer env: ready ({python()})")
    return python()


def examples() -> Path:
    """Tesseract's own example components (`examples/` of the tesseract-core sdist), fetched
    once from the package index into the peer venv."""
    target = VENV / "examples"
    if (target / ".complete").exists():
        return target
    build()
    with tempfile.TemporaryDirectory() as tmp:
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
              "--no-deps", "--dest", tmp, SDIST])  # fmt: skip
        (sdist,) = Path(tmp).glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/examples/" in m.name]
            tar.extractall(tmp, members=members, filter="data")
        (found,) = Path(tmp).glob("*/examples")
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(found, target)
    (target / ".complete").touch()
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    build(parser.parse_args().force)


if __name__ == "__main__":
    main()
