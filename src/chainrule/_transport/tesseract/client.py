"""A tesseract-runtime server as a chainrule transport (`connect(url, protocol="tesseract")`).

`TesseractTransport` speaks the Tesseract HTTP API (tesseract-runtime 1.15) on the transport
seam: its `schema()` is the server's OpenAPI mirrored as a chainrule description (`mirror`),
and each `call` turns chainrule's request tree into the Tesseract route's body and the answer
back (paths translated both ways, arrays as base64). What a Tesseract lacks is derived by
chainrule's rules from what it has (a jacobian-only Tesseract still answers vjp). Shapes come
from `/abstract_eval`, or from one `/apply` when it is missing or fails (some Tesseracts
answer 500 there). Every call carries one `run_id` per client, so the server keeps one run
folder per client rather than one per call.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

import numpy as np

from chainrule._component.component import Component
from chainrule._schema.errors import ComponentError, TransportError
from chainrule._transport.http.client import Connection
from chainrule._transport.remote import remote_component

from . import codec
from .mirror import Mirror, is_tesseract, mirror
from .paths import from_tesseract, split, to_tesseract

__all__ = ["Poster", "TesseractTransport", "connect_tesseract", "is_tesseract_at"]


class _Connection(Connection):
    """chainrule's keep-alive connection, speaking JSON with Tesseract's Accept header."""

    accept = "application/json+base64"

    def _headers(self, body: object) -> dict[str, str]:
        headers = {"Accept": self.accept}
        if body is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    run = ""  # `?run_id=...`: one run folder per client on the server

    def post(self, route: str, body: Any) -> Any:
        """The decoded answer of `POST /route` with `body` (arrays base64-encoded)."""
        status, _, data = self.request("POST", f"/{route}{self.run}", codec.dumps(body))
        where = f"{self.url}/{route}"
        if status >= 400:
            raise codec.error(status, bytes(data), where)
        try:
            return codec.decode(codec.loads(data), where)
        except ValueError as e:
            raise TransportError(f"{where} answered with a body that is not JSON: {e}") from e


class Poster(Protocol):
    """How a Tesseract is reached: `post(route, body)` answers its route (decoded)."""

    url: str

    def post(self, route: str, body: Any) -> Any: ...

    def close(self) -> None: ...


class TesseractTransport:
    """The `Transport` of a Tesseract (a tesseract-runtime server, or a `tesseract_api.py`
    in this process), described by its OpenAPI (`m`)."""

    def __init__(self, conn: Poster, m: Mirror, name: str) -> None:
        self.conn, self.mirror, self.name = conn, m, name
        self.where = conn.url
        self.abstract_eval = "abstract_eval" in m.routes  # cleared when it fails

    def schema(self) -> dict[str, Any]:
        return self.mirror.description(self.name)

    def close(self) -> None:
        self.conn.close()

    def _post(self, route: str, body: dict[str, Any]) -> Any:
        return self.conn.post(route, body)

    def call(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        inputs = request["inputs"]
        if endpoint == "apply":
            outputs = self._post("apply", {"inputs": inputs})
            return (
                {"outputs": outputs, "handle": "tesseract"}
                if request.get("keep")
                else {"outputs": outputs}
            )
        if endpoint == "eval_shape":
            return self._eval_shape(inputs)
        handler = _DERIVATIVES.get(endpoint)
        if handler is None:
            raise TransportError(f"{self.where} cannot answer {endpoint} over the Tesseract API")
        return {"result": handler(self, request)}

    # ---- paths ------------------------------------------------------------------------------

    def _ins(self, paths: Any) -> list[str]:
        return [to_tesseract(p, self.mirror.in_patterns) for p in paths]

    def _outs(self, paths: Any) -> list[str]:
        return [to_tesseract(p, self.mirror.out_patterns) for p in paths]

    # ---- shapes -----------------------------------------------------------------------------

    def _eval_shape(self, inputs: Any) -> dict[str, Any]:
        if self.abstract_eval:
            try:
                tree = self._post("abstract_eval", {"inputs": codec.shapes_only(inputs)})
                return {"outputs": tree, "leaves": _shape_leaves(tree, "")}
            except ComponentError:
                self.abstract_eval = False  # answers 500 (e.g. univariate): use apply from now
        outputs = _shapes_of(self._post("apply", {"inputs": inputs}))
        return {"outputs": outputs, "leaves": _shape_leaves(outputs, "")}

    # ---- derivatives ------------------------------------------------------------------------

    def jvp(self, request: dict[str, Any]) -> dict[str, Any]:
        tangents, of = request["tangents"], list(request["of"])
        if not tangents or not of:
            return self._zero_jvp(request["inputs"], of)
        keys = self._ins(tangents)
        body = {
            "inputs": request["inputs"],
            "jvp_inputs": keys,
            "jvp_outputs": self._outs(of),
            "tangent_vector": dict(zip(keys, tangents.values(), strict=True)),
        }
        answer = self._post("jacobian_vector_product", body)
        return {from_tesseract(k): self._out_cast(k, v) for k, v in answer.items()}

    def vjp(self, request: dict[str, Any]) -> dict[str, Any]:
        cotangents, wrt, inputs = request["cotangents"], list(request["wrt"]), request["inputs"]
        if not cotangents or not wrt:
            return {p: np.zeros_like(_at(inputs, p)) for p in wrt}
        keys = self._outs(cotangents)
        body = {
            "inputs": inputs,
            "vjp_inputs": self._ins(wrt),
            "vjp_outputs": keys,
            "cotangent_vector": dict(zip(keys, cotangents.values(), strict=True)),
        }
        answer = self._post("vector_jacobian_product", body)
        return {
            p: _cast(answer[t], _at(inputs, p))
            for p, t in zip(wrt, body["vjp_inputs"], strict=True)
        }

    def jacobian(self, request: dict[str, Any]) -> dict[str, Any]:
        wrt, of, inputs = list(request["wrt"]), list(request["of"]), request["inputs"]
        jac_in, jac_out = self._ins(wrt), self._outs(of)
        body = {"inputs": inputs, "jac_inputs": jac_in, "jac_outputs": jac_out}
        answer = self._post("jacobian", body)
        return {
            q: {p: _cast(answer[tq][tp], _at(inputs, p)) for p, tp in zip(wrt, jac_in, strict=True)}
            for q, tq in zip(of, jac_out, strict=True)
        }

    def batched_jvp(self, request: dict[str, Any]) -> dict[str, Any]:
        """k tangents through one `/jacobian` (what tesseract-jax does too)."""
        tangents = request["tangents"]
        jac = self.jacobian({**request, "wrt": list(tangents)})
        out = {}
        for q, row in jac.items():
            terms = [_contract(t, row[p]) for p, t in tangents.items()]
            out[q] = sum(terms[1:], terms[0])
        return out

    def _out_cast(self, path: str, value: np.ndarray) -> np.ndarray:
        pattern = ".".join(
            "[]" if s.startswith("[") else "{}" if s.startswith("{") else s for s in split(path)
        )
        leaf = self.mirror.out_patterns.get(pattern)
        return value.astype(leaf.dtype, copy=False) if leaf and leaf.dtype else value

    def _zero_jvp(self, inputs: Any, of: list[str]) -> dict[str, Any]:
        shapes = self._eval_shape(inputs)["outputs"]
        return {q: np.zeros(_at(shapes, q)["shape"], _at(shapes, q)["dtype"]) for q in of}


_DERIVATIVES = {
    "jvp": TesseractTransport.jvp,
    "vjp": TesseractTransport.vjp,
    "jacobian": TesseractTransport.jacobian,
    "batched_jvp": TesseractTransport.batched_jvp,
}


def _contract(t: np.ndarray, block: np.ndarray) -> np.ndarray:
    """Batched tangents `t` (B, *in) against a Jacobian block (*out, *in): (B, *out)."""
    n_in = t.ndim - 1
    axes = (list(range(1, t.ndim)), list(range(block.ndim - n_in, block.ndim)))
    return np.tensordot(t, block, axes=axes)


def _at(tree: Any, path: str) -> Any:
    for key in path.split("."):
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    return tree


def _cast(value: Any, like: Any) -> np.ndarray:
    """A derivative in the dtype of its input (the peer does not check it: meshstats answers
    float64 for float32 inputs)."""
    dtype = np.asarray(like).dtype
    return np.asarray(value).astype(dtype if dtype.kind in "fc" else value.dtype, copy=False)


def _is_shape(node: Any) -> bool:
    return isinstance(node, dict) and set(node) == {"shape", "dtype"}


def _shape_leaves(tree: Any, prefix: str) -> list[str]:
    if _is_shape(tree):
        return [prefix]
    items = (
        tree.items()
        if isinstance(tree, dict)
        else enumerate(tree)
        if isinstance(tree, list)
        else ()
    )
    return [p for k, v in items for p in _shape_leaves(v, f"{prefix}.{k}" if prefix else str(k))]


def _shapes_of(tree: Any) -> Any:
    if isinstance(tree, np.ndarray):
        return {"shape": list(tree.shape), "dtype": tree.dtype.name}
    if isinstance(tree, dict):
        return {k: _shapes_of(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_shapes_of(v) for v in tree]
    return tree


def is_tesseract_at(conn: Connection) -> bool:
    """Whether the server behind `conn` is a tesseract-runtime server (its OpenAPI says so)."""
    try:
        return is_tesseract(conn.get_json("/openapi.json"))
    except TransportError:
        return False


def connect_tesseract(
    url: str, *, token: str | None = None, timeout: float = 300.0, retries: int = 4
) -> Component:
    """The Tesseract served at `url` (tesseract-runtime) as a chainrule component."""
    conn = _Connection(url, token=token, timeout=timeout, retries=retries)
    try:
        openapi = conn.get_json("/openapi.json")
        m = mirror(openapi, f"{conn.url}/openapi.json")
        conn.run = f"?run_id=chainrule-{uuid.uuid4().hex}"
        if m.formats is not None and "json+base64" not in m.formats:
            conn.accept = "application/json"
        title = openapi.get("info", {}).get("title") if isinstance(openapi, dict) else None
        return remote_component(TesseractTransport(conn, m, str(title or "tesseract")))
    except BaseException:
        conn.close()
        raise
