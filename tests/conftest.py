from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cases import BACKENDS, CASES, Case


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def x64() -> Iterator[None]:
    """JAX's 64-bit mode on, for tests whose JAX programs compute in float64 (as a user's
    program turns it on; chainrule itself never does), and put back as it was afterwards.

    Module-scoped, so that module-scoped fixtures computing with JAX run after it: use it with
    `pytestmark = pytest.mark.usefixtures("x64")` (or on single tests).
    """
    import jax

    before = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", before)
