"""`chainrule.map`: one component applied to many inputs, spread over its replicas.

A component deployed on Ray (`chainrule.ray.deploy`) has replicas: the inputs are validated
here, cut into one contiguous share per replica, each share sent in one call, all at once, and
the outputs come back in the order of the inputs. Any other component is applied to one input
after another (or from `workers` threads). Either way each item is validated as an `apply`'s
inputs and outputs are, with the same errors.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chainrule._component.component import Component
from chainrule._schema import tree as _tree
from chainrule._transport.remote import RemoteBackend

from .transport import RayTransport

__all__ = ["map"]


def map(component: Component, inputs: Iterable[Any], *, workers: int | None = None) -> list[Any]:
    """`component.apply` of each of `inputs`, in order; concurrently over a deployment's
    replicas.

    Arguments:
        component: any component; one deployed on Ray spreads the items over its replicas.
        inputs: the inputs of each call (dicts or input schema instances).
        workers: how many threads call `apply` at once; by default a deployed component's
            replicas each get their share of the inputs in one call, any other component is
            applied to one input after another.

    Returns:
        The outputs of each call, in the order of `inputs`; the first error raised stops it.

    Example: `outputs = chainrule.map(solver, [{"p": p} for p in designs])`
    """
    items = builtins.list(inputs)
    transport = _ray_transport(component)
    if transport is not None and workers is None and len(items) > 1:
        return _over_replicas(component, transport, items)
    count = workers or 1
    if count <= 1 or len(items) < 2:
        return [component.apply(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(count, len(items))) as pool:
        return builtins.list(pool.map(component.apply, items))


def _ray_transport(component: Component) -> RayTransport | None:
    backend = component.backend
    if isinstance(backend, RemoteBackend) and isinstance(backend.transport, RayTransport):
        return backend.transport
    return None


def _over_replicas(component: Component, transport: RayTransport, items: list[Any]) -> list[Any]:
    """Each replica gets its share of the validated inputs in one call; the outputs are
    validated here as an `apply`'s are."""
    points = [component.point(x) for x in items]
    requests = [{"inputs": _tree.dump(p.inputs)} for p in points]
    answers = transport.call_each("apply", requests)
    return [
        component.validate_outputs(a["outputs"], p) for a, p in zip(answers, points, strict=True)
    ]
