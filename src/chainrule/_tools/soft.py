"""`chainrule.soft`: differentiable stand-ins for comparisons, branches and loops.

A hard `if x > 1` or `while err > tol` has a derivative of zero almost everywhere and none at
the switch: gradient descent through it learns nothing about *which* branch to take. The
helpers here replace each decision by a weight in (0, 1) that depends smoothly on how far the
decision is from flipping, and blend the outcomes by that weight:

| hard                      | soft                                     | weight / result           |
|---------------------------|------------------------------------------|---------------------------|
| `a > b`, `a < b`          | `greater(a, b, t)`, `less(a, b, t)`      | σ((a − b)/t)              |
| `a == b`                  | `equal(a, b, t)`                         | 4σ(d/t)σ(−d/t), d = a − b |
| `lo < x < hi`             | `between(x, lo, hi, t)`                  | σ((x−lo)/t)·σ((hi−x)/t)   |
| `jnp.where(c, a, b)`      | `where(w, a, b)`                         | w·a + (1 − w)·b           |
| `lax.cond(p, f, g, x)`    | `if_(p, f, g, x, t)`                     | both branches, blended    |
| `lax.while_loop(c, f, x)` | `while_(c, f, x, max_steps, t)`          | bounded, blended per step |
| `jnp.round(x)`            | `round_(x, t)`, `round_straight_through` | smooth staircase / STE    |
| `jnp.clip(x, lo, hi)`     | `clip(x, lo, hi, t)`                     | softplus corners          |

`t` (the *temperature*) sets the width of the switch in the units of the compared quantity:
as t → 0 every helper becomes its hard counterpart (ties, where the margin is exactly 0, give
the weight 1/2), and its gradients vanish except ever closer to the switch. A large t gives
gradients everywhere but answers that are blends, not the program's answers. Two common
practices: anneal t downwards during an optimization, and finish with a hard check of the
rounded result (as `examples/game_of_life/` does).

Everything is pure `jax.numpy`: the helpers work under `jit`, `vmap`, `grad` and `jvp`, on
scalars or arrays (broadcasting like the operators they replace) and, for `where`, `if_` and
`while_`, on pytrees.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from chainrule._schema.errors import ValidationError

__all__ = [
    "between",
    "clip",
    "equal",
    "greater",
    "if_",
    "less",
    "round_",
    "round_straight_through",
    "straight_through",
    "where",
    "while_",
]

T = TypeVar("T")  # a pytree of arrays (the operand or state of if_ / while_)


# ---- argument checks -------------------------------------------------------------------------


def _positive(value: ArrayLike, name: str) -> None:
    """Raise `ValidationError` naming `name` unless `value` is > 0 everywhere.

    A traced value (a temperature annealed inside `jit`) cannot be inspected while tracing; it
    is the caller's to keep positive.
    """
    if isinstance(value, jax.core.Tracer):
        return
    # NumPy, not jnp: under `jit`, even jnp ops on constants are traced and cannot be tested.
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.number) or not bool(np.all(array > 0)):
        raise ValidationError(
            f"{name} must be positive (the width of the soft switch), got {value!r}; "
            "use a small positive value, e.g. 1e-3, for an almost hard switch",
            errors=[{"path": name, "expected": "> 0", "got": repr(value)}],
        )


def _steps(value: int, name: str) -> None:
    """Raise `ValidationError` naming `name` unless `value` is a Python int ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValidationError(
            f"{name} must be an int ≥ 1 (the loop is unrolled into that many steps), got {value!r}",
            errors=[{"path": name, "expected": "int >= 1", "got": repr(value)}],
        )


# ---- comparisons -----------------------------------------------------------------------------


def greater(a: ArrayLike, b: ArrayLike, temperature: ArrayLike) -> jax.Array:
    """Soft `a > b`: the weight σ((a − b)/temperature) in (0, 1).

    Helps when an objective depends on a threshold decision: the weight moves smoothly as `a`
    approaches `b`, so gradients say which way the decision should go. Biases: for finite
    temperature a margin of ±temperature still gives weights 0.27 / 0.73, not 0 / 1, and a tie
    gives 1/2; the hard answer is the limit temperature → 0, where gradients vanish away from
    the switch.

    Arguments:
        a, b: arrays (broadcast together).
        temperature: > 0, in the units of `a − b`: the width of the switch.

    Returns:
        The weight of "a > b", shaped like `a − b`.

    Example:
        >>> float(greater(2.0, 1.0, temperature=0.1))  # doctest: +ELLIPSIS
        0.99995...
    """
    _positive(temperature, "temperature")
    return jax.nn.sigmoid((jnp.asarray(a) - b) / temperature)


def less(a: ArrayLike, b: ArrayLike, temperature: ArrayLike) -> jax.Array:
    """Soft `a < b`: `greater(b, a, temperature)`; the same help and the same biases.

    Example:
        >>> float(less(2.0, 1.0, temperature=0.1))  # doctest: +ELLIPSIS
        4.5397...e-05
    """
    return greater(b, a, temperature)


def equal(a: ArrayLike, b: ArrayLike, temperature: ArrayLike) -> jax.Array:
    """Soft `a == b`: a bump 4σ(d/t)σ(−d/t) = sech²(d/2t), 1 at d = a − b = 0.

    Helps when a target is reached at one value (a count equal to 3): the bump's slope
    points towards it from either side. Biases: the bump is wide — it is still 0.79 at
    |d| = t and 0.42 at |d| = 2t — so values near, but not at, `b` count as partly equal;
    for counts (integers) keep t well below 1/2, or use `between(x, b − ½, b + ½, t)`.

    Example:
        >>> float(equal(3.0, 3.0, temperature=0.2))
        1.0
    """
    _positive(temperature, "temperature")
    z = (jnp.asarray(a) - b) / temperature
    return 4.0 * jax.nn.sigmoid(z) * jax.nn.sigmoid(-z)


def between(x: ArrayLike, lo: ArrayLike, hi: ArrayLike, temperature: ArrayLike) -> jax.Array:
    """Soft `lo < x < hi`: `greater(x, lo, t) · less(x, hi, t)`.

    Helps for windows ("2 or 3 live neighbours" is `between(n, 1.5, 3.5, t)`: a window with
    edges halfway between integers is exact for integer x once t ≪ ½). Biases: as for
    `greater`; a window narrower than a few t never reaches 1.

    Example:
        >>> round(float(between(3.0, 2.5, 3.5, temperature=0.05)), 6)
        0.999909
    """
    return greater(x, lo, temperature) * less(x, hi, temperature)


# ---- blends: where, if, while ---------------------------------------------------------------


def where(cond_weight: ArrayLike, a: T, b: T) -> T:
    """Soft `jnp.where(cond, a, b)`: `w·a + (1 − w)·b` leaf by leaf of two pytrees.

    `cond_weight` is a weight in [0, 1] (usually from `greater`, `less`, `equal`, ...),
    broadcast against each leaf. Exact when the weight is 0 or 1. Biases: in between, the
    result is a *mixture* value that neither branch produces (0.5·0 + 0.5·10 = 5); a later
    nonlinear step sees that mixture, not a mixture of its outcomes on each branch.

    Example:
        >>> float(where(0.25, 4.0, 0.0))
        1.0
    """
    w = jnp.asarray(cond_weight)
    return jax.tree.map(lambda x, y: w * x + (1.0 - w) * y, a, b)


def _margin(pred: Callable[[T], ArrayLike] | ArrayLike, operand: T) -> jax.Array:
    """The signed margin of a predicate: called on the operand if it is a function."""
    return jnp.asarray(pred(operand) if callable(pred) else pred)


def if_(
    pred: Callable[[T], ArrayLike] | ArrayLike,
    true_fn: Callable[[T], Any],
    false_fn: Callable[[T], Any],
    operand: T,
    temperature: ArrayLike,
) -> Any:
    """Soft `lax.cond`: **runs both branches** and blends them by σ(margin/temperature).

    `pred` is a signed margin, > 0 meaning "true" (write `x - 1.0` for `x > 1`), or a function
    of the operand returning one. The result is `w·true_fn(operand) + (1 − w)·false_fn(operand)`
    leaf by leaf, so both branches must return pytrees of the same structure, and both are
    evaluated (twice the cost; a branch that is invalid off its side — `sqrt` of a negative —
    must be made safe, or its NaNs leak into the blend and the gradient).

    Helps: the gradient sees how the margin moves the decision, not only each branch's own
    slope. Biases: near the threshold (|margin| ≲ a few temperatures) the result is a mixture of
    both branches, biased towards the other branch by as much as the branches differ there —
    large when the branches differ strongly at the switch (a jump). The blend is exact as
    temperature → 0, where the gradient through the decision vanishes (only each branch's own
    slope remains, as in the hard program).

    Example:
        >>> f = lambda x: if_(x - 1.0, lambda x: 2 * x, lambda x: -x, x, temperature=1e-3)
        >>> float(f(3.0)), float(f(-3.0))
        (6.0, 3.0)
    """
    _positive(temperature, "temperature")
    w = jax.nn.sigmoid(_margin(pred, operand) / temperature)
    return where(w, true_fn(operand), false_fn(operand))


def while_(
    cond_fn: Callable[[T], ArrayLike],
    body_fn: Callable[[T], T],
    init: T,
    max_steps: int,
    temperature: ArrayLike,
) -> T:
    """Soft, bounded `lax.while_loop`: exactly `max_steps` bodies, each blended in by weight.

    `cond_fn(state)` returns a signed margin, > 0 meaning "keep going". A "still running"
    weight r starts at 1 and decays multiplicatively, r ← r·σ(margin/temperature), and each
    step blends the body in by it: state ← r·body(state) + (1 − r)·state. As temperature → 0,
    r is 1 until the condition first fails and 0 forever after, which is the hard loop (cut at
    `max_steps`); the gradient then flows through the bodies that ran, and not through the
    number of steps.

    Helps: the number of iterations becomes (softly) differentiable — how a parameter moves
    the exit — and the loop runs under `lax.scan`, so reverse mode works (a hard
    `while_loop` cannot be reverse-differentiated at all).

    Biases: (1) every step costs a body even after the loop has (softly) stopped, and a loop
    that would need more than `max_steps` steps is silently cut there; (2) near the exit the
    state is a mixture of "one more step" and "stopped", and later margins are computed on
    that mixture; (3) r never quite reaches 0, so steps after the exit still leak in a little —
    about σ(−margin/t) per step — which adds up over many spare steps when margins are small.
    Choose `temperature` small against the typical margin change per step.

    Example:
        >>> halve = lambda x: while_(lambda x: x - 1.0, lambda x: x / 2, x, 20, 1e-3)
        >>> float(halve(12.0))  # 12 → 6 → 3 → 1.5 → 0.75, as the hard loop
        0.75
    """
    _positive(temperature, "temperature")
    _steps(max_steps, "max_steps")

    def step(carry: tuple[T, jax.Array], _: None) -> tuple[tuple[T, jax.Array], None]:
        state, running = carry
        running = running * jax.nn.sigmoid(_margin(cond_fn, state) / temperature)
        return (where(running, body_fn(state), state), running), None

    # The weight's dtype follows the margin's, so float32 programs stay float32.
    margin = _margin(cond_fn, init)
    running = jnp.ones(margin.shape, _float_dtype(margin))
    (state, _), _ = jax.lax.scan(step, (init, running), None, length=max_steps)
    return state


def _float_dtype(x: ArrayLike) -> Any:
    """The floating dtype a weight computed against `x` has (x's own, if it is floating)."""
    dtype = jnp.asarray(x).dtype
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


# ---- rounding, clipping and straight-through ------------------------------------------------


def round_(x: ArrayLike, temperature: ArrayLike) -> jax.Array:
    """Soft `jnp.round`: a smooth staircase, floor(x) + a sigmoid step across each half.

    Within each unit interval the fraction f = x − floor(x) is mapped by a sigmoid centred at
    ½ of width `temperature`, rescaled so that f = 0 → 0 and f = 1 → 1: the staircase is
    continuous with a continuous slope. As temperature → 0 it is `jnp.round` (halves go to
    ½ + floor, not to even); as temperature → ∞ it is the identity.

    Helps: pushes values towards integers while keeping a gradient. Biases: for finite
    temperature values near a half stay near the half; the slope is ≈ 0 near integers, so a
    value that starts close to the wrong integer hardly moves. Use `round_straight_through`
    when the forward value must be exactly integer.

    Example:
        >>> round(float(round_(2.8, temperature=0.05)), 3), round(float(round_(2.8, 10.0)), 3)
        (2.998, 2.8)
    """
    _positive(temperature, "temperature")
    x = jnp.asarray(x)
    base = jnp.floor(x)
    lo = jax.nn.sigmoid(-0.5 / temperature)  # the raw sigmoid at f = 0 (and 1 − it at f = 1)
    step = (jax.nn.sigmoid((x - base - 0.5) / temperature) - lo) / (1.0 - 2.0 * lo)
    return base + step


def straight_through(hard: ArrayLike, soft: ArrayLike) -> jax.Array:
    """The value of `hard` with the gradient of `soft` (a straight-through estimator).

    `soft + stop_gradient(hard − soft)`: the forward pass is exactly the hard program, the
    backward pass pretends it was the soft one. Helps when later steps must see exact
    (integer, boolean) values. Biases: the gradient is not the derivative of the function
    computed — it is a heuristic that can point the wrong way when `hard` and `soft` differ
    much; finite differences will not agree with it.

    Example:
        >>> g = jax.grad(lambda x: straight_through(jnp.round(x), x**2))
        >>> round(float(g(1.2)), 4)  # d(x²)/dx, though the value is round(1.2) = 1
        2.4
    """
    soft = jnp.asarray(soft)
    return soft + jax.lax.stop_gradient(jnp.asarray(hard) - soft)


def round_straight_through(x: ArrayLike) -> jax.Array:
    """`jnp.round(x)` forward, identity backward (the classic straight-through rounding).

    Example:
        >>> float(round_straight_through(2.7)), float(jax.grad(round_straight_through)(2.7))
        (3.0, 1.0)
    """
    x = jnp.asarray(x)
    return straight_through(jnp.round(x), x)


def clip(x: ArrayLike, lo: ArrayLike, hi: ArrayLike, temperature: ArrayLike) -> jax.Array:
    """Soft `jnp.clip`: lo + t·softplus((x − lo)/t) − t·softplus((x − hi)/t).

    Helps when values pushed past a bound should still feel a gradient back towards it (a hard
    clip's gradient is 0 outside [lo, hi]). Biases: near each bound (within a few t) the value
    is pulled off the identity — at x = lo it is lo + t·log 2, not lo — and a value far
    outside still sits exactly on the bound with a gradient ≈ 0; needs hi − lo ≫ t. Exact as
    temperature → 0.

    Example:
        >>> round(float(clip(5.0, 0.0, 1.0, temperature=0.01)), 6)
        1.0
    """
    _positive(temperature, "temperature")
    x, t = jnp.asarray(x), jnp.asarray(temperature)
    return jnp.asarray(lo) + t * jax.nn.softplus((x - lo) / t) - t * jax.nn.softplus((x - hi) / t)
