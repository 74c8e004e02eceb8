"""`chainrule.soft`: hard limits as temperature → 0, float64 gradients vs finite differences,
and every helper under jit, vmap and grad."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import chainrule as cr
import chainrule.jax
from chainrule import soft

pytestmark = pytest.mark.usefixtures("x64")  # these JAX programs compute in float64

COLD = 1e-4  # "temperature → 0": margins in these tests are ≥ 0.05, i.e. ≥ 500 temperatures
X = jnp.array([-2.3, -0.6, -0.05, 0.05, 0.7, 1.9])


# ---- limits: as temperature → 0 the helpers are the hard operations -------------------------


def _hard(weight: jax.Array, expected: jax.Array) -> None:
    np.testing.assert_allclose(weight, expected.astype(weight.dtype), rtol=0, atol=1e-100)


def test_comparisons_become_hard() -> None:
    _hard(soft.greater(X, 0.0, COLD), X > 0)
    _hard(soft.less(X, 0.0, COLD), X < 0)
    _hard(soft.equal(jnp.round(X), 2.0, COLD), jnp.round(X) == 2.0)
    _hard(soft.between(X, -1.0, 1.0, COLD), (X > -1) & (X < 1))


def test_ties_weigh_one_half() -> None:
    assert float(soft.greater(1.0, 1.0, COLD)) == 0.5
    assert float(soft.equal(1.0, 1.0, 10.0)) == 1.0


def test_where_blends_pytrees() -> None:
    a, b = {"u": jnp.ones(3), "v": 2.0}, {"u": jnp.zeros(3), "v": 4.0}
    out = soft.where(jnp.array(0.25), a, b)
    np.testing.assert_allclose(out["u"], 0.25)
    assert float(out["v"]) == 3.5


def _branchy(x: jax.Array, temperature: float) -> jax.Array:
    return soft.if_(x - 0.3, lambda x: x**2 + 1.0, lambda x: jnp.sin(x), x, temperature)


def test_if_becomes_lax_cond() -> None:
    hard = jax.vmap(lambda x: jax.lax.cond(x > 0.3, lambda x: x**2 + 1.0, jnp.sin, x))(X)
    np.testing.assert_allclose(jax.vmap(lambda x: _branchy(x, COLD))(X), hard, atol=1e-12)


def test_if_takes_a_predicate_function_and_runs_both_branches() -> None:
    ran: list[str] = []

    def branch(name: str) -> Callable[[jax.Array], jax.Array]:
        return lambda x: (ran.append(name), x * (1.0 if name == "t" else -1.0))[1]

    out = soft.if_(lambda x: x - 1.0, branch("t"), branch("f"), jnp.array(3.0), COLD)
    assert float(out) == 3.0 and sorted(ran) == ["f", "t"]


def _collatz_like(x: jax.Array) -> jax.Array:
    """A hard loop to compare against: halve while x > 1, then add 0.1 each time."""
    return jax.lax.while_loop(lambda x: x > 1.0, lambda x: x / 2.0 + 0.1, x)


@pytest.mark.parametrize("x0", [0.5, 1.3, 7.0, 40.0, 1000.0])
def test_while_with_many_steps_is_the_hard_loop(x0: float) -> None:
    soft_loop = soft.while_(lambda x: x - 1.0, lambda x: x / 2.0 + 0.1, jnp.array(x0), 60, COLD)
    np.testing.assert_allclose(soft_loop, _collatz_like(jnp.array(x0)), rtol=1e-12)


def test_while_on_a_pytree_state_counts_steps() -> None:
    def body(s: dict[str, jax.Array]) -> dict[str, jax.Array]:
        return {"x": s["x"] * 3.0, "n": s["n"] + 1.0}

    init = {"x": jnp.array(1.0), "n": jnp.array(0.0)}
    out = soft.while_(lambda s: 100.0 - s["x"], body, init, 20, COLD)
    assert float(out["x"]) == 243.0 and float(out["n"]) == 5.0  # 3⁵ is the first > 100


def test_while_is_cut_at_max_steps() -> None:
    out = soft.while_(lambda x: 1.0, lambda x: x + 1.0, jnp.array(0.0), 7, COLD)
    assert float(out) == 7.0


def test_round_and_clip_become_hard() -> None:
    y = jnp.array([-1.7, -0.2, 0.3, 0.8, 2.45, 2.55])
    np.testing.assert_allclose(soft.round_(y, COLD), jnp.round(y), atol=1e-12)
    np.testing.assert_allclose(soft.clip(y, -0.5, 1.0, COLD), jnp.clip(y, -0.5, 1.0), atol=1e-3)
    np.testing.assert_allclose(soft.round_(y, 1e3), y, atol=1e-3)  # hot: the identity


def test_round_is_continuous_across_integers() -> None:
    left, right = soft.round_(jnp.array(2.0 - 1e-12), 0.3), soft.round_(jnp.array(2.0), 0.3)
    assert abs(float(left) - float(right)) < 1e-9


def test_straight_through_values_and_gradients() -> None:
    assert float(soft.round_straight_through(2.6)) == 3.0
    assert float(jax.grad(soft.round_straight_through)(2.6)) == 1.0
    g = jax.grad(lambda x: soft.straight_through(jnp.floor(x), jnp.sin(x)))(0.4)
    assert float(g) == pytest.approx(float(jnp.cos(0.4)), rel=1e-14)


# ---- gradients: AD vs finite differences in float64 -----------------------------------------

T = 0.4  # a warm temperature: the soft switch is what is being differentiated
CASES: dict[str, Callable[[jax.Array], Any]] = {
    "greater": lambda x: soft.greater(x, 0.2, T),
    "less": lambda x: soft.less(x, 0.2, T),
    "equal": lambda x: soft.equal(x, 0.2, T),
    "between": lambda x: soft.between(x, -0.5, 0.5, T),
    "where": lambda x: soft.where(soft.greater(x, 0.0, T), x**2, jnp.cos(x)),
    "if_": lambda x: jax.vmap(lambda v: _branchy(v, T))(x),
    "while_": lambda x: jax.vmap(
        lambda v: soft.while_(lambda s: s - 1.0, lambda s: s / 2.0 + 0.1, v, 8, T)
    )(x),
    "round_": lambda x: soft.round_(x, T),
    "clip": lambda x: soft.clip(x, -0.5, 1.0, T),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_gradients_match_finite_differences(name: str) -> None:
    # Not at integers: round_ is C¹ there but not C² (its second derivative jumps).
    x = jnp.array([-1.2, -0.3, 0.15, 0.6, 2.7, 4.6])
    assert x.dtype == jnp.float64
    # Second order too, except for the branchy ones whose second-order checks trace for seconds.
    order = 1 if name in ("if_", "while_") else 2
    check_grads(CASES[name], (x,), order, modes=("fwd", "rev"), eps=1e-5, atol=1e-6, rtol=1e-6)


def test_gradient_with_respect_to_temperature() -> None:
    def f(t: jax.Array) -> jax.Array:
        return jnp.sum(soft.greater(jnp.array([0.3, -0.2]), 0.0, t))

    check_grads(f, (jnp.array(0.5),), order=1, eps=1e-6)


def test_while_gradient_sees_the_exit() -> None:
    # The number of halvings of x depends on x; the hard loop's derivative ignores that (it
    # is piecewise linear), the soft one feels it near the exits.
    def loop(x: jax.Array, t: float) -> jax.Array:
        return soft.while_(lambda s: s - 1.0, lambda s: s / 2.0, x, 10, t)

    # 4.4 → 2.2 → 1.1 → 0.55: three halvings, the last exit margin 0.1 = 1000 cold temperatures.
    assert float(jax.grad(loop)(jnp.array(4.4), COLD)) == pytest.approx(0.125, rel=1e-12)
    assert abs(float(jax.grad(loop)(jnp.array(4.4), 0.3)) - 0.125) > 1e-2


# ---- transformations --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_jit_vmap_grad_compose(name: str) -> None:
    f = CASES[name]
    xs = jnp.linspace(-1.0, 2.0, 12).reshape(3, 4)
    eager = jnp.stack([f(row) for row in xs])
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(xs), eager, rtol=1e-13, atol=1e-15)
    per_row = jax.jit(jax.vmap(jax.grad(lambda x: jnp.sum(f(x)))))(xs)
    np.testing.assert_allclose(per_row, jax.grad(lambda x: jnp.sum(f(x)))(xs), rtol=1e-13)


def test_traced_temperature_under_jit() -> None:
    f = jax.jit(lambda x, t: soft.greater(x, 0.0, t))
    np.testing.assert_allclose(f(X, 0.1), jax.nn.sigmoid(X / 0.1))


def test_float32_stays_float32() -> None:
    x = jnp.array([0.5, 3.0], dtype=jnp.float32)
    assert soft.greater(x, 1.0, 0.1).dtype == jnp.float32
    out = soft.while_(lambda s: s[0] - 1.0, lambda s: s / 2, x, 5, 0.1)
    assert out.dtype == jnp.float32


# ---- validation ---------------------------------------------------------------------------------

BAD_TEMPERATURE: dict[str, Callable[[Any], Any]] = {
    "greater": lambda t: soft.greater(1.0, 0.0, t),
    "less": lambda t: soft.less(1.0, 0.0, t),
    "equal": lambda t: soft.equal(1.0, 0.0, t),
    "between": lambda t: soft.between(1.0, 0.0, 2.0, t),
    "if_": lambda t: soft.if_(1.0, jnp.sin, jnp.cos, 1.0, t),
    "while_": lambda t: soft.while_(lambda s: 1.0 - s, lambda s: s + 1, 0.0, 3, t),
    "round_": lambda t: soft.round_(1.0, t),
    "clip": lambda t: soft.clip(1.0, 0.0, 2.0, t),
}


@pytest.mark.parametrize("name", sorted(BAD_TEMPERATURE))
@pytest.mark.parametrize("bad", [0.0, -0.5, np.array([0.1, -1.0])])
def test_temperature_must_be_positive(name: str, bad: Any) -> None:
    with pytest.raises(cr.ValidationError, match="temperature must be positive") as info:
        BAD_TEMPERATURE[name](bad)
    assert info.value.errors[0]["path"] == "temperature"


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_max_steps_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(cr.ValidationError, match="max_steps must be an int ≥ 1"):
        soft.while_(lambda s: 1.0 - s, lambda s: s + 1.0, jnp.array(0.0), bad, 0.1)
