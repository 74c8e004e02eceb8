"""A lifeline: a pipe whose write end only the launching process holds.

A launched process that gets the read end as its stdin reads end of file once the launching
process is gone, however it went (exit, SIGTERM, SIGKILL): the container watcher
(`container_watch`) then removes its container. A server in a uv environment needs none (it
watches its parent's pid, `--parent-pid`).
"""

from __future__ import annotations

import contextlib
import os

__all__ = ["Lifeline"]


class Lifeline:
    """The write end of the current lifeline; `next_stdin` cuts it and makes a new one."""

    def __init__(self) -> None:
        self._write = -1

    def next_stdin(self) -> int:
        """The read end of a new lifeline for the next process (the previous one cut); the
        caller closes it once the process has started. Pipes are created non-inheritable: no
        other child holds our end."""
        self.cut()
        read, self._write = os.pipe()
        return read

    def cut(self) -> None:
        """Close our end: the process reading the lifeline sees end of file. Idempotent."""
        if self._write >= 0:
            with contextlib.suppress(OSError):
                os.close(self._write)
            self._write = -1
