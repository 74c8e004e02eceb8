"""Tesseract folders run by chainrule: `launch(folder)` builds the folder's environment
(tesseract-core's runtime plus its `tesseract_requirements.txt`) with uv and serves it with
chainrule's server (`chainrule serve folder`), through tesseract-core's own loader
(`from_tesseract_api`). Checked against finite differences, and against tesseract-runtime
serving the same folder, both driven by tesseract-jax and by tesseract-torch."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from subprocess import PIPE
from typing import Any

import numpy as np
import pytest

import chainrule as cr
import tesseract_peer
from chainrule._transport.launch.env import env_dir
from chainrule._transport.launch.spec import TESSERACT_CORE, tesseract_spec

HERE = Path(__file__).parent
X = {
    "layers": [{"w": np.array([1.0, 2.0, 3.0])}, {"w": np.array([0.5, 0.1, 0.2])}],
    "fields": {"temp": np.array([0.3, 0.4, 0.5])},
    "scale": 2.0,
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("envs")


@pytest.fixture(scope="module")
def listdict(cache: Path) -> Iterator[cr.Component]:
    with cr.launch(tesseract_peer.example("listdict"), cache_dir=cache, quiet=True) as comp:
        yield comp


def _fd(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for i in range(x.size):
        e = np.zeros_like(x)
        e[i] = eps
        grad[i] = (f(x + e) - f(x - e)) / (2 * eps)
    return grad


def test_spec_of_a_tesseract_folder() -> None:
    spec = tesseract_spec(tesseract_peer.example("vectoradd_jax"))
    assert spec.name == "vectoradd_jax"
    assert spec.requirements == (TESSERACT_CORE, "jax[cpu]", "equinox")


def test_launched_folder_agrees_with_fd(listdict: cr.Component) -> None:
    def loss(w: np.ndarray) -> float:
        out = listdict.apply({**X, "layers": [{"w": w}, X["layers"][1]]})
        return float((out.total**2).sum())

    out, handle = listdict.apply(X, keep=True)
    grads = listdict.vjp(X, {"total": 2 * out.total}, handle=handle)
    np.testing.assert_allclose(grads["layers.0.w"], _fd(loss, X["layers"][0]["w"]), rtol=1e-6)
    assert listdict.endpoints["vjp"].endswith("tesseract: /vector_jacobian_product")


def test_from_tesseract_api_in_the_folders_environment(listdict: cr.Component, cache: Path) -> None:
    folder = tesseract_peer.example("listdict")
    python = env_dir(tesseract_spec(folder), cache) / "bin" / "python"
    code = (
        "import json, numpy as np, chainrule as cr\n"
        f"c = cr.from_tesseract_api({str(folder)!r})\n"
        "x = {'layers': [{'w': np.ones(3)}], 'fields': {'t': np.ones(3)}, 'scale': 2.0}\n"
        "g = c.vjp(x, {'total': np.ones(3)})\n"
        "print(json.dumps({k: np.asarray(v).tolist() for k, v in g.items()}))\n"
    )
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout)
    np.testing.assert_allclose(got["layers.0.w"], [4.0, 4.0, 4.0])  # 2·scale·w
    np.testing.assert_allclose(got["scale"], 6.0)  # Σ(w² + t)


def _drive(url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """What tesseract-jax and tesseract-torch computed at URL (run side by side: most of
    each run is importing its client)."""
    scripts = [
        HERE / "fixtures" / "tesseract" / f"drive_vectoradd_{c}.py" for c in ("jax", "torch")
    ]
    python = str(tesseract_peer.python())
    runs = [
        subprocess.Popen([python, str(s), url], stdout=PIPE, stderr=PIPE, text=True)
        for s in scripts
    ]
    answers = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err[-3000:]
        answers.append(json.loads(out))
    return answers[0], answers[1]


def test_tesseract_jax_and_torch_get_the_same_numbers_from_both_runtimes(
    cache: Path, tmp_path: Path
) -> None:
    folder = tesseract_peer.example("vectoradd_jax")
    with cr.launch(folder, cache_dir=cache, quiet=True) as comp:
        ours, ours_torch = _drive(f"{comp.backend.where}/tesseract")
    with tesseract_peer.servers(["vectoradd_jax"], tmp_path) as urls:
        theirs, theirs_torch = _drive(urls["vectoradd_jax"])
    for key in ("jit_grad", "jvp", "jacrev"):
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(np.asarray(ours["jacrev"]), 2 * np.eye(3), rtol=1e-6)
    for key in ("grad", "jvp"):  # tesseract-torch: the same loss as tesseract-jax's
        np.testing.assert_allclose(ours_torch[key], theirs_torch[key], rtol=1e-5, err_msg=key)
    np.testing.assert_allclose(ours_torch["grad"], ours["jit_grad"], rtol=1e-5)
    np.testing.assert_allclose(ours_torch["jvp"], ours["jvp"], rtol=1e-5)
