from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from cases import BACKENDS, CASES, Case
from transports import TRANSPORTS, reach


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    """How a test reaches its components: in-process, wire (in-process, through the wire
    codec) or http (see tests/transports.py)."""
    return str(request.param)


@pytest.fixture
def over(transport: str) -> Iterator[Callable[[Any], Any]]:
    """`over(component)`: the component as reached over `transport` (ended after the test)."""
    with ExitStack() as stack:
        yield lambda component: stack.enter_context(reach(component, transport))


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
