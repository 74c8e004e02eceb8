"""The `chainrule` command line (typer + rich): serve, call, schema, check, new; the `env`
commands are in `env`, `build` (container images) in `build`."""

from __future__ import annotations

import json
import keyword
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console

from chainrule._schema.errors import ChainruleError, LaunchError

from .build import build
from .common import err, fail
from .env import env_app

app = typer.Typer(
    help="chainrule: typed, differentiable components you can serve, call and compose.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(env_app, name="env")
app.command("build")(build)  # container images (issue 16)

# A command talks to a server that is running or not: one quick retry covers a connection the
# server closed, without the long reconnection window a supervised (launched) server gets.
_CLI_RETRIES = 1

_TEMPLATES = {
    "jax": ("import jax.numpy as xp", "jax"),
    "torch": ("import torch as xp", "torch==2.13.0"),
    "numpy": ("import numpy as xp", "numpy"),
}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        print(f"chainrule {version('chainrule')}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="print the version"),
    ] = False,
) -> None:
    """chainrule: typed, differentiable components you can serve, call and compose."""


def _jsonable(tree: Any) -> Any:
    """Arrays as nested lists, for printing."""
    if isinstance(tree, dict):
        return {k: _jsonable(v) for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_jsonable(v) for v in tree]
    if isinstance(tree, np.ndarray | np.generic):
        return np.asarray(tree).tolist()
    return tree


@app.command()
def serve(
    ctx: typer.Context,
    target: Annotated[
        str | None, typer.Argument(help="file.py:object, module:object or a folder")
    ] = None,
    host: Annotated[str, typer.Option(help="interface; non-loopback needs --token")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (0: any free port)")] = 8000,
    token: Annotated[
        str | None, typer.Option(envvar="CHAINRULE_TOKEN", help="bearer token")
    ] = None,
    max_body_bytes: Annotated[int, typer.Option(help="largest request body")] = 2**30,
    max_json_bytes: Annotated[int, typer.Option(min=1, help="largest JSON request body")] = 64
    * 2**20,
    max_elements: Annotated[
        int, typer.Option(min=1, help="most array elements a request may declare")
    ] = 2**28,
    max_batch: Annotated[int, typer.Option(min=1, help="most rows of a batched request")] = 2**16,
    call_timeout: Annotated[
        float,
        typer.Option(
            envvar="CHAINRULE_CALL_TIMEOUT",
            min=0,
            help="seconds before a call is answered 504 (0: no limit)",
        ),
    ] = 300.0,
    max_threads: Annotated[
        int, typer.Option(min=1, help="most worker threads, hung ones included")
    ] = 32,
    shutdown_timeout: Annotated[
        int, typer.Option(min=0, help="seconds a stopping server waits for calls in progress")
    ] = 10,
    refuse_nonfinite: Annotated[bool, typer.Option(help="answer 422 to NaN/inf inputs")] = False,
    threads: Annotated[
        bool,
        typer.Option(
            help="calls in worker threads (else on the event loop: a bit faster, but a long"
            " call blocks the server)"
        ),
    ] = True,
    workers: Annotated[
        int, typer.Option(min=1, help="server processes sharing the port (for many clients)")
    ] = 1,
    current_env: Annotated[
        bool,
        typer.Option(
            "--current-env",
            help="serve a component folder in this Python environment, ignoring the"
            " requirements and python of its chainrule.toml (default: its own environment)",
        ),
    ] = False,
    parent_pid: Annotated[
        int | None,
        typer.Option(help="stop the server when process PID exits (launch passes its own)"),
    ] = None,
    image: Annotated[
        str | None,
        typer.Option(help="serve a component image (chainrule build) in a container instead"),
    ] = None,
    runtime: Annotated[
        str | None, typer.Option(help="with --image: podman or docker (default: podman)")
    ] = None,
    gpus: Annotated[
        str | None, typer.Option(help="with --image: GPUs to pass through, 'all' or '0,1'")
    ] = None,
    mount: Annotated[
        list[str] | None,
        typer.Option(help="with --image: a bind mount host_path:container_path[:ro] (repeat)"),
    ] = None,
) -> None:
    """Serve a component over HTTP (POST /apply, /vjp, ...; GET /health, /schema, /docs).

    A component folder is served in its own environment, built from its chainrule.toml as
    `chainrule env build` does (cached); `--current-env` serves it in this one instead;
    `--image` serves a component image in a container (the other options go to its server).
    """
    from chainrule._transport.http.serving import (
        check_bind,
        load_component,
        serve_forever,
        stop_with_parent,
    )
    from chainrule._transport.settings import ServerSettings

    if parent_pid is not None:
        stop_with_parent(parent_pid)  # first: the parent may go while the component imports
    try:
        if image is not None or target is None or runtime or gpus or mount:  # issue 16
            _serve_image(ctx, image, target, runtime, gpus, mount)
        assert target is not None  # _serve_image exits otherwise
        folder = _own_env_folder(target, current_env)
        if folder is not None:
            _exec_in_own_env(ctx, folder)
        settings = ServerSettings(
            host=host,
            port=port,
            token=token,
            max_body_bytes=max_body_bytes,
            max_json_bytes=max_json_bytes,
            max_elements=max_elements,
            max_batch=max_batch,
            call_timeout=call_timeout or None,
            max_threads=max_threads,
            shutdown_timeout=shutdown_timeout,
            allow_nonfinite=not refuse_nonfinite,
            threaded=threads,
        )
        check_bind(settings)
        component = load_component(target)

        def announce(url: str) -> None:
            many = f" with {workers} worker processes" if workers > 1 else ""
            name, backend = component.name, component.backend.name
            err.print(f"serving '{name}' ({backend}) on {url}{many}", soft_wrap=True)

        serve_forever(component, target, settings, workers=workers, announce=announce)
    except ChainruleError as e:
        fail(e)


def _serve_image(
    ctx: typer.Context,
    image: str | None,
    target: str | None,
    runtime: str | None,
    gpus: str | None,
    mounts: list[str] | None,
) -> None:
    """`serve --image`: the image's server in a container, with the other serve options."""
    from chainrule._transport.launch.container import serve_image

    if image is None and target is not None:
        raise ChainruleError("--runtime, --gpus and --mount apply to --image IMAGE only")
    if image is None or target is not None:
        raise ChainruleError(
            "give what to serve: file.py:object, module:object or a folder, or --image IMAGE "
            "(not both)"
        )
    unset = dict.fromkeys(("token", "parent_pid", *_IMAGE_OPTIONS))
    args = _command_line(ctx, target="", current_env=False, **unset)[1:]  # after the target
    token = ctx.params.get("token")
    code = serve_image(image, args, runtime=runtime, gpus=gpus, mounts=mounts or (), token=token)
    raise typer.Exit(code)


_IMAGE_OPTIONS = ("image", "runtime", "gpus", "mount")


def _own_env_folder(target: str, current_env: bool) -> Path | None:
    """The component folder to serve in its own environment, or None to serve `target` here."""
    from chainrule._transport.launch.env import SPEC_FILE

    folder = Path(target)
    if current_env or not (folder / SPEC_FILE).is_file():
        return None
    return folder.resolve()


def _exec_in_own_env(ctx: typer.Context, folder: Path) -> None:
    """Replace this process by the folder environment's python serving the folder's entry.

    Returns (serving here) when this process already runs in that environment. The process
    keeps its pid, so whoever started `chainrule serve` can still signal it.
    """
    from chainrule._transport.launch.env import build_env, entry_path, load_spec
    from chainrule._transport.launch.launch import _server_env

    spec = load_spec(folder)
    try:
        python = build_env(spec)
    except LaunchError as e:
        hint = f"Or serve {folder} in this environment: --current-env"
        raise LaunchError(f"{e.message}\n{hint}", errors=e.errors) from e
    if Path(sys.prefix).resolve() == python.parent.parent.resolve():
        return
    entry = f"{entry_path(folder, spec)}:{spec.entry.rsplit(':', 1)[1]}"
    err.print(
        f"serving {folder} in its own environment ({python}); --current-env serves it in this one",
        soft_wrap=True,
    )
    env = _server_env()
    token = ctx.params.get("token")
    if token:  # through the environment: a command line is visible to every user (ps)
        env["CHAINRULE_TOKEN"] = token
    args = _command_line(ctx, target=entry, token=None, **dict.fromkeys(_IMAGE_OPTIONS))
    argv = [str(python), "-m", "chainrule", "serve", *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(python, argv, env)


def _command_line(ctx: typer.Context, **override: Any) -> list[str]:
    """The arguments that give `ctx`'s command its current parameters (but `override`)."""
    args: list[str] = []
    param: Any  # typer's own copy of click's Argument or Option
    for param in ctx.command.params:
        value = override[param.name] if param.name in override else ctx.params[param.name]
        if param.param_type_name == "argument":
            args.append(str(value))
        elif value is None or (param.is_flag and not param.secondary_opts and not value):
            continue
        elif param.is_flag:  # --x, or --x / --no-x
            args.append(param.opts[0] if value else param.secondary_opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args


@app.command()
def call(
    url: Annotated[str, typer.Argument(help="http://host:port of a chainrule server")],
    endpoint: Annotated[str, typer.Argument(help="apply, eval_shape, jvp, vjp, jacobian, ...")],
    body: Annotated[str, typer.Argument(help="JSON request body, or - for stdin")] = "-",
    token: Annotated[str | None, typer.Option(envvar="CHAINRULE_TOKEN")] = None,
    timeout: float = 300.0,
) -> None:
    """Call one endpoint with a JSON body; print the JSON answer (arrays as lists).

    A server that is not there fails the call at once (one quick retry, no waiting for it).
    """
    from chainrule._transport import wire as _wire
    from chainrule._transport.http.client import Connection

    text = sys.stdin.read() if body == "-" else body
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as e:
        fail(ChainruleError(f'the body is not JSON ({e}); e.g. \'{{"inputs": {{"x": [1, 2]}}}}\''))
    try:
        conn = Connection(
            url, token=token, timeout=timeout, retries=_CLI_RETRIES, content_type=_wire.JSON
        )
        answer = conn.call(f"/{endpoint.strip('/')}", payload)
    except ChainruleError as e:
        fail(e)
    print(json.dumps(_jsonable(answer), indent=2))


@app.command()
def schema(
    target: Annotated[str, typer.Argument(help="a server URL, file.py:object or a folder")],
    token: Annotated[str | None, typer.Option(envvar="CHAINRULE_TOKEN")] = None,
) -> None:
    """Print a component's schema: inputs, outputs, endpoints and where each comes from."""
    try:
        if target.startswith(("http://", "https://")):
            from chainrule._transport.http.client import Connection

            info = Connection(target, token=token, retries=_CLI_RETRIES).get_json("/schema")
        else:
            from chainrule._transport.handler import describe
            from chainrule._transport.http.serving import load_component
            from chainrule._transport.settings import ServerSettings

            comp = load_component(target)
            # The same document `GET /schema` answers, for a server with default settings.
            info = describe(comp, ServerSettings())
    except ChainruleError as e:
        fail(e)
    print(json.dumps(info, indent=2))


@app.command()
def check(
    target: Annotated[str, typer.Argument(help="a server URL, file.py:object or a folder")],
    inputs: Annotated[str, typer.Argument(help="JSON inputs, e.g. '{\"x\": [1.0, 2.0]}'")],
    token: Annotated[str | None, typer.Option(envvar="CHAINRULE_TOKEN")] = None,
    n_random: int = 2,
) -> None:
    """Check every derivative endpoint against finite differences; exit 1 if any fails."""
    from chainrule._tools.check import check_gradients

    try:
        if target.startswith(("http://", "https://")):
            from chainrule._transport.http.client import connect

            comp = connect(target, token=token, retries=_CLI_RETRIES)
        else:
            from chainrule._transport.http.serving import load_component

            comp = load_component(target)
        report = check_gradients(comp, json.loads(inputs), n_random=n_random)
    except (ChainruleError, json.JSONDecodeError) as e:
        fail(e)
    Console().print(report)
    raise typer.Exit(0 if report.ok else 1)


_COMPONENT = '''"""{name}: a chainrule component ({backend} backend). Edit the schemas and apply."""

{imports}

import chainrule as cr


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    scale: float = 1.0


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="{backend}")
def {name}(inputs: Inputs) -> Outputs:
    return Outputs(y=inputs.scale * xp.sin(inputs.x))
'''

_TOML = """name = "{name}"
version = "0.1.0"
backend = "{backend}"
entry = "component.py:{name}"
requirements = ["{requirement}"]
"""

_README = """# {name}

A chainrule component ({backend} backend).

```bash
chainrule check component.py:{name} '{{"x": [0.1, 0.2, 0.3]}}'   # gradients vs finite differences
chainrule serve .                                                # serve it on 127.0.0.1:8000
chainrule env build .                                            # its own environment (uv)
```
"""


def _valid_name(name: str) -> bool:
    """Whether `name` can be the component's function and its chainrule.toml name."""
    return re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) is not None and not keyword.iskeyword(name)


def _suggest_name(name: str) -> str:
    """A valid name close to `name` (`my-band` -> `my_band`, `2bad` -> `component_2bad`)."""
    cleaned = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or "component"
    if not cleaned[0].isalpha():
        cleaned = f"component_{cleaned}"
    return f"{cleaned}_" if keyword.iskeyword(cleaned) else cleaned


@app.command()
def new(
    name: Annotated[str, typer.Argument(help="component name (a Python identifier)")],
    backend: Annotated[str, typer.Option(help="jax, torch or numpy")] = "numpy",
    directory: Annotated[Path, typer.Option("--dir", help="where to create the folder")] = Path(),
) -> None:
    """Scaffold a component folder: component.py, chainrule.toml, README.md."""
    if not _valid_name(name):
        fail(
            ChainruleError(
                f"name {name!r} cannot name a component: expected a Python identifier of ASCII "
                f"letters, digits and _, starting with a letter, and not a Python keyword; "
                f"try {_suggest_name(name)!r}"
            )
        )
    if backend not in _TEMPLATES:
        fail(ChainruleError(f"backend {backend!r}: use one of {sorted(_TEMPLATES)}"))
    folder = directory / name
    if folder.exists():
        fail(ChainruleError(f"{folder} already exists; choose another name or --dir"))
    imports, requirement = _TEMPLATES[backend]
    folder.mkdir(parents=True)
    values = {"name": name, "backend": backend, "imports": imports, "requirement": requirement}
    (folder / "component.py").write_text(_COMPONENT.format(**values))
    (folder / "chainrule.toml").write_text(_TOML.format(**values))
    (folder / "README.md").write_text(_README.format(**values))
    err.print(f"created {folder}/ (component.py, chainrule.toml, README.md)")


def main() -> None:
    """Entry point of the `chainrule` command."""
    app()
