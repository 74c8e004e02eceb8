"""Component folders: a Python module and a `chainrule.toml` (`ComponentSpec`), read and
checked by `load_spec`, with messages that name the key, expected and got.

```toml
name = "torch_band"
version = "0.1.0"
python = "3.11"              # optional; default: the running interpreter's major.minor
backend = "torch"            # informational: jax | torch | numpy
requirements = ["numpy<2"]   # pip requirement strings
entry = "component.py:band"  # file:object of the component inside the folder
base = "python:3.11-slim"    # optional: the base image of `chainrule build` (see image.py)
os_packages = ["libgomp1"]   # optional: Debian packages installed into that image
```
"""

from __future__ import annotations

import difflib
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import pydantic

from chainrule._schema.errors import LaunchError

__all__ = [
    "SPEC_FILE",
    "TESSERACT_CORE",
    "ComponentSpec",
    "entry_path",
    "is_tesseract_folder",
    "load_spec",
    "parse_spec",
    "read_toml",
    "tesseract_spec",
]

SPEC_FILE = "chainrule.toml"


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
            picks one (see `image`).
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


def read_toml(path: Path) -> dict[str, Any]:
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
    if not path.is_file() and is_tesseract_folder(folder):
        return tesseract_spec(folder)
    if not path.is_file():
        raise LaunchError(
            f"no {SPEC_FILE} in {Path(folder)!s}: a component folder needs one "
            "(name, version, requirements, entry). See docs/environments.md."
        )
    spec = parse_spec(read_toml(path), where=str(path))
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


# ----------------------------------------------------------------------------- Tesseract folders

TESSERACT_API = "tesseract_api.py"
TESSERACT_CORE = "tesseract-core[runtime]==1.15.0"  # the runtime chainrule is tested against
_NAME_LINE = re.compile(r"^name:\s*[\"']?([A-Za-z0-9][A-Za-z0-9_.-]*)", re.M)


def is_tesseract_folder(folder: str | os.PathLike[str]) -> bool:
    """A Tesseract's folder (`tesseract_api.py`, no `chainrule.toml`): launched and served
    through tesseract-core's own loader (`chainrule.from_tesseract_api`)."""
    root = Path(folder)
    return (root / TESSERACT_API).is_file() and not (root / SPEC_FILE).is_file()


def _tesseract_requirements(root: Path) -> list[str]:
    """The lines of `tesseract_requirements.txt` as requirements: comments, blank lines and
    pip options (`--index-url ...`) left out, local paths (`./pkg`) made absolute."""
    path = root / "tesseract_requirements.txt"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    out = []
    for line in (x.split(" #")[0].strip() for x in lines):
        if not line or line.startswith(("#", "-")):
            continue
        out.append(str((root / line).resolve()) if line.startswith(("./", "../")) else line)
    return out


def tesseract_spec(folder: str | os.PathLike[str]) -> ComponentSpec:
    """The spec of a Tesseract folder: its name from `tesseract_config.yaml`, its environment
    tesseract-core's runtime plus `tesseract_requirements.txt`."""
    root = Path(folder).resolve()
    config = root / "tesseract_config.yaml"
    found = _NAME_LINE.search(config.read_text(encoding="utf-8")) if config.is_file() else None
    name = found.group(1) if found else re.sub(r"[^A-Za-z0-9_.-]", "_", root.name) or "tesseract"
    requirements = (TESSERACT_CORE, *_tesseract_requirements(root))
    return ComponentSpec(name=name, requirements=requirements, entry=f"{TESSERACT_API}:apply")
