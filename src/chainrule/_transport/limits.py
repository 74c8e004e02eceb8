"""What a request may cost a server: the limits on its body and on the work it declares.

A body's bytes do not bound the work it asks for: a 200-byte body may declare an array of
shape `(2**40, 0)`, no data and 2**40 rows to loop over. So a request is also judged by its
declared sizes (`wire.decoder.declared_elements`: each 0-length dimension counted as 1), and
a batched request by its rows and by rows × input elements (the size of a batched vjp's
answer). Every refusal is a 413 naming the field, the limit and the setting that raises it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from chainrule._component.endpoints import ENDPOINTS
from chainrule._transport import wire as _wire
from chainrule._transport.wire.decoder import declared_elements

from .refusals import Limit, too_large

if TYPE_CHECKING:
    from .settings import ServerSettings

__all__ = ["Limits", "check_work", "declared_in", "limits_of"]


class Limits(NamedTuple):
    """A server's limits on requests (built once from its settings)."""

    binary: Limit
    json: Limit
    elements: Limit
    batch: Limit


def limits_of(settings: ServerSettings) -> Limits:
    """The limits of a server with `settings`."""
    json_fix = (
        "plain JSON numbers take ~16x their text in memory: send large arrays as "
        f"{_wire.BINARY} (chainrule.connect does)"
    )
    binary = Limit(settings.max_body_bytes, "max_body_bytes", "send smaller arrays")
    text = Limit(settings.max_json_bytes, "max_json_bytes", json_fix)
    return Limits(
        binary,
        text if text.value < binary.value else binary,
        Limit(settings.max_elements, "max_elements", "send smaller arrays"),
        Limit(settings.max_batch, "max_batch", "split the batch into several calls"),
    )


def check_work(name: str, req: dict[str, Any], declared: int, limits: Limits) -> None:
    """Refuse (413) a request asking for more work than the server's limits allow, judged by
    its declared sizes, not its bytes: a 200-byte body may declare 2**40 empty rows."""
    elements = limits.elements
    if declared > elements.value:
        path, largest = _largest(req, "")
        got = f"arrays declaring {declared} elements ({largest} in the largest)"
        raise too_large(elements, got, path, "elements")
    points = bool(req.get("batched"))  # B points (batched_apply, or a derivative's keyword)
    if points:
        _check_points(req, limits)
    key = _batch_keyword(name)
    if key is None:
        return
    # At B points a batched row's batch is its second axis; the inputs hold B points already.
    rows = {path: _rows(value, 1 if points else 0) for path, value in req[key].items()}
    path, batch = max(rows.items(), key=lambda item: item[1], default=("", 0))
    if batch > limits.batch.value:
        raise too_large(limits.batch, f"a batch of {batch} rows", f"{key}.{path}", "rows")
    per_row = _elements(req["inputs"])  # a batched vjp answers batch × inputs elements
    if declared + batch * per_row > elements.value:
        got = f"a batch of {batch} rows × {per_row} input elements"
        raise too_large(elements, got, key, "elements")


def _check_points(req: dict[str, Any], limits: Limits) -> None:
    """Refuse a request at more points than the batch limit (`batched_apply`, or a derivative
    at B points; its elements are counted with the body's)."""
    for path in req.get("batched") or ():
        value: Any = req["inputs"]
        for key in path.split("."):
            value = value.get(key) if isinstance(value, dict) else None
        if _rows(value) > limits.batch.value:
            got = f"a batch of {_rows(value)} points"
            raise too_large(limits.batch, got, f"inputs.{path}", "rows")


def _largest(tree: Any, path: str) -> tuple[str, int]:
    """(path, declared elements) of the largest array in a decoded tree (to name it)."""
    if isinstance(tree, np.ndarray):
        return path, declared_elements(tree.shape)
    items: Any = tree.items() if isinstance(tree, dict) else ()
    if isinstance(tree, list):
        items = enumerate(tree)
    found = [_largest(value, f"{path}.{key}" if path else str(key)) for key, value in items]
    return max(found, key=lambda item: item[1], default=(path or "(body)", 0))


def _rows(value: Any, axis: int = 0) -> int:
    """The batch size of one batched tangent or cotangent (its length along `axis`)."""
    if isinstance(value, np.ndarray):
        return int(value.shape[axis]) if value.ndim > axis else 0
    if axis:
        return _rows(value[0], axis - 1) if isinstance(value, list) and value else 0
    return len(value) if isinstance(value, list) else 0


def _elements(tree: Any) -> int:
    """The elements of the arrays in a decoded tree, as `declared_elements` counts them;
    plain lists by their first items (their numbers cost body bytes anyway)."""
    if isinstance(tree, np.ndarray):
        return declared_elements(tree.shape)
    if isinstance(tree, dict):
        return sum(_elements(value) for value in tree.values())
    if isinstance(tree, list) and tree:
        if isinstance(tree[0], dict):
            return sum(_elements(value) for value in tree)
        return len(tree) * _elements(tree[0])
    return 1


def _batch_keyword(name: str) -> str | None:
    """The request keyword holding the batch of a batched endpoint (None: not batched)."""
    row = ENDPOINTS[name]
    if not row.batched:
        return None
    return next(k.name for k in row.keywords if k.role in ("tangents", "cotangents"))


def declared_in(tree: Any) -> int:
    """The elements the arrays of a request tree declare, counted as the wire decoder counts
    them (a 0-length dimension as 1): for transports that hand over trees, not bodies."""
    if isinstance(tree, np.ndarray):
        return declared_elements(tree.shape)
    if isinstance(tree, dict):
        return sum(declared_in(value) for value in tree.values())
    if isinstance(tree, list | tuple):
        return sum(declared_in(value) for value in tree)
    return 0
