"""Container runtimes: podman or docker, found on PATH, and the limits a container runs with.

Both are driven through their command lines (`Runtime.run`); docker's CLI is trusted only
when a Docker engine answers it.
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from chainrule._schema.errors import LaunchError

__all__ = ["RUNTIMES", "Runtime", "find_runtime", "limit_args"]

RUNTIMES = ("podman", "docker")
_INSTALL = (
    "install podman (Debian and Ubuntu: `apt-get install --no-install-recommends podman runc "
    "catatonit`; add debootstrap to build base images without a registry) or Docker"
)


@dataclass(frozen=True)
class Runtime:
    """A container runtime's command line: `podman` or `docker` (or anything that speaks
    docker's CLI and API, such as docker pointed at `podman system service`)."""

    name: str
    exe: str

    def run(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run `exe args...` and capture its output (no check of the exit code)."""
        return subprocess.run(
            [self.exe, *args], capture_output=True, text=True, errors="replace",
            stdin=subprocess.DEVNULL, timeout=timeout, check=False,
        )  # fmt: skip

    def inspect(self, image: str) -> dict[str, object] | None:
        """`image inspect` of a local image (Id, Size, Config.Labels, RootFS.Layers), or None."""
        out = self.run("image", "inspect", image)
        if out.returncode != 0:
            return None
        found = json.loads(out.stdout or "[]")
        return dict(found[0]) if found else None

    def label(self, image: str, key: str) -> str | None:
        """The value of label `key` of a local image (None if absent or no such image)."""
        info = self.inspect(image)
        config = info.get("Config") if info else None
        labels = config.get("Labels") if isinstance(config, dict) else None
        value = labels.get(key) if isinstance(labels, dict) else None
        return None if value is None else str(value)

    def local_name(self, image: str) -> str:
        """`image` as the local store knows it: `chainrule-x:1` is `localhost/chainrule-x:1`
        when only that exists (docker would otherwise look for it on Docker Hub)."""
        if "/" in image or self.inspect(image) is not None:
            return image
        qualified = f"localhost/{image}"
        return qualified if self.inspect(qualified) is not None else image


def find_runtime(name: str | None = None) -> Runtime:
    """The container runtime to use.

    Arguments:
        name: `"podman"`, `"docker"`, or None for podman when installed, else docker.

    Returns:
        The runtime; `LaunchError` saying how to install one if there is none, or if docker
        is installed but no Docker engine answers (`docker info`).
    """
    if name not in (None, *RUNTIMES):
        raise LaunchError(f"runtime {name!r}: expected one of {', '.join(RUNTIMES)} (or 'uv')")
    podman = shutil.which("podman")
    if name == "podman" or (name is None and podman):
        if podman is None:
            raise LaunchError(f"podman was not found on PATH. Fix: {_INSTALL}")
        return Runtime("podman", podman)
    docker = shutil.which("docker")
    if docker is None:
        what = "docker was not found on PATH" if name else "neither podman nor docker is on PATH"
        raise LaunchError(f"{what}. Fix: {_INSTALL}")
    return _checked_docker(docker)


def _checked_docker(exe: str) -> Runtime:
    """Docker's CLI is often installed without an engine: ask the engine before relying on it."""
    try:
        out = subprocess.run(
            [exe, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
            stdin=subprocess.DEVNULL, timeout=30, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        out = subprocess.CompletedProcess([], 1, "", "no answer within 30 s")
    if out.returncode != 0:
        said = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise LaunchError(
            f"docker is installed but no Docker engine answers (`docker info`: {said}). Fix: "
            "start the Docker daemon, or point DOCKER_HOST at one (podman serves docker's API: "
            "`podman system service`), or use runtime='podman'."
        )
    return Runtime("docker", exe)


def limit_args() -> list[str]:
    """`--ulimit` options giving the container this process's own hard limits.

    A runtime's default open-file limit (1048576 for podman) can exceed what the host allows,
    and then every container fails to start (`error setting rlimit`). The process limit is
    kept below kernel.pid_max: a larger one was refused on a machine where it was allowed
    in-process.
    """
    files = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    procs = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    files = 1048576 if files == resource.RLIM_INFINITY else min(files, 1048576)
    procs = min(_pid_max(), 4194304 if procs == resource.RLIM_INFINITY else procs)
    return ["--ulimit", f"nofile={files}:{files}", "--ulimit", f"nproc={procs}:{procs}"]


def _pid_max() -> int:
    try:
        return int(Path("/proc/sys/kernel/pid_max").read_text())
    except (OSError, ValueError):
        return 4194304
