"""The servers `launch` started that are still running: a small registry in the cache directory.

`launch` records each server when it answers its first health check (and again after a
restart, with the new pid) and forgets it when stopped, in `<cache>/servers.json`, one file
per cache directory, rewritten under a file lock; nothing is written per call. A server whose
launcher died without stopping it stays listed as long as it runs, which is how
`chainrule env ps` finds orphans. Entries of processes that are gone (or whose pid now belongs
to another process) are dropped whenever the registry is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic

from .env import locked

__all__ = [
    "REGISTRY",
    "ServerRecord",
    "forget",
    "note_started",
    "note_stopped",
    "record",
    "running",
]

REGISTRY = "servers.json"


class ServerRecord(pydantic.BaseModel):
    """One launched server.

    Arguments:
        pid: the server process (the leader of its process group).
        url: where it answers.
        name: the component's name.
        folder: the component folder.
        python: the environment's python (None for a custom command).
        started: when it answered first (seconds since the epoch).
        launcher: the pid of the Python process that launched it.
        ticks: the process's start time in clock ticks after boot (Linux), to tell a reused
            pid from the server.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="ignore")

    pid: int
    url: str
    name: str
    folder: str
    python: str | None = None
    started: float
    launcher: int
    ticks: int | None = None


def start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks after boot, Linux); None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (command) "
    return None if fields[0] == "Z" else int(fields[19])  # a zombie has exited


def _alive(entry: ServerRecord) -> bool:
    try:
        os.kill(entry.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process now: told apart by its start time below
    if not Path("/proc").is_dir():
        return True
    return entry.ticks is None or start_ticks(entry.pid) == entry.ticks


@contextlib.contextmanager
def _registry(cache: Path) -> Iterator[list[ServerRecord]]:
    """The live entries of `cache`'s registry, written back (atomically) when the block ends."""
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / REGISTRY
    with locked(cache / f".{REGISTRY}.lock"):
        entries = [e for e in _read(path) if _alive(e)]
        yield entries
        tmp = path.with_name(f".{REGISTRY}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps([e.model_dump() for e in entries], indent=1) + "\n")
        os.replace(tmp, path)


def _read(path: Path) -> list[ServerRecord]:
    try:
        data: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return []  # none yet, or damaged: it only lists what runs, start afresh
    entries = []
    for item in data if isinstance(data, list) else []:
        with contextlib.suppress(pydantic.ValidationError):
            entries.append(ServerRecord.model_validate(item))
    return entries


def record(cache: Path, entry: ServerRecord) -> None:
    """Add (or replace, by url) a running server."""
    with _registry(cache) as entries:
        entries[:] = [e for e in entries if e.url != entry.url] + [entry]


def forget(cache: Path, url: str) -> None:
    """Remove the server at `url`."""
    with _registry(cache) as entries:
        entries[:] = [e for e in entries if e.url != url]


def running(cache: Path) -> list[ServerRecord]:
    """The servers launched with this cache directory that still run (stale entries dropped)."""
    if not (cache / REGISTRY).exists():
        return []
    with _registry(cache) as entries:
        return list(entries)


def note_started(
    cache: Path | None, *, pid: int, url: str, name: str, folder: Path, python: Path | None
) -> None:
    """Record a server that just answered its first health check (best effort: a cache
    directory that cannot be written only loses the listing)."""
    if cache is None:
        return
    entry = ServerRecord(
        pid=pid, url=url, name=name, folder=str(folder),
        python=None if python is None else str(python), started=time.time(),
        launcher=os.getpid(), ticks=start_ticks(pid),
    )  # fmt: skip
    with contextlib.suppress(OSError):
        record(cache, entry)


def note_stopped(cache: Path | None, url: str) -> None:
    """Forget a server that was stopped (best effort)."""
    if cache is not None:
        with contextlib.suppress(OSError):
            forget(cache, url)
