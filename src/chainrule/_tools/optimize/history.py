"""What an optimization records and returns: `History`, `OptimizeResult`, and the per-step
bookkeeping the drivers share (`Recorder`: history, progress bar, checkpoint, `Rules`).

`History` is saved as `.npz` + JSON (never pickle).

One entry per evaluated iterate `x_k` (entry 0 is the starting point): the objective, the
gradient norm, the parameters, the wall time since the previous entry, and the endpoint calls
each watched component received since the previous entry. The optax state paired with the last
iterate is kept too, so that a run can be resumed exactly.

On disk: arrays in a NumPy `.npz` (one stacked array per parameter leaf and per optimizer-state
leaf) and everything else in a JSON string stored in the same file, loaded with
`allow_pickle=False`.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import jax
import numpy as np

from chainrule._schema.errors import ValidationError

if TYPE_CHECKING:
    from chainrule._component.component import Component

__all__ = [
    "Callback",
    "Calls",
    "History",
    "OptimizeResult",
    "Outcome",
    "ProgressBar",
    "Recorder",
    "Rules",
    "restore_state",
]

Calls = dict[str, dict[str, int]]  # {component name: {endpoint: count}}
Callback = Callable[[int, Any, float, float], "bool | None"]
Outcome = tuple[str, bool]  # (message, success)
_FORMAT = "chainrule.History/1"


# ---- call counts ------------------------------------------------------------------------------


def snapshot(components: Mapping[str, Any]) -> dict[str, Counter[str]]:
    """A copy of each component's `calls` Counter, to diff against later."""
    return {name: Counter(c.calls) for name, c in components.items()}


def calls_since(before: Mapping[str, Counter[str]], after: Mapping[str, Counter[str]]) -> Calls:
    """Endpoint calls made between two snapshots (endpoints never called are left out)."""
    return {name: dict(sorted((after[name] - before[name]).items())) for name in after}


# ---- pytree structure as JSON -------------------------------------------------------------------


class _NotEncodable(Exception):
    """A pytree node other than dict/list/tuple/None: its structure cannot go into JSON."""


def _encode(tree: Any) -> Any:
    """A JSON description of a pytree made of dicts (str keys), lists, tuples, None and leaves."""
    if type(tree) is dict and all(isinstance(k, str) for k in tree):
        return {"dict": {k: _encode(v) for k, v in tree.items()}}
    if type(tree) in (list, tuple):
        return {type(tree).__name__: [_encode(v) for v in tree]}
    if tree is None:
        return {"none": None}
    if len(jax.tree.leaves(tree)) == 1 and jax.tree.leaves(tree)[0] is tree:
        return "leaf"
    raise _NotEncodable(type(tree).__name__)


def _decode(desc: Any) -> Any:
    """A pytree (leaves are 0) with the structure `_encode` described."""
    if desc == "leaf":
        return 0
    ((kind, body),) = desc.items()
    if kind == "dict":
        return {k: _decode(v) for k, v in body.items()}
    if kind in ("list", "tuple"):
        items = [_decode(v) for v in body]
        return items if kind == "list" else tuple(items)
    return None


def structure_json(tree: Any) -> Any:
    """`_encode(tree)`, or None when some node type cannot be described in JSON."""
    try:
        return _encode(tree)
    except _NotEncodable:
        return None


# ---- the history ------------------------------------------------------------------------------


@dataclass(eq=False)  # arrays inside: compare fields, not histories
class History:
    """Everything an optimization did, one entry per evaluated iterate (entry 0: the start).

    Attributes:
        method: the method's name (`"adam"`, `"L-BFGS-B"`, ... or the optax transformation's).
        objective: objective value at each iterate.
        grad_norm: Euclidean norm of the gradient at each iterate (not projected on bounds).
        x: the parameters at each iterate (x_0, x_1, ...), pytrees of NumPy arrays shaped
            like x0; `OptimizeResult.x` is the last. `params` is the same list under its
            former name.
        seconds: wall time since the previous entry (entry 0 includes jit compilation).
        calls: endpoint calls per watched component since the previous entry, e.g.
            `{"torch_band": {"apply": 1, "vjp": 1}}`.
        opt_state: leaves of the optax state paired with the last iterate (None for scipy).

    Example:
        ```python
        result = chainrule.optimize(f, x0, components=[torch_band])
        result.history.save("run.npz")
        history = chainrule.History.load("run.npz")
        print(history.objective[-1], history.calls[-1])
        ```
    """

    method: str
    objective: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)
    x: list[Any] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    calls: list[Calls] = field(default_factory=list)
    opt_state: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.objective)

    @property
    def params(self) -> list[Any]:
        """The parameters at each iterate: `x` under its former name (the same list)."""
        return self.x

    def __repr__(self) -> str:
        last = f", last objective={self.objective[-1]:.6g}" if self.objective else ""
        return f"History(method={self.method!r}, entries={len(self)}{last})"

    def append(self, x: Any, value: float, grad_norm: float, seconds: float, calls: Calls) -> None:
        """Add one entry (`x` is copied to NumPy so later updates cannot change it)."""
        self.x.append(jax.tree.map(lambda a: np.array(a, copy=True), x))
        self.objective.append(value)
        self.grad_norm.append(grad_norm)
        self.seconds.append(seconds)
        self.calls.append(calls)

    def head(self, n: int) -> History:
        """The first `n` entries (a resumed run replaces the last entry by its own)."""
        return History(
            self.method,
            self.objective[:n],
            self.grad_norm[:n],
            self.x[:n],
            self.seconds[:n],
            self.calls[:n],
        )

    @property
    def total_calls(self) -> Calls:
        """Endpoint calls per component summed over all entries."""
        total: dict[str, Counter[str]] = {}
        for entry in self.calls:
            for name, counts in entry.items():
                total.setdefault(name, Counter()).update(counts)
        return {name: dict(sorted(c.items())) for name, c in total.items()}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the history to `path` (`.npz`; NumPy adds the suffix when missing).

        Arguments:
            path: the file to write.

        Returns:
            The path written.

        Example:
            ```python
            result.history.save("run.npz")
            ```
        """
        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        arrays: dict[str, Any] = self._param_arrays()
        for i, leaf in enumerate(self.opt_state or []):
            arrays[f"state_{i}"] = np.asarray(leaf)
        arrays["objective"] = np.asarray(self.objective, np.float64)
        arrays["grad_norm"] = np.asarray(self.grad_norm, np.float64)
        arrays["seconds"] = np.asarray(self.seconds, np.float64)
        arrays["meta"] = np.asarray(json.dumps(self._meta()))
        np.savez(path, **arrays)
        return path

    def _param_arrays(self) -> dict[str, np.ndarray]:
        if not self.x:
            return {}
        columns = zip(*(jax.tree.leaves(p) for p in self.x), strict=True)
        return {f"param_{j}": np.stack(column) for j, column in enumerate(columns)}

    def _meta(self) -> dict[str, Any]:
        first = self.x[0] if self.x else None
        return {
            "format": _FORMAT,
            "method": self.method,
            "calls": self.calls,
            "structure": structure_json(first),
            "n_params": len(jax.tree.leaves(first)),
            "n_state": None if self.opt_state is None else len(self.opt_state),
        }

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, like: Any = None) -> History:
        """Read a history written by `save`.

        Arguments:
            path: the `.npz` file.
            like: a pytree with the parameters' structure; needed only when that structure is
                not made of dicts, lists and tuples (it is then not stored in the file).

        Returns:
            The history.

        Example:
            ```python
            history = chainrule.History.load("run.npz")
            ```
        """
        with np.load(Path(path), allow_pickle=False) as data:
            meta = _read_meta(data, path)
            arrays = {k: np.array(data[k]) for k in data.files}
        n = len(arrays["objective"])
        params = _params(arrays, _treedef(meta, like, path), n) if n else []
        state = None if meta["n_state"] is None else _state(arrays, meta["n_state"])
        return cls(
            meta["method"],
            [float(v) for v in arrays["objective"]],
            [float(v) for v in arrays["grad_norm"]],
            params,
            [float(v) for v in arrays["seconds"]],
            [dict(c) for c in meta["calls"]],
            state,
        )


def _read_meta(data: Any, path: Any) -> dict[str, Any]:
    meta = json.loads(str(data["meta"])) if "meta" in data.files else {}
    if meta.get("format") != _FORMAT:
        raise ValidationError(
            f"{os.fspath(path)} is not a chainrule History file (expected format "
            f"{_FORMAT!r}, got {meta.get('format')!r}); write it with History.save"
        )
    return meta


def _treedef(meta: dict[str, Any], like: Any, path: Any) -> Any:
    treedef: Any  # jaxlib's PyTreeDef has no type stubs
    if like is not None:
        treedef = jax.tree.structure(like)
    elif meta["structure"] is not None:
        treedef = jax.tree.structure(_decode(meta["structure"]))
    else:
        raise ValidationError(
            f"the parameters in {os.fspath(path)} are not made of dicts, lists and tuples, so "
            "their structure was not stored; pass like=<initial parameters> to History.load"
        )
    if treedef.num_leaves != meta["n_params"]:
        raise ValidationError(
            f"like= has {treedef.num_leaves} leaves but the parameters in {os.fspath(path)} "
            f"have {meta['n_params']}"
        )
    return treedef


def _params(arrays: Mapping[str, np.ndarray], treedef: Any, n: int) -> list[Any]:
    columns = [arrays[f"param_{j}"] for j in range(treedef.num_leaves)]
    return [treedef.unflatten([c[i] for c in columns]) for i in range(n)]


def _state(arrays: Mapping[str, np.ndarray], n: int) -> list[np.ndarray]:
    return [arrays[f"state_{i}"] for i in range(n)]


# ---- the result -------------------------------------------------------------------------------


@dataclass(eq=False)  # arrays inside: compare fields, not results
class OptimizeResult:
    """What `optimize` found.

    Attributes:
        x: the best parameters (the last iterate), a pytree of NumPy arrays shaped like x0.
        fun: the objective at `x`.
        grad_norm: the gradient's Euclidean norm at `x`.
        history: every step (`History`).
        steps: index of `x` in the history (updates done, counting resumed ones).
        success: True when a convergence rule stopped the run (tol, ftol, scipy's own).
        message: which rule stopped the run.
        method: the method's name.
        runs: with `multistart=True`, the result of every start (this one among them).

    Example:
        ```python
        result = chainrule.optimize(f, x0, method="L-BFGS-B")
        if not result.success:
            print(result.message)  # e.g. "reached max_steps=1000"
        print(result)  # method, status, step, message, fun, grad_norm and x
        ```
    """

    x: Any
    fun: float
    grad_norm: float
    history: History
    steps: int
    success: bool
    message: str
    method: str
    runs: list[OptimizeResult] = field(default_factory=list)

    def __repr__(self) -> str:
        status = "converged" if self.success else "stopped"
        lines = [
            f"OptimizeResult({self.method}, {status} at step {self.steps}: {self.message}",
            f"  fun={self.fun:.10g}  grad_norm={self.grad_norm:.3g}",
            f"  x={_short(self.x)}",
        ]
        if self.runs:
            funs = ", ".join(f"{r.fun:.6g}" for r in self.runs)
            lines.append(f"  runs={len(self.runs)} (fun: {funs})")
        return "\n".join(lines) + ")"


def _short(tree: Any) -> str:
    def fmt(a: Any) -> str:
        return np.array2string(np.asarray(a), precision=6, threshold=8, separator=", ")

    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    if len(flat) == 1 and not flat[0][0]:  # a single array
        return fmt(flat[0][1])
    return "{" + ", ".join(f"{jax.tree_util.keystr(p)}: {fmt(a)}" for p, a in flat) + "}"


# ---- stopping rules ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Rules:
    """The stopping rules, checked after every entry in this order."""

    tol: float | None
    ftol: float | None
    max_steps: int
    time_budget: float | None
    callback: Callback | None

    def check(self, history: History, elapsed: float) -> Outcome | None:
        step, value, gnorm = len(history) - 1, history.objective[-1], history.grad_norm[-1]
        if not (math.isfinite(value) and math.isfinite(gnorm)):
            return f"objective or gradient is not finite at step {step} ({value}, {gnorm})", False
        if self.callback is not None and self.callback(step, history.x[-1], value, gnorm):
            return f"stopped by callback at step {step}", False
        if self.tol is not None and gnorm <= self.tol:
            return f"gradient norm {gnorm:.3g} <= tol={self.tol:g}", True
        if self.ftol is not None and step > 0 and _relative_change(history) <= self.ftol:
            return (
                f"relative objective change {_relative_change(history):.3g} <= ftol={self.ftol:g}",
                True,
            )
        if step >= self.max_steps:
            return f"reached max_steps={self.max_steps}", False
        if self.time_budget is not None and elapsed >= self.time_budget:
            return f"time budget of {self.time_budget:g} s used ({elapsed:.3g} s)", False
        return None


def _relative_change(history: History) -> float:
    # The scale is at least 1 (as in scipy's L-BFGS-B) so an objective near 0 can still stop.
    a, b = history.objective[-2], history.objective[-1]
    return abs(a - b) / max(abs(a), abs(b), 1.0)


# ---- per-step bookkeeping shared by both drivers ----------------------------------------------


class ProgressBar:
    """A rich progress bar (step, objective, gradient norm), or nothing when disabled."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self._progress: Any = None
        if enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("objective {task.fields[value]}  |grad| {task.fields[grad]}"),
                TimeElapsedColumn(),
            )
            self._task = self._progress.add_task(label, total=total, value="-", grad="-")

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, step: int, value: float, grad_norm: float) -> None:
        if self._progress is not None:
            fields = {"value": f"{value:.6g}", "grad": f"{grad_norm:.3g}"}
            self._progress.update(self._task, completed=step, **fields)


class Recorder:
    """Appends each iterate to the history, updates the bar and checkpoint, applies the rules."""

    def __init__(
        self,
        history: History,
        rules: Rules,
        watched: Mapping[str, Component],
        bar: ProgressBar,
        checkpoint: Path | None,
        every: int,
    ) -> None:
        self.history, self.rules, self.watched, self.bar = history, rules, watched, bar
        self.checkpoint, self.every = checkpoint, every
        self.counts = snapshot(watched)
        self.started = self.clock = time.perf_counter()
        self.state: Any = None  # the optax state paired with the last entry

    def record(self, x: Any, value: float, grad_norm: float, state: Any = None) -> Outcome | None:
        now, counts = time.perf_counter(), snapshot(self.watched)
        calls = calls_since(self.counts, counts)
        self.history.append(x, value, grad_norm, now - self.clock, calls)
        self.clock, self.counts, self.state = now, counts, state
        self.bar.update(len(self.history) - 1, value, grad_norm)
        if self.checkpoint is not None and len(self.history) % self.every == 0:
            self.save()
        return self.rules.check(self.history, now - self.started)

    def save(self) -> None:
        """Write the history (with the optimizer state) to the checkpoint file."""
        self.finish()
        if self.checkpoint is not None:
            self.history.save(self.checkpoint)

    def finish(self) -> None:
        if self.state is not None:
            self.history.opt_state = [np.array(a) for a in jax.tree.leaves(self.state)]


def restore_state(saved: Sequence[np.ndarray], fresh: Any, method: str) -> Any:
    """`fresh` (an optimizer state) with its leaves replaced by `saved`, checked leaf by leaf.

    Raises:
        ValidationError: the saved state does not fit the optimizer's (another method, or
            other parameter shapes).
    """
    leaves, treedef = jax.tree.flatten(fresh)
    treedef = cast(Any, treedef)  # jaxlib's PyTreeDef has no type stubs
    got = [f"{np.asarray(a).dtype}{list(np.shape(a))}" for a in saved]
    want = [f"{np.asarray(a).dtype}{list(np.shape(a))}" for a in leaves]
    if got != want:
        raise ValidationError(
            f"resume: the saved optimizer state does not fit method {method!r}: expected "
            f"leaves {want}, got {got}; resume with the method and parameter shapes of the "
            "saved run"
        )
    return treedef.unflatten([jax.numpy.asarray(a) for a in saved])
