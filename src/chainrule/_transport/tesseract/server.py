"""The Tesseract HTTP API of a served chainrule component, under `/tesseract`.

Every chainrule server answers Tesseract's routes beside its own, so Tesseract's clients
drive any chainrule component (JAX, PyTorch, NumPy, remote):
`Tesseract.from_url(url + "/tesseract")`, tesseract-jax's `apply_tesseract`, tesseract-torch.
A Tesseract request becomes a chainrule request tree for the server's `Handler` (the same
checks, limits and NaN policy as chainrule's own routes): its paths (`layers.[0].w`) become
chainrule's (`layers.0.w`), its array objects numpy arrays; the answer goes back keyed exactly
as the request named its paths, arrays as base64 (or nested lists, if the client's Accept
asks for `application/json`). Errors take Tesseract's shapes: 422 with a FastAPI `detail`
list naming the field (the SDK rebuilds a pydantic `ValidationError` from it), 404 for an
endpoint the component cannot answer, 500 with the message as text otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from fastapi.responses import JSONResponse, Response
from starlette.types import Receive

from chainrule._component.component import Component
from chainrule._schema.errors import (
    ChainruleError,
    EndpointUnavailableError,
    ValidationError,
)
from chainrule._transport.handler import Handler
from chainrule._transport.http.edge import Answer, read_body
from chainrule._transport.refusals import Limit, too_large
from chainrule._transport.wire.parse import declared_elements

from . import codec
from .openapi import ROUTES, document
from .paths import from_tesseract

__all__ = ["TesseractRoutes"]

PREFIX = "/tesseract"


def _is_array(node: dict[str, Any]) -> bool:
    return "data" in node and "shape" in node and "dtype" in node


def _request_array(node: dict[str, Any], path: str) -> np.ndarray:
    try:
        array = codec.read_array(node)
    except (ValueError, TypeError, KeyError) as e:  # a malformed array: 422
        raise _bad_array(node, path, e) from e
    if array is not None:
        return array
    encoding, _ = codec.encoding_of(node)
    raise ValidationError(
        f"'{path}': an array encoded as {encoding!r} cannot be read here; send base64 or json "
        "arrays",
        errors=[{"path": f"{path}.data.encoding", "expected": "base64 or json", "got": encoding}],
    )


def _bad_array(node: dict[str, Any], path: str, e: Exception) -> ValidationError:
    expected = f"an array of shape {node.get('shape')!r} and dtype {node.get('dtype')!r}"
    return ValidationError(
        f"'{path}': expected {expected} with a buffer that holds exactly it, got one that "
        f"does not ({type(e).__name__}: {e}); send the array's bytes base64-encoded (or its "
        "numbers as a JSON list) with its shape and dtype",
        errors=[{"path": path, "expected": expected, "got": f"{type(e).__name__}: {e}"}],
    )


def decode_request(tree: Any, path: str) -> Any:
    """A request with each Tesseract array object (`object_type` optional) as numpy; a
    malformed one is a ValidationError naming its `path`."""
    if isinstance(tree, dict):
        if _is_array(tree):
            return _request_array(tree, path)
        return {k: decode_request(v, f"{path}.{k}") for k, v in tree.items()}
    if isinstance(tree, list):
        return [decode_request(v, f"{path}.{i}") for i, v in enumerate(tree)]
    return tree


def _zeros(tree: Any, limit: Limit, path: str = "inputs") -> Any:
    """Abstract inputs (`{"shape", "dtype"}` leaves) as zeros of those shapes and dtypes, each
    checked against the server's element limit before anything is allocated."""
    if isinstance(tree, dict):
        if "shape" in tree and "dtype" in tree:  # `{shape, dtype}`, or a whole array
            return _zeros_of(tree, limit, path)
        items = ((k, v) for k, v in tree.items() if k != "object_type")
        return {k: _zeros(v, limit, f"{path}.{k}") for k, v in items}
    if isinstance(tree, list):
        return [_zeros(v, limit, f"{path}.{i}") for i, v in enumerate(tree)]
    return tree


def _zeros_of(node: dict[str, Any], limit: Limit, path: str) -> np.ndarray:
    try:
        shape, dtype = tuple(int(d) for d in node["shape"]), np.dtype(node["dtype"])
        if min(shape, default=0) < 0:
            raise ValueError(f"negative dimension in {shape}")
    except (ValueError, TypeError) as e:
        raise _bad_array(node, path, e) from e
    if declared_elements(shape) > limit.value:
        raise too_large(limit, f"an array declaring shape {shape}", path, "elements")
    return np.zeros(shape, dtype)


def _json_arrays(tree: Any) -> Any:
    if isinstance(tree, np.ndarray | np.generic):
        a = np.asarray(tree)
        data = {"buffer": a.tolist(), "encoding": "json"}
        return {"object_type": "array", "shape": list(a.shape), "dtype": a.dtype.name} | {
            "data": data
        }
    if isinstance(tree, dict):
        return {k: _json_arrays(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_json_arrays(v) for v in tree]
    return tree


def _format(accept: str | None) -> str:
    """The answer's format from Accept: base64 by default (`*/*`, `application/*`)."""
    if not accept:
        return "json+base64"
    for item in accept.split(","):
        kind, *params = (p.strip().replace(" ", "") for p in item.split(";"))
        if any(p in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in params):
            continue  # refused by the client
        if kind in ("*/*", "application/*", "application/json+base64"):
            return "json+base64"
        if kind == "application/json":
            return "json"
    raise _NotAcceptable(accept)


class _NotAcceptable(Exception):
    def __init__(self, accept: str) -> None:
        super().__init__(accept)
        self.accept = accept


def _loc(error: dict[str, Any], fallback: str) -> list[Any]:
    path = str(error.get("path") or fallback)
    return ["body", *[int(p) if p.isdigit() else p for p in path.split(".")]]


def _msg(item: dict[str, Any], e: ChainruleError) -> str:
    """One error's own words: its message, or what was expected and what came."""
    if "expected" in item and "got" in item:
        return f"expected {item['expected']}, got {item['got']}"
    return str(item.get("message") or e.message)


def _error(e: ChainruleError, endpoint: str) -> Response:
    if isinstance(e, EndpointUnavailableError):
        return JSONResponse({"detail": e.message}, status_code=404)
    if isinstance(e, ValidationError):
        items = e.errors or [{}]
        detail = [
            {"type": "chainrule_error", "loc": _loc(x, "inputs"), "msg": _msg(x, e), "ctx": {}}
            for x in items[:20]
        ]
        # a refusal with its own status (413 over a limit) keeps it; other bad input is 422
        return JSONResponse({"detail": detail}, status_code=getattr(e, "status", 422))
    status = getattr(e, "status", 500)  # 503/504 for a saturated or timed-out call
    return Response(f"{type(e).__name__}: {e.message}", status_code=status, media_type="text/plain")


class TesseractRoutes:
    """Tesseract's routes for one served component, answered through its `Handler`."""

    def __init__(
        self,
        component: Component,
        handler: Handler,
        authorize: Callable[[Mapping[str, str]], None],
        run: Callable[..., Any],
        limit: Limit,
    ) -> None:
        self.component, self.handler, self.authorize = component, handler, authorize
        self.run, self.limit = run, limit
        self._document: dict[str, Any] | None = None
        self.kept: str | None = None  # the handle of the last apply's linearization

    def openapi(self) -> dict[str, Any]:
        if self._document is None:
            self._document = document(self.component)
        return self._document

    def routes(self) -> dict[str, Answer]:
        """`{"/tesseract/<route>": answer}` for the app's router."""
        return {f"{PREFIX}/{route}": self.answer(route) for route in ROUTES}

    def answer(self, route: str) -> Answer:
        async def endpoint(headers: Mapping[str, str], receive: Receive) -> Response:
            try:
                self.authorize(headers)
                fmt = _format(headers.get("accept"))
                body = await read_body(headers, receive, self.limit)
                response: Response = await self.run(self.respond, route, body, fmt)
                return response
            except _NotAcceptable as e:
                return JSONResponse({"detail": _not_acceptable(e.accept)}, status_code=406)
            except ChainruleError as e:
                return _error(e, route)
            except Exception as e:  # timed out, saturated, or a bug of ours: keep serving
                return Response(f"/{route}: {e!r}", status_code=500, media_type="text/plain")

        return endpoint

    def respond(self, route: str, body: bytes | bytearray, fmt: str) -> Response:
        try:
            try:
                request = codec.loads(body)
            except ValueError as e:  # orjson's JSONDecodeError is a ValueError too
                raise ValidationError(f"the body is not JSON: {e}") from e
            if not isinstance(request, dict) or not isinstance(request.get("inputs"), dict):
                raise ValidationError(
                    "expected a JSON object with 'inputs'",
                    errors=[{"path": "inputs", "expected": "an object"}],
                )
            result = getattr(self, f"_{route}")(request)
        except ChainruleError as e:  # first: an UnknownPathError is a KeyError too
            return _error(e, route)
        except KeyError as e:  # a body without a key the route needs
            error = ValidationError(
                f"/{route}: the request body has no {e}",
                errors=[{"path": str(e.args[0]), "message": "Field required"}],
            )
            return _error(error, route)
        encoded = codec.encode(result) if fmt == "json+base64" else _json_arrays(result)
        return Response(codec.dumps_json(encoded), media_type=f"application/{fmt}")

    # ---- the five routes --------------------------------------------------------------------

    def _call(self, endpoint: str, tree: dict[str, Any]) -> dict[str, Any]:
        return self.handler.handle(endpoint, tree)

    def _at_kept(self, tree: dict[str, Any]) -> dict[str, Any]:
        """A derivative request carrying the last apply's handle: the component uses it only
        at the point it was made at (tesseract-torch's forward mode sends apply, then jvp)."""
        return tree if self.kept is None else {**tree, "handle": self.kept}

    def _apply(self, request: dict[str, Any]) -> Any:
        # Tesseract's clients follow an apply with a vjp (tesseract-jax eagerly,
        # tesseract-torch's backward) or a jvp (tesseract-torch's forward mode) at the same
        # inputs: keep the linearization, and hand its handle to the next derivative request.
        # The component uses a kept linearization only at the point it was made at
        # (fingerprinted); any other point recomputes, so a stale handle costs only that check.
        answer = self._call(
            "apply", {"inputs": decode_request(request["inputs"], "inputs"), "keep": True}
        )
        self.kept = answer.get("handle")
        return answer["outputs"]

    def _abstract_eval(self, request: dict[str, Any]) -> Any:
        inputs = _zeros(request["inputs"], self.handler.limits.elements)
        try:
            return self._call("eval_shape", {"inputs": inputs})["outputs"]
        except EndpointUnavailableError:  # shapes that need apply: run it once, on zeros
            return _shapes(self._call("apply", {"inputs": inputs})["outputs"])

    def _jacobian(self, request: dict[str, Any]) -> Any:
        wrt, of = _paths(request, "jac_inputs"), _paths(request, "jac_outputs")
        tree = {
            "inputs": decode_request(request["inputs"], "inputs"),
            "wrt": [from_tesseract(p) for p in wrt],
            "of": [from_tesseract(q) for q in of],
        }
        result = self._call("jacobian", self._at_kept(tree))["result"]
        return {
            q: {p: result[cq][cp] for p, cp in zip(wrt, tree["wrt"], strict=True)}
            for q, cq in zip(of, tree["of"], strict=True)
        }

    def _jacobian_vector_product(self, request: dict[str, Any]) -> Any:
        of = _paths(request, "jvp_outputs")
        tangents = _arrays(request, "tangent_vector")
        tree = {
            "inputs": decode_request(request["inputs"], "inputs"),
            "tangents": {from_tesseract(p): t for p, t in tangents.items()},
            "of": [from_tesseract(q) for q in of],
        }
        result = self._call("jvp", self._at_kept(tree))["result"]
        return {q: result[cq] for q, cq in zip(of, tree["of"], strict=True)}

    def _vector_jacobian_product(self, request: dict[str, Any]) -> Any:
        wrt = _paths(request, "vjp_inputs")
        cotangents = _arrays(request, "cotangent_vector")
        tree = {
            "inputs": decode_request(request["inputs"], "inputs"),
            "cotangents": {from_tesseract(q): c for q, c in cotangents.items()},
            "wrt": [from_tesseract(p) for p in wrt],
        }
        result = self._call("vjp", self._at_kept(tree))["result"]
        return {p: result[cp] for p, cp in zip(wrt, tree["wrt"], strict=True)}


def _paths(request: dict[str, Any], key: str) -> list[str]:
    """The list of paths under `key` (jac_inputs, vjp_outputs, ...), or a 422 naming it."""
    value = request[key]
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise ValidationError(
            f"'{key}' must be a list of paths (strings), got {type(value).__name__}",
            errors=[{"path": key, "expected": "a list of strings", "got": repr(value)[:80]}],
        )
    return value


def _arrays(request: dict[str, Any], key: str) -> dict[str, Any]:
    """The arrays by path under `key` (tangent_vector, cotangent_vector), or a 422 naming it."""
    value = decode_request(request[key], key)
    if not isinstance(value, dict):
        raise ValidationError(
            f"'{key}' must be an object of arrays by path, got {type(value).__name__}",
            errors=[{"path": key, "expected": "an object {path: array}", "got": repr(value)[:80]}],
        )
    return value


def _shapes(tree: Any) -> Any:
    if isinstance(tree, np.ndarray | np.generic):
        return {"shape": list(np.shape(tree)), "dtype": np.asarray(tree).dtype.name}
    if isinstance(tree, dict):
        return {k: _shapes(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_shapes(v) for v in tree]
    return tree


def _not_acceptable(accept: str) -> dict[str, Any]:
    return {
        "message": f"cannot answer in any of {accept!r}",
        "available_formats": ["json+base64", "json"],
        "available_gpu_transports": ["none"],
        "available_compressions": ["none"],
    }
