"""`ServerSettings`: how a component is served, by any transport's server side (frozen; read
from the environment only at the edges: the CLI and the worker-process factory)."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveFloat, PositiveInt

__all__ = ["ServerSettings", "is_loopback"]


class ServerSettings(BaseModel):
    """How a component is served (frozen; unknown keys refused).

    Arguments:
        host: interface to bind; anything but loopback requires `token`.
        port: TCP port (0: any free port).
        token: bearer token every request must carry (`Authorization: Bearer <token>`).
        max_body_bytes: larger request bodies get 413 before they are read whole.
        max_json_bytes: the same for JSON bodies, whose plain numbers take ~16x their text
            in memory once parsed (binary bodies are decoded in place): the default keeps a
            JSON request near 1 GiB of memory, like a binary one at `max_body_bytes`.
        max_elements: most array elements a request may ask for, counting what its shapes
            declare (a 0-length dimension as 1, so 2**40 empty rows count 2**40) and, for
            batched endpoints, batch size × input elements (the size of a batched vjp's
            answer). Above it: 413. The default is 2 GiB of float64.
        max_batch: most rows a batched request may have (each row may cost a call of the
            component's derivative), whatever their size. Above it: 413.
        allow_nonfinite: accept NaN/inf in input, tangent and cotangent arrays.
        residual_bytes: byte budget of kept linearizations (`apply` with `keep`).
        residual_ttl: seconds a kept linearization lives at most.
        threaded: run endpoints in worker threads, so `/health` and other requests are
            answered during a long (or hung) call; `False` runs calls with small bodies on the
            event loop (a few tens of µs less per call, but one long call blocks the server).
        call_timeout: seconds a call may take from its arrival; later, it is answered 504
            (naming the component and endpoint) and its worker thread counts as hung. `None`:
            no limit. The default is the client's (`chainrule.connect(timeout=300)`).
        max_threads: most worker threads, hung ones included; the pool grows up to it when
            calls are slow or hung, and answers 503 while every thread is hung.
        shutdown_timeout: seconds a stopping server (SIGTERM) waits for calls in progress
            before it cancels them and exits.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_body_bytes: PositiveInt = 2**30
    max_json_bytes: PositiveInt = 64 * 2**20
    max_elements: PositiveInt = 2**28
    max_batch: PositiveInt = 2**16
    allow_nonfinite: bool = True
    residual_bytes: int = 512 * 2**20
    residual_ttl: float = 600.0
    threaded: bool = True
    call_timeout: PositiveFloat | None = 300.0
    max_threads: PositiveInt = 32
    shutdown_timeout: NonNegativeInt = 10


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
