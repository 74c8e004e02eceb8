"""The server side of the Ray transport: a replica, one Ray actor serving one component through
the transport-neutral `Handler`.

A replica is made from a *source*: the bytes of a pickled component (`ship`) or a component
folder's entry (`file.py:object`) loaded in the replica's own environment. Requests arrive
packed (`codec`: the tree without its arrays, plus the arrays as raw buffers) and answers go
back the same way, so nothing numpy-specific is pickled between environments. A chainrule
error goes back as its structured form (`ChainruleError.to_dict`), raised again by the caller
as the same class.

`Replica` is a plain class; `transport` makes it a Ray actor class with the options of a
deployment (restarts, retries, resources), so this module does not import Ray.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from chainrule._component.component import Component
from chainrule._component.residuals import ResidualCache
from chainrule._schema.errors import ChainruleError
from chainrule._transport.handler import Handler
from chainrule._transport.settings import ServerSettings

from . import codec

__all__ = ["Replica", "ship"]

_LOCK = type(threading.Lock())


def ship(component: Component) -> bytes:
    """`component` as bytes a replica loads (`Replica`): pickled by cloudpickle, with a fresh
    residual cache and fresh locks (what a component holds in memory is the process's own).

    The modules that define it (its function's and its schemas') travel by value unless they
    are installed packages: a replica does not have the caller's scripts and test folders on
    its path, and on another machine not even its files.
    """
    from ray import cloudpickle  # the pickler Ray itself uses for functions

    class _Pickler(cloudpickle.CloudPickler):
        def reducer_override(self, obj: Any) -> Any:
            if isinstance(obj, ResidualCache):
                return ResidualCache, (obj.max_bytes, obj.max_entries, obj.ttl)
            if isinstance(obj, _LOCK):
                return threading.Lock, ()
            return super().reducer_override(obj)

    out = io.BytesIO()
    by_value = _user_modules(component)
    for module in by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        _Pickler(out, protocol=5).dump(component)
    finally:
        for module in by_value:
            cloudpickle.unregister_pickle_by_value(module)
    return out.getvalue()


def _user_modules(component: Component) -> list[ModuleType]:
    """The modules defining `component` that are not installed packages (nor chainrule)."""
    names = {
        getattr(x, "__module__", None) for x in (component.fn, component.inputs, component.outputs)
    }
    found = [sys.modules[n] for n in names if n and n != "__main__" and n in sys.modules]
    return [m for m in found if _is_user_file(getattr(m, "__file__", None))]


def _is_user_file(file: str | None) -> bool:
    if file is None:
        return False
    parts = Path(file).resolve().parts
    return (
        "site-packages" not in parts and "dist-packages" not in parts and "chainrule" not in parts
    )


def _load(source: bytes | str) -> Component:
    if isinstance(source, bytes):
        component: Component = pickle.loads(source)
        return component
    from chainrule._transport.http.serving import load_component

    return load_component(source)


class Replica:
    """Serves one component to Ray actor calls.

    Arguments:
        source: the pickled component (`ship`) or a folder's entry `path/file.py:object`.
        settings: the server side's settings, as a dict of `ServerSettings` fields.
        writable_inputs: give the component writable copies of its input arrays (it writes
            into them), instead of read-only views of the object store.
    """

    def __init__(
        self, source: bytes | str, settings: dict[str, Any], writable_inputs: bool = False
    ) -> None:
        self.handler = Handler(_load(source), ServerSettings(**settings))
        self.writable = writable_inputs

    def pid(self) -> int:
        """The replica's process id (tests kill it to see it restarted)."""
        return os.getpid()

    def schema(self) -> dict[str, Any]:
        """The served component's description (`Handler.describe()`)."""
        return self.handler.describe()

    def call(
        self, endpoint: str, check_finite: bool, packed: codec.Packed, *raw: Any
    ) -> tuple[Any, ...]:
        """The packed answer to one packed request (`check_finite`: the caller hunts NaNs);
        ("error", dict) for a chainrule error."""
        try:
            tree = codec.unpack(packed, raw, self.writable)
            answer = self.handler.handle(endpoint, tree, check_finite=check_finite)
        except ChainruleError as e:
            return ("error", e.to_dict())
        out, arrays = codec.pack(answer)
        return ("ok", out, *codec.buffers(arrays))

    def call_each(
        self, endpoint: str, check_finite: bool, packed: codec.Packed, *raw: Any
    ) -> tuple[Any, ...]:
        """Like `call` for a list of requests, answered one after another (`chainrule.map`
        sends each replica its share in one call); the first chainrule error ends it."""
        try:
            requests = codec.unpack(packed, raw, self.writable)
            answers = [
                self.handler.handle(endpoint, r, check_finite=check_finite) for r in requests
            ]
        except ChainruleError as e:
            return ("error", e.to_dict())
        out, arrays = codec.pack(answers)
        return ("ok", out, *codec.buffers(arrays))
