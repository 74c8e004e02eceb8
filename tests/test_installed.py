"""Installed use (issue 16): chainrule installed from a wheel into a fresh virtual environment,
no checkout anywhere, launches a component in its own uv environment and builds its image.

The wheel is made from the running installation (`wheel.running_wheel`): no index has
chainrule, and no build tool runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import chainrule
from chainrule._transport.launch import env as _env
from chainrule._transport.launch.uv import find_uv, uv_environment
from chainrule._transport.launch.wheel import dependencies, running_wheel

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"


def _clean_env() -> dict[str, str]:
    """Our environment without what would let the checkout's sources in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "PYTHONNOUSERSITE": "1"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv (outside any checkout) with chainrule[serve] installed from
    the wheel of this installation."""
    tmp = tmp_path_factory.mktemp("installed")
    wheel = running_wheel(tmp)
    uv, env, venv = find_uv(), uv_environment(), tmp / "venv"
    subprocess.run(
        [uv, "venv", "-q", "--python", sys.executable, "--python-preference", "only-system",
         str(venv)], env=env, check=True, timeout=300,
    )  # fmt: skip
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"), f"{wheel}[serve]"],
        env=env, check=True, timeout=600,
    )  # fmt: skip
    return venv / "bin" / "python"


def run_installed(python: Path, code: str, *args: str, cwd: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
        cwd=cwd, env=_clean_env(), timeout=900, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def test_the_wheel_is_reproducible_and_complete(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first, second = running_wheel(tmp_path / "a"), running_wheel(tmp_path / "b")
    assert first.name == f"chainrule-{chainrule.__version__}-py3-none-any.whl"
    assert first.read_bytes() == second.read_bytes()  # the image layer copying it stays cached
    import zipfile

    with zipfile.ZipFile(first) as zf:
        names = set(zf.namelist())
    info = f"chainrule-{chainrule.__version__}.dist-info"
    assert {f"{info}/METADATA", f"{info}/WHEEL", f"{info}/RECORD", f"{info}/entry_points.txt",
            "chainrule/__init__.py",
            "chainrule/_transport/launch/container_watch.py"} <= names  # fmt: skip
    assert not [n for n in names if n.endswith(".pyc") or "__pycache__" in n]


def test_the_image_gets_chainrules_own_requirements_without_uv() -> None:
    found = dependencies()
    names = [r.split(">")[0].split("[")[0].split("=")[0] for r in found]
    assert "uv" not in names
    assert {"numpy", "pydantic", "fastapi", "uvicorn", "httpx"} <= set(names)
    assert "uvicorn[standard]>=0.29" in found  # an extra of a requirement is kept


def test_an_installed_chainrule_launches_a_component(installed: Path, tmp_path: Path) -> None:
    """The launched environment installs chainrule from a wheel of the installed chainrule,
    with its bytecode compiled, and serves the component."""
    folder = tmp_path / "numpy2"
    shutil.copytree(FIXTURES / "numpy2", folder)
    code = """
        import json, sys
        import numpy as np
        import chainrule as cr
        from chainrule._transport.launch import env as _env

        assert _env.source_checkout() is None, _env.source_checkout()
        with cr.launch(sys.argv[1], cache_dir=sys.argv[2], quiet=True) as comp:
            out = comp.apply({"x": np.array([1.0, 3.0])})
        print(json.dumps([out.y.tolist(), out.numpy_major, cr.__file__]))
    """
    out = run_installed(installed, code, str(folder), str(tmp_path / "envs"), cwd=tmp_path)
    y, major, where = json.loads(out.splitlines()[-1])
    assert (y, major) == ([1.0, 9.0], 2)
    assert where.startswith(str(installed.parent.parent))
    [venv] = (tmp_path / "envs").glob("py3.*-*")
    record = json.loads((venv / _env.STAMP).read_text())
    assert record["checkout"] is None  # from the wheel, not editable from a checkout
    [site] = venv.glob("lib/python3.*/site-packages")
    assert (site / "chainrule" / "__init__.py").is_file()  # a real install, not a link
    # compiled at install, also what the import check after the build does not load
    assert list((site / "numpy" / "f2py" / "__pycache__").glob("*.pyc"))


def test_an_installed_chainrule_makes_the_same_wheel(installed: Path, tmp_path: Path) -> None:
    out = run_installed(
        installed, "import sys; from pathlib import Path; "
        "from chainrule._transport.launch.wheel import running_wheel; "
        "print(running_wheel(Path(sys.argv[1])))", str(tmp_path), cwd=tmp_path,
    )  # fmt: skip
    theirs = Path(out.strip())
    (tmp_path / "ours").mkdir()
    ours = running_wheel(tmp_path / "ours")
    assert (
        hashlib.sha256(theirs.read_bytes()).digest() == hashlib.sha256(ours.read_bytes()).digest()
    )


@pytest.mark.containers
def test_an_installed_chainrule_builds_the_same_image(installed: Path, tmp_path: Path) -> None:
    """`chainrule build` from the installed chainrule: the wheel it makes is this checkout's,
    so the image is the checkout's, layer for layer (all from the cache)."""
    from chainrule._transport.launch.image import build_image

    folder = tmp_path / "numpy2"
    shutil.copytree(FIXTURES / "numpy2", folder)
    tag = f"localhost/chainrule-installed:t{hashlib.sha256(str(ROOT).encode()).hexdigest()[:6]}"
    ours = build_image(folder, runtime="podman", tag=tag, quiet=True)
    chainrule_cli = installed.parent / "chainrule"
    out = subprocess.run(
        [str(chainrule_cli), "build", str(folder), "--tag", tag, "--runtime", "podman"],
        capture_output=True, text=True, cwd=tmp_path, env=_clean_env(), timeout=900, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    assert out.stdout.strip() == tag
    counts = re.search(r"; (\d+) of (\d+) steps from the layer cache", out.stderr)
    assert counts is not None, out.stderr[-2000:]
    assert int(counts[1]) == int(counts[2]) - 1  # every step but FROM
    from chainrule._transport.launch.runtime import find_runtime

    info = find_runtime("podman").inspect(tag) or {}
    assert info["RootFS"]["Layers"] == list(ours.layers)  # type: ignore[index]


def test_a_checkout_around_site_packages_is_not_the_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """chainrule installed (not editable) into a venv inside a checkout runs the installed
    code: component environments must get that code's wheel, not the checkout."""
    checkout = tmp_path / "project"
    package = checkout / ".venv/lib/python3.11/site-packages/chainrule"
    package.mkdir(parents=True)
    (checkout / "pyproject.toml").write_text('[project]\nname = "chainrule"\n')
    (package / "__init__.py").write_text("")
    here = "_transport/launch/env.py"  # the module finds the checkout from its own file
    monkeypatch.setattr(_env, "__file__", str(package / here))
    assert _env.source_checkout() is None
    monkeypatch.setattr(_env, "__file__", str(ROOT / "src" / "chainrule" / here))
    assert _env.source_checkout() == ROOT
