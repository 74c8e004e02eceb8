"""Component folders and their own environments (layer 3, managed processes).

A *component folder* holds a Python module and a `chainrule.toml`:

```toml
name = "torch_band"
version = "0.1.0"
python = "3.11"              # optional; default: the running interpreter's major.minor
backend = "torch"            # informational: jax | torch | numpy
requirements = ["numpy<2"]   # pip requirement strings
entry = "component.py:band"  # file:object of the component inside the folder
```

`build_env` resolves the requirements with uv into a virtual environment cached under a hash of
(python version, sorted requirements, chainrule's own pyproject.toml), so two components with
conflicting requirements each get their own venv and a second launch costs nothing.
"""

from __future__ import annotations

import configparser
import contextlib
import difflib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import pydantic

from ._errors import LaunchError

__all__ = ["ComponentSpec", "build_env", "env_dir", "env_hash", "load_spec", "uv_environment"]

SPEC_FILE = "chainrule.toml"
_LAYOUT = 1  # bump when the venv layout changes, so old cached envs are not reused
_TAIL_LINES = 40
_MSG_NO_UV = (
    "uv was not found: chainrule builds component environments with uv. "
    "Fix: `pip install uv` into the environment that runs chainrule (or put `uv` on PATH)."
)
_MSG_NO_SOURCE = (
    "chainrule must be installed from a source checkout for now (found no pyproject.toml of "
    "project 'chainrule' above {file}): a component environment installs chainrule editable "
    "from that checkout. Fix: `pip install -e <checkout>[serve]`."
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
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    name: str = pydantic.Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    version: str = "0.0.0"
    python: str | None = pydantic.Field(default=None, pattern=r"^3\.\d+$")
    backend: Literal["jax", "torch", "numpy"] | None = None
    requirements: tuple[str, ...] = ()
    entry: str = pydantic.Field(pattern=r"^[^:]+\.py:[A-Za-z_][A-Za-z0-9_]*$")

    @pydantic.field_validator("requirements")
    @classmethod
    def _no_options(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Requirements are passed to uv as arguments; one starting with "-" would be an option.
        for req in value:
            if not req.strip() or req.lstrip().startswith("-"):
                raise ValueError(repr(req))
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
_EXPECTED = {
    "name": "a name like 'torch_band' (letters, digits, _ - .)",
    "version": "a version string like '0.1.0'",
    "python": "a version string 'major.minor' like '3.11'",
    "backend": "one of 'jax', 'torch', 'numpy'",
    "requirements": "a list of requirement strings like ['numpy<2']",
    "entry": "'file.py:object' like 'component.py:band'",
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
    if len(loc) > 1 or err["type"] == "value_error":  # one bad item of `requirements`
        expected = _REQUIREMENT
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
    if not (Path(folder) / spec.entry_file).is_file():
        raise LaunchError(
            f"{path}: key 'entry': expected a file inside {Path(folder)!s}, "
            f"got {spec.entry_file!r}, which does not exist."
        )
    return spec


# ----------------------------------------------------------------------------- the cache key


def chainrule_root() -> Path:
    """The source checkout chainrule is installed from (holds its pyproject.toml).

    Returns:
        The project root; `LaunchError` if chainrule is not installed from a checkout.
    """
    import chainrule

    here = Path(chainrule.__file__).resolve()
    for parent in here.parents:
        pyproject = parent / "pyproject.toml"
        if pyproject.is_file() and _project_name(pyproject) == "chainrule":
            return parent
    raise LaunchError(_MSG_NO_SOURCE.format(file=here))


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
        checkout and its pyproject.toml): the same requirements in any order share one
        environment. The checkout is part of the key because the environment installs
        chainrule editable from it: two checkouts must not run each other's code.
    """
    root = chainrule_root()
    key = {
        "layout": _LAYOUT,
        "python": spec.python_version,
        "requirements": sorted(r.strip() for r in spec.requirements),
        "chainrule": (root / "pyproject.toml").read_text(encoding="utf-8"),
        "checkout": str(root),
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where environments live: `cache_dir`, else `$CHAINRULE_CACHE`, else the user cache.

    Arguments:
        cache_dir: an explicit directory, or None.

    Returns:
        The directory (`~/.cache/chainrule/envs` when nothing else is set).
    """
    if cache_dir is not None:
        return Path(cache_dir)
    if os.environ.get("CHAINRULE_CACHE"):
        return Path(os.environ["CHAINRULE_CACHE"])
    return Path.home() / ".cache" / "chainrule" / "envs"


def env_dir(spec: ComponentSpec, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory of a spec's cached environment (it may not exist yet)."""
    return cache_root(cache_dir) / f"py{spec.python_version}-{env_hash(spec)}"


def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


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


# ----------------------------------------------------------------------------- building


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


def _run_uv(args: list[str], env: dict[str, str], *, quiet: bool, what: str, fix: str) -> None:
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


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
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
    _run_uv(
        [uv, "venv", "--python", _interpreter(version), "--python-preference", "only-system",
         "--relocatable", str(target)],
        env, quiet=quiet, what=f"creating a Python {version} environment for {spec.name!r}",
        fix=_MSG_NO_PYTHON.format(version=version),
    )  # fmt: skip
    source = f"{chainrule_root()}[serve]"
    _run_uv(
        [uv, "pip", "install", "--python", str(_venv_python(target)), "-e", source,
         *spec.requirements],
        env, quiet=quiet, what=f"installing the requirements of {spec.name!r}",
        fix=_MSG_INSTALL_FAILED,
    )  # fmt: skip
    record = {"name": spec.name, "python": version, "requirements": list(spec.requirements)}
    (target / "chainrule-env.json").write_text(json.dumps(record, indent=2) + "\n")


def build_env(
    folder_or_spec: str | os.PathLike[str] | ComponentSpec,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    quiet: bool = False,
) -> Path:
    """Build (or reuse) the cached virtual environment of a component.

    The venv is built in a temporary directory next to its final place and renamed into place
    under a file lock, so concurrent builders never see or leave a half-built environment.

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
    if _venv_python(final).exists():
        return _venv_python(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f".{final.name}.lock"):
        if _venv_python(final).exists():  # another process built it while we waited
            return _venv_python(final)
        for stale in final.parent.glob(f".{final.name}.tmp-*"):  # a crashed build's leftovers
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            _create(spec, tmp, quiet=quiet)
            os.rename(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _venv_python(final)
