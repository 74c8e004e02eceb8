"""`RayTransport`: the client side of a component deployed as Ray actors (its replicas).

One transport reaches all the replicas of a deployment, so the component over it
(`remote_component`) is one `Component`, whatever the number of replicas. Each request goes to
one replica, chosen so that:

- a request naming a handle (`vjp` after `apply(keep=True)`) goes to the replica that kept it
  (sticky). If that replica died and Ray restarted it, the new process does not know the
  handle and recomputes (a handle is only ever a shortcut), so the answer is the same;
- any other request goes to the replica with the fewest calls in flight;
- a `batched_apply` request (a leading batch axis on the inputs named by `batched`) is split
  into one contiguous slice per replica, sent at once, and the answers gathered in order; so
  is a derivative at B points (`batched` on `vjp`, `jvp`, ...: its tangents or cotangents
  sliced with the inputs).

Arrays travel as raw buffers (`codec`); an array of `PUT_BYTES` or more is put in Ray's object
store once and referred to by every call that sends the same bytes again (an `apply` and then
its `vjp` at the same inputs). Replicas are restarted by Ray when their process dies and the
call in flight is retried there (every chainrule endpoint is a pure function of its request);
a call that does not answer within `timeout` seconds raises a `TransportError`, and its
replica is restarted so that it does not keep hanging.
"""

from __future__ import annotations

import itertools
import pickle
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import xxhash

from chainrule._component import finite
from chainrule._component.endpoints import derivatives
from chainrule._schema.errors import TransportError, error_from_dict

from . import codec

__all__ = ["PUT_BYTES", "RayTransport"]

PUT_BYTES = 1 << 20  # arrays this large are put in the object store once, then referred to
_PUT_ENTRIES = 4  # how many such arrays stay put (pinned in the object store) for reuse
_DERIVATIVES = frozenset(derivatives())  # rows that take `batched` points are among them
_STICKY_ENTRIES = 65536  # handles remembered for routing (a forgotten one is recomputed)


class RayTransport:
    """A `Transport` to the replicas (Ray actors serving `replica.Replica`) of one deployment.

    Arguments:
        actors: the replicas' actor handles.
        name: the deployment's name, for messages.
        timeout: seconds a call may take before it is abandoned (None: no limit).
    """

    def __init__(self, actors: list[Any], name: str, timeout: float | None) -> None:
        import ray

        self._ray = ray
        self.actors = list(actors)
        self.where = f"ray://{name}"
        self.timeout = timeout
        self._busy = [0] * len(actors)
        self._lock = threading.Lock()
        self._sticky: OrderedDict[str, int] = OrderedDict()
        self._puts: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def schema(self) -> dict[str, Any]:
        document: dict[str, Any] = self._wait(0, self.actors[0].schema.remote(), "schema")
        return document

    def call(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        if endpoint == "batched_apply" or (request.get("batched") and endpoint in _DERIVATIVES):
            return self._split(endpoint, request)
        handle = request.get("handle")
        index = self._route(handle)
        answer: dict[str, Any] = self._finish(
            index, endpoint, self._submit(index, endpoint, request)
        )
        if isinstance(answer.get("handle"), str):
            self._remember(answer["handle"], index)
        return answer

    def close(self) -> None:
        """Stop the replicas (a deployment ends with its `with` block)."""
        for actor in self.actors:
            self._ray.kill(actor, no_restart=True)
        self._puts.clear()

    # ---- routing

    def _route(self, handle: Any) -> int:
        with self._lock:
            index = self._sticky.get(handle) if isinstance(handle, str) else None
            if index is None:
                index = min(range(len(self.actors)), key=self._busy.__getitem__)
            self._busy[index] += 1
            return index

    def _remember(self, handle: str, index: int) -> None:
        with self._lock:
            self._sticky[handle] = index
            if len(self._sticky) > _STICKY_ENTRIES:
                self._sticky.popitem(last=False)

    # ---- one call

    def _submit(self, index: int, endpoint: str, request: Any, each: bool = False) -> Any:
        """Send `request` to replica `index` (`each`: a list of requests, for `call_each`)."""
        try:
            packed, arrays = codec.pack(request)
            raw = [self._by_reference(a) for a in arrays]
            actor = self.actors[index]
            method = actor.call_each if each else actor.call
            return method.remote(endpoint, finite.active(), packed, *raw)
        except BaseException:
            self._release(index)  # nothing in flight there after all
            raise

    def _release(self, index: int) -> None:
        with self._lock:
            self._busy[index] -= 1

    def _by_reference(self, array: np.ndarray) -> Any:
        """A large array as an object-store reference (put once per content), a small one as
        its buffer."""
        if array.nbytes < PUT_BYTES:
            return pickle.PickleBuffer(array.data)
        key = (array.dtype.str, array.shape, xxhash.xxh3_128_digest(array.data))
        with self._lock:
            ref = self._puts.get(key)
            if ref is not None:
                self._puts.move_to_end(key)
                return ref
        ref = self._ray.put(pickle.PickleBuffer(array.data))
        with self._lock:
            self._puts[key] = ref
            while len(self._puts) > _PUT_ENTRIES:
                self._puts.popitem(last=False)
        return ref

    def _finish(self, index: int, endpoint: str, ref: Any) -> Any:
        """The unpacked answer (tree, or list of trees) of a submitted call."""
        try:
            reply = self._wait(index, ref, endpoint)
        finally:
            self._release(index)
        if reply[0] == "error":
            raise error_from_dict(reply[1])
        return codec.unpack(reply[1], reply[2:])

    def _wait(self, index: int, ref: Any, endpoint: str) -> Any:
        """The reply to `ref`; a Ray failure as a `TransportError` saying what to do."""
        ray = self._ray
        where = f"{self.where} replica {index}"
        try:
            return ray.get(ref, timeout=self.timeout)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref)  # not to be run again on the restarted replica
            ray.kill(self.actors[index], no_restart=False)  # Ray restarts the hung replica
            raise TransportError(
                f"{where} did not answer /{endpoint} within the call timeout of "
                f"{self.timeout:g} s, so it was restarted. Fix: pass a larger `timeout=` to "
                "deploy if the call is that slow, or find why the component hangs."
            ) from None
        except ray.exceptions.RayActorError as e:
            raise TransportError(
                f"{where} died during /{endpoint} and Ray could not run the call again: "
                f"{_first_lines(e)}. Fix: if the replica cannot start, see the error above; if "
                "it keeps dying, raise `max_restarts=` of deploy or see Ray's session logs."
            ) from e
        except ray.exceptions.RayError as e:
            raise TransportError(f"{where} failed on /{endpoint}: {e}") from e

    # ---- many requests, or a batch, over the replicas

    def call_each(self, endpoint: str, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The answers to `requests`, in order: one contiguous share per replica, each sent as
        one call (`Replica.call_each`), all at once."""
        pending = []
        for lo, hi in itertools.pairwise(_bounds(len(requests), len(self.actors))):
            index = self._route(None)
            ref = self._submit(index, endpoint, requests[lo:hi], each=True)
            pending.append((index, ref))
        shares: list[list[dict[str, Any]]] = [self._finish(i, endpoint, r) for i, r in pending]
        return [answer for share in shares for answer in share]

    def _split(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        """A request at B points (`batched_apply`, or a derivative's `batched`) cut into one
        contiguous slice per replica, each answered by that replica's `Handler` (its
        backend's own way), gathered in order."""
        inputs, batched = request["inputs"], list(request.get("batched") or [])
        size = _batch_size(inputs, batched)
        pending = []
        for lo, hi in itertools.pairwise(_bounds(size, len(self.actors))):
            part = _slice(request, batched, lo, hi) if size > 1 else request
            index = self._route(None)
            pending.append((index, self._submit(index, endpoint, part)))
        parts = [self._finish(i, endpoint, ref) for i, ref in pending]
        if len(parts) == 1:
            return parts[0]
        return {"result": _concatenate([p["result"] for p in parts])}


def _batch_size(inputs: Any, batched: list[str]) -> int:
    """Rows of the batch (1 where there is nothing to split: the replica reports what is
    malformed, as for any request)."""
    try:
        return max(1, len(codec.get_path(inputs, batched[0])))
    except (IndexError, KeyError, TypeError, ValueError):
        return 1


def _bounds(size: int, parts: int) -> list[int]:
    """Where `size` rows are cut into at most `parts` contiguous shares of near-equal size."""
    return [int(b) for b in np.linspace(0, size, min(parts, size) + 1)]


def _first_lines(error: BaseException, most: int = 12) -> str:
    """The start of a Ray error (whose message may carry a whole remote traceback)."""
    lines = str(error).strip().splitlines()
    return "\n".join(lines[:most]) + ("\n..." if len(lines) > most else "")


def _slice(request: dict[str, Any], batched: list[str], lo: int, hi: int) -> dict[str, Any]:
    inputs = codec.copy_tree(request["inputs"])
    for path in batched:
        codec.set_path(inputs, path, codec.get_path(request["inputs"], path)[lo:hi])
    # A derivative's tangents or cotangents carry the points first too.
    linear = {
        key: {path: value[lo:hi] for path, value in request[key].items()}
        for key in ("tangents", "cotangents")
        if isinstance(request.get(key), dict)
    }
    return {**request, "inputs": inputs, **linear}


def _concatenate(parts: list[Any]) -> Any:
    """Answers of consecutive slices joined on their leading axis; a leaf that is not an array
    with a batch axis is shared by the slices, so the first is kept."""
    first = parts[0]
    if isinstance(first, dict):
        return {k: _concatenate([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [_concatenate([p[i] for p in parts]) for i in range(len(first))]
    if isinstance(first, np.ndarray) and first.ndim > 0:
        return np.concatenate(parts)
    return first
