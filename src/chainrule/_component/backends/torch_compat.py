"""Every private torch API chainrule uses, in one place (checked with torch 2.13.0).

- `torch.autograd.Variable._execution_engine.run_backward`: the autograd engine's entry
  point, called directly by a kept graph's vjp (the checks of `torch.autograd.grad` cost ~25
  of its ~35 µs on small tensors); where it is missing, `torch.autograd.grad` is used.
- the `_saved_*` attributes of autograd nodes (and `saved_tensors` of a custom Function's
  node): what a recorded graph saved for backward, so that a kept graph's bytes count in the
  residual budget.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["RUN_BACKWARD", "saved_names"]


def _engine_run_backward() -> Callable[..., Sequence[torch.Tensor | None]] | None:
    """torch's autograd engine entry point, where this torch has the one we know."""
    engine = getattr(getattr(torch.autograd, "Variable", None), "_execution_engine", None)
    return getattr(engine, "run_backward", None)


RUN_BACKWARD = _engine_run_backward()


# Autograd node type -> the attributes holding what it saved for backward (`_saved_self`,
# `_saved_result`, ...; a custom autograd.Function's node has `saved_tensors` instead).
_SAVED: dict[type, tuple[str, ...]] = {}


def saved_names(node: Any) -> tuple[str, ...]:
    """The attributes of autograd node `node` holding what it saved for backward."""
    kind = type(node)
    names = _SAVED.get(kind)
    if names is None:
        names = tuple(a for a in dir(node) if a.startswith("_saved_"))
        if not names and hasattr(node, "saved_tensors"):
            names = ("saved_tensors",)
        _SAVED[kind] = names
    return names
