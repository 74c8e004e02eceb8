"""Running uv as pip would run: the user's pip settings carried over, uv's output tailed.

uv does not read pip's configuration, so a machine set up for pip (a local wheel directory, a
company mirror) would build component environments differently; `uv_environment` maps pip's
find-links / index-url / extra-index-url to uv's variables.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from chainrule._schema.errors import LaunchError

__all__ = ["find_uv", "pip_settings", "run_uv", "uv_environment"]

_TAIL_LINES = 40
_MSG_NO_UV = (
    "uv was not found: chainrule builds component environments with uv. "
    "Fix: `pip install uv` into the environment that runs chainrule (or put `uv` on PATH)."
)

# ----------------------------------------------------------------------------- pip settings → uv

# pip setting name -> (pip env var, uv env var, uv's separator for lists or None for one value)
_PIP_TO_UV = {
    "find-links": ("PIP_FIND_LINKS", "UV_FIND_LINKS", ","),
    "index-url": ("PIP_INDEX_URL", "UV_INDEX_URL", None),
    "extra-index-url": ("PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL", " "),
}


def _pip_config_files(environ: Mapping[str, str]) -> list[Path]:
    """pip's config files, lowest priority first (global, user, site), as pip reads them."""
    if environ.get("PIP_CONFIG_FILE") == os.devnull:
        return []
    xdg = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    files = [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf")]
    files += [Path.home() / ".pip" / "pip.conf", Path(xdg) / "pip" / "pip.conf"]
    files.append(Path(sys.prefix) / "pip.conf")
    if environ.get("PIP_CONFIG_FILE"):
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    return [f for f in files if f.is_file()]


def pip_settings(environ: Mapping[str, str]) -> dict[str, list[str]]:
    """The user's pip find-links / index-url / extra-index-url, from config files and env vars.

    Arguments:
        environ: the environment variables to read (normally `os.environ`).

    Returns:
        Setting name -> list of values; env vars override files, `[install]` overrides
        `[global]`, as in pip.
    """
    found: dict[str, list[str]] = {}
    for file in _pip_config_files(environ):
        parser = configparser.RawConfigParser()
        with contextlib.suppress(configparser.Error, OSError):
            parser.read(file, encoding="utf-8")
        for section in ("global", "install"):
            for name in _PIP_TO_UV:
                if parser.has_option(section, name):
                    found[name] = parser.get(section, name).split()
    for name, (pip_var, _, _) in _PIP_TO_UV.items():
        if environ.get(pip_var):
            found[name] = environ[pip_var].split()
    return found


def _local_path(location: str) -> Path | None:
    """The filesystem path of a local location (path or file:// URL); None for remote URLs."""
    if location.startswith("file://"):
        return Path(location[len("file://") :])
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location):
        return None
    return Path(location)


def _existing(locations: list[str]) -> tuple[list[str], list[str]]:
    """Split locations into (usable, missing local paths)."""
    kept: list[str] = []
    dropped: list[str] = []
    for loc in locations:
        local = _local_path(loc)
        (dropped if local is not None and not local.exists() else kept).append(loc)
    return kept, dropped


def uv_environment(
    environ: Mapping[str, str] | None = None, *, notes: list[str] | None = None
) -> dict[str, str]:
    """The environment variables to run uv with, carrying over the user's pip settings.

    uv does not read pip's configuration, so pip's find-links, index-url and extra-index-url
    (from pip.conf or `PIP_*` variables) are mapped to `UV_FIND_LINKS`, `UV_INDEX_URL` and
    `UV_EXTRA_INDEX_URL` unless those are set already. Local paths that do not exist are
    dropped: uv fails on a missing find-links directory, where pip only warns. With extra
    indexes, uv is told to pick the best version across indexes, as pip does.

    Arguments:
        environ: the base environment (default `os.environ`).
        notes: if given, receives one line per dropped location.

    Returns:
        A new environment dict (the input is not changed), with Python downloads disabled.
    """
    env = dict(os.environ if environ is None else environ)
    for name, values in pip_settings(env).items():
        _, uv_var, sep = _PIP_TO_UV[name]
        if env.get(uv_var):
            continue
        kept, dropped = _existing(values)
        if notes is not None:
            notes.extend(f"ignoring pip {name} {d}: it does not exist" for d in dropped)
        if kept:
            env[uv_var] = sep.join(kept) if sep else kept[0]
            if name == "extra-index-url":
                # pip picks the best version across all indexes; uv by default takes a package
                # only from the first index that has it (an old mirror would win over PyPI).
                env.setdefault("UV_INDEX_STRATEGY", "unsafe-best-match")
    env["UV_PYTHON_DOWNLOADS"] = "never"  # use interpreters already on the machine
    return env


def find_uv() -> str:
    """The uv executable: the `uv` package's binary, else `uv` on PATH.

    Returns:
        Its path; `LaunchError` saying `pip install uv` if there is none.
    """
    try:
        from uv import find_uv_bin

        return str(find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv")
    if found is None:
        raise LaunchError(_MSG_NO_UV)
    return found


def run_uv(args: list[str], env: dict[str, str], *, quiet: bool, what: str, fix: str) -> None:
    """Run uv, echoing its output to stderr unless quiet; LaunchError with its tail on failure.

    Arguments:
        args: uv's argv.
        env: its environment (`uv_environment`).
        quiet: do not echo its output.
        what: the step, for the error message ("installing ...").
        fix: what to do when the step fails, for the error message.
    """
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(
        args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, errors="replace",
    ) as proc:  # fmt: skip
        assert proc.stdout is not None  # stdout=PIPE guarantees it
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            if not quiet:
                sys.stderr.write(line)
    if proc.returncode != 0:
        log = "\n".join(f"  | {line}" for line in tail)
        raise LaunchError(
            f"{what} failed (uv exited with {proc.returncode}). Last lines of uv's output:\n"
            f"{log}\nFix: {fix}"
        )
