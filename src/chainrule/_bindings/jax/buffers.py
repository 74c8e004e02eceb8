"""Host functions as JAX buffer callbacks: XLA's own buffers in, XLA's result buffers out.

Where no author code gets the arrays (a remote component: its client encodes them), the host
reads each input as a read-only numpy view of XLA's buffer (no copy; JAX arrays are
immutable, so numpy refuses writes); elsewhere it gets read-only copies. Its
results are copied into XLA's result buffers after an exact shape and dtype check. XLA
reuses an input's memory once the callback returns, so nothing may keep a view past the
call: residuals keep their own copies (`Residual`), and a failing host's error is carried
only once it holds no view (its frames' locals are cleared; if the error itself still holds
one, its chain of causes is dropped, its text kept).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from chainrule._component.carried import carry

__all__ = ["buffer_host"]


def buffer_host(host: Callable[..., list[np.ndarray]], share: bool) -> Callable[..., None]:
    """`host(arrays) -> results` as a buffer callback `(ctx, out, *args) -> None`; with
    `share`, the arrays are views of XLA's buffers, else read-only copies of them (for hosts
    that run author code, which could keep an array past the call)."""
    given = _read_only if share else _copy

    def callback(ctx: Any, out: Sequence[Any], *args: Any) -> None:
        views = [given(a) for a in args]
        counts = _counts(views)
        try:
            results = host(views)
            for buffer, result in zip(out, results, strict=True):
                _fill(np.asarray(buffer), result)
        except Exception as e:
            _clear(e)
            raise carry(_unpinned(e, views, counts)) from None

    return callback


def _read_only(buffer: Any) -> np.ndarray:
    view = np.asarray(buffer)
    view.flags.writeable = False
    return view


def _copy(buffer: Any) -> np.ndarray:
    copy = np.asarray(buffer).copy()  # (Buffer.__array__ makes no copies itself)
    copy.flags.writeable = False  # as JAX's emitter hands them over
    return copy


def _fill(target: np.ndarray, result: Any) -> None:
    value = np.asarray(result)
    if value.shape != target.shape or value.dtype != target.dtype:  # copyto would broadcast
        raise ValueError(
            f"a host callback answered a {value.dtype}{list(value.shape)} array where JAX "
            f"expects {target.dtype}{list(target.shape)}"
        )
    np.copyto(target, value)


def _clear(error: BaseException) -> None:
    """Clear the locals of the finished frames of `error` and of its causes (they hold the
    views the host was given)."""
    seen: set[int] = set()
    found: BaseException | None = error
    while found is not None and id(found) not in seen:
        seen.add(id(found))
        traceback.clear_frames(found.__traceback__)
        found = found.__cause__ or found.__context__


def _pinned(views: list[np.ndarray], counts: list[int]) -> bool:
    """Whether something besides `views` refers to an input view (or a view made of one:
    numpy's views and torch's tensors over them hold it)."""
    return any(now > then for now, then in zip(_counts(views), counts, strict=True))


def _counts(views: list[np.ndarray]) -> list[int]:
    return [sys.getrefcount(v) for v in views]  # the same way each time: same overhead


def _unpinned(error: BaseException, views: list[np.ndarray], counts: list[int]) -> BaseException:
    """`error`, or what of it can outlive XLA's buffers: without its causes if they hold an
    input view (a Pydantic error keeps the value it refused), else its text alone."""
    if not _pinned(views, counts):
        return error
    error.__cause__ = error.__context__ = None
    if not _pinned(views, counts):
        return error
    return RuntimeError(f"{type(error).__name__}: {error}")
