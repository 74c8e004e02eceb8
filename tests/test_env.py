"""Component folders (`chainrule.toml`) and their uv-built, cached environments."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from chainrule._schema.errors import LaunchError
from chainrule._transport.launch.env import (
    STAMP,
    ComponentSpec,
    build_env,
    cache_root,
    chainrule_root,
    env_dir,
    env_hash,
    env_problem,
    find_uv,
    load_spec,
    parse_spec,
    pip_settings,
    uv_environment,
)

FIXTURES = Path(__file__).parent / "fixtures"
MINIMAL = {"name": "band", "entry": "component.py:band"}


@pytest.fixture(scope="session")
def env_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One environment cache for the session: each environment is built once."""
    return tmp_path_factory.mktemp("envs")


def _spec(**kw: object) -> ComponentSpec:
    return parse_spec({**MINIMAL, **kw})


def _message(data: dict[str, object]) -> str:
    with pytest.raises(LaunchError) as info:
        parse_spec(data)
    return info.value.message


# ----------------------------------------------------------------------------- spec


def test_fixture_spec_loads() -> None:
    spec = load_spec(FIXTURES / "numpy1")
    assert spec.name == "numpy1"
    assert spec.requirements == ("numpy<2",)
    assert spec.entry_file == "component.py"
    assert spec.backend == "numpy"


def test_spec_defaults_and_frozen() -> None:
    spec = _spec()
    assert spec.python is None
    assert spec.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert spec.requirements == ()
    with pytest.raises(Exception, match="frozen"):
        spec.name = "other"  # type: ignore[misc]


def test_unknown_key_is_named_with_a_suggestion() -> None:
    msg = _message({**MINIMAL, "requirement": ["numpy"]})
    assert "unknown key 'requirement' (did you mean 'requirements'?)" in msg


def test_wrong_type_says_expected_and_got() -> None:
    msg = _message({**MINIMAL, "requirements": "numpy<2"})
    assert "key 'requirements': expected a list of requirement strings" in msg
    assert "got 'numpy<2' (str)" in msg


def test_bad_requirement_item_is_named() -> None:
    msg = _message({**MINIMAL, "requirements": ["numpy", 3]})
    assert "key 'requirements.1': expected a requirement string" in msg
    assert "got 3 (int)" in msg


@pytest.mark.parametrize("req", ["-e .", "--index-url=http://evil", " "])
def test_requirement_cannot_be_an_option(req: str) -> None:
    msg = _message({**MINIMAL, "requirements": [req]})
    assert "not a pip option" in msg and repr(req) in msg


def test_missing_key_and_several_problems_reported_together() -> None:
    with pytest.raises(LaunchError) as info:
        parse_spec({"name": "a b", "python": "3", "backend": "tensorflow"})
    msg = info.value.message
    assert "missing key 'entry'" in msg
    assert "key 'python': expected a version string 'major.minor'" in msg
    assert "key 'backend': expected one of 'jax', 'torch', 'numpy', got 'tensorflow'" in msg
    assert "key 'name'" in msg
    assert {e["path"] for e in info.value.errors} == {"entry", "python", "backend", "name"}


def test_load_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match=r"no chainrule.toml in .*a component folder needs"):
        load_spec(tmp_path)
    (tmp_path / "chainrule.toml").write_text('name = "x"\nentry = "missing.py:obj"\n')
    with pytest.raises(LaunchError, match=r"key 'entry'.*'missing.py', which does not exist"):
        load_spec(tmp_path)
    (tmp_path / "chainrule.toml").write_text("name = \n")
    with pytest.raises(LaunchError, match="is not valid TOML"):
        load_spec(tmp_path)


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("../outside.py:obj", "'../outside.py:obj', which climbs out of the folder with '..'"),
        ("sub/../../outside.py:obj", "which climbs out of the folder with '..'"),
        ("/etc/outside.py:obj", "'/etc/outside.py:obj', an absolute path"),
        ("\\\\server\\outside.py:obj", "an absolute path"),
    ],
)
def test_an_entry_outside_the_folder_is_refused(entry: str, why: str) -> None:
    msg = _message({**MINIMAL, "entry": entry})
    assert "key 'entry': expected 'file.py:object' naming a file inside the component folder" in msg
    assert why in msg


def test_an_entry_linked_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    folder, outside = tmp_path / "comp", tmp_path / "outside.py"
    folder.mkdir()
    outside.write_text("comp = None\n")
    (folder / "component.py").symlink_to(outside)
    (folder / "chainrule.toml").write_text('name = "x"\nentry = "component.py:comp"\n')
    with pytest.raises(LaunchError) as info:
        load_spec(folder)
    msg = info.value.message
    assert "key 'entry': expected 'file.py:object' naming a file inside the component" in msg
    assert f"got 'component.py:comp', which resolves to {outside}, outside {folder}" in msg
    from chainrule._transport.http.serving import load_component

    with pytest.raises(LaunchError, match=r"which resolves to .*, outside"):
        load_component(str(folder))  # `chainrule serve <folder>` refuses it too
    (folder / "component.py").unlink()
    (folder / "component.py").symlink_to(folder / "real.py")  # a link inside is fine
    (folder / "real.py").write_text("comp = None\n")
    assert load_spec(folder).entry_file == "component.py"


# ----------------------------------------------------------------------------- cache key


def test_hash_ignores_requirement_order_and_changes_with_content() -> None:
    a = env_hash(_spec(requirements=["numpy<2", "scipy"]))
    assert a == env_hash(_spec(requirements=["scipy", "numpy<2"]))
    assert a == env_hash(_spec(requirements=["scipy", "numpy<2"], name="other", version="9"))
    assert a != env_hash(_spec(requirements=["numpy>=2", "scipy"]))
    assert a != env_hash(_spec(requirements=["numpy<2", "scipy"], python="3.99"))
    assert len(a) == 16


def test_hash_differs_between_checkouts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment installs chainrule editable from one checkout: another checkout with the
    same pyproject.toml must not reuse it (it would run the first checkout's code)."""
    from chainrule._transport.launch import env as _env

    spec = _spec(requirements=["numpy"])
    here = env_hash(spec)
    other = tmp_path / "other-checkout"
    other.mkdir()
    (other / "pyproject.toml").write_bytes((chainrule_root() / "pyproject.toml").read_bytes())
    monkeypatch.setattr(_env, "chainrule_root", lambda: other)
    assert env_hash(spec) != here


def test_hash_is_stable_across_processes() -> None:
    code = (
        "from chainrule._transport.launch.env import parse_spec, env_hash;"
        "print(env_hash(parse_spec({'name': 'band', 'entry': 'component.py:band',"
        "'requirements': ['numpy<2']})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == env_hash(_spec(requirements=["numpy<2"]))


def test_cache_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CHAINRULE_CACHE", str(tmp_path / "from-env"))
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    assert cache_root() == tmp_path / "from-env"
    monkeypatch.delenv("CHAINRULE_CACHE")
    assert cache_root() == Path.home() / ".cache" / "chainrule" / "envs"
    assert env_dir(_spec(), tmp_path).parent == tmp_path


def test_a_relative_cache_is_taken_from_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Servers run in their component folder: a relative cache path must not reach them."""
    monkeypatch.chdir(tmp_path)
    assert cache_root("envs") == tmp_path / "envs"
    monkeypatch.setenv("CHAINRULE_CACHE", "from-env")
    assert cache_root() == tmp_path / "from-env"
    assert env_dir(_spec()).parent == tmp_path / "from-env"
    monkeypatch.setenv("CHAINRULE_CACHE", "~/somewhere")
    assert cache_root() == Path.home() / "somewhere"


def test_chainrule_root_is_this_checkout() -> None:
    assert chainrule_root() == Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- pip → uv


def _env(**kw: str) -> dict[str, str]:
    # PIP_CONFIG_FILE=/dev/null: pip (and we) then read no config file, only these variables.
    return {"PIP_CONFIG_FILE": os.devnull, **kw}


def test_pip_variables_map_to_uv(tmp_path: Path) -> None:
    env = uv_environment(
        _env(
            PIP_FIND_LINKS=f"{tmp_path} file://{tmp_path}",
            PIP_INDEX_URL="https://mirror.example/simple",
            PIP_EXTRA_INDEX_URL="https://a.example/simple https://b.example/simple",
        )
    )
    assert env["UV_FIND_LINKS"] == f"{tmp_path},file://{tmp_path}"  # uv splits on commas
    assert env["UV_INDEX_URL"] == "https://mirror.example/simple"
    assert env["UV_EXTRA_INDEX_URL"] == "https://a.example/simple https://b.example/simple"
    assert env["UV_INDEX_STRATEGY"] == "unsafe-best-match"  # pip's behaviour across indexes
    assert env["UV_PYTHON_DOWNLOADS"] == "never"


def test_uv_variables_already_set_win(tmp_path: Path) -> None:
    env = uv_environment(
        _env(PIP_FIND_LINKS=str(tmp_path), UV_FIND_LINKS="/mine", UV_INDEX_STRATEGY="first-index")
    )
    assert env["UV_FIND_LINKS"] == "/mine"
    assert "UV_EXTRA_INDEX_URL" not in env
    assert env["UV_INDEX_STRATEGY"] == "first-index"


def test_missing_local_locations_are_dropped(tmp_path: Path) -> None:
    notes: list[str] = []
    env = uv_environment(
        _env(
            PIP_FIND_LINKS=f"{tmp_path}/missing {tmp_path}",
            PIP_EXTRA_INDEX_URL=f"file://{tmp_path}/no/simple file:///nonexistent/simple",
        ),
        notes=notes,
    )
    assert env["UV_FIND_LINKS"] == str(tmp_path)
    assert "UV_EXTRA_INDEX_URL" not in env  # uv must not fail because of them
    assert len(notes) == 3 and all("does not exist" in n for n in notes)


def test_pip_conf_is_read_and_variables_override_it(tmp_path: Path) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text(
        f"[global]\nfind-links = {tmp_path}\nextra-index-url = https://x.example/simple\n"
        "  file:///nonexistent/simple\n[install]\nindex-url = https://idx.example/simple\n"
    )
    found = pip_settings({"PIP_CONFIG_FILE": str(conf), "PIP_INDEX_URL": "https://env/simple"})
    assert found["find-links"] == [str(tmp_path)]
    assert found["index-url"] == ["https://env/simple"]
    env = uv_environment({"PIP_CONFIG_FILE": str(conf)})
    assert env["UV_EXTRA_INDEX_URL"] == "https://x.example/simple"
    assert env["UV_INDEX_URL"] == "https://idx.example/simple"


def test_no_uv_says_pip_install_uv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uv", None)  # `import uv` now raises ImportError
    monkeypatch.setenv("PATH", "")
    with pytest.raises(LaunchError, match=r"uv was not found.*`pip install uv`"):
        find_uv()


# ----------------------------------------------------------------------------- real builds


def _run_in(python: Path, folder: Path) -> dict[str, object]:
    """Import the folder's component in its environment and apply it."""
    code = (
        "import json, runpy, numpy as np;"
        "out = runpy.run_path('component.py')['square'].apply({'x': np.array([1.0, 3.0])});"
        "print(json.dumps({'numpy': np.__version__, 'major': out.numpy_major,"
        " 'y': out.y.tolist(), 'prefix': __import__('sys').prefix}))"
    )
    out = subprocess.run(
        [str(python), "-c", code], cwd=folder, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return dict(json.loads(out.stdout))


@pytest.mark.slow
@pytest.mark.parametrize(("folder", "major"), [("numpy1", 1), ("numpy2", 2)])
def test_conflicting_requirements_get_their_own_envs(
    env_cache: Path, folder: str, major: int
) -> None:
    python = build_env(FIXTURES / folder, cache_dir=env_cache, quiet=True)
    assert python.parent.parent.parent == env_cache
    result = _run_in(python, FIXTURES / folder)
    assert result["major"] == major and str(result["numpy"]).startswith(f"{major}.")
    assert result["y"] == [1.0, 9.0]
    assert Path(str(result["prefix"])) == python.parent.parent  # the venv, not ours


@pytest.mark.slow
def test_second_build_reuses_the_env(env_cache: Path) -> None:
    first = build_env(FIXTURES / "numpy1", cache_dir=env_cache, quiet=True)
    mtime = first.parent.parent.stat().st_mtime_ns
    assert build_env(load_spec(FIXTURES / "numpy1"), cache_dir=env_cache, quiet=True) == first
    assert first.parent.parent.stat().st_mtime_ns == mtime
    record = json.loads((first.parent.parent / "chainrule-env.json").read_text())
    assert record["requirements"] == ["numpy<2"]


@pytest.mark.slow
def test_concurrent_builders_share_one_env(tmp_path: Path) -> None:
    spec = load_spec(FIXTURES / "numpy2")
    results: list[Path] = []
    errors: list[BaseException] = []

    def build() -> None:
        try:
            results.append(build_env(spec, cache_dir=tmp_path, quiet=True))
        except BaseException as e:  # collected and re-raised in the test thread
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors and len(results) == 3 and len(set(results)) == 1
    leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert leftovers == []


@pytest.mark.slow
def test_failed_build_shows_uv_output_and_leaves_nothing(tmp_path: Path) -> None:
    spec = _spec(name="broken", requirements=["chainrule-no-such-package-xyz==1.0"])
    with pytest.raises(LaunchError) as info:
        build_env(spec, cache_dir=tmp_path, quiet=True)
    msg = info.value.message
    assert "installing the requirements of 'broken' failed" in msg
    assert "chainrule-no-such-package-xyz" in msg  # the tail of uv's own output
    assert "Fix: check the requirements in chainrule.toml" in msg
    assert "pip.conf" in msg
    assert [p for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


# ----------------------------------------------------------------------------- health


def _fake_env(cache: Path, python: Path | None, name: str = "py3.11-0123456789abcdef") -> Path:
    """An environment directory whose bin/python links to `python` (None: a dangling link)."""
    venv = cache / name
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(python or cache / "gone" / "python3.11")
    (venv / STAMP).write_text(json.dumps({"name": "fake", "requirements": ["numpy"]}))
    return venv


def test_env_problems_are_found_and_said(tmp_path: Path) -> None:
    ours = Path(sys.prefix)  # the environment running the tests works
    assert env_problem(ours) is None
    assert env_problem(ours, check="import") is None
    gone = _fake_env(tmp_path / "a", None)
    assert "its python" in str(env_problem(gone, check="files"))
    assert "points to an interpreter that is gone" in str(env_problem(gone))
    failing = tmp_path / "fails.sh"
    failing.write_text("#!/bin/sh\necho 'ImportError: no numpy' >&2\nexit 1\n")
    failing.chmod(0o755)
    broken = _fake_env(tmp_path / "b", failing)
    assert env_problem(broken, check="files") is None  # it exists...
    assert env_problem(broken) == "its python fails to find chainrule: ImportError: no numpy"
    base = Path(sys.base_prefix) / "bin" / "python3"  # runs, but has no chainrule
    assert "does not find chainrule (was its checkout moved or deleted?)" in str(
        env_problem(_fake_env(tmp_path / "c", base))
    )
    elsewhere = env_problem(ours, checkout=tmp_path)  # built from another checkout
    assert f"it finds chainrule at {chainrule_root()}" in str(elsewhere)
    assert f"not in this checkout {tmp_path}" in str(elsewhere)


def test_the_check_of_every_launch_is_cheap() -> None:
    start = time.monotonic()
    assert env_problem(Path(sys.prefix)) is None
    assert time.monotonic() - start < 5  # ~40 ms on an idle machine: no imports


def _cli(*args: str) -> tuple[int, str, str]:
    from typer.testing import CliRunner

    from chainrule._cli.app import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_env_list_and_prune(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from chainrule._transport.launch import env_cache as _env_cache

    cache = tmp_path / "cache"
    _fake_env(cache, Path(sys.executable), "py3.11-aaaaaaaaaaaaaaaa")
    _fake_env(cache, None, "py3.11-bbbbbbbbbbbbbbbb")
    leftover = cache / ".py3.11-cccccccccccccccc.tmp-1234abcd"
    leftover.mkdir()
    old = cache / "py3.11-aaaaaaaaaaaaaaaa" / STAMP
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    code, out, _ = _cli("env", "list", "--json", "--cache-dir", str(cache))
    assert code == 0
    rows = {Path(r["path"]).name: r for r in json.loads(out)}
    assert set(rows) == {"py3.11-aaaaaaaaaaaaaaaa", "py3.11-bbbbbbbbbbbbbbbb"}
    assert rows["py3.11-aaaaaaaaaaaaaaaa"]["problem"] is None
    assert rows["py3.11-aaaaaaaaaaaaaaaa"]["requirements"] == ["numpy"]
    assert "interpreter that is gone" in rows["py3.11-bbbbbbbbbbbbbbbb"]["problem"]
    # prune probes each environment; the fake 'ok' one counts as working here
    real = _env_cache.env_problem
    monkeypatch.setattr(
        _env_cache, "env_problem", lambda p, check: None if p.name.endswith("a") else real(p)
    )
    code, _, err = _cli("env", "prune", "--dry-run", "--cache-dir", str(cache))
    assert code == 0 and "would remove 1 environments" in err and "bbbb" in err
    assert (cache / "py3.11-bbbbbbbbbbbbbbbb").exists() and leftover.exists()
    code, _, err = _cli("env", "prune", "--cache-dir", str(cache))
    assert code == 0 and "removed 1 environments" in err
    assert not (cache / "py3.11-bbbbbbbbbbbbbbbb").exists() and not leftover.exists()
    code, _, err = _cli("env", "prune", "--older-than", "2x", "--cache-dir", str(cache))
    assert code == 1 and "--older-than: expected a number and a unit" in err
    code, _, err = _cli("env", "prune", "--older-than", "4d", "--cache-dir", str(cache))
    assert code == 0 and "removed 0 environments" in err  # used 3 days ago
    code, _, err = _cli("env", "prune", "--older-than", "2d", "--cache-dir", str(cache))
    assert code == 0 and "removed 1 environments" in err
    assert [p.name for p in cache.iterdir() if p.name.startswith("py")] == []


def test_prune_keeps_what_a_running_server_uses(tmp_path: Path) -> None:
    from chainrule._transport.launch import servers as _servers

    venv = _fake_env(tmp_path, Path(sys.executable))
    entry = _servers.ServerRecord(
        pid=os.getpid(), url="http://127.0.0.1:1", name="fake", folder="/x",
        python=str(venv / "bin" / "python"), started=time.time(), launcher=os.getpid(),
        ticks=_servers.start_ticks(os.getpid()),
    )  # fmt: skip
    _servers.record(tmp_path, entry)
    code, _, err = _cli("env", "prune", "--all", "--cache-dir", str(tmp_path))
    assert code == 0 and f"kept {venv} (used by servers {os.getpid()})" in err
    assert venv.exists()
    _servers.forget(tmp_path, entry.url)
    code, _, err = _cli("env", "prune", "--all", "--cache-dir", str(tmp_path))
    assert code == 0 and "removed 1 environments" in err and not venv.exists()


@pytest.mark.slow
def test_a_broken_environment_is_found_and_rebuilt(tmp_path: Path) -> None:
    """A cached environment whose packages were deleted, or whose interpreter is gone, was
    reused forever (its python existed): now the next build finds it and builds it again."""
    python = build_env(FIXTURES / "numpy2", cache_dir=tmp_path, quiet=True)
    venv = python.parent.parent
    [numpy] = venv.glob("lib/python*/site-packages/numpy")
    shutil.rmtree(numpy)
    assert env_problem(venv) == "it lacks numpy"
    stderr = _build_capturing(tmp_path)
    assert f"chainrule: rebuilding {venv}: it lacks numpy" in stderr
    assert _run_in(python, FIXTURES / "numpy2")["major"] == 2  # works again
    # an interpreter that is gone (a Python upgraded away): the link dangles
    (venv / "bin" / "python").unlink()
    (venv / "bin" / "python").symlink_to(tmp_path / "gone" / "python3")
    assert "interpreter that is gone" in _build_capturing(tmp_path)
    assert _run_in(python, FIXTURES / "numpy2")["major"] == 2
    # `chainrule env rebuild` builds it again on request
    mtime = venv.stat().st_mtime_ns
    code, out, _ = _cli("env", "rebuild", str(FIXTURES / "numpy2"), "--quiet",
                        "--cache-dir", str(tmp_path))  # fmt: skip
    assert code == 0 and out.strip() == str(python) and venv.stat().st_mtime_ns != mtime


def _build_capturing(cache: Path) -> str:
    """Build numpy2's environment in a subprocess (not quiet); its stderr."""
    code = (
        "from chainrule._transport.launch.env import build_env;"
        f"build_env({str(FIXTURES / 'numpy2')!r}, cache_dir={str(cache)!r})"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True
    )
    return run.stderr
