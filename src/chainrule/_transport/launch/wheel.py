"""A wheel of the running chainrule installation: no source checkout, no index, no build tool.

Component environments and images install chainrule from the installation that runs the
launch or the build, so both sides speak the same protocol. `running_wheel` packs the
package directory chainrule is imported from together with its installed metadata (METADATA,
entry_points.txt, license files) into a pure-Python wheel; it works the same for an editable
install of a checkout and for an install from a wheel (`pip install chainrule`). The bytes are
reproducible (sorted entries, fixed dates and modes), so the image layer that copies the wheel
stays cached until chainrule itself changes, and a wheel made from an installation of that
wheel is the same wheel.
"""

from __future__ import annotations

import base64
import hashlib
import re
import zipfile
from importlib import metadata
from pathlib import Path

from chainrule._schema.errors import LaunchError

__all__ = ["dependencies", "installed_digest", "package_dir", "running_wheel", "wheel_name"]

_DIST = "chainrule"
_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest date a zip entry can carry
_SKIP_DIRS = {"__pycache__"}
_SKIP_SUFFIXES = {".pyc", ".pyo"}
# Installer-written or regenerated metadata files that a wheel does not carry.
_NOT_IN_WHEEL = {"INSTALLER", "REQUESTED", "RECORD", "direct_url.json", "uv_cache.json", "WHEEL"}
_WHEEL_FILE = (
    "Wheel-Version: 1.0\nGenerator: chainrule (from the running installation)\n"
    "Root-Is-Purelib: true\nTag: py3-none-any\n"
)
_MSG_NO_DIST = (
    "chainrule's installed metadata (chainrule-*.dist-info) was not found: a wheel of the "
    "running chainrule needs it. Fix: install chainrule (`pip install chainrule[serve]`, or "
    "`pip install -e <checkout>` for a checkout) instead of putting its source on PYTHONPATH."
)


def package_dir() -> Path:
    """The directory of the chainrule package that is running."""
    return Path(__file__).resolve().parents[2]  # chainrule/_transport/launch/wheel.py


def _distribution() -> metadata.Distribution:
    try:
        return metadata.distribution(_DIST)
    except metadata.PackageNotFoundError as e:
        raise LaunchError(_MSG_NO_DIST) from e


def wheel_name() -> str:
    """The file name of the running chainrule's wheel (`chainrule-0.1.0-py3-none-any.whl`)."""
    return f"{_DIST}-{_distribution().version}-py3-none-any.whl"


def _package_files() -> list[tuple[str, Path]]:
    """(name in the wheel, file) for every file of the package, sorted; bytecode left out."""
    root = package_dir()
    found = []
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_dir() or _SKIP_DIRS & set(rel.parts) or path.suffix in _SKIP_SUFFIXES:
            continue
        found.append((f"{_DIST}/{rel.as_posix()}", path))
    return sorted(found)


def _metadata_files(dist: metadata.Distribution, info: str) -> list[tuple[str, bytes]]:
    """(name in the wheel, bytes) of the installed metadata a wheel carries, plus WHEEL."""
    found = [(f"{info}/WHEEL", _WHEEL_FILE.encode())]
    for file in dist.files or []:
        parts = file.parts
        if not parts or not parts[0].endswith(".dist-info") or file.name in _NOT_IN_WHEEL:
            continue
        arcname = "/".join((info, *parts[1:]))
        found.append((arcname, Path(str(dist.locate_file(file))).read_bytes()))
    if not any(name == f"{info}/METADATA" for name, _ in found):
        raise LaunchError(_MSG_NO_DIST)
    return sorted(found)


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def _add(zf: zipfile.ZipFile, name: str, data: bytes) -> None:
    entry = zipfile.ZipInfo(name, date_time=_EPOCH)
    entry.compress_type = zipfile.ZIP_DEFLATED
    entry.external_attr = 0o644 << 16
    zf.writestr(entry, data)


def running_wheel(outdir: Path) -> Path:
    """Write the wheel of the running chainrule into `outdir`.

    Arguments:
        outdir: an existing directory.

    Returns:
        The wheel's path (`outdir/chainrule-<version>-py3-none-any.whl`); `LaunchError` if
        chainrule's metadata is not installed.
    """
    dist = _distribution()
    info = f"{_DIST}-{dist.version}.dist-info"
    entries = [(name, path.read_bytes()) for name, path in _package_files()]
    entries += _metadata_files(dist, info)
    target = outdir / wheel_name()
    records = [_record_line(name, data) for name, data in entries]
    with zipfile.ZipFile(target, "w") as zf:
        for name, data in entries:
            _add(zf, name, data)
        _add(zf, f"{info}/RECORD", ("\n".join([*records, f"{info}/RECORD,,"]) + "\n").encode())
    return target


def installed_digest() -> str:
    """16 hex digits that change whenever the running chainrule's code or metadata changes.

    Cheap (the files are hashed, nothing is zipped): used as the cache key of environments
    that install chainrule from its wheel.
    """
    digest = hashlib.sha256((_distribution().read_text("METADATA") or "").encode())
    for name, path in _package_files():
        digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_SERVE_MARKER = re.compile(r"""^extra\s*==\s*["']serve["']$""")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dependencies(*, leave_out: tuple[str, ...] = ("uv",)) -> list[str]:
    """chainrule's own requirements with its `serve` extra, read from its installed METADATA.

    Arguments:
        leave_out: project names not wanted (default: uv, which only builds environments).

    Returns:
        Requirement strings (`"fastapi>=0.110"`); markers other than the extra are kept.
    """
    skip = {_normalized(n) for n in leave_out}
    found = []
    for line in _distribution().requires or []:
        req, _, marker = (part.strip() for part in line.partition(";"))
        match = _REQUIREMENT_NAME.match(req)
        if match is None or _normalized(match.group(1)) in skip:
            continue
        if not marker or _SERVE_MARKER.match(marker):
            found.append(req)
        elif "extra" not in marker:  # a condition on the platform or Python: uv evaluates it
            found.append(f"{req}; {marker}")
    return found
