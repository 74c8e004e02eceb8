"""The parts of containers (issue 16) that need no container runtime: the Containerfile, how
package settings reach a build, runtime detection and its messages, run options, the base
image's decisions and progress, and the watcher that removes a container when its launcher
is gone. The tests that build and run images are in test_containers.py."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import chainrule as cr
from chainrule._transport.launch import base_image as _base_image
from chainrule._transport.launch import container as _container
from chainrule._transport.launch import image as _image
from chainrule._transport.launch import runtime as _runtime
from chainrule._transport.launch.container import gpu_args, mount_args
from chainrule._transport.launch.env import load_spec, parse_spec
from chainrule._transport.launch.runtime import Runtime, find_runtime
from chainrule._transport.launch.servers import start_ticks

FIXTURES = Path(__file__).parent / "fixtures"
PODMAN = Runtime("podman", "/usr/bin/podman")
DOCKER = Runtime("docker", "/usr/bin/docker")


def _fake_exe(path: Path, script: str) -> Path:
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return path


# ---- the Containerfile ----------------------------------------------------------------------


def _containerfile(runtime: Runtime, folder: Path, **settings: str) -> str:
    s = _image._Settings(dict(settings), (), ())
    return _image._containerfile(folder, load_spec(folder), "base:1", "cr.whl", runtime, s)


def test_layers_come_slowest_first_and_code_last(tmp_path: Path) -> None:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "component.py").write_text("")
    (folder / "chainrule.toml").write_text(
        'name = "c"\nentry = "component.py:c"\nos_packages = ["jq", "libgomp1"]\n'
    )
    text = _containerfile(PODMAN, folder, UV_FIND_LINKS="/.chainrule-build/p0")
    order = ["FROM base:1", "apt-get install -y --no-install-recommends jq libgomp1",
             "ARG UV_FIND_LINKS", "COPY requirements.txt", "pip install --compile-bytecode -r",
             "COPY cr.whl", "pip install --no-deps --compile-bytecode", "COPY component/ /app/",
             'ENTRYPOINT ["/opt/venv/bin/python", "-m", "chainrule", "serve", '
             '"/app/component.py:c"]', 'CMD ["--host", "127.0.0.1", "--port", "8000"]']  # fmt: skip
    positions = [text.index(part) for part in order]
    assert positions == sorted(positions), text
    assert "--mount" not in text  # podman mounts with -v, for the whole build
    docker = _containerfile(DOCKER, folder, SSL_CERT_FILE="/.chainrule-build/ca.pem")
    assert docker.count("RUN --mount=type=bind,source=.chainrule/uv") == 2
    assert "--mount=type=cache,target=/.chainrule-build/uv-cache" in docker
    assert "source=.chainrule/ca.pem,target=/.chainrule-build/ca.pem" in docker


def test_requirements_are_the_components_and_chainrules(tmp_path: Path) -> None:
    text = _image._requirements(load_spec(FIXTURES / "numpy1"))
    lines = text.splitlines()
    assert lines[0] == "numpy<2" and "pydantic>=2.6" in lines and "fastapi>=0.110" in lines
    assert "uvicorn[standard]>=0.29" in lines  # (its name starts like uv's, which is left out)
    assert not [line for line in lines if line.startswith(("uv>", "uv=", "uv<", "uv "))]


def test_default_tag() -> None:
    spec = parse_spec({"name": "My.Band", "version": "1.0+local", "entry": "c.py:x"})
    assert _image.default_tag(spec) == "localhost/chainrule-my.band:1.0_local"


# ---- package settings into the build --------------------------------------------------------


def test_local_package_locations_are_mounted_for_podman(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels, index = tmp_path / "wheels", tmp_path / "pypi" / "simple"
    wheels.mkdir()
    index.mkdir(parents=True)
    cert = tmp_path / "ca.pem"
    cert.write_text("")
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("UV_FIND_LINKS", "UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "PIP_CERT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"file://{index} https://example.org/simple")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    s = _image._settings(PODMAN)
    assert s.args["UV_FIND_LINKS"] == "/.chainrule-build/p0"
    # a file:// index links to ../../files: its root is mounted, the URL follows it inside
    assert s.args["UV_EXTRA_INDEX_URL"] == (
        "file:///.chainrule-build/p1/simple https://example.org/simple"
    )
    assert s.args["SSL_CERT_FILE"] == "/.chainrule-build/ca.pem"
    assert dict(s.mounts) == {
        str(wheels): "/.chainrule-build/p0",
        str(index.parent): "/.chainrule-build/p1",
        str(cert): "/.chainrule-build/ca.pem",
    }
    d = _image._settings(DOCKER)  # a docker build sees no host path
    assert "UV_FIND_LINKS" not in d.args and d.mounts == ()
    assert d.args["UV_EXTRA_INDEX_URL"] == "https://example.org/simple"
    assert any("left out of docker builds" in note for note in d.notes)


# ---- runtimes and run options ----------------------------------------------------------------


def test_unknown_or_missing_runtimes_say_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(cr.LaunchError, match="expected one of podman, docker"):
        find_runtime("rkt")
    monkeypatch.setattr(_runtime.shutil, "which", lambda name: None)
    with pytest.raises(cr.LaunchError, match=r"podman was not found on PATH. Fix: install"):
        find_runtime("podman")
    with pytest.raises(cr.LaunchError, match="neither podman nor docker is on PATH"):
        find_runtime()


def test_docker_without_an_engine_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_exe(tmp_path / "docker", 'echo "Cannot connect to the Docker daemon" >&2; exit 1\n')
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(cr.LaunchError, match=r"no Docker engine answers \(`docker info`: Cannot"):
        find_runtime("docker")


def test_gpus_and_mounts(tmp_path: Path) -> None:
    assert gpu_args(PODMAN, None) == []
    assert gpu_args(PODMAN, "all") == ["--device", "nvidia.com/gpu=all"]
    assert gpu_args(PODMAN, "0,1") == ["--device", "nvidia.com/gpu=0", "--device",
                                       "nvidia.com/gpu=1"]  # fmt: skip
    assert gpu_args(DOCKER, "all") == ["--gpus", "all"]
    assert gpu_args(DOCKER, "0,1") == ["--gpus", '"device=0,1"']
    with pytest.raises(cr.LaunchError, match="expected 'all' or device indices"):
        gpu_args(PODMAN, "first")
    assert mount_args([f"{tmp_path}:/data:ro"]) == ["-v", f"{tmp_path}:/data:ro"]
    for bad, why in [("nocolon", "expected 'host_path:container_path'"),
                     (f"{tmp_path}/missing:/data", "does not exist"),
                     (f"{tmp_path}:data", "must be absolute"),
                     (f"{tmp_path}:/data:rx", "expected 'host_path")]:  # fmt: skip
        with pytest.raises(cr.LaunchError, match=why):
            mount_args([bad])


def test_gpus_and_mounts_need_a_container() -> None:
    with pytest.raises(cr.LaunchError, match="apply to containers"):
        cr.launch(FIXTURES / "numpy2", mounts=["/tmp:/data"])


def test_run_options(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = _container.container_args(PODMAN, "img:1", "chainrule-x-1", ["--port", "9"])
    assert argv[:8] == ["/usr/bin/podman", "run", "--rm", "--pull=never", "--init", "--network",
                        "host", "--name"]  # fmt: skip
    assert argv[-3:] == ["img:1", "--port", "9"]
    owner = argv[argv.index("--label") + 1]
    assert owner == f"org.chainrule.owner={os.getpid()}:{start_ticks(os.getpid())}"
    files = argv[argv.index("--ulimit") + 1]
    assert files.startswith("nofile=") and int(files.split(":")[1]) <= 1048576


# ---- the base image -----------------------------------------------------------------------


def test_a_given_base_is_used_as_is() -> None:
    spec = parse_spec({"name": "c", "entry": "c.py:c", "base": "registry.example/py:3.11"})
    assert _base_image.resolve_base(PODMAN, spec) == "registry.example/py:3.11"


def test_building_a_base_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(cr.LaunchError, match=r"needs root\. Fix: set `base = "):
        _base_image.build_base(PODMAN, "bookworm", reason="no registry")


def test_no_base_for_another_python_says_how_to_get_one(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoImages(Runtime):
        def inspect(self, image: str) -> None:
            return None

    monkeypatch.setattr(_base_image, "_pull", lambda *a, **k: "no such host")
    monkeypatch.setattr(_base_image, "host_release", lambda: "bookworm")
    spec = parse_spec({"name": "c", "entry": "c.py:c", "python": "3.12"})
    with pytest.raises(cr.LaunchError, match=r"no base image with Python 3\.12.*set `base = "):
        _base_image.resolve_base(NoImages("podman", "podman"), spec, quiet=True)


def test_debootstrap_progress_is_told_by_stage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stages = "Retrieving Release\\nI: Retrieving Packages\\nI: Validating x\\nI: Extracting a\\n"
    fake = _fake_exe(tmp_path / "debootstrap", f'printf "I: {stages}I: Configuring b\\n"\n')
    _base_image._debootstrap(str(fake), "bookworm", tmp_path / "root", quiet=False)
    err = capsys.readouterr().err
    for line in ["debootstrap: retrieving done (2 lines)", "debootstrap: validating done",
                 "debootstrap: extracting done", "debootstrap: done"]:  # fmt: skip
        assert line in err, err
    failing = _fake_exe(tmp_path / "failing", 'echo "E: Couldn\'t download"; exit 1\n')
    with pytest.raises(cr.LaunchError, match=r"debootstrap of Debian bookworm failed"):
        _base_image._debootstrap(str(failing), "bookworm", tmp_path / "root", quiet=True)


def test_the_base_recipe_names_the_release(tmp_path: Path) -> None:
    assert _base_image.local_base("bookworm") == "localhost/chainrule-base:bookworm-py3.11"
    assert _base_image.recipe("bookworm") != _base_image.recipe("trixie")


# ---- the watcher ----------------------------------------------------------------------------


def _watch(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The watcher of a fake container (`sleep`), with a fake runtime that logs its calls."""
    log = tmp_path / "calls"
    exe = _fake_exe(tmp_path / "runtime", f'echo "$@" >> {log}\n')
    read, write = os.pipe()
    watcher = subprocess.Popen(
        [sys.executable, "-I", str(_container._WATCHER), str(exe), "box", "3", "--",
         "sleep", "60"], stdin=read, start_new_session=True,
    )  # fmt: skip
    os.close(read)
    return watcher, write, log


def _calls(log: Path, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not log.exists():
        time.sleep(0.05)
    time.sleep(0.2)
    return log.read_text().splitlines() if log.exists() else []


def test_the_watcher_removes_the_container_when_the_lifeline_breaks(tmp_path: Path) -> None:
    watcher, write, log = _watch(tmp_path)
    os.close(write)  # what the end of the launching process does, however it ends
    assert _calls(log) == ["stop -t 3 box", "rm -f box"]
    os.killpg(watcher.pid, 9)  # the fake runtime did not stop the fake container
    watcher.wait()


def test_the_watcher_removes_the_container_on_sigterm(tmp_path: Path) -> None:
    watcher, write, log = _watch(tmp_path)
    time.sleep(0.5)  # its handler is installed
    watcher.terminate()
    assert _calls(log) == ["stop -t 3 box", "rm -f box"]
    os.close(write)
    os.killpg(watcher.pid, 9)
    watcher.wait()


# ---- the command line ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([str(FIXTURES / "numpy2"), "--mount", "/tmp:/x"], "--mount apply to --image IMAGE only"),
        ([], "give what to serve: file.py:object, module:object or a folder, or --image"),
        ([str(FIXTURES / "numpy2"), "--image", "x:1"], "(not both)"),
    ],
)
def test_serve_says_what_image_options_need(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from chainrule._cli.app import app

    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 1
    assert message in " ".join(result.output.split())


def test_build_reports_errors_and_exits_1(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from chainrule._cli.app import app

    result = CliRunner().invoke(app, ["build", str(tmp_path)])
    assert result.exit_code == 1
    assert "LaunchError" in result.output and "no chainrule.toml" in result.output
