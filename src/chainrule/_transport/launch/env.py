"""The own environments of component folders (a folder and its `chainrule.toml`: `spec`).

`build_env` resolves the requirements with uv into a virtual environment cached under a hash of
(python version, sorted requirements, chainrule's own pyproject.toml and checkout, or the
digest of its installed code when it runs from a wheel, `wheel`), so two
components with conflicting requirements each get their own venv and a second launch costs
only a health check of the cached one. (Running uv with the user's pip settings is `uv`;
listing and pruning the cache is `env_cache`.)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from chainrule._schema.errors import LaunchError

from . import wheel as _wheel
from .spec import SPEC_FILE, ComponentSpec, entry_path, load_spec, parse_spec, read_toml
from .uv import find_uv, pip_settings, run_uv, uv_environment

# The spec's names are re-exported: a folder's spec and its environment go together.
__all__ = [
    "SPEC_FILE",
    "ComponentSpec",
    "build_env",
    "entry_path",
    "env_dir",
    "env_hash",
    "env_problem",
    "find_uv",
    "load_spec",
    "parse_spec",
    "pip_settings",
    "uv_environment",
]

STAMP = "chainrule-env.json"  # an environment's record, written when its build is complete
_LAYOUT = 2  # bump when the venv layout changes, so old cached envs are not reused (2: bytecode)
_MSG_NO_SOURCE = (
    "chainrule does not run from a source checkout (found no pyproject.toml of project "
    "'chainrule' above {file}, outside site-packages)"
)

_MSG_NO_PYTHON = (
    "install Python {version} (uv never downloads one for chainrule), make `python{version}` "
    "on PATH runnable (with pyenv: `pyenv global <current> {version}.x`), or change `python` "
    "in chainrule.toml to an installed version."
)
_MSG_INSTALL_FAILED = (
    "check the requirements in chainrule.toml (a version that does not exist, or none for "
    "this Python), the network, or your index settings (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, "
    "PIP_FIND_LINKS, pip.conf or UV_* variables), then launch again."
)


# ----------------------------------------------------------------------------- the cache key


def chainrule_root() -> Path:
    """The source checkout chainrule is installed from (holds its pyproject.toml).

    Returns:
        The project root; `LaunchError` if chainrule is not installed from a checkout.
    """
    # This module's own file: the package lies inside the checkout's src/ like every module.
    here = Path(__file__).resolve()
    for parent in here.parents:
        if parent.name in ("site-packages", "dist-packages"):
            break  # installed (from a wheel): a checkout around the venv is not its source
        pyproject = parent / "pyproject.toml"
        if pyproject.is_file() and _project_name(pyproject) == "chainrule":
            return parent
    raise LaunchError(_MSG_NO_SOURCE.format(file=here))


def source_checkout() -> Path | None:
    """The source checkout chainrule runs from, or None when it is installed from a wheel."""
    try:
        return chainrule_root()
    except LaunchError:
        return None


def _chainrule_key() -> dict[str, str]:
    """What identifies the chainrule an environment installs: its checkout, else its code."""
    root = source_checkout()
    if root is None:
        return {"wheel": _wheel.installed_digest()}
    return {
        "chainrule": (root / "pyproject.toml").read_text(encoding="utf-8"),
        "checkout": str(root),  # chainrule is installed editable from it
    }


def _project_name(pyproject: Path) -> str | None:
    try:
        return str(read_toml(pyproject).get("project", {}).get("name"))
    except LaunchError:
        return None


def env_hash(spec: ComponentSpec) -> str:
    """The cache key of a spec's environment.

    Arguments:
        spec: the component spec.

    Returns:
        16 hex digits over (layout, python version, sorted requirements, chainrule's
        pyproject.toml and checkout): the same requirements in any order share one
        environment; two checkouts of chainrule do not (each is installed editable). A
        chainrule installed from a wheel counts by the digest of its code instead.
    """
    key = {
        "layout": _LAYOUT,
        "python": spec.python_version,
        "requirements": sorted(r.strip() for r in spec.requirements),
        **_chainrule_key(),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where environments live: `cache_dir`, else `$CHAINRULE_CACHE`, else the user cache.

    Arguments:
        cache_dir: an explicit directory, or None.

    Returns:
        The directory as an absolute path (a relative one is taken from the current working
        directory); `~/.cache/chainrule/envs` when nothing else is set.
    """
    if cache_dir is not None:
        root = Path(cache_dir)
    elif os.environ.get("CHAINRULE_CACHE"):
        root = Path(os.environ["CHAINRULE_CACHE"])
    else:
        root = Path.home() / ".cache" / "chainrule" / "envs"
    # Absolute now: servers run in their component folder, where a relative path means
    # something else.
    return Path(os.path.abspath(root.expanduser()))


def env_dir(spec: ComponentSpec, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory of a spec's cached environment (it may not exist yet)."""
    return cache_root(cache_dir) / f"py{spec.python_version}-{env_hash(spec)}"


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


# ----------------------------------------------------------------------------- building


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a lock file) across processes."""
    import fcntl  # POSIX only; environments are built on Linux and macOS

    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _interpreter(version: str) -> str:
    """What to pass to `uv venv --python`: our own interpreter when the version matches.

    Passing a path spares uv the search of PATH, where a pyenv shim of another version may
    come first and fail.
    """
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    return sys.executable if version == here and sys.executable else version


def _create(spec: ComponentSpec, target: Path, *, quiet: bool) -> None:
    """Create the venv at `target` and install the requirements plus chainrule[serve]."""
    notes: list[str] = []
    env, uv = uv_environment(notes=notes), find_uv()
    if not quiet:
        for note in notes:
            print(f"chainrule: {note}", file=sys.stderr)
    version = spec.python_version
    run_uv(
        [uv, "venv", "--python", _interpreter(version), "--python-preference", "only-system",
         "--relocatable", str(target)],
        env, quiet=quiet, what=f"creating a Python {version} environment for {spec.name!r}",
        fix=_MSG_NO_PYTHON.format(version=version),
    )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="chainrule-wheel-") as tmp:
        # Bytecode compiled now: uv compiles nothing by default, and where Python may not
        # cache it (PYTHONDONTWRITEBYTECODE) every start compiled what the import check below
        # had not loaded: 0.74 -> 0.53 s from launch to the first answer (measured).
        run_uv(
            [uv, "pip", "install", "--python", str(_venv_python(target)), "--compile-bytecode",
             *_chainrule_source(Path(tmp)), *spec.requirements],
            env, quiet=quiet, what=f"installing the requirements of {spec.name!r}",
            fix=_MSG_INSTALL_FAILED,
        )  # fmt: skip
    problem = _problem_here(target, "import")  # one that does not import is no build
    if problem is not None:
        raise LaunchError(
            f"the new environment of {spec.name!r} is not usable: {problem}. Fix: {_MSG_PROBE}"
        )
    # Written last: an environment without its record is unfinished.
    root = source_checkout()
    record = {
        "name": spec.name,
        "python": version,
        "requirements": list(spec.requirements),
        "checkout": None if root is None else str(root),  # None: from a wheel of chainrule
    }
    (target / STAMP).write_text(json.dumps(record, indent=2) + "\n")


# ----------------------------------------------------------------------------- health

# How an environment is checked (`env_problem`), from cheapest to most thorough:
# - "files": its python exists (following the link: a removed base interpreter counts);
# - "find": its python runs and finds chainrule (in this checkout) and what `chainrule serve`
#   imports, without importing them: ~40 ms, run at every launch;
# - "import": its python imports chainrule and its server: ~0.3 s for chainrule alone (numpy,
#   pydantic), ~1 s with the server; run after a build and by `chainrule env list --check`.
Check = Literal["files", "find", "import"]
_SERVES = ("numpy", "pydantic", "fastapi", "uvicorn")
_PROBES = {
    "find": "import importlib.util as u, json, sys; sys.stdout.write(json.dumps("
    "[getattr(u.find_spec('chainrule'), 'origin', None)] + "
    f"[m for m in {_SERVES!r} if u.find_spec(m) is None]))",
    "import": "import json, sys, chainrule, chainrule._transport.http.app, uvicorn; "
    "sys.stdout.write(json.dumps([chainrule.__file__]))",
}
_PROBE_TIMEOUT = 120.0
_MSG_PROBE = (
    "check that the chainrule checkout imports in this Python (`python -c 'import chainrule'`)"
)


def env_problem(venv: Path, *, check: Check = "find", checkout: Path | None = None) -> str | None:
    """Why the environment at `venv` cannot be used, or None if it can.

    Arguments:
        venv: the environment's directory.
        check: how thoroughly: `"files"`, `"find"` or `"import"` (see `_PROBES`).
        checkout: the chainrule checkout it must find chainrule in (None: any).

    Returns:
        A sentence saying what is wrong, or None.
    """
    python = _venv_python(venv)
    if not python.exists():
        return f"its python {python} is missing or points to an interpreter that is gone"
    if check == "files":
        return None
    try:
        run = subprocess.run(
            [str(python), "-I", "-c", _PROBES[check]], capture_output=True, text=True,
            errors="replace", timeout=_PROBE_TIMEOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"its python did not answer within {_PROBE_TIMEOUT:g} s"
    except OSError as e:
        return f"its python {python} does not run ({e})"
    if run.returncode != 0:
        last = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
        return f"its python fails to {'import' if check == 'import' else 'find'} chainrule: {last}"
    return _found_problem(json.loads(run.stdout), checkout)


def _found_problem(found: list[str | None], checkout: Path | None) -> str | None:
    """What is wrong with what a probe found: [chainrule's file, missing packages...]."""
    origin, missing = found[0], found[1:]
    if origin is None:
        return "it does not find chainrule (was its checkout moved or deleted?)"
    if checkout is not None and not Path(origin).resolve().is_relative_to(checkout):
        return f"it finds chainrule at {origin}, not in this checkout {checkout}"
    if missing:
        return f"it lacks {', '.join(map(str, missing))}"
    return None


def _ready(venv: Path) -> bool:
    """Whether `venv` is a finished (record written last) environment that works here."""
    return (venv / STAMP).is_file() and _problem_here(venv) is None


def _problem_here(venv: Path, check: Check = "find") -> str | None:
    return env_problem(venv, check=check, checkout=source_checkout())


def _chainrule_source(tmp: Path) -> list[str]:
    """How uv installs chainrule[serve]: editable from its checkout, else from a wheel of the
    running installation (written into `tmp`), so no index needs to have chainrule."""
    root = source_checkout()
    if root is not None:
        return ["-e", f"{root}[serve]"]
    return [f"{_wheel.running_wheel(tmp)}[serve]"]


def remove_env(venv: Path) -> None:
    """Delete an environment: renamed away first (atomic), so no one sees half of it."""
    trash = venv.parent / f".{venv.name}.tmp-removed-{uuid.uuid4().hex[:8]}"
    with contextlib.suppress(FileNotFoundError):
        os.rename(venv, trash)
    shutil.rmtree(trash, ignore_errors=True)


def build_env(
    folder_or_spec: str | os.PathLike[str] | ComponentSpec,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
) -> Path:
    """Build (or reuse) the cached virtual environment of a component.

    The venv is built in a temporary directory next to its final place and renamed into place
    under a file lock, so concurrent builders never see or leave a half-built environment. A
    cached environment is reused only if it works (`env_problem`: its python runs and finds
    chainrule in this checkout and the packages its server imports, ~40 ms); a broken one is
    deleted and built again.

    Arguments:
        folder_or_spec: a component folder, or its spec.
        cache_dir: where environments live (default `$CHAINRULE_CACHE`, else
            `~/.cache/chainrule/envs`).
        quiet: do not echo uv's progress to stderr.

    Returns:
        The path of the environment's python executable.

    Example: `python = build_env("examples/bands/remote_band")`
    """
    spec = (
        folder_or_spec if isinstance(folder_or_spec, ComponentSpec) else load_spec(folder_or_spec)
    )
    final = env_dir(spec, cache_dir)
    if _ready(final):
        return _used(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with locked(final.parent / f".{final.name}.lock"):
        if final.exists():
            if _ready(final):  # another process built it while we waited
                return _used(final)
            if not quiet:
                why = _problem_here(final) or "its build did not finish"
                print(f"chainrule: rebuilding {final}: {why}", file=sys.stderr)
            remove_env(final)
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # a crashed build's leftovers
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            _create(spec, tmp, quiet=quiet)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _used(final)


def _used(venv: Path) -> Path:
    """Note that `venv` was used now (its record's mtime, for `chainrule env prune`); its python."""
    with contextlib.suppress(OSError):  # a read-only cache is still usable
        os.utime(venv / STAMP)
    return _venv_python(venv)
