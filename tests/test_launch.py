"""Managed component servers: start, health, stop, supervision, start-up failures, and no
server outliving the process that launched it.

Most tests run `tests/fixtures/standin/server.py` (a stdlib stand-in for `chainrule serve`)
through `launch(..., _command=...)`, so no environment is built; the lifetime tests run the
real `chainrule serve` in this environment the same way (`here(...)`); the slow tests launch
real component folders in their own environments.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from chainrule._cli.app import app
from chainrule._schema.errors import LaunchError
from chainrule._transport.launch import launch as _launch
from chainrule._transport.launch import servers as _servers
from chainrule._transport.launch.env import cache_root, load_spec
from chainrule._transport.launch.launch import (
    Launched,
    _healthy,
    _server_env,
    free_port,
    launch,
    server_command,
)

FIXTURES = Path(__file__).parent / "fixtures"
STANDIN = FIXTURES / "standin"


def standin(mode: str = "ok") -> Callable[[str, int], list[str]]:
    """The command factory of the stand-in server in `mode` (ok | crash | hang)."""

    def command(host: str, port: int) -> list[str]:
        server = str(STANDIN / "server.py")
        return [sys.executable, server, "--host", host, "--port", str(port), "--mode", mode]

    return command


def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll `condition` every 0.05 s; whether it became true within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Launches without a cache_dir register their servers here, not in ~/.cache."""
    monkeypatch.setenv("CHAINRULE_CACHE", str(tmp_path_factory.mktemp("cache")))


def here(folder: Path, workers: int = 1) -> Callable[[str, int], list[str]]:
    """The command factory of the real `chainrule serve` of `folder`, in this environment."""
    return functools.partial(
        server_command, Path(sys.executable), folder, load_spec(folder), workers=workers
    )


@pytest.fixture(scope="module")
def launch_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One environment cache for the tests that build real environments (each built once)."""
    return tmp_path_factory.mktemp("launch-envs")


@pytest.fixture
def server() -> Iterator[Launched]:
    launched = launch(STANDIN, _command=standin(), startup_timeout=30)
    yield launched
    launched.stop()


def test_launch_answers_health_and_stops(server: Launched) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    assert server.alive() and _healthy(server.url, timeout=2)
    assert server.spec.name == "standin" and server.restarts == 0
    assert "stand-in listening on 127.0.0.1" in server.log
    assert "GET /health" in server.log  # the server's request log, captured in memory
    pid = server.process.pid if server.process else -1
    server.stop()
    assert not server.alive() and not _healthy(server.url, timeout=1)
    assert server.process is not None and server.process.returncode is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    server.stop()  # idempotent


def test_fixed_port(tmp_path: Path) -> None:
    port = free_port()
    with launch(STANDIN, port=port, _command=standin(), client_factory=str) as url:
        assert url == f"http://127.0.0.1:{port}"
        assert _healthy(url, timeout=2)


def test_context_manager_gives_the_client_and_stops() -> None:
    made: list[str] = []

    def factory(url: str) -> object:
        made.append(url)
        return ("client", url)

    launched = launch(STANDIN, _command=standin(), client_factory=factory)  # type: ignore[arg-type]
    with launched as client:
        assert client == ("client", launched.url)
        assert launched.alive()
    assert made == [launched.url]
    assert not launched.alive()


def test_killed_server_is_restarted_on_the_same_port(server: Launched) -> None:
    old = server.process
    assert old is not None
    os.kill(old.pid, signal.SIGKILL)
    assert wait_for(lambda: server.restarts == 1 and _healthy(server.url, timeout=1))
    assert server.process is not old and server.alive()
    assert "server exited with code -9; restarting it on port" in server.log


def test_restart_budget_then_give_up(monkeypatch: pytest.MonkeyPatch, server: Launched) -> None:
    monkeypatch.setattr(_launch, "MAX_RESTARTS", 1)
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    assert wait_for(lambda: server.restarts == 1 and _healthy(server.url, timeout=1))
    assert server.process is not None
    os.kill(server.process.pid, signal.SIGKILL)
    assert wait_for(lambda: "giving up" in server.log)
    assert not server.alive() and server.restarts == 1
    server.restart()  # a deliberate restart still works, and supervision resumes
    assert server.alive() and _healthy(server.url, timeout=2) and server.restarts == 2


def test_no_restart_when_disabled() -> None:
    launched = launch(STANDIN, _command=standin(), restart=False)
    try:
        assert launched.process is not None
        os.kill(launched.process.pid, signal.SIGKILL)
        time.sleep(0.5)
        assert not launched.alive() and launched.restarts == 0
    finally:
        launched.stop()


def test_explicit_restart(server: Launched) -> None:
    old = server.process
    server.restart()
    assert server.process is not old and server.alive() and server.restarts == 1
    assert old is not None and old.returncode is not None
    assert "restarting the server on request" in server.log


def test_startup_failure_shows_the_log_tail() -> None:
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(STANDIN, _command=standin("crash"), startup_timeout=30)
    assert time.monotonic() - t0 < 10  # failed early, not after the timeout
    msg = info.value.message
    assert "the server of component 'standin' exited with code 3 before it was ready" in msg
    assert "  | stand-in: ImportError: the component failed to import" in msg
    assert "Fix: read the log above" in msg
    assert all(x.alive() for x in _launch._LIVE)  # the failed one was unregistered


def test_startup_timeout() -> None:
    t0 = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(STANDIN, _command=standin("hang"), startup_timeout=1.0)
    assert time.monotonic() - t0 < 10  # the hung server is killed (SIGTERM) right away
    msg = info.value.message
    assert "did not answer GET http://127.0.0.1:" in msg and "/health within 1 s" in msg
    assert "stand-in starting in mode hang" in msg
    assert "pass a larger startup_timeout" in msg


def test_servers_are_stopped_at_interpreter_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from chainrule._transport.launch.launch import launch
        command = lambda host, port: [sys.executable, {str(STANDIN / "server.py")!r},
                                      "--host", host, "--port", str(port)]
        launched = launch({str(STANDIN)!r}, _command=command)
        print(launched.process.pid, flush=True)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.strip())
    assert wait_for(lambda: not _pid_alive(pid), timeout=10)


def _pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie nobody reaps yet does not run)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _descendants(pid: int) -> set[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


# ---- no server outlives its parent --------------------------------------------------------------

_PARENT = """
import functools, os, sys, time
from pathlib import Path
from chainrule._transport.launch.env import load_spec
from chainrule._transport.launch.launch import launch, server_command
folder = Path({folder!r})
command = functools.partial(
    server_command, Path(sys.executable), folder, load_spec(folder), workers={workers}
)
launched = launch(folder, _command=command, startup_timeout=60)
print(launched.process.pid, flush=True)
{ending}
"""


def _parent_process(script: str) -> tuple[subprocess.Popen[str], int]:
    """Start a parent script that launches a server and prints its pid; (parent, server pid)."""
    parent = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert parent.stdout is not None
    line = parent.stdout.readline()
    if not line.strip():
        parent.kill()
        raise AssertionError(f"the parent script failed: {parent.communicate()[1]}")
    return parent, int(line)


@pytest.mark.parametrize(
    ("ending", "workers"),
    [("exit", 1), ("SIGTERM", 1), ("SIGKILL", 1), ("SIGTERM", 2), ("SIGKILL", 2)],
)
def test_no_server_outlives_its_parent(ending: str, workers: int) -> None:
    """However the launching process ends, its server (and the server's workers) end too."""
    wait = "" if ending == "exit" else "sys.stdin.read()"  # the test signals it meanwhile
    script = _PARENT.format(folder=str(FIXTURES / "numpy2"), workers=workers, ending=wait)
    parent, server_pid = _parent_process(script)
    tree = {server_pid}
    try:
        # --workers N: uvicorn's N processes (and multiprocessing's resource tracker).
        assert wait_for(lambda: len(_descendants(server_pid)) >= (workers if workers > 1 else 0))
        tree |= _descendants(server_pid)
        if ending != "exit":
            parent.send_signal(getattr(signal, ending))
        parent.wait(timeout=60)
        assert wait_for(lambda: not any(_pid_alive(p) for p in tree), timeout=20), (
            f"still running after the parent ended ({ending}): "
            f"{sorted(p for p in tree if _pid_alive(p))}"
        )
    finally:
        parent.kill()
        parent.communicate()
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_workers_end_with_their_killed_server() -> None:
    """`--workers N` processes end when the server process over them is SIGKILLed."""
    launched = launch(FIXTURES / "numpy2", _command=here(FIXTURES / "numpy2", 2), restart=False)
    try:
        assert launched.process is not None
        master = launched.process.pid
        assert wait_for(lambda: len(_descendants(master)) >= 2)
        workers = _descendants(master)
        os.kill(master, signal.SIGKILL)  # the server alone, not its process group
        assert wait_for(lambda: not any(_pid_alive(p) for p in workers), timeout=20)
    finally:
        launched.stop()


@pytest.mark.slow
def test_a_launched_folder_ends_with_its_killed_parent(launch_cache: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from chainrule._transport.launch.launch import launch
        launched = launch({str(FIXTURES / "numpy2")!r}, cache_dir={str(launch_cache)!r}, quiet=True)
        print(launched.process.pid, flush=True)
        sys.stdin.read()
        """
    )
    parent, server_pid = _parent_process(script)
    try:
        parent.kill()
        parent.wait(timeout=60)
        assert wait_for(lambda: not _pid_alive(server_pid), timeout=20)
    finally:
        parent.communicate()
        with contextlib.suppress(ProcessLookupError):
            os.kill(server_pid, signal.SIGKILL)


def test_a_server_launched_from_a_short_lived_thread_outlives_the_thread() -> None:
    """The server watches the launching *process*: a thread that ends takes no server along
    (PR_SET_PDEATHSIG would fire when the thread that started the server exits)."""
    box: list[Launched] = []
    thread = threading.Thread(
        target=lambda: box.append(launch(FIXTURES / "numpy2", _command=here(FIXTURES / "numpy2")))
    )
    thread.start()
    thread.join()
    (launched,) = box
    try:
        time.sleep(1.0)
        assert launched.alive() and _healthy(launched.url, timeout=5) and launched.restarts == 0
    finally:
        launched.stop()


def test_wait_for_exit_sees_a_process_that_is_not_its_parent_end() -> None:
    from chainrule._transport.http.serving import wait_for_exit

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    done = threading.Event()
    watcher = threading.Thread(target=lambda: (wait_for_exit(child.pid), done.set()), daemon=True)
    watcher.start()
    try:
        assert not done.wait(0.5)
        child.kill()  # not reaped yet: a zombie has exited all the same
        assert done.wait(10)
    finally:
        child.kill()
        child.wait()


def test_server_command_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = load_spec(FIXTURES / "numpy1")
    argv = server_command(tmp_path / "bin/python", FIXTURES / "numpy1", spec, "127.0.0.1", 8123)
    target = f"{FIXTURES / 'numpy1' / 'component.py'}:square"
    assert argv == [str(tmp_path / "bin/python"), "-m", "chainrule", "serve", target,
                    "--host", "127.0.0.1", "--port", "8123",
                    "--parent-pid", str(os.getpid())]  # fmt: skip
    monkeypatch.setenv("PYTHONPATH", "/leaks/our/packages")
    env = _server_env()
    assert "PYTHONPATH" not in env and env["PYTHONUNBUFFERED"] == "1"


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # raises if the port were taken
        assert sock.getsockname()[1] == port


def test_wildcard_host_is_reached_on_loopback() -> None:
    launched = launch(STANDIN, host="0.0.0.0", _command=standin(), restart=False)
    try:
        assert launched.url.startswith("http://127.0.0.1:")
        assert _healthy(launched.url, timeout=2)
    finally:
        launched.stop()


@pytest.mark.slow
def test_two_conflicting_components_side_by_side(launch_cache: Path) -> None:
    cache = launch_cache
    with (
        launch(FIXTURES / "numpy1", cache_dir=cache, quiet=True) as old,
        launch(FIXTURES / "numpy2", cache_dir=cache, quiet=True) as new,
    ):
        x = np.array([1.0, 3.0])
        a, b = old.apply({"x": x}), new.apply({"x": x})
        np.testing.assert_array_equal(a.y, x**2)
        np.testing.assert_array_equal(b.y, x**2)
        assert (a.numpy_major, b.numpy_major) == (1, 2)


@pytest.mark.slow
def test_killed_server_is_restarted_and_next_call_succeeds(launch_cache: Path) -> None:
    cache = launch_cache
    launched = launch(FIXTURES / "numpy2", cache_dir=cache, quiet=True)
    with launched as comp:
        x = np.array([0.5, 2.0])
        np.testing.assert_allclose(comp.vjp({"x": x}, {"y": [1.0, 1.0]})["x"], 2 * x, rtol=1e-6)
        assert launched.process is not None
        os.killpg(launched.process.pid, signal.SIGKILL)
        # The supervisor restarts the server on the same port; the client retries the call.
        np.testing.assert_allclose(comp.vjp({"x": x}, {"y": [1.0, 1.0]})["x"], 2 * x, rtol=1e-6)
        assert launched.restarts == 1
        assert "serving 'square'" in launched.log


@pytest.mark.slow
def test_launched_endpoints_agree_bit_for_bit(launch_cache: Path) -> None:
    """Every endpoint through a launched server equals the in-process result exactly."""
    from chainrule._transport.http.serving import load_component

    cache = launch_cache
    local = load_component(str(FIXTURES / "numpy2" / "component.py") + ":square")
    x = {"x": np.array([0.5, -1.25, 2.0])}
    t, c = {"x": np.array([1.0, 0.5, -2.0])}, {"y": np.array([0.3, 1.0, -1.0])}
    with launch(FIXTURES / "numpy2", cache_dir=cache, quiet=True) as remote:
        assert remote.apply(x).y.tobytes() == local.apply(x).y.tobytes()
        pairs = [
            (remote.jvp(x, t)["y"], local.jvp(x, t)["y"]),
            (remote.vjp(x, c)["x"], local.vjp(x, c)["x"]),
            (remote.jacobian(x)["y"]["x"], local.jacobian(x)["y"]["x"]),
            (
                remote.batched_jvp(x, {"x": np.stack([t["x"]] * 2)})["y"],
                local.batched_jvp(x, {"x": np.stack([t["x"]] * 2)})["y"],
            ),
            (
                remote.batched_vjp(x, {"y": np.stack([c["y"]] * 2)})["x"],
                local.batched_vjp(x, {"y": np.stack([c["y"]] * 2)})["x"],
            ),
        ]
        for got, want in pairs:
            np.testing.assert_array_equal(got, want, strict=True)


# ---- the registry of running launched servers (`chainrule env ps`) ------------------------------


def _ps(cache: Path) -> list[dict[str, object]]:
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, ["env", "ps", "--json", "--cache-dir", str(cache)])
    assert result.exit_code == 0, result.output
    return list(json.loads(result.stdout))


def test_running_servers_are_listed_until_stopped(tmp_path: Path) -> None:
    launched = launch(STANDIN, _command=standin(), cache_dir=tmp_path, startup_timeout=30)
    try:
        assert launched.process is not None
        [entry] = _ps(tmp_path)
        assert entry["pid"] == launched.process.pid and entry["url"] == launched.url
        assert entry["name"] == "standin" and entry["folder"] == str(STANDIN.resolve())
        assert entry["launcher"] == os.getpid() and entry["python"] is None
        assert abs(float(str(entry["started"])) - time.time()) < 60
        launched.restart()  # a new process: the entry follows it
        assert [e["pid"] for e in _ps(tmp_path)] == [launched.process.pid]
    finally:
        launched.stop()
    assert _ps(tmp_path) == []


def test_entries_of_servers_that_are_gone_are_dropped_when_read(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead = _servers.ServerRecord(pid=int(gone.stdout), url="http://127.0.0.1:1", name="dead",
                                 folder="/x", started=0.0, launcher=1)  # fmt: skip
    reused = dead.model_copy(update={"pid": os.getpid(), "url": "http://127.0.0.1:2", "ticks": 1})
    alive = dead.model_copy(update={"pid": os.getpid(), "url": "http://127.0.0.1:3",
                                    "ticks": _servers.start_ticks(os.getpid())})  # fmt: skip
    (tmp_path / _servers.REGISTRY).write_text(
        json.dumps([e.model_dump() for e in (dead, reused, alive)] + [{"pid": "garbage"}])
    )
    assert [e.url for e in _servers.running(tmp_path)] == ["http://127.0.0.1:3"]
    written = json.loads((tmp_path / _servers.REGISTRY).read_text())
    assert [e["url"] for e in written] == ["http://127.0.0.1:3"]  # cleaned on disk too


def test_launch_without_cache_dir_registers_in_the_default_cache() -> None:
    with launch(STANDIN, _command=standin(), startup_timeout=30, client_factory=lambda url: url):
        assert [e.name for e in _servers.running(cache_root())] == ["standin"]
    assert _servers.running(cache_root()) == []


@pytest.mark.slow
def test_a_relative_cache_dir_is_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative cache_dir gave the server command a relative python, run from the component
    folder: FileNotFoundError."""
    monkeypatch.chdir(tmp_path)
    with launch(FIXTURES / "numpy2", cache_dir="envs", quiet=True) as square:
        np.testing.assert_array_equal(square.apply({"x": np.array([3.0])}).y, [9.0])
        [entry] = _servers.running(tmp_path / "envs")
    assert Path(str(entry.python)).is_relative_to(tmp_path / "envs")
