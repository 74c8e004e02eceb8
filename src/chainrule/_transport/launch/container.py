"""Components in containers: run an image's server (the runtime: `runtime`).

`launch(folder, runtime="podman"|"docker")` builds (or finds up to date) the folder's image
(`image.ensure_image`) and runs it through the same `Launched` machinery as an environment:
a free loopback port, the health wait, the log kept in memory and quoted on failure, the
supervisor, `stop()`. The container runs with

- `--network host` and the server bound to 127.0.0.1 (publishing a port would need a wildcard
  bind inside, which a server refuses without a token, and leaves firewall rules behind);
- `--init`, so a stop takes a fraction of a second whatever the server does with SIGTERM;
- `--rm --pull=never`, the launching process's own open-file and process limits (a runtime's
  defaults can exceed what the host allows, and then no container starts), and a label naming
  the launching process;
- GPUs (`gpus="all"` or `"0,1"`) and bind mounts (`"host:container[:ro]"`) when asked.

No container outlives the process that launched it: each is started by a small watcher
(`container_watch`) that removes it when the launching process is gone, however it went, and
every launch first removes containers whose launching process no longer exists (`sweep`),
which covers a watcher that was killed too.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chainrule._schema.errors import LaunchError

from .runtime import Runtime, find_runtime, limit_args

if TYPE_CHECKING:
    from .spec import ComponentSpec

__all__ = ["OWNER_LABEL", "container_args", "container_runtime", "serve_image", "sweep"]

OWNER_LABEL = "org.chainrule.owner"
STOP_TIMEOUT = 5  # seconds between SIGTERM and SIGKILL when a container is stopped
_WATCHER = Path(__file__).with_name("container_watch.py")


# ---- what a container runs with ---------------------------------------------------------------


def gpu_args(runtime: Runtime, gpus: str | None) -> list[str]:
    """Options passing GPUs through: `"all"` or device indices `"0,1"` (None: no GPU).

    Docker uses `--gpus` (the NVIDIA container toolkit); podman uses CDI device names, which
    need the toolkit's CDI specification (`nvidia-ctk cdi generate`).
    """
    if gpus is None:
        return []
    devices = [d.strip() for d in gpus.split(",") if d.strip()]
    if not devices or (devices != ["all"] and not all(d.isdigit() for d in devices)):
        raise LaunchError(f"gpus={gpus!r}: expected 'all' or device indices like '0,1'")
    if runtime.name == "docker":
        return ["--gpus", "all" if devices == ["all"] else f'"device={",".join(devices)}"']
    return [arg for d in devices for arg in ("--device", f"nvidia.com/gpu={d}")]


def mount_args(mounts: Sequence[str]) -> list[str]:
    """`-v host:container[:ro|rw]` for each mount, the host path made absolute and checked."""
    args = []
    for mount in mounts:
        parts = mount.split(":")
        if len(parts) not in (2, 3) or not all(parts[:2]) or parts[2:] not in ([], ["ro"], ["rw"]):
            raise LaunchError(
                f"mount {mount!r}: expected 'host_path:container_path' or "
                "'host_path:container_path:ro' (or ':rw')"
            )
        host = Path(parts[0]).expanduser().resolve()
        if not host.exists():
            raise LaunchError(f"mount {mount!r}: the host path {host} does not exist")
        if not parts[1].startswith("/"):
            raise LaunchError(f"mount {mount!r}: the container path must be absolute")
        args += ["-v", ":".join([str(host), *parts[1:]])]
    return args


def _owner() -> str:
    """This process as `pid:start ticks`: a pid that was reused is told apart by its start."""
    from .servers import start_ticks

    return f"{os.getpid()}:{start_ticks(os.getpid())}"


def container_args(
    runtime: Runtime,
    image: str,
    name: str,
    server_args: Sequence[str],
    *,
    gpus: str | None = None,
    mounts: Sequence[str] = (),
    env: Sequence[str] = (),
) -> list[str]:
    """The `run` argv of a component image (its entrypoint serves the component).

    Arguments:
        runtime: podman or docker.
        image: the image.
        name: the container's name.
        server_args: arguments of `chainrule serve` after the entry (`--host`, `--port`, ...).
        gpus, mounts: see `gpu_args` and `mount_args`.
        env: names of environment variables handed over from the runtime's environment.
    """
    return [
        runtime.exe, "run", "--rm", "--pull=never", "--init", "--network", "host",
        "--name", name, "--label", f"{OWNER_LABEL}={_owner()}", *limit_args(),
        *gpu_args(runtime, gpus), *mount_args(mounts),
        *[arg for var in env for arg in ("-e", var)], image, *server_args,
    ]  # fmt: skip


def watched(runtime: Runtime, name: str, run: list[str]) -> list[str]:
    """The argv of the watcher that runs `run` and removes container `name` when we are gone."""
    return [sys.executable, "-I", str(_WATCHER), runtime.exe, name, str(STOP_TIMEOUT), "--", *run]


def container_name(component: str) -> str:
    """A new container name: `chainrule-<component>-<8 hex digits>`."""
    safe = "".join(c if c.isalnum() or c in "_.-" else "-" for c in component.lower())
    return f"chainrule-{safe}-{uuid.uuid4().hex[:8]}"


# ---- launch(folder, runtime=...) --------------------------------------------------------------


def _command(
    runtime: Runtime,
    image: str,
    spec: ComponentSpec,
    host: str,
    port: int,
    *,
    workers: int,
    gpus: str | None,
    mounts: Sequence[str],
) -> list[str]:
    server = ["--host", host, "--port", str(port)]
    server += ["--workers", str(workers)] if workers > 1 else []
    name = container_name(spec.name)
    run = container_args(runtime, image, name, server, gpus=gpus, mounts=mounts)
    return watched(runtime, name, run)


def container_runtime(
    folder: Path,
    spec: ComponentSpec,
    runtime: str,
    *,
    workers: int,
    quiet: bool,
    gpus: str | None,
    mounts: Sequence[str],
) -> functools.partial[list[str]]:
    """For `launch(folder, runtime=...)`: the image built (or found up to date), stale
    containers swept, and the command factory (host, port) -> the watcher's argv.

    `Launched` runs that argv with a lifeline on its stdin (`lifeline=True`): the watcher
    removes the container when the lifeline's end of file says the launching process is gone.
    """
    from .image import ensure_image

    if runtime == "uv":
        raise LaunchError("gpus and mounts apply to containers: pass runtime='podman' or 'docker'")
    found = find_runtime(runtime)
    mount_args(mounts)  # refuse a bad mount now, not in the supervisor
    gpu_args(found, gpus)
    image = ensure_image(folder, runtime=found, quiet=quiet)
    sweep(found)
    return functools.partial(
        _command, found, image, spec, workers=workers, gpus=gpus, mounts=tuple(mounts)
    )


# ---- leftovers --------------------------------------------------------------------------------


def _alive(owner: str) -> bool:
    from .servers import start_ticks

    pid, _, ticks = owner.partition(":")
    if not pid.isdigit():
        return True  # not ours to judge
    return str(start_ticks(int(pid))) == ticks


def sweep(runtime: Runtime) -> list[str]:
    """Remove the containers whose launching process no longer exists (a watcher that was
    killed too, or a machine that went down); returns their names."""
    label = (
        f'{{{{.Label "{OWNER_LABEL}"}}}}'
        if runtime.name == "docker"
        else f'{{{{index .Labels "{OWNER_LABEL}"}}}}'
    )
    out = runtime.run("ps", "-a", "--filter", f"label={OWNER_LABEL}", "--format",
                      "{{.Names}} " + label)  # fmt: skip
    gone = []
    for line in out.stdout.splitlines() if out.returncode == 0 else []:
        name, _, owner = line.strip().partition(" ")
        if name and not _alive(owner):
            gone.append(name)
    if gone:  # at once: their server has no one to answer
        runtime.run("rm", "-f", *(["-t", "0"] if runtime.name == "podman" else []), *gone)
    return gone


# ---- `chainrule serve --image` ----------------------------------------------------------------


def serve_image(
    image: str,
    server_args: Sequence[str],
    *,
    runtime: str | None = None,
    gpus: str | None = None,
    mounts: Sequence[str] = (),
    token: str | None = None,
) -> int:
    """Run a component image's server in the foreground until it stops or we are stopped.

    The container's output is ours; the container goes when this process ends, however it
    ends (^C, SIGTERM, SIGKILL), through the same watcher as `launch`.

    Returns:
        The container's exit code.
    """
    found = find_runtime(runtime)
    local = found.local_name(image)
    if found.inspect(local) is None:
        raise LaunchError(
            f"no image {image!r} in {found.name}'s local store. Fix: build it with "
            f"`chainrule build <folder>` (or load an archive: `{found.name} load -i x.tar`)"
        )
    sweep(found)
    name = container_name(Path(local.rsplit("/", 1)[-1]).name.split(":")[0])
    env = {**os.environ, **({"CHAINRULE_TOKEN": token} if token else {})}
    run = container_args(found, local, name, server_args, gpus=gpus, mounts=mounts,
                         env=["CHAINRULE_TOKEN"] if token else [])  # fmt: skip
    read, write = os.pipe()
    try:
        proc = subprocess.Popen(watched(found, name, run), stdin=read, env=env,
                                start_new_session=True)  # fmt: skip
    finally:
        os.close(read)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        os.close(write)
        write = -1
        return proc.wait()
    finally:
        if write >= 0:
            os.close(write)
