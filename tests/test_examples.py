"""The examples reach their stated results (at full size: the terrain demo takes seconds)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).parents[1]


def _load(relative: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_"), ROOT / relative)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_terrain_reaches_snell_optimum() -> None:
    terrain = _load("examples/terrain/optimize.py")
    result = terrain.optimize(progress=False)
    assert abs(result.x[0] - 11.17307) < 1e-5 and abs(result.x[1] - 3.36991) < 1e-5
    assert abs(result.t - 81.911688) < 1e-6
    assert np.ptp(result.snell()) < 1e-6


def test_terrain_main_prints_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    terrain = _load("examples/terrain/optimize.py")
    assert terrain.main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Snell's law" in out and "holds" in out
    assert (tmp_path / "objective.png").stat().st_size > 1000
    assert (tmp_path / "paths.png").stat().st_size > 1000
