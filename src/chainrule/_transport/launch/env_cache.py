"""The cache of component environments: list, prune, rebuild (`chainrule env ...`).

Every environment is a directory `py3.X-<hash>` of the cache (`env.cache_root`); its record
`chainrule-env.json`, written last when the build completes, is touched each time `build_env`
reuses it, so its modification time is when it was last used. An environment that a running
launched server uses (`servers`) is never removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chainrule._schema.errors import LaunchError

from . import servers as _servers
from .env import (
    STAMP,
    Check,
    build_env,
    cache_root,
    env_dir,
    env_problem,
    load_spec,
    locked,
    remove_env,
)

__all__ = ["CachedEnv", "list_envs", "parse_age", "prune", "rebuild"]

_NAME = re.compile(r"^py\d+\.\d+-[0-9a-f]{16}$")
_LEFTOVER = re.compile(r"^\.(py\d+\.\d+-[0-9a-f]{16})\.tmp-")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class CachedEnv:
    """One environment of the cache.

    Attributes:
        path: its directory.
        record: its `chainrule-env.json` (name, python, requirements of the folder that
            built it); empty if missing.
        last_used: when a launch last used it (seconds since the epoch).
        size: bytes of its files.
        problem: why it cannot be used, or None if it can.
        users: pids of running launched servers that use it.
    """

    path: Path
    record: dict[str, Any]
    last_used: float
    size: int
    problem: str | None
    users: tuple[int, ...]


def _size(path: Path) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _record(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _users(cache: Path) -> dict[Path, tuple[int, ...]]:
    """Environment directory -> pids of the running launched servers that use it."""
    users: dict[Path, tuple[int, ...]] = {}
    for server in _servers.running(cache):
        if server.python is not None:
            venv = Path(server.python).parent.parent
            users[venv] = (*users.get(venv, ()), server.pid)
    return users


def list_envs(
    cache_dir: str | os.PathLike[str] | None = None, *, check: Check = "files"
) -> list[CachedEnv]:
    """The environments of the cache, least recently used first.

    Arguments:
        cache_dir: the cache (default: as `build_env`).
        check: how to check each environment (`env.env_problem`): `"files"` (its record and
            python exist), `"find"` (~40 ms each) or `"import"` (~1 s each). An environment
            built from another chainrule checkout is fine as long as that checkout exists.
    """
    cache = cache_root(cache_dir)
    if not cache.is_dir():
        return []
    users, found = _users(cache), []
    for path in sorted(p for p in cache.iterdir() if p.is_dir() and _NAME.match(p.name)):
        stamp = path / STAMP
        problem = env_problem(path, check=check) if stamp.is_file() else f"{STAMP} is missing"
        last_used = (stamp if stamp.is_file() else path).stat().st_mtime
        found.append(
            CachedEnv(path, _record(path), last_used, _size(path), problem, users.get(path, ()))
        )
    return sorted(found, key=lambda env: env.last_used)


def parse_age(text: str) -> float:
    """Seconds in `"30d"`, `"12h"`, `"90m"`, `"2w"` or `"3600s"`; LaunchError otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match is None:
        raise LaunchError(
            f"--older-than: expected a number and a unit (s, m, h, d, w) like '30d', got {text!r}"
        )
    return float(match[1]) * _UNITS[match[2]]


def _leftovers(cache: Path) -> list[Path]:
    """Temporary directories of builds that crashed (or envs being removed): those whose
    environment's lock is free, so no build is using them now."""
    import fcntl  # POSIX only, as `env.locked`

    found = []
    for path in cache.iterdir():
        match = _LEFTOVER.match(path.name)
        if match is None or not path.is_dir():
            continue
        with open(cache / f".{match[1]}.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a build is running
            fcntl.flock(handle, fcntl.LOCK_UN)
        found.append(path)
    return found


def prune(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    everything: bool = False,
    older_than: float | None = None,
    dry_run: bool = False,
) -> tuple[list[CachedEnv], list[CachedEnv]]:
    """Remove broken environments and leftovers of crashed builds; with `older_than`, also
    environments unused for that many seconds; with `everything`, all of them.

    Returns:
        (removed, kept because a running launched server uses them).
    """
    cache, now = cache_root(cache_dir), time.time()
    removed, in_use = [], []
    for env in list_envs(cache, check="files" if everything else "find"):
        old = older_than is not None and now - env.last_used > older_than
        if not (everything or old or env.problem is not None):
            continue
        if env.users:
            in_use.append(env)
            continue
        if not dry_run:
            with locked(cache / f".{env.path.name}.lock"):
                remove_env(env.path)
        removed.append(env)
    if not dry_run and cache.is_dir():
        for path in _leftovers(cache):
            remove_env(path)
    return removed, in_use


def rebuild(
    folder: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    quiet: bool = False,
) -> Path:
    """Delete a component folder's environment and build it again; its python.

    Raises:
        LaunchError: a running launched server uses it (stop it first), or the build failed.
    """
    spec = load_spec(folder)
    venv, cache = env_dir(spec, cache_dir), cache_root(cache_dir)
    users = _users(cache).get(venv, ())
    if users:
        raise LaunchError(
            f"the environment {venv} of {spec.name!r} is used by running servers (pids "
            f"{', '.join(map(str, users))}, see `chainrule env ps`); stop them, then rebuild."
        )
    if venv.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        with locked(venv.parent / f".{venv.name}.lock"):
            remove_env(venv)
    return build_env(spec, cache_dir=cache, quiet=quiet)
