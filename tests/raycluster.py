"""A local Ray cluster for tests: a simulated cluster of several nodes on 127.0.0.1 only, in
our own child process, stopped through it (never `ray stop`, which stops every Ray process on
the machine).

Importing this module sets, for this process and the cluster, what keeps Ray on loopback and off
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
import time
from collections.abc import Iterator
from contextlib import contextmanager

LOOPBACK = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}
for _key, _value in LOOPBACK.items():
    os.environ.setdefault(_key, _value)

import ray  # noqa: E402  (after the variables above, which Ray reads at import)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Nodes:
    """A simulated cluster of `count` nodes on this machine (`ray.cluster_utils.Cluster`: one
    raylet and object store each, the first also the head), on loopback, in its own temp dir
    and on free ports.

    The `Cluster` lives in a child process of ours (this file run as a script), not in the
    test process: it starts its nodes in-process and leaves their log files for the garbage
    collector (warnings, which the tests turn into errors). Closing the child's stdin shuts the
    cluster down; its reapers stop the nodes if the child dies.
    """

    def __init__(self, count: int = 2, num_cpus: int = 1) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: socket paths
        argv = [sys.executable, __file__, str(count), str(num_cpus), self.temp_dir]
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **LOOPBACK}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, start_new_session=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().split()  # "ready <address> <node id>..."
        if line[:1] != ["ready"]:
            self.stop()
            raise RuntimeError(f"the simulated cluster did not start: {line}")
        self.address, self.node_ids = line[1], line[2:]

    def stop(self) -> None:
        """End of input: the child shuts the cluster down; SIGKILL to its group after 30 s."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc.stdout.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _serve_nodes(count: int, num_cpus: int, temp_dir: str) -> None:
    """The child of `Nodes`: start the cluster, say where it is, shut it down at end of input.
    The head writes its address for `ray.init("auto")` (and `shutdown` deletes it) under
    RAY_TMPDIR: ours, not the machine's /tmp/ray that other clusters read."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_TMPDIR"] = temp_dir
    os.makedirs(os.path.join(temp_dir, "ray"), exist_ok=True)
    cluster = Cluster()
    try:
        nodes = [cluster.add_node(**_node_args(num_cpus, n == 0, temp_dir)) for n in range(count)]
        cluster.wait_for_nodes(timeout=60)
        print("ready", cluster.address, *(n.node_id for n in nodes), flush=True)
        sys.stdin.read()
    finally:
        cluster.shutdown()


def _node_args(num_cpus: int, head: bool, temp_dir: str) -> dict[str, object]:
    ports = (
        "dashboard_agent_listen_port", "metrics_export_port", "metrics_agent_port",
        "runtime_env_agent_port", "node_manager_port", "object_manager_port",
    )  # fmt: skip
    args: dict[str, object] = {port: free_port() for port in ports}
    if head:
        args.update(gcs_server_port=free_port(), ray_client_server_port=free_port())
    return {
        **args, "node_ip_address": "127.0.0.1", "num_cpus": num_cpus,
        "include_dashboard": False, "temp_dir": temp_dir,
    }  # fmt: skip


@contextmanager
def simulated_nodes(count: int = 2, num_cpus: int = 1) -> Iterator[Nodes]:
    """`count` nodes on loopback with this process connected to the head as a driver."""
    nodes = Nodes(count, num_cpus)
    try:
        ray.init(address=nodes.address)
        yield nodes
    finally:
        ray.shutdown()
        nodes.stop()


def wait_for(predicate: object, timeout: float = 60.0) -> None:
    """Poll `predicate()` until it is true (a restart takes Ray a second or two)."""
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.1)


if __name__ == "__main__":
    _serve_nodes(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
