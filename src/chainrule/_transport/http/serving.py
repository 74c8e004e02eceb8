"""`serve(component)`: uvicorn in a background thread; what `chainrule serve` runs in the
foreground (`load_component(target)`, `serve_forever`); and `stop_with_parent`, which ends a
server when the process that started it is gone.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from chainrule._component.component import Component
from chainrule._schema.errors import LaunchError
from chainrule._transport.launch.env import entry_path, load_spec
from chainrule._transport.launch.spec import is_tesseract_folder
from chainrule._transport.settings import ServerSettings, is_loopback
from chainrule._transport.tesseract.local import from_tesseract_api

from .app import asgi_app

__all__ = [
    "Server",
    "bind",
    "check_bind",
    "load_component",
    "serve",
    "serve_forever",
    "stop_with_parent",
    "wait_for_exit",
]


def check_bind(settings: ServerSettings) -> None:
    """Refuse to listen beyond loopback without a token."""
    if not is_loopback(settings.host) and not settings.token:
        raise LaunchError(
            f"refusing to serve on {settings.host!r} without a token: anyone who can reach it "
            "could run the component. Pass token=... (CLI: --token or CHAINRULE_TOKEN), or "
            "bind 127.0.0.1"
        )


class Server:
    """A component served by uvicorn in a background thread (a context manager).

    Use `chainrule.serve(...)` to make one; `url` is where it listens.
    """

    def __init__(self, component: Component, settings: ServerSettings) -> None:
        import uvicorn

        check_bind(settings)
        self.component = component
        self.settings = settings
        config = uvicorn.Config(
            asgi_app(component, settings),
            host=settings.host,
            port=settings.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=settings.shutdown_timeout,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, daemon=True, name=f"chainrule-serve-{component.name}"
        )
        self.port = settings.port

    @property
    def url(self) -> str:
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "::") else "127.0.0.1"
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> Server:
        """Start listening; return once the server accepts connections."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise LaunchError(
                    f"server for '{self.component.name}' did not start on "
                    f"{self.settings.host}:{self.settings.port} (port in use?)"
                )
            time.sleep(0.005)
        sockets = self._server.servers[0].sockets
        self.port = sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening and wait for the thread to end."""
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve(
    component: Component,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
    **settings: Any,
) -> Server:
    """Serve `component` over HTTP from a background thread; returns the running `Server`.

    Arguments:
        component: what to serve.
        host: interface (default loopback; anything else requires `token`).
        port: TCP port; 0 picks a free one (see `server.url`).
        token: bearer token clients must send.
        settings: more `ServerSettings` fields (`max_body_bytes`, `allow_nonfinite`, ...).

    Example:
        ```python
        with chainrule.serve(affine) as server:
            remote = chainrule.connect(server.url)
        ```
    """
    config = ServerSettings(host=host, port=port, token=token, **settings)
    return Server(component, config).start()


def _load_file(path: Path, name: str) -> Any:
    module_name = f"chainrule_user_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise LaunchError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.parent))  # let the component import its neighbours
    spec.loader.exec_module(module)
    return getattr(module, name)


def load_component(target: str) -> Component:
    """The component named by `file.py:object`, `package.module:object`, a component folder
    (one holding a `chainrule.toml` whose `entry` names the object) or a Tesseract's folder
    (one holding a `tesseract_api.py`, loaded by tesseract-core: `from_tesseract_api`)."""
    path = Path(target)
    if path.is_dir() and is_tesseract_folder(path):
        return from_tesseract_api(path)
    if path.is_dir():
        toml = path / "chainrule.toml"
        if not toml.exists():
            raise LaunchError(f"{path} is a folder without chainrule.toml; give file.py:object")
        spec = load_spec(path)  # validated: its entry is a file inside the folder
        return load_component(f"{entry_path(path, spec)}:{spec.entry.rsplit(':', 1)[1]}")
    file, _, name = target.rpartition(":")
    if not file or not name:
        raise LaunchError(f"expected file.py:object or module:object, got {target!r}")
    try:
        obj = (
            _load_file(Path(file), name)
            if file.endswith(".py")
            else getattr(importlib.import_module(file), name)
        )
    except (ImportError, AttributeError, FileNotFoundError) as e:
        raise LaunchError(f"cannot load {target!r}: {type(e).__name__}: {e}") from e
    if not isinstance(obj, Component):
        raise LaunchError(f"{target!r} is a {type(obj).__name__}, not a chainrule component")
    return obj


# ---- `chainrule serve`: uvicorn in the foreground ---------------------------------------------

# `chainrule serve --workers N` runs N server processes on one port (uvicorn's multiprocess
# mode), which must import the app by name: the target, the settings and the pid of the
# process that supervises the workers travel in these variables.
TARGET_ENV = "CHAINRULE_SERVE_TARGET"
SETTINGS_ENV = "CHAINRULE_SERVE_SETTINGS"
MASTER_ENV = "CHAINRULE_SERVE_MASTER"
_BACKLOG = 2048  # uvicorn's default


def app_from_env() -> Any:
    """The ASGI app of `$CHAINRULE_SERVE_TARGET` with `$CHAINRULE_SERVE_SETTINGS` (JSON), built
    in each worker process of `chainrule serve --workers N`; the worker ends with its master."""
    master = int(os.environ[MASTER_ENV])
    _die_with_parent()
    stop_with_parent(master)
    settings = ServerSettings.model_validate_json(os.environ[SETTINGS_ENV])
    return asgi_app(load_component(os.environ[TARGET_ENV]), settings)


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket listening on (host, port); port 0 lets the OS pick one. Connections wait in
    its backlog until the server accepts them, so its URL may be given out at once."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LaunchError(
            f"cannot listen on {host}:{port}: {e.strerror or e}. Another server may hold the "
            "port: pass another --port, or --port 0 for any free one"
        ) from e
    sock.listen(_BACKLOG)
    sock.set_inheritable(True)  # worker processes serve on the same socket
    return sock


def bound_url(sock: socket.socket) -> str:
    """`http://host:port` of a bound socket (the port the OS picked for port 0)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_forever(
    component: Component,
    target: str,
    settings: ServerSettings,
    *,
    workers: int = 1,
    announce: Callable[[str], None] = print,
) -> None:
    """Serve `component` (loaded from `target`) in the foreground until stopped (SIGTERM, ^C).

    The socket listens before uvicorn starts, so `announce` gets the real URL (with
    `--port 0`, the port the OS picked), and a client may connect as soon as it has it.
    """
    import uvicorn

    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": False,
        "lifespan": "off",
        # On SIGTERM: wait this long for calls in progress, then cancel them and exit (a hung
        # call would otherwise keep the server alive forever).
        "timeout_graceful_shutdown": settings.shutdown_timeout,
    }
    app = asgi_app(component, settings) if workers == 1 else None
    sock = bind(settings.host, settings.port)
    announce(bound_url(sock))
    if app is not None:
        config = uvicorn.Config(app, **options)
        with contextlib.suppress(KeyboardInterrupt):  # ^C: uvicorn stopped gracefully first
            uvicorn.Server(config).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    # Each worker process imports the app by name and builds it from these variables.
    os.environ.update(
        {TARGET_ENV: target, SETTINGS_ENV: settings.model_dump_json(), MASTER_ENV: str(os.getpid())}
    )
    config = uvicorn.Config(
        "chainrule._transport.http.serving:app_from_env", factory=True, workers=workers, **options
    )
    Multiprocess(config, sockets=[sock]).run()


# ---- ending with the parent -------------------------------------------------------------------
#
# No server may outlive the process that started it, however that process ends: a normal exit
# (launch's atexit hook stops its servers), SIGTERM (Python's default action runs no atexit
# hook) or SIGKILL. A library must not install signal handlers in its user's process, so the
# server watches its parent instead (`chainrule serve --parent-pid PID`, which `launch` passes).
#
# PR_SET_PDEATHSIG is not used for that: the kernel sends it when the *thread* that started the
# process exits, and `launch` may run in a short-lived worker thread (and the supervisor
# restarts servers from its own thread), so it would kill healthy servers. It is used for
# `--workers N` processes, which uvicorn always starts from its main thread: there it ends the
# workers at once even when their Python is busy in a long call and cannot run the watcher.

PARENT_POLL = 0.2  # seconds between two looks at the parent
EXIT_GRACE = 5.0  # seconds for a graceful stop before the process exits hard
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def wait_for_exit(pid: int, poll: float = PARENT_POLL) -> None:
    """Return once process `pid` has exited (as a zombie or reaped)."""
    if os.getppid() == pid:
        # Our parent: the kernel re-parents us the moment it exits, zombie or not.
        while os.getppid() == pid:
            time.sleep(poll)
        return
    pidfd_open = getattr(os, "pidfd_open", None)  # Linux >= 5.3
    try:
        fd = pidfd_open(pid) if pidfd_open is not None else None
    except ProcessLookupError:
        return
    except OSError:
        fd = None
    if fd is None:
        while _exists(pid):
            time.sleep(poll)
        return
    try:
        select.select([fd], [], [])  # readable once the process has exited
    finally:
        os.close(fd)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True


def stop_with_parent(
    pid: int, *, poll: float = PARENT_POLL, grace: float = EXIT_GRACE
) -> threading.Thread:
    """Stop this process once process `pid` has exited (watched from a daemon thread).

    The stop is a SIGTERM to this process (uvicorn's graceful shutdown, which also stops its
    worker processes; before uvicorn runs, the default action ends the process), then a hard
    exit if the process is still alive `grace` seconds later.
    """

    def watch() -> None:
        wait_for_exit(pid, poll)
        with contextlib.suppress(OSError):  # stderr may be a pipe that nobody reads any more
            print(f"chainrule: process {pid} exited; stopping", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os._exit(1)

    thread = threading.Thread(target=watch, name=f"chainrule-watch-{pid}", daemon=True)
    thread.start()
    return thread


def _die_with_parent() -> None:
    """Linux: have the kernel SIGKILL this process when the thread that started it exits."""
    if sys.platform.startswith("linux"):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
