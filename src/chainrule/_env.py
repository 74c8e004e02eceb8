"""Component folders and their own environments (layer 3, managed processes).

A *component folder* holds a Python module and a `chainrule.toml`:

```toml
name = "torch_band"
version = "0.1.0"
python = "3.11"              # optional; default: the running interpreter's major.minor
backend = "torch"            # informational: jax | torch | numpy
requirements = ["numpy<2"]   # pip requirement strings
entry = "component.py:band"  # file:object of the component inside the folder
base = "python:3.11-slim"    # optional: the base image of `chainrule build` (see _image)
os_packages = ["libgomp1"]   # optional: Debian packages installed into that image
```

`build_env` resolves the requirements with uv into a virtual environment cached under a hash of
(python version, sorted requirements, chainrule's own pyproject.toml and checkout, or the
digest of its installed code when it runs from a wheel, `_wheel`), so two
components with conflicting requirements each get their own venv and a second launch costs
only a health check of the cached one. (Running uv with the user's pip settings is `_uv`;
listing and pruning the cache is `_env_cache`.)
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from . import _wheel
from ._errors import LaunchError
from ._uv import find_uv, pip_settings, run_uv, uv_environment

__all__ = [
    "ComponentSpec",
    "build_env",
    "env_dir",
    "env_hash",
    "env_problem",
    "find_uv",
    "load_spec",
    "pip_settings",
    "uv_environment",
]

SPEC_FILE = "chainrule.toml"
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


class ComponentSpec(pydantic.BaseModel):
    """The contents of a component folder's `chainrule.toml`.

    Arguments:
        name: the component's name (letters, digits, `_`, `-`, `.`).
        version: the component's version string.
        python: `"major.minor"` of the interpreter to run it; `None` means the running one's.
        backend: informational: which framework the component uses.
        requirements: pip requirement strings installed into its environment.
        entry: `"file.py:object"`, the component object inside the folder.
        base: the base image of the component's container image (`chainrule build`); None
            picks one (see `_image`).
        os_packages: Debian packages installed into that image with apt-get.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    name: str = pydantic.Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = "0.0.0"
    python: str | None = pydantic.Field(default=None, pattern=r"^3\.\d+$")
    backend: Literal["jax", "torch", "numpy"] | None = None
    requirements: tuple[str, ...] = ()
    entry: str = pydantic.Field(pattern=r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$")
    # Both end up in a Containerfile line: the patterns keep them to one word each.
    base: str | None = pydantic.Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$")
    os_packages: tuple[
        Annotated[str, pydantic.Field(pattern=r"^[a-z0-9][a-z0-9+.-]+(=[A-Za-z0-9.+~:-]+)?$")],
        ...,
    ] = ()

    @pydantic.field_validator("requirements")
    @classmethod
    def _no_options(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Requirements are passed to uv as arguments; one starting with "-" would be an option.
        for req in value:
            if not req.strip() or req.lstrip().startswith("-"):
                raise ValueError(repr(req))
        return value

    @pydantic.field_validator("entry")
    @classmethod
    def _inside(cls, value: str) -> str:
        # The entry names a file inside the component folder: not an absolute path, no `..`.
        file = value.rsplit(":", 1)[0]
        if file.startswith(("/", "\\")):  # (a drive letter's ':' fails the pattern already)
            raise ValueError(f"{value!r}, an absolute path")
        if ".." in re.split(r"[/\\]", file):
            raise ValueError(f"{value!r}, which climbs out of the folder with '..'")
        return value

    @property
    def python_version(self) -> str:
        """The interpreter version to use: `python`, else the running interpreter's."""
        return self.python or f"{sys.version_info.major}.{sys.version_info.minor}"

    @property
    def entry_file(self) -> str:
        """The file part of `entry` (`"component.py"`)."""
        return self.entry.rsplit(":", 1)[0]


# ----------------------------------------------------------------------------- spec loading

_REQUIREMENT = "a requirement string like 'numpy<2' (not empty, not a pip option)"
_ENTRY_INSIDE = "'file.py:object' naming a file inside the component folder"
_EXPECTED = {
    "name": "a name like 'torch_band' (letters, digits, _ - .)",
    "version": "a version string like '0.1.0'",
    "python": "a version string 'major.minor' like '3.11'",
    "backend": "one of 'jax', 'torch', 'numpy'",
    "requirements": "a list of requirement strings like ['numpy<2']",
    "entry": "'file.py:object' like 'component.py:band'",
    "base": "an image reference like 'python:3.11-slim'",
    "os_packages": "a list of Debian package names like ['libgomp1']",
}


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _problem(path: str, expected: str, got: str, message: str) -> dict[str, Any]:
    return {"path": path, "expected": expected, "got": got, "message": message}


def _spec_problem(err: Mapping[str, Any]) -> dict[str, Any]:
    """One pydantic error as a {path, expected, got, message} dict naming the key."""
    loc = err["loc"]
    key, path = (str(loc[0]) if loc else "?"), ".".join(str(p) for p in loc)
    known = ", ".join(_EXPECTED)
    if err["type"] == "extra_forbidden":
        close = difflib.get_close_matches(key, list(_EXPECTED), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return _problem(path, f"one of {known}", key, f"unknown key {key!r}{hint}; known: {known}")
    expected = _EXPECTED.get(key, str(err["msg"]))
    if err["type"] == "missing":
        return _problem(path, expected, "nothing", f"missing key {key!r}: expected {expected}")
    if key == "requirements" and (len(loc) > 1 or err["type"] == "value_error"):
        expected = _REQUIREMENT  # one bad item of `requirements`
    elif key == "entry" and err["type"] == "value_error":
        expected = _ENTRY_INSIDE
    got = str(err["ctx"]["error"]) if err["type"] == "value_error" else _describe(err["input"])
    return _problem(path, expected, got, f"key {path!r}: expected {expected}, got {got}")


def parse_spec(data: Mapping[str, Any], where: str = SPEC_FILE) -> ComponentSpec:
    """Validate the parsed contents of a `chainrule.toml`.

    Arguments:
        data: the TOML document as a dict.
        where: how to name the file in error messages.

    Returns:
        The validated, frozen spec; a `LaunchError` naming each bad key otherwise.
    """
    try:
        return ComponentSpec.model_validate(dict(data))
    except pydantic.ValidationError as e:
        problems = [_spec_problem(err) for err in e.errors()]
        lines = "\n".join(f"  - {p['message']}" for p in problems)
        raise LaunchError(f"{where} is not valid:\n{lines}", errors=problems) from e


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise LaunchError(f"{path} is not valid TOML: {e}. Fix the syntax of that file.") from e


def load_spec(folder: str | os.PathLike[str]) -> ComponentSpec:
    """Read and validate a component folder's `chainrule.toml`.

    Arguments:
        folder: the component folder.

    Returns:
        The spec. Raises `LaunchError` if the file is missing or invalid, or if the entry file
        does not exist in the folder.

    Example: `load_spec("examples/bands/remote_band").requirements`
    """
    path = Path(folder) / SPEC_FILE
    if not path.is_file():
        raise LaunchError(
            f"no {SPEC_FILE} in {Path(folder)!s}: a component folder needs one "
            "(name, version, requirements, entry). See docs/environments.md."
        )
    spec = parse_spec(_read_toml(path), where=str(path))
    entry_path(folder, spec)
    return spec


def entry_path(folder: str | os.PathLike[str], spec: ComponentSpec) -> Path:
    """The entry file of a component folder, resolved (symlinks followed).

    Returns:
        Its absolute path; `LaunchError` naming the key if it does not exist or is not
        inside the folder (a symbolic link pointing out of it, say).
    """
    root, where = Path(folder).resolve(), Path(folder) / SPEC_FILE
    file = (root / spec.entry_file).resolve()
    if not file.is_relative_to(root):
        raise LaunchError(
            f"{where}: key 'entry': expected {_ENTRY_INSIDE}, got {spec.entry!r}, which "
            f"resolves to {file}, outside {root}. Fix: move the file into the folder."
        )
    if not file.is_file():
        raise LaunchError(
            f"{where}: key 'entry': expected a file inside {Path(folder)!s}, "
            f"got {spec.entry_file!r}, which does not exist."
        )
    return file


# ----------------------------------------------------------------------------- the cache key


def chainrule_root() -> Path:
    """The source checkout chainrule is installed from (holds its pyproject.toml).

    Returns:
        The project root; `LaunchError` if chainrule is not installed from a checkout.
    """
    import chainrule

    here = Path(chainrule.__file__).resolve()
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
        return str(_read_toml(pyproject).get("project", {}).get("name"))
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
    "import": "import json, sys, chainrule, chainrule._server, uvicorn; "
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
