"""The numpy backend's `Lane`: `apply` of one call site of a framework binding (jitted JAX
calling a NumPy component back on the host), on the site's numpy arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from chainrule._component.residuals import Residual

from .base import array_specs, as_outputs

if TYPE_CHECKING:
    from chainrule._component.component import Component

__all__ = ["NumpyLane"]


class NumpyLane:
    """`apply(keep)` of a NumPy component called back from jitted JAX code.

    The site fixed every input's shape and dtype, so the function runs on the arrays as they
    are; outputs that are exactly the declared numpy arrays (the usual case: the author's own
    `Outputs(...)` validated them) are taken as they are, anything else goes through the
    component's one output check. Finite differences need no kept state but the base outputs,
    so `vjp` is never answered here (`owns` is False): the component's endpoints serve it.
    """

    lends = True  # apply keeps nothing of its arrays: it may be lent XLA's buffers
    vjps = False  # finite differences run through the component's endpoints

    def __init__(
        self, component: Component, in_paths: tuple[str, ...], out_paths: tuple[str, ...]
    ) -> None:
        self.component = component
        self.fn = component.fn
        self.in_paths, self.out_paths = in_paths, out_paths
        out_specs = array_specs(component.outputs)
        self.out_specs = [out_specs[p] for p in out_paths]

    def apply(
        self,
        build: Callable[[Sequence[Any]], Any],
        arrays: Sequence[np.ndarray],
        shapes: Sequence[tuple[int, ...]],
        keep: bool,
        measure: bool = True,
    ) -> tuple[list[np.ndarray], Residual | None]:
        """Run the function on `arrays` (the inputs instance made by `build`): the output
        arrays in `out_paths` order and, with `keep`, the base outputs as a residual."""
        inputs = build(arrays)
        comp = self.component
        with comp.errors("apply"):
            out = as_outputs(self.fn(inputs), comp.outputs, comp.name)
        given = [out.__dict__[p] for p in self.out_paths]
        if not self._exact(given, shapes):
            checked = comp.validate_outputs(out, comp.at(inputs))
            given = [np.asarray(checked.__dict__[p]) for p in self.out_paths]
        if not keep:
            return given, None
        # Copies: the outputs may be views of the inputs, or arrays the function changes
        # later; the base point of finite differences must not move (as `NumpyBackend.apply`).
        base = {p: np.array(v) for p, v in zip(self.out_paths, given, strict=True)}
        return given, Residual(base, sum(v.nbytes for v in base.values()), None)

    def _exact(self, given: list[Any], shapes: Sequence[tuple[int, ...]]) -> bool:
        """Whether `given` are exactly the declared arrays at the site's shapes."""
        return all(
            type(v) is np.ndarray and v.dtype == spec.dtype and v.shape == shape
            for v, spec, shape in zip(given, self.out_specs, shapes, strict=True)
        )

    def fresh_copies(self) -> NumpyLane:
        return self  # (it never copies what it is given)

    @staticmethod
    def owns(residual: Residual | None) -> bool:
        return False

    def vjp(self, residual: Residual, cts: dict[str, np.ndarray], wrt: tuple[str, ...]) -> Any:
        raise NotImplementedError("the numpy lane answers no vjp (owns() is False)")
