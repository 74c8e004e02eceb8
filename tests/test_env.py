"""Component folders (`chainrule.toml`) and their uv-built, cached environments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chainrule._env import (
    ComponentSpec,
    build_env,
    cache_root,
    chainrule_root,
    env_dir,
    env_hash,
    find_uv,
    load_spec,
    parse_spec,
    pip_settings,
    uv_environment,
)
from chainrule._errors import LaunchError

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
    from chainrule import _env

    spec = _spec(requirements=["numpy"])
    here = env_hash(spec)
    other = tmp_path / "other-checkout"
    other.mkdir()
    (other / "pyproject.toml").write_bytes((chainrule_root() / "pyproject.toml").read_bytes())
    monkeypatch.setattr(_env, "chainrule_root", lambda: other)
    assert env_hash(spec) != here


def test_hash_is_stable_across_processes() -> None:
    code = (
        "from chainrule._env import parse_spec, env_hash;"
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
