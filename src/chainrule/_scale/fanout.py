"""`chainrule.map`: one component applied to many inputs, spread over its replicas.

A component deployed on Ray (`chainrule.ray.deploy`) has replicas; the inputs are sent to them
concurrently (each to the replica with the fewest calls in flight) and the outputs come back in
the order of the inputs. Any other component is applied to one input after another. Either
way each item is an ordinary `apply`: validated, with the same errors.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from chainrule._component.component import Component
from chainrule._transport.remote import RemoteBackend

from .transport import RayTransport

__all__ = ["map", "parallelism"]


def parallelism(component: Component) -> int:
    """How many calls of `component` can run at once: its replicas if it is deployed on Ray."""
    backend = component.backend
    if isinstance(backend, RemoteBackend) and isinstance(backend.transport, RayTransport):
        return len(backend.transport.actors)
    return 1


def map(component: Component, inputs: Iterable[Any], *, workers: int | None = None) -> list[Any]:
    """`component.apply` of each of `inputs`, in order; concurrently over a deployment's
    replicas.

    Arguments:
        component: any component; one deployed on Ray spreads the items over its replicas.
        inputs: the inputs of each call (dicts or input schema instances).
        workers: how many calls run at once (default: the component's replicas, else 1).

    Returns:
        The outputs of each call, in the order of `inputs`; the first error raised stops it.

    Example: `outputs = chainrule.map(solver, [{"p": p} for p in designs])`
    """
    items = builtins.list(inputs)
    count = workers if workers is not None else parallelism(component)
    if count <= 1 or len(items) < 2:
        return [component.apply(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(count, len(items))) as pool:
        return builtins.list(pool.map(component.apply, items))
