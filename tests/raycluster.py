"""A local Ray cluster for tests and benchmarks: one head on 127.0.0.1 only, our own child
process, stopped by its PID (never `ray stop`, which stops every Ray process on the machine).

Importing this module sets, for this process and the head, what keeps Ray on loopback and off
token auth: Ray reads `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` when it is imported (without it, Ray
swaps 127.0.0.1 for the machine's outward address, and a driver hangs connecting), and a
cluster and its drivers must agree on `RAY_AUTH_MODE`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOOPBACK = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}
for _key, _value in LOOPBACK.items():
    os.environ.setdefault(_key, _value)

import ray  # noqa: E402  (after the variables above, which Ray reads at import)

RAY = Path(sys.executable).parent / "ray"
_PORT_FLAGS = (
    "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--metrics-export-port",
    "--runtime-env-agent-port", "--ray-client-server-port", "--node-manager-port",
    "--object-manager-port",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Head:
    """`ray start --head --block` as our child, in its own session and temp dir; every port
    it opens is chosen free (Ray's fixed defaults collide between clusters on one machine)."""

    def __init__(self, num_cpus: int = 2) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: socket paths
        self.port = free_port()
        argv = [
            str(RAY), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
            f"--port={self.port}", f"--num-cpus={num_cpus}", "--include-dashboard=false",
            "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
            *(f"{flag}={free_port()}" for flag in _PORT_FLAGS),
        ]  # fmt: skip
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **LOOPBACK}, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )  # fmt: skip
        self._wait_started()

    def _wait_started(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.log.append(line)
            if "Ray runtime started" in line:
                break
        else:
            raise RuntimeError("ray start failed:\n" + "".join(self.log[-30:]))
        # Keep draining its output so that it never blocks on a full pipe.
        self._drain = threading.Thread(
            target=self.log.extend, args=(self.proc.stdout,), daemon=True
        )
        self._drain.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        """SIGTERM to our `ray start --block` (it tears its node down), then SIGKILL to the
        process group if anything is left after 20 s."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._drain.join(timeout=5)  # its output ended with it
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


@contextmanager
def local_cluster(num_cpus: int = 2) -> Iterator[Head]:
    """A head on loopback with this process connected to it as a driver."""
    head = Head(num_cpus)
    try:
        ray.init(address=head.address)
        yield head
    finally:
        ray.shutdown()
        head.stop()


def wait_for(predicate: object, timeout: float = 60.0) -> None:
    """Poll `predicate()` until it is true (a restart takes Ray a second or two)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.1)
