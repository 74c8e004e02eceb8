"""Managed component servers: `launch(folder)` runs a component in its own environment.

`launch` builds the folder's environment (`env.build_env`), starts
`<venv python> -m chainrule serve <folder>/<entry> --host H --port P --parent-pid <our pid>` in
its own process group, waits until `GET /health` answers 200, and returns a `Launched` handle.
A supervisor thread restarts the server on the same port if it dies (at most 5 times a minute);
`stop()`, leaving the `with` block, or interpreter exit stops it. However this process ends
(exit, SIGTERM, SIGKILL), its servers end too: each watches its parent (`--parent-pid`; see
`chainrule._transport.http.serving.stop_with_parent`), so no signal handler is installed
here. The server's output is kept in memory only (the last 500 lines), and shown in every
start-up error.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import http.client
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

from chainrule._schema.errors import LaunchError

from . import servers as _servers
from .env import ComponentSpec, build_env, cache_root, entry_path, load_spec
from .lifeline import Lifeline
from .spec import is_tesseract_folder

if TYPE_CHECKING:
    from chainrule._component.component import Component

__all__ = ["Launched", "free_port", "launch", "server_command"]

CommandFactory = Callable[[str, int], list[str]]
"""Builds the server's argv from (host, port)."""

LOG_LINES = 500
CLIENT_RETRIES = 30  # the client of a supervised server waits ~26 s for it to come back
MAX_RESTARTS = 5  # per RESTART_WINDOW seconds; a server that keeps dying is left dead
RESTART_WINDOW = 60.0
_POLL = 0.1
_STOP_GRACE = 5.0
_TAIL = 30  # log lines quoted in an error message


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free on `host` right now (the OS picks it; another process may race)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_command(
    python: Path, folder: Path, spec: ComponentSpec, host: str, port: int, workers: int = 1
) -> list[str]:
    """The argv that serves a component folder: `python -m chainrule serve file.py:obj ...`.

    Arguments:
        python: the component environment's interpreter.
        folder: the component folder (absolute).
        spec: its spec (gives the entry).
        host, port: where the server listens.
        workers: server processes sharing the port.

    Returns:
        The argv list; the server stops when this process (the caller's pid) exits.
    """
    entry = f"{entry_path(folder, spec)}:{spec.entry.rsplit(':', 1)[1]}"
    target = str(folder) if is_tesseract_folder(folder) else entry  # tesseract-core's loader
    argv = [str(python), "-m", "chainrule", "serve", target, "--host", host, "--port", str(port)]
    argv += ["--parent-pid", str(os.getpid())]
    return argv + (["--workers", str(workers)] if workers > 1 else [])


def _client_host(host: str) -> str:
    """The address a client uses to reach a server bound to `host` (wildcards → loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def _server_env() -> dict[str, str]:
    """The server's environment: ours, minus what would leak our packages into its venv."""
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "__PYVENV_LAUNCHER__"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"  # log lines arrive as they are written
    return env


# Health checks go straight to the server, never through an HTTP(S)_PROXY of the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _healthy(url: str, timeout: float) -> bool:
    try:
        with _OPENER.open(f"{url}/health", timeout=timeout) as response:
            return int(response.status) == 200
    except urllib.error.HTTPError as e:
        e.close()
        return False
    except (OSError, http.client.HTTPException):
        return False


class _Log:
    """The last `LOG_LINES` lines a server wrote, in memory (thread-safe)."""

    def __init__(self) -> None:
        self._lines: deque[str] = deque(maxlen=LOG_LINES)
        self._lock = threading.Lock()

    def append(self, line: str) -> None:
        with self._lock:
            self._lines.append(line.rstrip("\n"))

    def tail(self, n: int | None = None) -> list[str]:
        with self._lock:
            lines = list(self._lines)
        return lines if n is None else lines[-n:]

    def pump(self, stream: IO[str]) -> None:
        """Copy `stream` into the log until it closes (runs in a reader thread)."""
        with stream:
            for line in stream:
                self.append(line)


class _StartFailed(Exception):
    """The server process exited, did not become healthy in time, or was stopped meanwhile."""


class Launched:
    """A component server started by `launch`.

    Attributes:
        url: where the server answers (`http://127.0.0.1:PORT`).
        spec: the component's spec.
        process: the current server process (replaced when it is restarted).
        restarts: how many times the server was started again (by the supervisor or
            `restart()`).

    Use it as a context manager: `with launch(folder) as comp:` gives the connected client
    component and stops the server at the end.
    """

    def __init__(
        self,
        spec: ComponentSpec,
        command: CommandFactory,
        *,
        folder: Path,
        host: str,
        port: int,
        startup_timeout: float,
        client_factory: Callable[[str], Component] | None = None,
        lifeline: bool = False,
    ) -> None:
        self.spec, self.folder = spec, folder
        self.host, self.port, self.startup_timeout = host, port, startup_timeout
        self.url = f"http://{_client_host(host)}:{port}"
        self.restarts = 0
        self.process: subprocess.Popen[str] | None = None
        self._command, self._client_factory = command, client_factory
        self._log = _Log()
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._restart_times: deque[float] = deque()
        # Where `chainrule env ps` finds it (set by launch), and its environment's python.
        self._registry: Path | None = None
        self._python: Path | None = None
        # With a lifeline, the process's stdin is a pipe only we hold (a container's watcher
        # removes the container at its end of file); else stdin is /dev/null.
        self._lifeline = Lifeline() if lifeline else None

    def __repr__(self) -> str:
        state = "alive" if self.alive() else "stopped"
        return f"<Launched {self.spec.name!r} at {self.url} ({state}, restarts={self.restarts})>"

    @property
    def log(self) -> str:
        """The last lines the server wrote (stdout and stderr), plus chainrule's own notes."""
        return "\n".join(self._log.tail())

    def alive(self) -> bool:
        """Whether the server process is running (it may still be starting)."""
        proc = self.process
        return proc is not None and proc.poll() is None and not self._stopped.is_set()

    # ------------------------------------------------------------------ starting

    def _spawn(self) -> subprocess.Popen[str]:
        """Start the server process in its own process group, its output piped into the log."""
        stdin = subprocess.DEVNULL if self._lifeline is None else self._lifeline.next_stdin()
        try:
            proc = subprocess.Popen(
                self._command(self.host, self.port), cwd=self.folder, env=_server_env(),
                stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                text=True, errors="replace", start_new_session=True,
            )  # fmt: skip
        finally:
            if stdin != subprocess.DEVNULL:
                os.close(stdin)
        assert proc.stdout is not None  # stdout=PIPE guarantees it
        threading.Thread(
            target=self._log.pump, args=(proc.stdout,), name=f"chainrule-log-{self.spec.name}",
            daemon=True,
        ).start()  # fmt: skip
        return proc

    def _wait_healthy(self, proc: subprocess.Popen[str]) -> None:
        """Poll `GET /health` every 0.1 s until 200; `_StartFailed` on exit, timeout or stop."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if proc.poll() is not None:
                raise _StartFailed(f"exited with code {proc.returncode} before it was ready")
            remaining = deadline - time.monotonic()
            if _healthy(self.url, timeout=max(0.05, min(1.0, remaining))):
                return
            if remaining <= 0:
                raise _StartFailed(
                    f"did not answer GET {self.url}/health within {self.startup_timeout:g} s"
                )
            if self._stopped.wait(_POLL):
                raise _StartFailed("was stopped while starting")

    def _boot(self) -> None:
        """Start the server and wait until healthy; on failure kill it and raise LaunchError."""
        with self._lock:
            self.process = self._spawn()
            try:
                self._wait_healthy(self.process)
            except _StartFailed as e:
                _kill_group(self.process)
                raise LaunchError(self._start_message(str(e))) from None
            _servers.note_started(
                self._registry, pid=self.process.pid, url=self.url, name=self.spec.name,
                folder=self.folder, python=self._python,
            )  # fmt: skip

    def _start_message(self, what: str) -> str:
        tail = "\n".join(f"  | {line}" for line in self._log.tail(_TAIL)) or "  | (no output)"
        command = " ".join(self._command(self.host, self.port))
        return (
            f"the server of component {self.spec.name!r} {what}. Last lines of its log:\n{tail}\n"
            f"Fix: read the log above; to see it live run `{command}`"
            f" in {self.folder}; if the server is only slow to start (first import of jax or "
            f"torch), pass a larger startup_timeout to launch(){self._rebuild_hint()}."
        )

    def _rebuild_hint(self) -> str:
        if self._python is None:  # not run in a built environment
            return ""
        return (
            "; if an installed package fails to import, the environment is broken: "
            f"`chainrule env rebuild {self.folder}` builds it again"
        )

    # ------------------------------------------------------------------ supervising

    def _supervise(self) -> None:
        self._supervisor = threading.Thread(
            target=self._watch, name=f"chainrule-supervisor-{self.spec.name}", daemon=True
        )
        self._supervisor.start()

    def _watch(self) -> None:
        """Restart the server whenever it dies, until stopped or out of restart budget."""
        while not self._stopped.wait(_POLL):
            proc = self.process
            if proc is None or proc.poll() is None:
                continue
            with self._lock:
                if self._stopped.is_set() or proc is not self.process:
                    continue  # stopped, or restart() replaced it meanwhile
                if not self._revive(proc.returncode):
                    return

    def _revive(self, code: int | None) -> bool:
        """Restart a dead server if the budget allows; False when giving up."""
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > RESTART_WINDOW:
            self._restart_times.popleft()
        if len(self._restart_times) >= MAX_RESTARTS:
            self._note(
                f"server exited with code {code}; it died {MAX_RESTARTS} times within "
                f"{RESTART_WINDOW:g} s, giving up (call restart() to try again)"
            )
            return False
        self._restart_times.append(now)
        self._note(f"server exited with code {code}; restarting it on port {self.port}")
        self.restarts += 1  # counted before the new server answers: clients may reach it first
        try:
            self._boot()
        except LaunchError as e:
            self._note(f"restart failed: {e.message.splitlines()[0]}")
        return True

    def _note(self, message: str) -> None:
        self._log.append(f"[chainrule] {message}")

    # ------------------------------------------------------------------ controlling

    def restart(self) -> None:
        """Stop the server and start it again on the same port (waits until healthy).

        Raises:
            LaunchError: the server did not come back.
        """
        with self._lock:
            if self.process is not None:
                _kill_group(self.process)
            self._note("restarting the server on request")
            self._stopped.clear()
            _live(self)
            self._boot()
            self.restarts += 1
            if self._supervisor is not None and not self._supervisor.is_alive():
                self._supervise()  # the supervisor gave up earlier; watch the new process

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after 5 s. Idempotent."""
        self._stopped.set()
        if self._lifeline is not None:
            self._lifeline.cut()
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(timeout=self.startup_timeout + _STOP_GRACE)
        with self._lock:
            if self.process is not None:
                _kill_group(self.process)
        _LIVE.discard(self)
        _servers.note_stopped(self._registry, self.url)

    def __enter__(self) -> Component:
        factory = self._client_factory or _default_client_factory()
        self._client = factory(self.url)
        return self._client

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        from chainrule._component.component import Component

        client = getattr(self, "_client", None)
        if isinstance(client, Component):
            client.close()
        self.stop()


def _default_client_factory() -> Callable[[str], Component]:
    from chainrule._transport.http.client import connect

    # The supervisor restarts a dead server on the same port: the client waits for it.
    return functools.partial(connect, retries=CLIENT_RETRIES)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the process group of `proc`, wait up to 5 s, then SIGKILL it."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_STOP_GRACE)
    _signal_group(proc, signal.SIGKILL)  # also children the server left behind
    proc.wait()


def _signal_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the group is gone already
        os.killpg(proc.pid, sig)  # the group id is the pid: start_new_session=True


# Servers still running at interpreter exit are stopped, so none is left orphaned. The exit
# hook is installed by the first launch, not when chainrule is imported.
_LIVE: set[Launched] = set()


def _stop_all() -> None:
    for launched in list(_LIVE):
        launched.stop()


@functools.cache
def _stop_all_at_exit() -> None:
    atexit.register(_stop_all)


def _live(launched: Launched) -> None:
    """Stop `launched` at interpreter exit unless it is stopped before."""
    _stop_all_at_exit()
    _LIVE.add(launched)


def venv_runtime(
    root: Path,
    spec: ComponentSpec,
    *,
    cache_dir: str | os.PathLike[str] | None,
    quiet: bool,
    workers: int,
) -> tuple[CommandFactory, Path]:
    """How `launch` runs a folder by default: its server in the folder's own environment
    (built or found cached by `build_env`); the command factory and that environment's
    python. Another way to start the server (a container: `container.container_runtime`) is
    another such function."""
    python = build_env(spec, cache_dir=cache_dir, quiet=quiet)
    return functools.partial(server_command, python, root, spec, workers=workers), python


def launch(
    folder: str | os.PathLike[str],
    *,
    port: int = 0,
    host: str = "127.0.0.1",
    startup_timeout: float = 120.0,
    restart: bool = True,
    workers: int = 1,
    cache_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
    client_factory: Callable[[str], Component] | None = None,
    runtime: str = "uv",
    gpus: str | None = None,
    mounts: Sequence[str] = (),
    _command: CommandFactory | None = None,
) -> Launched:
    """Run a component folder's server in its own environment.

    Arguments:
        folder: a component folder (holds `chainrule.toml` and the entry module).
        port: the port to serve on; 0 picks a free one.
        host: the address to bind; loopback by default.
        startup_timeout: seconds to wait for `GET /health` to answer 200.
        restart: restart the server if it dies (at most 5 times a minute).
        workers: server processes sharing the port, for many concurrent clients (each keeps
            its own residual handles; a handle reaching another process is recomputed).
        cache_dir: where environments are cached (see `build_env`).
        quiet: do not echo uv's progress while building the environment.
        client_factory: makes the client returned by `with launch(...) as comp`
            (default `chainrule.connect`).
        runtime: `"uv"` runs the server in the folder's own environment; `"podman"` or
            `"docker"` in the folder's container image, built first if it is missing or
            out of date (see `chainrule build` and docs/guide/containers.md).
        gpus: containers only: `"all"` or device indices `"0,1"` passed through.
        mounts: containers only: bind mounts `"host_path:container_path[:ro]"`.
        _command: tests only: builds the server argv from (host, port); the environment
            is then not built.

    Returns:
        The running server's handle; `LaunchError` with the server's log if it did not start.

    Example:
        ```python
        with cr.launch("examples/bands/remote_band") as band:
            band.apply({"x": x})
        ```
    """
    root = Path(folder).resolve()
    spec = load_spec(root)
    python = None
    contained = runtime != "uv" or gpus is not None or bool(mounts)
    if contained:  # its server in a container (issue 16)
        from .container import container_runtime

        _command = _command or container_runtime(
            root, spec, runtime, workers=workers, quiet=quiet, gpus=gpus, mounts=mounts
        )
    elif _command is None:
        _command, python = venv_runtime(
            root, spec, cache_dir=cache_dir, quiet=quiet, workers=workers
        )
    launched = Launched(
        spec, _command, folder=root, host=host, port=port or free_port(host),
        startup_timeout=startup_timeout, client_factory=client_factory, lifeline=contained,
    )  # fmt: skip
    launched._registry, launched._python = cache_root(cache_dir), python
    _live(launched)
    try:
        launched._boot()
    except BaseException:
        launched.stop()
        raise
    if restart:
        launched._supervise()
    return launched
