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

__all__ = ["Callback", "buffer_host", "direct_host", "put"]

Callback = Callable[..., None]
"""A buffer callback as jaxlib calls it: `(exec_ctx, *input buffers, *result buffers)`."""


def buffer_host(
    host: Callable[..., list[np.ndarray]], share: bool, inputs: int
) -> Callable[..., None]:
    """`host(arrays) -> results` as a `buffer_callback` callback `(ctx, out, *args) -> None`
    (`direct_host`'s, for `jax.experimental.buffer_callback`'s calling convention)."""
    direct = direct_host(host, share, inputs)

    def callback(ctx: Any, out: Sequence[Any], *args: Any) -> None:
        direct(ctx, *args, *out)

    return callback


def direct_host(
    host: Callable[..., list[np.ndarray]], share: bool, inputs: int
) -> Callable[..., None]:
    """`host(arrays) -> results` as jaxlib's buffer callback `(ctx, *inputs, *results)`
    (`compat.lower_buffer_callback`); `inputs`: how many buffers are inputs. With `share`,
    the arrays are read-only views of XLA's buffers, else read-only copies of them (for hosts
    that run author code, which could keep an array past the call)."""
    if share:
        return _shared_callback(host, inputs)

    def copied(ctx: Any, *buffers: Any) -> None:
        arrays = [_copy(b) for b in buffers[:inputs]]
        try:
            results = host(arrays)
            for target, result in zip(buffers[inputs:], results, strict=True):
                _fill(np.asarray(target), result)
        except Exception as e:
            _clear(e)  # (the copies are the host's own: nothing of XLA's can be pinned)
            raise carry(e) from None

    return copied


def _shared_callback(host: Callable[..., list[np.ndarray]], inputs: int) -> Callable[..., None]:
    def shared(ctx: Any, *buffers: Any) -> None:
        views = [_read_only(b) for b in buffers[:inputs]]
        counts = _counts(views)
        try:
            results = host(views)
            for target, result in zip(buffers[inputs:], results, strict=True):
                _fill(np.asarray(target), result)
        except Exception as e:
            _clear(e)
            raise carry(_unpinned(e, views, counts)) from None

    return shared


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


def put(buffer: Any, value: Any) -> None:
    """Copy `value` into XLA's result `buffer` (exact shape; dtype cast as the generic path
    does; else a clear error)."""
    target = np.asarray(buffer)
    if type(value) is np.ndarray and value.dtype == target.dtype and value.shape == target.shape:
        np.copyto(target, value)
    else:
        _fill(target, np.asarray(value, target.dtype))
