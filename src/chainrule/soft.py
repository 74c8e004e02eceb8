"""`chainrule.soft`: differentiable stand-ins for comparisons, branches and loops.

Each decision (`a > b`, `lax.cond`, `lax.while_loop`, rounding, clipping) becomes a weight in
(0, 1) that depends smoothly on how far it is from flipping, at a *temperature* `t`; see
`chainrule._tools.soft` for the table of helpers and how to choose `t`.
"""

from chainrule._tools.soft import (
    between,
    clip,
    equal,
    greater,
    if_,
    less,
    round_,
    round_straight_through,
    straight_through,
    where,
    while_,
)

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
