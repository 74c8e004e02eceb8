"""The watcher of one container: runs `podman|docker run ...` and removes the container when the
process that started it is gone, however it went.

Run by `container` as `python -I container_watch.py EXE NAME STOP_TIMEOUT -- <run argv>`, in
its own session, with stdin the read end of a pipe whose write end only the launching process
holds (and never writes to). End of file on stdin therefore means that process has ended: a
normal exit, SIGTERM (which runs no exit hook), SIGKILL, or its whole process group killed. The
watcher then stops and removes the container and exits. SIGTERM to the watcher (what
`Launched.stop` sends) does the same. Nothing is needed in the launching process: no signal
handler, no thread. Standard library only, so it starts in a few milliseconds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from types import FrameType

_lock = threading.Lock()
_removed = False


def _remove(exe: str, name: str, timeout: str) -> None:
    """Stop the container (SIGTERM, SIGKILL after `timeout` s) and remove it; quiet if gone."""
    global _removed
    with _lock:
        if _removed:
            return
        _removed = True
        quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL,
                 "stderr": subprocess.DEVNULL}  # fmt: skip
        # `run --rm` removes a stopped container itself; `rm -f` covers a run that is gone.
        subprocess.run([exe, "stop", "-t", timeout, name], check=False, **quiet)  # type: ignore[call-overload]
        subprocess.run([exe, "rm", "-f", name], check=False, **quiet)  # type: ignore[call-overload]


def _wait_for_eof() -> None:
    try:
        while os.read(0, 4096):  # the launching process never writes: only EOF matters
            pass
    except OSError:
        pass


def main(argv: list[str]) -> int:
    exe, name, timeout, sep, *run = argv
    if sep != "--" or not run:
        sys.stderr.write("usage: container_watch.py EXE NAME STOP_TIMEOUT -- RUN-ARGV...\n")
        return 2
    proc = subprocess.Popen(run, stdin=subprocess.DEVNULL)  # its output goes where ours goes

    def on_term(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=_remove, args=(exe, name, timeout), daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)

    def parent_gone() -> None:
        _wait_for_eof()
        _remove(exe, name, timeout)

    threading.Thread(target=parent_gone, daemon=True).start()
    code = proc.wait()
    # The run command may end before its container (killed, or SIGPIPE once the launcher's
    # log pipe is gone): make sure the container goes too.
    if code < 0 or code >= 125:
        _remove(exe, name, timeout)
    with _lock:  # a removal under way finishes before the watcher exits
        pass
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
