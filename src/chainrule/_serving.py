"""`serve(component)`: uvicorn in a background thread; `load_component(target)` for the CLI."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from ._component import Component
from ._env import entry_path, load_spec
from ._errors import LaunchError
from ._server import ServerSettings, asgi_app, is_loopback

__all__ = ["Server", "check_bind", "load_component", "serve"]


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
    """The component named by `file.py:object`, `package.module:object` or a component folder
    (one holding a `chainrule.toml` whose `entry` names the object)."""
    path = Path(target)
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


# `chainrule serve --workers N` runs N server processes on one port (uvicorn's multiprocess
# mode), which must import the app by name: the target and settings travel in these variables.
TARGET_ENV = "CHAINRULE_SERVE_TARGET"
SETTINGS_ENV = "CHAINRULE_SERVE_SETTINGS"


def app_from_env() -> Any:
    """The ASGI app of `$CHAINRULE_SERVE_TARGET` with `$CHAINRULE_SERVE_SETTINGS` (JSON), built
    in each worker process of `chainrule serve --workers N`."""
    settings = ServerSettings.model_validate_json(os.environ[SETTINGS_ENV])
    return asgi_app(load_component(os.environ[TARGET_ENV]), settings)
