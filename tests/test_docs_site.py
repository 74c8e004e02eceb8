"""Docs cannot drift: the user guide (mkdocs.yml, docs/) builds strictly, every code block on its
pages is included from a file, and every snippet file runs.

Snippets (`docs/snippets/*.py` with python, `*.sh` with bash and the venv's `chainrule` on PATH)
each run in a fresh temporary directory; they start together in a small thread pool when the
first of these tests asks, so the module takes about as long as the slowest few snippets.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from subprocess import PIPE

import pytest

ROOT = Path(__file__).parents[1]
DOCS = ROOT / "docs"
SNIPPETS = DOCS / "snippets"
BASE_PATHS = (SNIPPETS, ROOT)  # pymdownx.snippets' base_path in mkdocs.yml
TIMEOUT = 120.0
# A guide page's code blocks are all includes; the older reference pages are checked elsewhere
# (docs/wire-format.md by tests/test_wire.py).
GUIDE_PAGES = sorted([DOCS / "index.md", *(DOCS / "guide").glob("*.md")])
# Snippets that need a container runtime run in tests/test_containers.py (marked `containers`).
CONTAINER_SNIPPETS = sorted([*SNIPPETS.glob("containers_*.py"), *SNIPPETS.glob("containers_*.sh")])
SCRIPTS = sorted({*SNIPPETS.glob("*.py"), *SNIPPETS.glob("*.sh")} - {*CONTAINER_SNIPPETS})
INCLUDE = re.compile(r'^\s*-{1,}8<-{1,}\s+"([^"]+)"', re.M)
FENCE = re.compile(r"^(```|~~~)[^\n]*\n(.*?)^\1", re.M | re.S)

Result = subprocess.CompletedProcess[str]
Started = tuple[Path, "Future[Result]"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(script: Path, cwd: Path) -> Result:
    env = os.environ | {
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PORT": str(_free_port()),
        "PYTHONWARNINGS": "error::SyntaxWarning",
    }
    if script.name == "cli_env.sh":
        # It rebuilds (deletes, then builds) my_component's environment, which cli_serve.sh,
        # running at the same time, serves from: its own cache keeps the two apart.
        env["CHAINRULE_CACHE"] = str(cwd / "envs")
    argv = ["bash", str(script)] if script.suffix == ".sh" else [sys.executable, str(script)]
    # Own process group: whatever a snippet leaves running (a server it started) is killed.
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=PIPE, stderr=PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
        code = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        code, err = -1, f"{err}\n[test_docs_site] timed out after {TIMEOUT} s"
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(argv, code, out, err)


@pytest.fixture(scope="module")
def started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Started]]:
    """Every snippet, running in a pool of a few workers: {file name: (its cwd, its future)}."""
    workers = max(2, min(4, (os.cpu_count() or 2) + 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        runs = {}
        for script in SCRIPTS:
            cwd = tmp_path_factory.mktemp(script.stem, numbered=True)
            runs[script.name] = (cwd, pool.submit(_run, script, cwd))
        yield runs


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_snippet_runs(script: Path, started: dict[str, Started]) -> None:
    cwd, future = started[script.name]
    result = future.result()
    assert result.returncode == 0, (
        f"{script.relative_to(ROOT)} exited with {result.returncode}\n"
        f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )
    if script.suffix == ".py":  # python snippets keep their files inside their own temp dir
        leftovers = [p.name for p in cwd.iterdir()]
        assert not leftovers, f"{script.name} left files behind: {leftovers}"


def _includes(page: Path) -> list[str]:
    return INCLUDE.findall(page.read_text())


def _resolve(target: str) -> tuple[Path | None, str | None]:
    """(the included file, or None; the part after ':', a section or line range, or None)."""
    name, _, part = target.partition(":")
    for base in BASE_PATHS:
        if (base / name).is_file():
            return base / name, part or None
    return None, part or None


PAGES = sorted(p for p in DOCS.rglob("*.md") if SNIPPETS not in p.parents)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_includes_point_at_files(page: Path) -> None:
    for target in _includes(page):
        path, part = _resolve(target)
        assert path is not None, f"{page.name}: --8<-- {target!r} names no file under {BASE_PATHS}"
        if part is None:
            continue
        text = path.read_text()
        if re.fullmatch(r"\d+(:\d+)?", part):
            first, _, last = part.partition(":")
            n = len(text.splitlines())
            assert 1 <= int(first) <= int(last or first) <= n, f"{target}: {path} has {n} lines"
        else:
            assert f"--8<-- [start:{part}]" in text and f"--8<-- [end:{part}]" in text, (
                f"{page.name}: {target!r}: no section {part!r} in {path}"
            )


def test_readme_commands_included() -> None:
    """getting-started.md includes README.md lines 4-5: they must still be the two commands."""
    lines = (ROOT / "README.md").read_text().splitlines()[3:5]
    assert [line.split()[:2] for line in lines] == [["make", "demo"], ["make", "test"]], lines


@pytest.mark.parametrize("page", GUIDE_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_guide_code_is_included(page: Path) -> None:
    """Every code block of a guide page is an include of a tested file, never inline code."""
    for _, body in FENCE.findall(page.read_text()):
        lines = [line for line in body.splitlines() if line.strip()]
        assert lines and all(INCLUDE.match(line) for line in lines), (
            f"{page.name}: inline code block; put it in docs/snippets/ and include it:\n{body}"
        )


def test_every_snippet_is_shown() -> None:
    """Our snippets are each included by some page (others' are included when their page is)."""
    shown = {_resolve(t)[0] for page in PAGES for t in _includes(page)}
    ours = [s for s in SCRIPTS if not s.name.startswith(("optimize_", "soft_", "plot_"))]
    assert not [s.name for s in ours if s not in shown]


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    # mkdocs and mkdocs-material are dev dependencies: a missing one fails, it does not skip.
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    assert (tmp_path / "guide" / "getting-started" / "index.html").is_file()
    assert not (tmp_path / "snippets").exists()


def test_the_layer_picture_is_drawn_from_the_package(tmp_path: Path) -> None:
    """docs/figures/layers.py draws the architecture page's picture; drawn again, it names
    every layer folder, as the committed picture does."""
    import test_architecture

    out = tmp_path / "layers.svg"
    script = DOCS / "figures" / "layers.py"
    subprocess.run([sys.executable, str(script), str(out)], check=True, timeout=120)
    for svg in (out, DOCS / "figures" / "layers.svg"):
        text = svg.read_text()
        for layer in test_architecture.LAYERS:
            assert f"{layer}/" in text, (svg, layer)
    assert "figures/layers.svg" in (DOCS / "architecture.md").read_text()
