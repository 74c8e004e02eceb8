"""Validation messages: a Pydantic validation error as one readable line per problem (path,
expected, got, how to fix it) plus the structured detail every `ChainruleError` carries."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pydantic

from .errors import ChainruleError
from .schema import describe_value

__all__ = ["MAX_REPORTED", "format_pydantic", "prefixed"]

_INTERNAL_LOC = re.compile(r"^[a-z-]+\[.*\]$")  # pydantic's labels of union members


def _loc_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(x) for x in loc if not _INTERNAL_LOC.match(str(x))) or "(root)"


MAX_REPORTED = 20
"""Most problems one error lists; a body of 50,000 bad keys is answered with the first ones
and how many more there are, in time and size linear in the body (never quadratic)."""


def format_pydantic(error: pydantic.ValidationError, what: str) -> tuple[str, list[dict[str, Any]]]:
    """One readable line per problem, naming the path, expected and got, plus structured detail
    (the first `MAX_REPORTED` distinct problems, then how many errors are left unread)."""
    seen: set[str] = set()
    details: list[dict[str, Any]] = []
    errors = error.errors(include_url=False)
    unread = iter(errors)
    for err in unread:
        detail = _problem(err)
        if detail["message"] not in seen:  # a union reports the same problem once per member
            seen.add(detail["message"])
            details.append(detail)
        if len(details) == MAX_REPORTED:
            break
    message = f"{what}: " + "; ".join(d["message"] for d in details)
    more = sum(1 for _ in unread)
    return message + (f"; and {more} more errors" if more else ""), details


def _problem(err: Any) -> dict[str, Any]:
    """The detail of one pydantic error: path, expected, got, message, type."""
    path = _loc_path(err["loc"])
    kind, ctx = err["type"], err.get("ctx") or {}
    expected, got = ctx.get("expected"), ctx.get("got")
    if kind == "missing":
        msg = f"'{path}' is required but missing; add it"
        expected, got = "a value", "nothing"
    elif kind == "extra_forbidden":
        msg = f"'{path}' is not a field of this schema; remove it or check its spelling"
        expected, got = "no such field", path
    else:
        shown = "" if "got" in ctx else f" (got {describe_value(err.get('input'))})"
        msg = f"'{path}': {err['msg']}{shown}"
        got = got if got is not None else describe_value(err.get("input"))
    return {"path": path, "expected": expected, "got": got, "message": msg, "type": kind}


def prefixed(cls: type[ChainruleError], what: str) -> Callable[..., ChainruleError]:
    """An error factory `fail(message, errors)` of `cls`, its message prefixed by `what`."""

    def fail(message: str, errors: list[dict[str, Any]]) -> ChainruleError:
        return cls(f"{what}: {message}", errors=errors)

    return fail
