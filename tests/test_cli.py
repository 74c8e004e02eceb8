"""The `chainrule` command: --version, `new` names, `serve` (the bound URL, a folder's own
environment), `call` failing fast. The lifetime of served processes is tested in
test_launch.py; the docs' CLI snippets run in test_docs_site.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import chainrule as cr
from chainrule._cli.app import app
from chainrule._transport.http.serving import load_component
from chainrule._transport.launch.launch import free_port

CLI = [sys.executable, "-m", "chainrule"]

# A component that tells which Python environment serves it.
_WHERE = """
import sys

import chainrule as cr


class In(cr.Schema):
    x: float


class Out(cr.Schema):
    prefix: str


@cr.component(inputs=In, outputs=Out, backend="numpy")
def where(inputs: In) -> Out:
    return Out(prefix=sys.prefix)
"""


def _folder(root: Path) -> Path:
    folder = root / "where"
    folder.mkdir()
    (folder / "component.py").write_text(_WHERE)
    (folder / "chainrule.toml").write_text(
        'name = "where"\nentry = "component.py:where"\nrequirements = ["numpy"]\n'
    )
    return folder


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[Any]:
    """Start `chainrule serve ARGS...`; yields a function giving (process, printed URL)."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> tuple[Any, str]:
        argv = [*CLI, "serve", *args, "--parent-pid", str(os.getpid())]
        proc = subprocess.Popen(
            argv, cwd=tmp_path, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            env=env,
        )  # fmt: skip
        started.append(proc)
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if match := re.search(r"serving '.*' \(.*\) on (http://\S+)", line):
                return proc, match.group(1)
        raise AssertionError(f"the server did not say where it serves:\n{''.join(seen)}")

    yield start
    for proc in started:
        proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"chainrule {cr.__version__}\n"


@pytest.mark.parametrize(
    ("name", "suggested"),
    [("2bad", "component_2bad"), ("class", "class_"), ("my-band", "my_band"), ("_x", "x")],
)
def test_new_refuses_a_name_that_cannot_load_and_suggests_one_that_does(
    name: str, suggested: str, tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, ["new", name, "--dir", str(tmp_path)])
    assert result.exit_code == 1
    assert f"try {suggested!r}" in " ".join(result.output.split())
    assert not (tmp_path / name).exists()
    result = CliRunner().invoke(app, ["new", suggested, "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    component = load_component(str(tmp_path / suggested))  # the folder loads and runs
    assert component.name == suggested
    assert component.apply({"x": [0.0]}).y.tolist() == [0.0]


def test_serve_port_0_prints_the_bound_url(serving: Any, tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _, url = serving(str(folder / "component.py:where"), "--port", "0")
    port = int(url.rsplit(":", 1)[1])
    assert url == f"http://127.0.0.1:{port}" and port != 0
    with urllib.request.urlopen(f"{url}/health", timeout=10) as response:
        assert response.status == 200


def test_serve_a_folder_in_this_environment_when_asked(serving: Any, tmp_path: Path) -> None:
    _, url = serving(str(_folder(tmp_path)), "--port", "0", "--current-env")
    assert cr.connect(url).apply({"x": 1.0}).prefix == sys.prefix


def test_serve_a_folder_execs_its_own_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The environment is built from chainrule.toml and its python serves the folder's entry
    with the same options; the token travels in the environment, not on the command line."""
    from chainrule._transport.launch import env as _env

    folder = _folder(tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    built: list[Any] = []
    monkeypatch.setattr(_env, "build_env", lambda spec, **kw: built.append(spec) or python)
    execs: list[tuple[Any, list[str], dict[str, str]]] = []

    def execve(path: Any, argv: list[str], env: dict[str, str]) -> None:
        execs.append((path, argv, env))
        raise SystemExit(0)

    monkeypatch.setattr(os, "execve", execve)

    def serve_here(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("served in this environment")

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", serve_here)
    monkeypatch.setattr(uvicorn.Server, "run", serve_here)
    args = ["serve", str(folder), "--port", "0", "--token", "s3cret", "--workers", "2"]
    result = CliRunner().invoke(app, [*args, "--no-threads"])
    assert result.exit_code == 0, result.output
    assert [spec.name for spec in built] == ["where"]
    ((path, argv, env),) = execs
    assert path == python and argv[:4] == [str(python), "-m", "chainrule", "serve"]
    assert argv[4] == f"{folder / 'component.py'}:where"
    rest = argv[5:]  # every option of `serve` is passed on, given or default

    def passed(*option: str) -> bool:
        return any(rest[i : i + len(option)] == list(option) for i in range(len(rest)))

    assert passed("--host", "127.0.0.1") and passed("--port", "0") and passed("--workers", "2")
    assert passed("--max-body-bytes", str(2**30)) and passed("--shutdown-timeout", "10")
    assert passed("--no-refuse-nonfinite") and passed("--no-threads")
    assert "--current-env" not in rest and "--token" not in rest
    assert env["CHAINRULE_TOKEN"] == "s3cret" and "s3cret" not in argv
    assert "in its own environment" in result.output


@pytest.mark.slow
def test_serve_a_folder_in_its_own_environment(serving: Any, tmp_path: Path) -> None:
    cache = tmp_path / "envs"
    env = {**os.environ, "CHAINRULE_CACHE": str(cache)}
    _, url = serving(str(_folder(tmp_path)), "--port", "0", env=env)
    prefix = Path(cr.connect(url).apply({"x": 1.0}).prefix)
    assert prefix.parent == cache and prefix != Path(sys.prefix)


def test_call_to_a_dead_url_fails_fast_with_a_clear_message() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["call", url, "apply", json.dumps({"inputs": {"x": 1.0}})])
    elapsed = time.monotonic() - t0
    assert result.exit_code == 1
    message = " ".join(result.output.split())
    assert f"TransportError: could not reach {url}/apply" in message
    assert "is the server running?" in message
    assert elapsed < 5  # 30 retries took ~26 s
