"""`connect(url)`: the component served at `url`, by chainrule or by a Tesseract runtime.

A chainrule server describes itself at `GET /schema`; a tesseract-runtime server has no
`/schema` and publishes its schema as OpenAPI instead. `protocol="auto"` asks `/schema` first
(the common case costs nothing extra) and only when the server answers an HTTP error there
looks for a Tesseract's OpenAPI.
"""

from __future__ import annotations

from typing import Literal

from chainrule._component.component import Component
from chainrule._schema.errors import TransportError, ValidationError

from . import wire as _wire
from .http import client as _http
from .http.raw import MAX_BYTES
from .tesseract.client import connect_tesseract, is_tesseract_at

__all__ = ["connect"]

Protocol = Literal["auto", "chainrule", "tesseract"]


def connect(
    url: str,
    *,
    protocol: Protocol = "auto",
    token: str | None = None,
    timeout: float = 300.0,
    retries: int = 4,
    content_type: str = _wire.BINARY,
    max_response_bytes: int = MAX_BYTES,
) -> Component:
    """A component served at `url`: by `chainrule serve`, `chainrule.serve` or `launch`, or
    by a Tesseract runtime (`tesseract-runtime serve`, `tesseract serve`).

    Arguments:
        url: `http://host:port` of the server (a Tesseract may sit under a path prefix).
        protocol: `"auto"` (default: a chainrule server, else a Tesseract), `"chainrule"` or
            `"tesseract"`.
        token: bearer token, if the server was started with one.
        timeout: seconds one call may take, from sending the request to the last byte of
            the answer (per attempt; a call that times out is not retried).
        retries: reconnection attempts on connection errors (calls are idempotent); the
            default 4 wait 0.75 s in all; a broken answer is retried at most twice.
        content_type: for a chainrule server, `"application/x-chainrule"` (binary, default)
            or `"application/json"`; a Tesseract is always spoken to in JSON with base64 arrays.
        max_response_bytes: the largest answer accepted from a chainrule server (default
            4 GiB); a larger one is a `TransportError` naming this limit.

    Example:
        ```python
        remote = chainrule.connect("http://127.0.0.1:8000")
        remote.vjp({"x": x}, cotangents={"y": c})
        ```
    """
    if protocol not in ("auto", "chainrule", "tesseract"):
        raise ValidationError(
            f"connect: protocol must be 'auto', 'chainrule' or 'tesseract', got {protocol!r}"
        )
    if protocol == "tesseract":
        return connect_tesseract(url, token=token, timeout=timeout, retries=retries)
    try:
        return _http.connect(
            url, token=token, timeout=timeout, retries=retries, content_type=content_type,
            max_response_bytes=max_response_bytes,
        )  # fmt: skip
    except TransportError as e:
        # An HTTP error answer from /schema is raised without a cause (an unreachable server
        # or a non-JSON body chains one): only then may it be a Tesseract.
        if protocol == "chainrule" or e.__cause__ is not None or not _tesseract(url, token):
            raise
    return connect_tesseract(url, token=token, timeout=timeout, retries=retries)


def _tesseract(url: str, token: str | None) -> bool:
    conn = _http.Connection(url, token=token, retries=1)
    try:
        return is_tesseract_at(conn)
    finally:
        conn.close()
