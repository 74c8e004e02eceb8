"""Refusals a server side answers with a status of its own (an HTTP status code; another
transport ignores it), each a public error class on the client side.

A request over a size limit (`TooLarge`, 413), a content type the server does not speak
(`Unsupported`, 415), a call past the server's `call_timeout` (`TimedOut`, 504) or one no
worker could take (`Saturated`, 503). Each is sent as the public class its client re-raises
(`to_dict`): a `WireFormatError` or a `TransportError`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from chainrule._schema.errors import TransportError, WireFormatError

__all__ = [
    "Answered",
    "Limit",
    "Saturated",
    "TimedOut",
    "TooLarge",
    "Unsupported",
    "too_large",
]


class Answered(WireFormatError):
    """A WireFormatError answered with its own HTTP status; clients see a WireFormatError."""

    status = 400

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "type": WireFormatError.__name__}


class TooLarge(Answered):
    """Answered 413: the request is over one of the server's size limits."""

    status = 413


class Unsupported(Answered):
    """Answered 415: a content type (or Accept parameter) the server does not speak."""

    status = 415


class TimedOut(TransportError):
    """Answered 504: the call ran past the server's call_timeout; clients see a TransportError."""

    status = 504

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "type": TransportError.__name__}


class Saturated(TimedOut):
    """Answered 503: no worker thread could take the call."""

    status = 503


class Limit(NamedTuple):
    """A size limit of requests: its value and setting, and how to stay under it."""

    value: int
    setting: str
    fix: str


def too_large(limit: Limit, got: str, path: str = "(body)", unit: str = "bytes") -> TooLarge:
    """The 413 of a request over `limit`, naming the limit's setting and how to stay under."""
    return TooLarge(
        f"{got} at '{path}' exceeds the limit of {limit.value} {unit} ({limit.setting}); "
        f"{limit.fix}, or raise the server's {limit.setting} "
        f"(chainrule serve --{limit.setting.replace('_', '-')})",
        errors=[{"path": path, "expected": f"<= {limit.value} {unit}", "got": got}],
    )
