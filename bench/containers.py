"""Container figures (issue 16): image sizes, build times, start to first answer, small calls.

One run measures, with podman on this machine:
- the size of a NumPy component's image (tests/fixtures/numpy2) and of a JAX component's;
- a cold build (`--no-cache`: every layer built again; the base image and uv's download cache
  are there, as on any machine after its first build) and the one-time base image build
  (debootstrap, into a scratch tag, only with `--base`);
- a rebuild after a one-line edit of the component's code;
- start to first answer: `launch(folder, runtime="podman")` until the first `apply` returned,
  against `launch(folder)` (its uv environment cached), interleaved rounds; and the uv launch
  from the environment as it was built before `--compile-bytecode`;
- the median small call (`apply` of 10 float64) through each;
- writing the OCI archive.

Run: `python bench/containers.py [--rounds 5] [--base]`; prints a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np

import chainrule as cr
from chainrule._transport.launch import base_image as _base_image
from chainrule._transport.launch import env as _env
from chainrule._transport.launch.image import Built, build_image, save_archive
from chainrule._transport.launch.runtime import find_runtime

ROOT = Path(__file__).resolve().parents[1]
X = {"x": np.linspace(0.0, 1.0, 10)}
JAX_COMPONENT = '''"""A small JAX component (for the image size of a JAX component)."""

import jax.numpy as jnp

import chainrule as cr


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="jax")
def band(inputs: Inputs) -> Outputs:
    return Outputs(y=jnp.sin(inputs.x) * inputs.x)
'''


def _folders(tmp: Path) -> tuple[Path, Path]:
    numpy = tmp / "numpy2"
    shutil.copytree(ROOT / "tests" / "fixtures" / "numpy2", numpy)
    jax = tmp / "jax_band"
    jax.mkdir()
    (jax / "component.py").write_text(JAX_COMPONENT)
    (jax / "chainrule.toml").write_text(
        'name = "jax_band"\nversion = "0.1.0"\nrequirements = ["jax"]\n'
        'entry = "component.py:band"\n'
    )
    return numpy, jax


def _median_call(comp: cr.Component, n: int = 300) -> float:
    for _ in range(30):
        comp.apply(X)
    times = []
    for _ in range(n):
        start = time.perf_counter()
        comp.apply(X)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _first_answer(start: Callable[[], cr.Launched]) -> tuple[float, float]:
    """(seconds from launch to the first apply's answer, median small call)."""
    t0 = time.perf_counter()
    launched = start()
    with launched as comp:
        comp.apply(X)
        first = time.perf_counter() - t0
        call = _median_call(comp)
    return first, call


def _strip_bytecode(venv: Path) -> Path:
    """A copy of a cached environment as it was built before `--compile-bytecode`: uv
    compiles nothing, and only the import check after the build (`python -I`, which writes
    bytecode whatever PYTHONDONTWRITEBYTECODE says) left bytecode of what it imports."""
    bare = venv.parent / f"bare-{venv.name}"
    shutil.copytree(venv, bare, symlinks=True)
    for cache in bare.rglob("__pycache__"):
        shutil.rmtree(cache)
    assert _env.env_problem(bare, check="import") is None
    return bare


def _uv_bare(folder: Path, cache: Path) -> cr.Launched:
    """`launch(folder)` served by the environment copy without bytecode."""
    import functools

    from chainrule._transport.launch.launch import launch, server_command

    spec = _env.load_spec(folder)
    venv = _env.env_dir(spec, cache)
    bare = venv.parent / f"bare-{venv.name}"
    command = functools.partial(server_command, bare / "bin" / "python", folder, spec)
    return launch(folder, _command=command, cache_dir=cache, quiet=True)


def _base_build(runtime_name: str) -> tuple[float, int]:
    """The one-time base image build (debootstrap + import), into a scratch tag."""
    runtime = find_runtime(runtime_name)
    release, tag = (
        _base_image.host_release(),
        f"localhost/chainrule-bench-base:{uuid.uuid4().hex[:6]}",
    )
    start = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="chainrule-rootfs-", dir="/var/tmp"))
    try:
        _base_image._debootstrap("debootstrap", release, root, quiet=True)
        _base_image._slim(root)
        _base_image._import(runtime, root, tag, release)
    finally:
        _base_image._remove_tree(root)
    seconds = time.perf_counter() - start
    size = int((runtime.inspect(tag) or {}).get("Size", 0))  # type: ignore[call-overload]
    runtime.run("rmi", tag)
    return seconds, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--base", action="store_true", help="also time the base image build")
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="chainrule-bench-") as tmp:
        numpy, jax = _folders(Path(tmp))
        cache = Path(tmp) / "envs"
        if args.base:
            seconds, size = _base_build("podman")
            rows.append(("base image, built once (debootstrap + import)",
                         f"{seconds:.0f} s, {size / 1e6:.0f} MB"))  # fmt: skip
        build_image(numpy, quiet=True)  # the layers exist: the cold build below redoes them
        cold = build_image(numpy, quiet=True, no_cache=True)
        component = numpy / "component.py"
        edit = f"x**2 + 0 * {uuid.uuid4().int % 10**9}"  # one line, never built before
        component.write_text(component.read_text().replace("x**2", edit))
        rebuild = build_image(numpy, quiet=True)
        jax_image: Built = build_image(jax, quiet=True)
        archive = Path(tmp) / "numpy2.tar"
        t0 = time.perf_counter()
        save_archive(find_runtime("podman"), cold.tag, archive, quiet=True)
        saved = time.perf_counter() - t0
        rows += [
            ("NumPy component image (goal ≤ 400 MB)", f"{cold.size / 1e6:.0f} MB"),
            ("JAX component image", f"{jax_image.size / 1e6:.0f} MB"),
            ("cold build of the NumPy image (`--no-cache`)", f"{cold.seconds:.1f} s"),
            ("rebuild after a one-line code edit (goal ≤ 15 s)",
             f"{rebuild.seconds:.1f} s ({rebuild.cached} of {rebuild.steps} steps cached)"),
            ("OCI archive (`--archive`, gzip layers)",
             f"{saved:.1f} s, {archive.stat().st_size / 1e6:.0f} MB"),
        ]  # fmt: skip
        python = _env.build_env(numpy, cache_dir=cache, quiet=True)
        _strip_bytecode(python.parent.parent)
        results: dict[str, list[tuple[float, float]]] = {"podman": [], "uv": [], "uv-bare": []}
        for _ in range(args.rounds):  # interleaved: the machine's load hits each alike
            results["podman"].append(
                _first_answer(lambda: cr.launch(numpy, runtime="podman", quiet=True))
            )
            results["uv"].append(
                _first_answer(lambda: cr.launch(numpy, cache_dir=cache, quiet=True))
            )
            results["uv-bare"].append(_first_answer(lambda: _uv_bare(numpy, cache)))
        labels = {"podman": "container (podman)", "uv": "uv environment",
                  "uv-bare": "uv environment built as before (no --compile-bytecode)"}  # fmt: skip
        for name, label in labels.items():
            firsts = sorted(r[0] for r in results[name])
            calls = sorted(r[1] for r in results[name])
            spread = f"{firsts[0]:.2f}–{firsts[-1]:.2f} s"
            rows.append((f"start to first answer, {label} (goal ≤ 3 s)",
                         f"median {statistics.median(firsts):.2f} s ({spread})"))  # fmt: skip
            rows.append((f"small call (apply, 10 float64), {label}",
                         f"median {statistics.median(calls) * 1e3:.2f} ms "
                         f"({calls[0] * 1e3:.2f}–{calls[-1] * 1e3:.2f})"))  # fmt: skip
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    print(f"\n{args.rounds} interleaved rounds; python {sys.version.split()[0]}", file=sys.stderr)


if __name__ == "__main__":
    main()
