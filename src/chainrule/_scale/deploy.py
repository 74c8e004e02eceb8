"""`deploy`: a component, or a component folder in its own environment, as Ray actors.

A deployment is N replicas (`replica.Replica` as Ray actors) reached through one
`RayTransport`, and used as one `Component` (`remote_component`). A component object is
shipped to the replicas pickled (`replica.ship`); a component folder runs in the environment
`chainrule.launch` builds for it (its own requirements, plus the driver's Ray), handed to Ray
as the actors' `py_executable`. Ray runs a worker only under the Python minor and Ray version
of the cluster, so that is checked before anything starts, with an error saying how to fix it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from chainrule._component.component import Component
from chainrule._schema.errors import LaunchError
from chainrule._transport.launch.env import build_env
from chainrule._transport.launch.spec import ComponentSpec, entry_path, load_spec
from chainrule._transport.remote import remote_component

from .replica import Replica, ship
from .transport import RayTransport

__all__ = ["check_ray_env", "deploy"]

_MSG_NO_RAY = "chainrule.ray needs Ray, which is not installed: pip install 'chainrule[ray]'"


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as e:
        raise LaunchError(_MSG_NO_RAY) from e
    return ray


@contextlib.contextmanager
def deploy(
    target: Component | str | os.PathLike[str],
    replicas: int = 1,
    *,
    address: str | None = None,
    num_cpus: float | None = None,
    num_gpus: float | None = None,
    memory: int | None = None,
    resources: dict[str, float] | None = None,
    scheduling_strategy: Any = "SPREAD",
    timeout: float | None = 600.0,
    max_restarts: int = 3,
    max_task_retries: int = 3,
    settings: dict[str, Any] | None = None,
    writable_inputs: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    quiet: bool = True,
) -> Iterator[Component]:
    """Run `target` as `replicas` Ray actors; the block gets one `Component` over them all.

    Arguments:
        target: a component, or a component folder (run in its own uv environment).
        replicas: how many actors serve it; calls, batches and `chainrule.map` spread over them.
        address: the cluster. `None`: the one this process is connected to, else a new local
            one (`ray.init()`); `"auto"` or `"host:port"` or `"ray://host:port"`: an existing one.
        num_cpus, num_gpus, memory, resources: what each replica reserves (Ray's actor options).
        scheduling_strategy: where Ray places the replicas (its actor option): by default
            spread over the cluster's nodes, so that a batch runs on all of them.
        timeout: seconds a call may take; later, a `TransportError`, and the replica restarts.
        max_restarts, max_task_retries: how often Ray restarts a dead replica and runs a call
            that was in flight again (every endpoint is a pure function of its request).
        settings: the replicas' server settings (`ServerSettings` fields: limits, NaN policy).
        writable_inputs: the component writes into its input arrays: give it a private copy
            of each (else it gets read-only views of Ray's object store, and writing raises).
        cache_dir, quiet: where folder environments are cached; whether to hide uv's output.

    Example:
        ```python
        with chainrule.ray.deploy("solver_folder", replicas=8) as solver:
            outputs = chainrule.map(solver, list_of_inputs)
        ```
    """
    ray = _import_ray()
    _connect(ray, address)
    source, name, runtime_env = _source(ray, target, cache_dir, quiet)
    options = _actor_options(num_cpus, num_gpus, memory, resources)
    actor_class = ray.remote(Replica).options(
        max_restarts=max_restarts, max_task_retries=max_task_retries, runtime_env=runtime_env,
        scheduling_strategy=scheduling_strategy, **options,
    )  # fmt: skip
    actors = [actor_class.remote(source, settings or {}, writable_inputs) for _ in range(replicas)]
    transport = RayTransport(actors, name, timeout)
    try:
        yield remote_component(transport)
    finally:
        transport.close()


def _connect(ray: Any, address: str | None) -> None:
    """Connect this process to a cluster unless it is connected already."""
    if ray.is_initialized():
        return
    ray.init(address=address)


def _actor_options(
    num_cpus: float | None,
    num_gpus: float | None,
    memory: int | None,
    resources: dict[str, float] | None,
) -> dict[str, Any]:
    given = {"num_cpus": num_cpus, "num_gpus": num_gpus, "memory": memory, "resources": resources}
    return {k: v for k, v in given.items() if v is not None}


def _source(
    ray: Any, target: Component | str | os.PathLike[str], cache_dir: Any, quiet: bool
) -> tuple[bytes | str, str, dict[str, Any] | None]:
    """What a replica loads, the deployment's name, and the actors' runtime environment."""
    if isinstance(target, Component):
        try:
            return ship(target), target.name, None
        except Exception as e:  # cloudpickle raises whatever the object's parts raise
            raise LaunchError(
                f"component {target.name!r} cannot be sent to Ray actors ({type(e).__name__}: "
                f"{e}). Fix: deploy its component folder instead, which each replica loads "
                "in its own environment."
            ) from e
    folder = Path(target)
    spec = load_spec(folder)
    _check_python(spec, folder)
    with_ray = spec.model_copy(update={"requirements": (*spec.requirements, _ray_pin(ray))})
    python = build_env(with_ray, cache_dir=cache_dir, quiet=quiet)
    check_ray_env(python, ray.__version__)
    entry = f"{entry_path(folder, spec)}:{spec.entry.rsplit(':', 1)[1]}"
    return entry, spec.name, {"py_executable": str(python)}


def _ray_pin(ray: Any) -> str:
    return f"ray=={ray.__version__}"


def _here() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def _check_python(spec: ComponentSpec, folder: Path) -> None:
    """Ray runs workers only under the cluster's Python minor: refuse another before building."""
    if spec.python_version != _here():
        raise LaunchError(
            f"{folder}/chainrule.toml: key 'python': a Ray deployment runs the component under "
            f"the cluster's Python, expected {_here()}, got {spec.python_version}. Fix: set "
            f'python = "{_here()}" (or remove the key), or run Ray under Python '
            f"{spec.python_version}."
        )


def check_ray_env(python: Path, ray_version: str) -> None:
    """Refuse an environment whose Python minor or Ray version differs from this process's
    (Ray would start its workers and let them fail, or worse, run them mismatched).

    Arguments:
        python: the environment's interpreter (`<venv>/bin/python`).
        ray_version: the Ray version it must have (this process's `ray.__version__`).
    """
    venv = python.parent.parent
    found_python = _venv_python_version(venv)
    found_ray = _venv_ray_version(venv)
    if found_python == _here() and found_ray == ray_version:
        return
    raise LaunchError(
        f"the environment {venv} cannot run Ray workers of this cluster: expected Python "
        f"{_here()} and ray {ray_version}, got Python {found_python} and ray {found_ray}. "
        f"Fix: add 'ray=={ray_version}' to its requirements and use Python {_here()}."
    )


def _venv_python_version(venv: Path) -> str:
    """`major.minor` from the venv's `pyvenv.cfg` (`version = 3.11.7`, or `version_info`)."""
    with contextlib.suppress(OSError):
        for line in (venv / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() in ("version", "version_info"):
                return ".".join(value.strip().split(".")[:2])
    return "unknown"


def _venv_ray_version(venv: Path) -> str:
    """The version of the `ray` distribution installed in the venv ('none' if absent)."""
    for info in sorted(venv.glob("lib/python*/site-packages/ray-*.dist-info")):
        return info.name[len("ray-") : -len(".dist-info")]
    return "none"
