"""The base image of a component image when chainrule.toml names none.

In order:
1. the official `python:<X.Y>-slim` image, if the runtime has it already;
2. chainrule's own Debian base (`localhost/chainrule-base:<release>-py<X.Y>`), if built here
   before from the same recipe (its `org.chainrule.base` label holds the recipe's digest);
3. `python:<X.Y>-slim` pulled from its registry;
4. else (no registry reachable) that Debian base built here, once: `debootstrap` of the host's
   Debian release (minimal variant, with python3; documentation and locales left out, also
   for packages installed later) imported with `podman import` / `docker import`. This needs
   root and the Debian mirror, takes about two minutes, and says what it is doing on stderr.
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
import time
from pathlib import Path

from chainrule._schema.errors import LaunchError

from .env import locked
from .runtime import Runtime
from .spec import ComponentSpec

__all__ = ["PYTHON_OF_RELEASE", "build_base", "host_release", "local_base", "resolve_base"]

BASE_LABEL = "org.chainrule.base"
RECIPE_VERSION = 1  # bump when the recipe below changes: existing bases are then rebuilt
PACKAGES = ("python3", "python3-venv")
PYTHON_OF_RELEASE = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
DEFAULT_RELEASE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
# Later `apt-get install` steps leave documentation out too.
_NODOC = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
"""
_STAGES = ("Retrieving", "Validating", "Extracting", "Installing", "Unpacking", "Configuring")


def official(python: str) -> str:
    """The official image with Python `python`."""
    return f"docker.io/library/python:{python}-slim"


def host_release() -> str:
    """The host's Debian release (codename) if it is one chainrule knows, else bookworm."""
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return DEFAULT_RELEASE
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    name = fields.get("VERSION_CODENAME", "").strip('"')
    is_debian = fields.get("ID", "").strip('"') == "debian"
    return name if is_debian and name in PYTHON_OF_RELEASE else DEFAULT_RELEASE


def recipe(release: str) -> str:
    """The digest of what a Debian base is made from (12 hex digits)."""
    text = json.dumps([RECIPE_VERSION, release, PACKAGES, _NODOC, "minbase"])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def local_base(release: str) -> str:
    """The tag of chainrule's Debian base of `release`."""
    return f"localhost/chainrule-base:{release}-py{PYTHON_OF_RELEASE[release]}"


def _current(runtime: Runtime, release: str) -> bool:
    return runtime.label(local_base(release), BASE_LABEL) == recipe(release)


def resolve_base(runtime: Runtime, spec: ComponentSpec, *, quiet: bool = False) -> str:
    """The base image for `spec` (see the module docstring), built here if need be."""
    if spec.base:
        return spec.base
    python, release = spec.python_version, host_release()
    wanted = official(python)
    if runtime.inspect(wanted) is not None:
        return wanted
    ours = PYTHON_OF_RELEASE[release] == python
    if ours and _current(runtime, release):
        return local_base(release)
    why = _pull(runtime, wanted, quiet=quiet)
    if why is None:
        return wanted
    if not ours:
        raise LaunchError(
            f"no base image with Python {python}: {wanted} cannot be pulled ({why}), and "
            f"Debian {release}, which chainrule can build a base from, has Python "
            f'{PYTHON_OF_RELEASE[release]}. Fix: set `base = "<an image with python{python}>"` '
            f'in chainrule.toml, or `python = "{PYTHON_OF_RELEASE[release]}"`.'
        )
    return build_base(runtime, release, reason=f"{wanted} cannot be pulled ({why})", quiet=quiet)


def _pull(runtime: Runtime, image: str, *, quiet: bool) -> str | None:
    """Pull `image`; None if that worked, else the runtime's last line of error."""
    if not quiet:
        print(f"chainrule: pulling {image}", file=sys.stderr, flush=True)
    try:
        out = runtime.run("pull", image, timeout=900)
    except subprocess.TimeoutExpired:
        return "no answer within 900 s"
    if out.returncode == 0:
        return None
    return (out.stderr.strip().splitlines() or ["(no output)"])[-1]


# ---- building it ------------------------------------------------------------------------------


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"chainrule: {message}", file=sys.stderr, flush=True)


def build_base(runtime: Runtime, release: str, *, reason: str = "", quiet: bool = False) -> str:
    """Build chainrule's Debian base of `release` (once: a current one is reused); its tag.

    Arguments:
        runtime: where to import it.
        release: a Debian codename of `PYTHON_OF_RELEASE`.
        reason: why it is built, for the progress note.
        quiet: no progress on stderr.
    """
    tag = local_base(release)
    debootstrap = shutil.which("debootstrap") or shutil.which("/usr/sbin/debootstrap")
    if os.geteuid() != 0 or debootstrap is None:
        missing = "root" if os.geteuid() != 0 else "debootstrap (`apt-get install debootstrap`)"
        raise LaunchError(
            f"no base image: {reason}, and building {tag} here needs {missing}. Fix: set "
            '`base = "<an image with Python>"` in chainrule.toml (one in your runtime\'s '
            "store or a registry it reaches), or build once as root: `chainrule build <folder>`."
        )
    lock = Path(tempfile.gettempdir()) / f"chainrule-base-{release}.lock"
    with locked(lock):
        if _current(runtime, release):  # another process built it while we waited
            return tag
        _say(f"building the base image {tag} (Debian {release} with Python "
             f"{PYTHON_OF_RELEASE[release]}, by debootstrap; once, about 2 minutes), "
             f"because {reason}", quiet)  # fmt: skip
        start = time.perf_counter()
        root = Path(tempfile.mkdtemp(prefix="chainrule-rootfs-", dir=_scratch()))
        try:
            _debootstrap(debootstrap, release, root, quiet=quiet)
            _slim(root)
            _import(runtime, root, tag, release)
        finally:
            _remove_tree(root)
        size = (runtime.inspect(tag) or {}).get("Size", 0)
        _say(f"built {tag} in {time.perf_counter() - start:.0f} s "
             f"({int(size) / 1e6 if isinstance(size, int) else 0:.0f} MB)", quiet)  # fmt: skip
    return tag


def _scratch() -> str:
    """A directory on disk (not a small tmpfs) for the ~150 MB root file system."""
    return "/var/tmp" if os.path.isdir("/var/tmp") else tempfile.gettempdir()


def _debootstrap(exe: str, release: str, root: Path, *, quiet: bool) -> None:
    argv = [exe, "--variant=minbase", f"--include={','.join(PACKAGES)}", release, str(root), MIRROR]
    tail: list[str] = []
    stage, count = "", 0
    with subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace",
    ) as proc:  # fmt: skip
        assert proc.stdout is not None  # stdout=PIPE guarantees it
        for line in proc.stdout:
            tail = [*tail[-29:], line.rstrip()]
            word = line[3:].split(" ", 1)[0] if line.startswith("I: ") else ""
            if word in _STAGES and word != stage:
                if stage:
                    _say(f"  debootstrap: {stage.lower()} done ({count} lines)", quiet)
                stage, count = word, 0
            count += 1
    if proc.returncode != 0:
        log = "\n".join(f"  | {line}" for line in tail)
        raise LaunchError(
            f"debootstrap of Debian {release} failed (exit {proc.returncode}). Last lines:\n"
            f"{log}\nFix: check that {MIRROR} is reachable, or set `base = ...` in "
            "chainrule.toml."
        )
    _say("  debootstrap: done", quiet)


def _slim(root: Path) -> None:
    """Leave out documentation, locales, package lists and downloaded packages."""
    (root / "etc/dpkg/dpkg.cfg.d/01-chainrule-nodoc").write_text(_NODOC)
    doc = root / "usr/share/doc"
    for path in doc.glob("*/*") if doc.is_dir() else []:
        if path.name == "copyright":
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    for sub in ("usr/share/man", "usr/share/info", "usr/share/lintian"):
        shutil.rmtree(root / sub, ignore_errors=True)
    for locale in (root / "usr/share/locale").glob("*"):
        if locale.is_dir():
            shutil.rmtree(locale, ignore_errors=True)
    for pattern in ("var/cache/apt/archives/*.deb", "var/lib/apt/lists/*", "var/log/*.log"):
        for path in root.glob(pattern):
            if path.is_file():
                path.unlink()


def _import(runtime: Runtime, root: Path, tag: str, release: str) -> None:
    changes = ['CMD ["/bin/bash"]', "ENV LANG=C.UTF-8", f"LABEL {BASE_LABEL}={recipe(release)}"]
    argv = [runtime.exe, "import", *[a for c in changes for a in ("--change", c)], "-", tag]
    with subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(root), "-c", "."], stdout=subprocess.PIPE
    ) as tar:
        out = subprocess.run(argv, stdin=tar.stdout, capture_output=True, text=True, check=False)
    if out.returncode != 0 or tar.returncode != 0:
        raise LaunchError(f"importing {tag} failed: {out.stderr.strip()[-2000:]}")


def _remove_tree(root: Path) -> None:
    """Remove a root file system, unmounting first whatever debootstrap left mounted in it
    (proc, sys, ...: an interrupted run), so removal never reaches into the host's."""
    prefix = str(root.resolve()) + "/"
    with contextlib.suppress(OSError):
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for point in sorted((m for m in mounts if m.startswith(prefix)), reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)
