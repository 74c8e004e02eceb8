"""Components in containers (issue 16): `chainrule build`, `launch(folder, runtime=...)`,
`chainrule serve --image`, OCI archives, and the docker code path.

These tests need podman (and, to build a base image without a registry, root and
debootstrap): `make test` installs them as root when they are missing
(scripts/container-tools.sh); marked `containers`. Images are built once per module from
copies of the fixture folders, named `localhost/chainrule-<name>:0.1.0-t<checkout digest>`
so that two checkouts on one machine do not share tags; their layers stay cached between runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pydantic
import pytest

import chainrule as cr
import chainrule.jax as crj
from cases import CASES, build
from chainrule._component.endpoints import Endpoint
from chainrule._transport.launch import container as _container
from chainrule._transport.launch import image as _image
from chainrule._transport.launch.container import OWNER_LABEL
from chainrule._transport.launch.env import load_spec
from chainrule._transport.launch.image import Built, build_image, default_tag, ensure_image
from chainrule._transport.launch.launch import Launched, launch
from chainrule._transport.launch.runtime import Runtime, find_runtime, limit_args
from test_docs_site import CONTAINER_SNIPPETS
from test_docs_site import _run as run_snippet

pytestmark = [pytest.mark.containers, pytest.mark.usefixtures("x64")]

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
VERSION = "0.1.0-t" + hashlib.sha256(str(ROOT).encode()).hexdigest()[:6]
X = np.array([0.3, -0.7, 1.2])
T = np.array([1.0, 0.5, -2.0])


def _toml(values: dict[str, object]) -> str:
    def value(v: object) -> str:
        return json.dumps(list(v)) if isinstance(v, list | tuple) else json.dumps(v)

    return "".join(f"{k} = {value(v)}\n" for k, v in values.items())


def component_folder(tmp: Path, fixture: str, **toml: object) -> Path:
    """A copy of a fixture folder in `tmp`, its version made this checkout's."""
    import tomllib

    folder = tmp / str(toml.get("name", fixture))
    shutil.copytree(FIXTURES / fixture, folder)
    values = tomllib.loads((folder / "chainrule.toml").read_text())
    (folder / "chainrule.toml").write_text(_toml({**values, "version": VERSION, **toml}))
    return folder


def vector_folder(tmp: Path) -> Path:
    """The tests' `vector` case (cases.py) as a NumPy component folder."""
    folder = tmp / "vector"
    folder.mkdir()
    shutil.copy(ROOT / "tests" / "cases.py", folder)
    (folder / "component.py").write_text("from cases import CASES, build\n\n"
                                          'vector = build(CASES[0], "numpy")\n')  # fmt: skip
    (folder / "chainrule.toml").write_text(
        _toml(
            {
                "name": "vector",
                "version": VERSION,
                "requirements": ["numpy>=2"],
                "entry": "component.py:vector",
            }
        )
    )
    return folder


def running(runtime: Runtime, owner_pid: int | None = None) -> list[str]:
    """Names of containers that chainrule launched (of process `owner_pid`, if given)."""
    fmt = '{{.Names}} {{index .Labels "' + OWNER_LABEL + '"}}'
    out = runtime.run("ps", "-a", "--filter", f"label={OWNER_LABEL}", "--format", fmt).stdout
    rows = [line.split(" ", 1) for line in out.splitlines() if line.strip()]
    return [n for n, o in rows if owner_pid is None or o.startswith(f"{owner_pid}:")]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=1) as response:
            return int(response.status) == 200
    except OSError:
        return False


def wait_for(condition: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return bool(condition())  # type: ignore[operator]


# ---- fixtures: one runtime, images built once per module ----------------------------------------


@pytest.fixture(scope="module")
def podman() -> Runtime:
    if shutil.which("podman") is None:
        pytest.fail(
            "podman is missing: `make test` installs it (as root) with the other container "
            "tools, see scripts/container-tools.sh; or deselect these tests: -m 'not containers'"
        )
    return find_runtime("podman")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("containers")


@pytest.fixture(scope="module")
def numpy2(podman: Runtime, workdir: Path) -> tuple[Path, Built]:
    folder = component_folder(workdir, "numpy2")
    return folder, build_image(folder, runtime=podman, quiet=True)


@pytest.fixture(scope="module")
def vector(podman: Runtime, workdir: Path) -> Iterator[tuple[Launched, cr.Component]]:
    """The vector case launched in its container (with a read-only mount), and its client."""
    data = workdir / "data"
    data.mkdir()
    launched = launch(
        vector_folder(workdir), runtime="podman", quiet=True, mounts=[f"{data}:/data:ro"]
    )
    with launched as remote:
        yield launched, remote


# ---- building -----------------------------------------------------------------------------------


def test_image_layers_labels_and_size(podman: Runtime, numpy2: tuple[Path, Built]) -> None:
    folder, built = numpy2
    assert built.tag == f"localhost/chainrule-numpy2:{VERSION}" == default_tag(load_spec(folder))
    labels = (podman.inspect(built.tag) or {})["Config"]["Labels"]  # type: ignore[index]
    assert labels["org.chainrule.name"] == "numpy2"
    assert labels["org.chainrule.version"] == VERSION
    # base, requirements.txt, requirements, wheel, chainrule, code: one layer each
    assert len(built.layers) == 6
    assert built.size <= 400e6, f"the NumPy image is {built.size / 1e6:.0f} MB (goal 400)"
    # chainrule from the wheel, bytecode compiled; of the build tools, only empty mount points
    probe = (
        "import chainrule, pathlib, shutil, sys; print(chainrule.__file__, shutil.which('uv'),"
        " sum(p.stat().st_size for p in pathlib.Path('/.chainrule-build').rglob('*')"
        " if p.is_file()),"
        " len(list(pathlib.Path(chainrule.__file__).parent.rglob('__pycache__/*.pyc'))) > 40)"
    )
    out = podman.run("run", "--rm", "--pull=never", *limit_args(),
                     "--entrypoint", "/opt/venv/bin/python", built.tag, "-c", probe)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        "/opt/venv/lib/python3.11/site-packages/chainrule/__init__.py",
        "None",
        "0",
        "True",
    ]


def test_a_code_edit_rebuilds_only_the_code_layer(podman: Runtime, workdir: Path) -> None:
    folder = component_folder(workdir, "numpy2", name="numpy2_edit")
    first = build_image(folder, runtime=podman, quiet=True)
    component = folder / "component.py"
    edit = f"x**2 + 0 * {uuid.uuid4().int % 10**9}"  # a one-line edit never built before
    component.write_text(component.read_text().replace("x**2", edit))
    second = build_image(folder, runtime=podman, quiet=True)
    try:
        # the base, requirements and chainrule layers come from the cache; only the code is new
        assert second.layers[:-1] == first.layers[:-1]
        assert second.layers[-1] != first.layers[-1]
        # not from the cache: FROM (never counted), then COPY of the code and the 4 steps after
        assert second.steps - second.cached == 6, (second.cached, second.steps)
    finally:  # a one-off code layer: not kept (the layers below it stay, in other images)
        podman.run("rmi", second.image_id)


def test_an_up_to_date_image_is_not_rebuilt(
    podman: Runtime, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = component_folder(workdir, "numpy2", name="numpy2_same")
    built = build_image(folder, runtime=podman, quiet=True)

    def no_build(*args: object, **kwargs: object) -> Built:
        raise AssertionError("the image is up to date: no build expected")

    monkeypatch.setattr(_image, "build_image", no_build)
    assert ensure_image(folder, runtime=podman) == built.tag
    (folder / "component.py").write_text((folder / "component.py").read_text() + "\n# edit\n")
    with pytest.raises(AssertionError, match="no build expected"):
        ensure_image(folder, runtime=podman)


def test_os_packages_are_installed(podman: Runtime, workdir: Path) -> None:
    folder = component_folder(workdir, "numpy2", name="numpy2_os", os_packages=["jq"])
    built = build_image(folder, runtime=podman, quiet=True)
    out = podman.run("run", "--rm", "--pull=never", *limit_args(),
                     "--entrypoint", "jq", built.tag, "--version")  # fmt: skip
    assert out.returncode == 0 and out.stdout.startswith("jq-"), out.stderr


# ---- running ------------------------------------------------------------------------------------


def _request(row: Endpoint) -> dict[str, object]:
    """A request for endpoint `row` at the `vector` case, built from its keywords' roles."""
    c = {"y": np.array([0.3, 1.0, -1.0]), "s": 0.5}
    stacked = {
        "tangents": {"x": np.stack([T, 2 * T])},
        "cotangents": {"y": np.stack([c["y"], -c["y"]]), "s": np.array([0.5, 1.0])},
    }
    examples = {"tangents": {"x": T}, "cotangents": c, "weights": c, "batched": ["x"],
                **(stacked if row.batched else {})}  # fmt: skip
    # `batched` where the row needs it (batched_apply); the derivatives' optional `batched`
    # (derivatives at B points) is tested over every transport in test_batched_derivatives.
    wanted = [k for k in row.keywords if k.role in examples]
    request = {k.name: examples[k.role] for k in wanted if k.required or k.role != "batched"}
    missing = [k.name for k in row.keywords if k.required and k.name not in request]
    assert not missing, f"endpoint {row.name!r}: no example for required {missing} here"
    return request


def _agree(got: object, want: object) -> None:
    def leaf(g: object, w: object) -> None:
        if isinstance(w, np.ndarray | float | int):
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14)  # type: ignore[arg-type]
        else:
            assert g == w

    def plain(tree: object) -> object:  # schema instances as dicts, arrays kept as they are
        return tree.model_dump() if isinstance(tree, pydantic.BaseModel) else tree

    jax.tree.map(leaf, plain(got), plain(want))


def test_every_endpoint_agrees_with_the_in_process_twin(
    vector: tuple[Launched, cr.Component],
) -> None:
    """Every row of the endpoint table (chainrule.ENDPOINTS), run through the container and
    in process, gives the same answer."""
    launched, remote = vector
    local = build(CASES[0], "numpy")
    inputs = {"x": X, "scale": 1.5}
    answered = []
    for row in cr.ENDPOINTS.values():
        request = _request(row)
        if "batched" in request:  # two points stacked on x (the batched_apply row)
            inputs = {"x": np.stack([X, 2 * X]), "scale": 1.5}
        try:
            want = local.call(row.name, inputs, **request)
        except cr.ChainruleError as e:  # refused in process: refused the same way remotely
            with pytest.raises(type(e), match=rf"\b{row.name}\b"):
                remote.call(row.name, inputs, **request)
            continue
        _agree(remote.call(row.name, inputs, **request), want)
        answered.append(row.name)
        inputs = {"x": X, "scale": 1.5}
    expected = {"apply", "jvp", "vjp", "jacobian", "batched_jvp", "batched_vjp", "batched_apply"}
    assert expected <= set(answered)
    assert remote.endpoints["vjp"].startswith("remote")
    assert launched.url.startswith("http://127.0.0.1:")


def _through(comp: cr.Component) -> object:
    return lambda x: crj.call(comp, {"x": x, "scale": 1.5})


def test_jax_transformations_through_a_container(vector: tuple[Launched, cr.Component]) -> None:
    """jit(grad), jvp, vjp, linearize, jacrev, jacfwd, vmap: the containerized component
    gives what its in-process twin gives, and the gradient matches finite differences."""
    _, remote = vector
    twin = build(CASES[0], "numpy")
    f, g = _through(remote), _through(twin)
    f(X), g(X)  # type: ignore[operator]  # NumPy components learn output shapes eagerly

    def loss(fn: object) -> object:
        return lambda x: jnp.sum(fn(x)["y"] ** 2) + 0.5 * fn(x)["s"]  # type: ignore[operator]

    def y(fn: object) -> object:
        return lambda x: fn(x)["y"]  # type: ignore[operator]

    close = {"rtol": 1e-9, "atol": 1e-12}
    v, dv = jax.jit(jax.value_and_grad(loss(f)))(X)
    w, dw = jax.jit(jax.value_and_grad(loss(g)))(X)
    np.testing.assert_allclose(v, w, **close)
    np.testing.assert_allclose(dv, dw, **close)
    eps = 1e-6
    fd = [(loss(f)(X + eps * e) - loss(f)(X - eps * e)) / (2 * eps) for e in np.eye(3)]  # type: ignore[operator]
    np.testing.assert_allclose(dv, fd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.jvp(y(f), (X,), (T,))[1], jax.jvp(y(g), (X,), (T,))[1], **close)
    _, pull = jax.vjp(y(f), X)
    np.testing.assert_allclose(pull(T)[0], jax.vjp(y(g), X)[1](T)[0], **close)
    _, lin = jax.linearize(y(f), X)
    np.testing.assert_allclose(jnp.vdot(T, lin(T)), jnp.vdot(pull(T)[0], T), rtol=1e-6)  # dot test
    np.testing.assert_allclose(jax.jacrev(y(f))(X), jax.jacrev(y(g))(X), **close)
    np.testing.assert_allclose(jax.jit(jax.jacfwd(y(f)))(X), jax.jacfwd(y(g))(X), **close)
    xs = jnp.stack([X, 2 * X, -X])
    np.testing.assert_allclose(jax.vmap(jax.grad(loss(f)))(xs), jax.vmap(jax.grad(loss(g)))(xs),
                               **close)  # fmt: skip


def test_mounts_are_passed_and_the_server_is_on_loopback(
    podman: Runtime, vector: tuple[Launched, cr.Component]
) -> None:
    launched, _ = vector
    [name] = [n for n in running(podman, os.getpid()) if n.startswith("chainrule-vector-")]
    info = json.loads(podman.run("container", "inspect", name).stdout)[0]
    mounts = [(m["Destination"], m["RW"]) for m in info["Mounts"]]
    assert ("/data", False) in mounts
    assert info["HostConfig"]["NetworkMode"] == "host"
    assert info["HostConfig"]["Init"] is True
    assert "serving 'vector_numpy' (numpy) on http://127.0.0.1:" in launched.log


def test_two_containers_with_conflicting_requirements_in_one_pipeline(
    podman: Runtime, workdir: Path, numpy2: tuple[Path, Built]
) -> None:
    old_folder = component_folder(workdir, "numpy1")
    with (
        launch(old_folder, runtime="podman", quiet=True) as old,
        launch(numpy2[0], runtime="podman", quiet=True) as new,
    ):
        x = np.array([0.5, -1.5, 2.0])
        assert (old.apply({"x": x}).numpy_major, new.apply({"x": x}).numpy_major) == (1, 2)

        def pipeline(x: jax.Array) -> jax.Array:
            return jnp.sum(crj.call(new, {"x": crj.call(old, {"x": x})["y"]})["y"])  # Σ x⁴

        np.testing.assert_allclose(pipeline(x), np.sum(x**4), rtol=1e-12)
        np.testing.assert_allclose(jax.grad(pipeline)(x), 4 * x**3, rtol=1e-6)


_PARENT = """
import sys, time
import chainrule as cr
launched = cr.launch(sys.argv[1], runtime="podman", quiet=True)
print(launched.url, flush=True)
if sys.argv[2] == "exit":
    sys.exit(0)          # no stop(): only the lifeline closing at exit tells the watcher
time.sleep(600)
"""


@pytest.mark.parametrize("ending", ["exit", "sigterm", "sigkill", "killpg"])
def test_no_container_outlives_its_parent(
    podman: Runtime, numpy2: tuple[Path, Built], ending: str
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(numpy2[0]), ending], stdout=subprocess.PIPE,
        text=True, start_new_session=True,
    ) as parent:  # fmt: skip
        assert parent.stdout is not None
        url = parent.stdout.readline().strip()
        assert url and (ending == "exit" or answers(url)), url
        if ending == "sigterm":
            parent.send_signal(signal.SIGTERM)
        elif ending == "sigkill":
            parent.kill()
        elif ending == "killpg":
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=60)
    assert wait_for(lambda: not running(podman, parent.pid), timeout=30), running(podman)
    assert not answers(url)


def test_leftovers_of_dead_launchers_are_swept(podman: Runtime, numpy2: tuple[Path, Built]) -> None:
    """A container whose launcher and watcher are both gone (say, after a reboot) is removed
    by the next launch's sweep; one whose launcher lives is left alone."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    names = {"orphan": f"{dead}:1", "alive": _container._owner()}
    for what, owner in names.items():
        name = f"chainrule-sweep-{what}-{os.getpid()}"
        out = podman.run("run", "-d", "--rm", "--pull=never", *limit_args(),
                         "--name", name, "--label", f"{OWNER_LABEL}={owner}",
                         "--entrypoint", "sleep", numpy2[1].tag, "60")  # fmt: skip
        assert out.returncode == 0, out.stderr
    try:
        assert _container.sweep(podman) == [f"chainrule-sweep-orphan-{os.getpid()}"]
        assert f"chainrule-sweep-alive-{os.getpid()}" in running(podman, os.getpid())
        assert f"chainrule-sweep-orphan-{os.getpid()}" not in running(podman)
    finally:
        podman.run("rm", "-f", "-t", "0", f"chainrule-sweep-alive-{os.getpid()}")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_serve_image_from_the_command_line(
    podman: Runtime, numpy2: tuple[Path, Built], stop: signal.Signals
) -> None:
    """`chainrule serve --image` serves with the other options; its container goes with the
    command, however the command ends (SIGKILL too: the watcher's lifeline closes)."""
    tag = numpy2[1].tag.removeprefix("localhost/")  # the short name works too
    with subprocess.Popen(
        [sys.executable, "-m", "chainrule", "serve", "--image", tag, "--port", "0",
         "--max-batch", "4"], stderr=subprocess.PIPE, text=True, start_new_session=True,
    ) as cli:  # fmt: skip
        _serve_and_stop(cli, stop)
    assert wait_for(lambda: not running(podman, cli.pid), timeout=30), running(podman)


def _serve_and_stop(cli: subprocess.Popen[str], stop: signal.Signals) -> None:
    try:
        assert cli.stderr is not None
        line = ""
        while "serving" not in line:
            line = cli.stderr.readline()
            assert line, "the server did not announce itself"
        url = line.rsplit(" on ", 1)[1].split()[0]
        remote = cr.connect(url)
        np.testing.assert_array_equal(remote.apply({"x": [1.0, 3.0]}).y, [1.0, 9.0])
        with pytest.raises(cr.ChainruleError, match="4"):  # --max-batch reached the server
            remote.batched_vjp({"x": [1.0]}, {"y": np.ones((5, 1))})
        remote.close()
    finally:
        cli.send_signal(stop)
        cli.wait(timeout=60)


# ---- HPC: the OCI archive -----------------------------------------------------------------------


def test_the_archive_is_an_oci_layout_that_loads_back(
    podman: Runtime, numpy2: tuple[Path, Built], tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from chainrule._cli.app import app

    archive = tmp_path / "numpy2.tar"
    result = CliRunner().invoke(
        app, ["build", str(numpy2[0]), "--quiet", "--archive", str(archive)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == numpy2[1].tag
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
    assert {"oci-layout", "index.json"} <= names
    [manifest] = index["manifests"]
    assert manifest["annotations"]["org.opencontainers.image.ref.name"] == numpy2[1].tag
    assert f"blobs/sha256/{manifest['digest'].split(':')[1]}" in names
    # loaded into an empty store, it is the same image: the archive is complete
    scratch = Path(tempfile.mkdtemp(prefix="cr-store-"))  # podman wants a short runroot
    # the main store's driver: overlay loaded it in 9 s where vfs (a full copy per layer) took 42
    driver = podman.run("info", "--format", "{{.Store.GraphDriverName}}").stdout.strip()
    store = ["--root", str(scratch / "root"), "--runroot", str(scratch / "run"),
             "--storage-driver", driver or "vfs"]  # fmt: skip
    try:
        out = podman.run(*store, "load", "-i", str(archive), timeout=600)
        assert out.returncode == 0 and numpy2[1].tag in out.stdout, out.stderr
        image_id = podman.run(*store, "image", "inspect", "--format", "{{.Id}}", numpy2[1].tag)
        assert image_id.stdout.strip() == numpy2[1].image_id
    finally:
        podman.run(*store, "rmi", "-a", "-f")
        shutil.rmtree(scratch, ignore_errors=True)


# ---- the docker code path, through docker's CLI pointed at podman's docker API ------------------


@pytest.fixture(scope="module")
def docker(podman: Runtime, workdir: Path) -> Iterator[Runtime]:
    """docker against `podman system service` (no Docker engine runs on the test machines).

    The service gets the open-file and process limits an administrator would configure for
    this host (podman's defaults exceed them). Without a docker CLI on the machine, a stand-in
    that hands docker's command line to podman's plays its part.
    """
    sock = workdir / "docker.sock"
    conf = workdir / "containers.conf"
    files, procs = (arg.split("=")[1] for arg in limit_args()[1::2])
    conf.write_text(f'[containers]\ndefault_ulimits = ["nofile={files}", "nproc={procs}"]\n')
    service = subprocess.Popen(
        [podman.exe, "system", "service", "--time=0", f"unix://{sock}"],
        env={**os.environ, "CONTAINERS_CONF": str(conf)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    bin_dir = workdir / "bin"
    bin_dir.mkdir()
    if shutil.which("docker") is None:
        remote = f'{podman.exe} --url "$DOCKER_HOST"'
        version = '--format "{{.Version.Version}}"'  # docker info's template is not podman's
        (bin_dir / "docker").write_text(
            f'#!/bin/sh\n[ "$1" = info ] && exec {remote} info {version}\nexec {remote} "$@"\n'
        )
        (bin_dir / "docker").chmod(0o755)
    try:
        assert wait_for(sock.exists, timeout=30)
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("DOCKER_HOST", f"unix://{sock}")
            mp.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
            yield find_runtime("docker")
    finally:
        service.terminate()
        service.wait(timeout=30)


def test_the_docker_code_path(docker: Runtime, podman: Runtime, workdir: Path) -> None:
    assert docker.name == "docker"
    folder = component_folder(workdir, "numpy2", name="numpy2_docker")
    built = build_image(folder, runtime="docker", quiet=True)
    assert built.tag == f"localhost/chainrule-numpy2_docker:{VERSION}" and len(built.layers) == 6
    with launch(folder, runtime="docker", quiet=True) as comp:
        x = np.array([0.5, 2.0])
        np.testing.assert_array_equal(comp.apply({"x": x}).y, x**2)
        np.testing.assert_allclose(comp.vjp({"x": x}, {"y": [1.0, 1.0]})["x"], 2 * x, rtol=1e-6)
        assert [n for n in running(podman, os.getpid()) if "numpy2_docker" in n]
    assert wait_for(lambda: not [n for n in running(podman) if "numpy2_docker" in n], 30)


# ---- the guide's snippets -----------------------------------------------------------------------


@pytest.mark.parametrize("script", CONTAINER_SNIPPETS, ids=lambda p: p.name)
def test_the_guides_container_snippets_run(script: Path, podman: Runtime, tmp_path: Path) -> None:
    result = run_snippet(script, tmp_path)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    guide = (ROOT / "docs" / "guide" / "containers.md").read_text()
    assert f'--8<-- "{script.name}' in guide


def test_a_killed_container_is_restarted_and_the_next_call_succeeds(
    podman: Runtime, numpy2: tuple[Path, Built]
) -> None:
    launched = launch(numpy2[0], runtime="podman", quiet=True)
    with launched as comp:
        x = np.array([0.5, 2.0])
        np.testing.assert_array_equal(comp.apply({"x": x}).y, x**2)
        [first] = [n for n in running(podman, os.getpid()) if n.startswith("chainrule-numpy2-")]
        podman.run("kill", first)
        # the supervisor starts a new container on the same port; the client retries the call
        np.testing.assert_array_equal(comp.apply({"x": x}).y, x**2)
        assert launched.restarts == 1
        assert first not in running(podman, os.getpid())
    assert wait_for(lambda: not [n for n in running(podman, os.getpid()) if "numpy2-" in n])
