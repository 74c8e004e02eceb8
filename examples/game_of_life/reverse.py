"""Reversing Conway's Game of Life: find a board that evolves into a target after k steps.

The Game of Life is pure control flow — a cell is born with exactly 3 live neighbours and
survives with 2 or 3 — so its derivative is zero almost everywhere. `chainrule.soft` makes it
differentiable: cells are probabilities in (0, 1), the neighbour count is a convolution, and
"exactly 3" / "2 or 3" become soft windows (`soft.between`) blended by the cell's own state
(`soft.where`). That soft step is a chainrule JAX component; optax's adam optimizes logits
through `chainrule.jax.call` of it (many random restarts at once, under `jax.vmap`), the
temperature of the soft comparisons is annealed towards the hard rule, and the best board is
rounded to 0/1 and checked with the **hard** rule.

Strategies: `direct` differentiates through all k soft steps at once; `stepwise` reverses one
step at a time (k single-step reversals, each target being the previous preimage).

Run: `python examples/game_of_life/reverse.py [--size N --steps K --iterations M --out DIR]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import chainrule as cr
import chainrule.jax as crj
from chainrule import soft

# This program computes in float64 (its components declare Float64 fields): JAX's 64-bit
# mode is the program's choice to make, and it is made here.
jax.config.update("jax_enable_x64", True)

NEIGHBOURS = np.array([[1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=np.float64)
# Anneal the soft comparisons from blurry (gradients everywhere) towards the hard rule.
TEMPERATURE = (1.0, 0.1)
# Half of the restarts start sparse (few live cells, like the patterns sought), the rest dense.
INIT_MEAN = (-2.0, 0.0)
AIM = 0.95  # the fraction of target cells the found board must reproduce (exit status 0)


# ---- the hard rule (the check) and the soft rule (the component) ----------------------------


_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def hard_step(board: np.ndarray) -> np.ndarray:
    """One hard Game of Life step on a torus (0/1 in, 0/1 out)."""
    n = sum(np.roll(board, (dy, dx), axis=(0, 1)) for dy, dx in _OFFSETS)
    return ((n == 3) | ((board == 1) & (n == 2))).astype(board.dtype)


def hard_evolve(board: np.ndarray, steps: int) -> list[np.ndarray]:
    """The board and its `steps` successors under the hard rule."""
    boards = [board]
    for _ in range(steps):
        boards.append(hard_step(boards[-1]))
    return boards


def neighbours(board: jax.Array) -> jax.Array:
    """Live-neighbour count of each cell: a 3×3 convolution on the torus (wrapped edges)."""
    padded = jnp.pad(board, 1, mode="wrap")
    return jax.scipy.signal.convolve2d(padded, jnp.asarray(NEIGHBOURS), mode="valid")


def soft_step(board: jax.Array, temperature: jax.Array) -> jax.Array:
    """One soft step: alive → survives with 2..3 neighbours, dead → born with exactly 3.

    Window edges sit halfway between integers, so for a 0/1 board and a small temperature the
    soft step is the hard one; in between, a half-alive cell is a blend of both rules.
    """
    n = neighbours(board)
    survive = soft.between(n, 1.5, 3.5, temperature)
    birth = soft.between(n, 2.5, 3.5, temperature)
    return soft.where(board, survive, birth)


class Life(cr.Schema):
    """A board of cell probabilities, the soft rule's temperature and how many steps to run."""

    board: cr.Differentiable[cr.Array[("h", "w"), cr.Float64]]
    # An array, not a float: annealing it does not recompile (static values are baked in).
    temperature: cr.Array[(), cr.Float64]
    steps: int = 1


class Evolved(cr.Schema):
    board: cr.Differentiable[cr.Array[("h", "w"), cr.Float64]]


@cr.component(inputs=Life, outputs=Evolved, backend="jax")
def soft_life(inputs: Life) -> Evolved:
    """`steps` soft Game of Life steps of the board."""
    board = inputs.board
    for _ in range(inputs.steps):  # steps is static: a short unrolled loop
        board = soft_step(board, inputs.temperature)
    return Evolved(board=board)


# ---- the target -------------------------------------------------------------------------------


def known_board(size: int) -> np.ndarray:
    """A glider (top left) and an R-pentomino (centre) on an empty size×size board."""
    board = np.zeros((size, size))
    for y, x in [(0, 1), (1, 2), (2, 0), (2, 1), (2, 2)]:  # glider, heading down-right
        board[1 + y, 1 + x] = 1
    c = size // 2
    for y, x in [(0, 1), (0, 2), (1, 0), (1, 1), (2, 1)]:  # R-pentomino: chaotic for 1103 steps
        board[c - 1 + y, c - 1 + x] = 1
    return board


# ---- the optimizer ------------------------------------------------------------------------------


@dataclass
class Result:
    """The best board found and how well it reproduces the target under the hard rule."""

    target: np.ndarray
    board: np.ndarray  # 0/1, the rounded best restart
    steps: int
    matched: float  # fraction of cells of hard_evolve(board)[-1] equal to the target
    exact_restarts: int  # restarts whose rounded board is an exact preimage (last reversal)
    loss: list[float] = field(default_factory=list)  # best restart's soft loss per iteration
    seconds: float = 0.0

    @property
    def exact(self) -> bool:
        return self.matched == 1.0

    @property
    def baseline(self) -> float:
        """The fraction an all-dead board matches: the bar any answer must clear."""
        return float(np.mean(self.target == 0))


def soft_loss(logits: jax.Array, target: jax.Array, steps: int, temperature: jax.Array) -> Any:
    """Cross-entropy between the soft evolution of sigmoid(logits) and the 0/1 target."""
    board = jax.nn.sigmoid(logits)  # keeps every cell in (0, 1)
    out = crj.call(soft_life, {"board": board, "temperature": temperature, "steps": steps})
    p = jnp.clip(out["board"], 1e-7, 1 - 1e-7)
    return -jnp.mean(target * jnp.log(p) + (1 - target) * jnp.log1p(-p))


def _objective(steps: int) -> Callable[..., Any]:
    """loss(logits, target, temperature, sharpen): the soft loss plus a push towards 0/1.

    The push, sharpen·mean(b(1 − b)), grows over the run so that the final rounding changes
    little: a board of halves can fit the soft rule without meaning anything to the hard one.
    """

    def loss(logits: jax.Array, target: jax.Array, temperature: jax.Array, sharpen: Any) -> Any:
        board = jax.nn.sigmoid(logits)
        penalty = sharpen * jnp.mean(board * (1 - board))
        return soft_loss(logits, target, steps, temperature) + penalty

    return loss


def _update(steps: int, lr: float) -> tuple[Any, Callable[..., Any]]:
    """(optimizer, jitted step) where the step updates every restart at once (vmap).

    Each restart has its own target, so one call can reverse several targets (stepwise).
    """
    optimizer = optax.adam(lr)
    grad = jax.value_and_grad(_objective(steps))

    def one(logits: jax.Array, target: jax.Array, state: Any, temp: Any, sharpen: Any) -> Any:
        value, g = grad(logits, target, temp, sharpen)
        updates, state = optimizer.update(g, state)
        return optax.apply_updates(logits, updates), state, value

    return optimizer, jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None, None)))


def _initial(shape: tuple[int, ...], seed: int) -> jax.Array:
    """Random logits, restart i centred between INIT_MEAN[0] (sparse) and INIT_MEAN[1]."""
    means = jnp.linspace(*INIT_MEAN, shape[0])[:, None, None]
    return means + jax.random.normal(jax.random.PRNGKey(seed), shape)


def descend(
    targets: np.ndarray,
    steps: int,
    iterations: int,
    lr: float = 0.1,
    seed: int = 0,
    report: Callable[[int, float], None] | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Adam on the logits of one board per target (restarts × h × w), temperature annealed.

    Returns the boards rounded to 0/1 and the best restart's loss at every iteration.
    """
    optimizer, update = _update(steps, lr)
    logits = _initial(targets.shape, seed)
    state = jax.vmap(optimizer.init)(logits)
    hot, cold = TEMPERATURE
    losses = []
    for i in range(iterations):
        frac = i / max(iterations - 1, 1)
        temperature = jnp.asarray(hot * (cold / hot) ** frac)  # geometric annealing
        logits, state, value = update(logits, targets, state, temperature, frac)
        losses.append(float(jnp.min(value)))
        if report:
            report(i, losses[-1])
    return (np.asarray(logits) > 0).astype(np.float64), losses


def _matched(boards: np.ndarray, targets: np.ndarray, steps: int) -> np.ndarray:
    """Fraction of target cells each board reproduces after `steps` hard steps."""
    return np.array(
        [np.mean(hard_evolve(b, steps)[-1] == t) for b, t in zip(boards, targets, strict=True)]
    )


def _best(boards: np.ndarray, target: np.ndarray, steps: int, losses: list[float]) -> Result:
    """The board matching most target cells (fewest live cells on ties)."""
    matched = _matched(boards, np.broadcast_to(target, boards.shape), steps)
    best = np.lexsort((boards.sum(axis=(1, 2)), -matched))[0]
    exact = int(np.sum(matched == 1.0))
    return Result(target, boards[best], steps, float(matched[best]), exact, losses)


def reverse(
    target: np.ndarray, steps: int, iterations: int = 1000, restarts: int = 64, **options: Any
) -> Result:
    """Optimize `restarts` boards at once through `steps` soft steps; keep the best."""
    targets = np.broadcast_to(target, (restarts, *target.shape))
    boards, losses = descend(targets, steps, iterations, **options)
    return _best(boards, target, steps, losses)


def reverse_stepwise(
    target: np.ndarray, steps: int, iterations: int = 1000, restarts: int = 64, **options: Any
) -> Result:
    """k single-step reversals, each of a population of candidate preimages.

    Stage 1 reverses the target; each later stage shares its restarts among the distinct
    exact preimages the previous stage found (or its best boards, if none was exact), so one
    preimage that happens to have no preimage itself (a "Garden of Eden") does not end the
    search. Finally every board is checked over all k hard steps against the target.
    """
    candidates, losses, seed = target[None], [], options.pop("seed", 0)
    for k in range(steps):
        targets = candidates[np.arange(restarts) % len(candidates)]
        boards, stage = descend(targets, 1, iterations, seed=seed + k, **options)
        candidates, losses = _preimages(boards, targets), losses + stage
    return _best(boards, target, steps, losses)


def _preimages(boards: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The distinct boards that are exact one-step preimages of their targets (else the best)."""
    matched = _matched(boards, targets, 1)
    keep = boards[matched == matched.max()]
    return np.unique(keep, axis=0)


# ---- progress, report, plots ------------------------------------------------------------------


@contextmanager
def _progress(total: int, bar: bool) -> Iterator[Callable[[int, float], None]]:
    """A rich progress bar on a terminal; otherwise a line every `total // 5` iterations."""
    if not bar:
        every = max(total // 5, 1)

        def line(i: int, loss: float) -> None:
            if i % every == 0 or i == total - 1:
                print(f"  iteration {i:5d}  soft loss (best restart) = {loss:.5f}", flush=True)

        yield line
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task("optimizing", total=total)

        def update(i: int, loss: float) -> None:
            progress.update(task, completed=i + 1, description=f"soft loss {loss:.5f}")

        yield update


def report(result: Result) -> None:
    """Print the hard check of the rounded board."""
    cells = result.target.size
    print(f"found board: {int(result.board.sum())} live cells; after {result.steps} hard step(s)")
    print(
        f"  it matches {result.matched:.1%} of the {cells} target cells "
        f"({round(result.matched * cells)}/{cells}; an all-dead board: {result.baseline:.1%})"
    )
    verdict = "yes" if result.exact else "no"
    print(f"  exact preimage: {verdict} ({result.exact_restarts} restarts exact)")
    print(f"  time: {result.seconds:.1f} s (including compilation)")


def plot(result: Result, folder: Path) -> list[Path]:
    """boards.png (target, found board, its hard evolution) and loss.png; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    evolution = hard_evolve(result.board, result.steps)
    panels = [("target", result.target), ("found board", evolution[0])]
    panels += [(f"after {k} hard step{'s' * (k > 1)}", b) for k, b in enumerate(evolution[1:], 1)]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(2.6 * (len(panels) + 1), 3))
    for ax, (title, board) in zip(axes, panels, strict=False):
        _board(ax, board, title)
    _mismatch(axes[-1], evolution[-1], result.target)
    fig.suptitle(f"Game of Life reversed over {result.steps} step(s): {result.matched:.1%} matched")
    fig.tight_layout()
    files = [folder / "boards.png", folder / "loss.png"]
    fig.savefig(files[0], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.semilogy(result.loss)
    ax.set(xlabel="iteration", ylabel="soft loss (best restart)", title="optimization")
    fig.tight_layout()
    fig.savefig(files[1], dpi=110)
    plt.close(fig)
    return files


def _board(ax: Any, board: np.ndarray, title: str) -> None:
    ax.imshow(board, cmap="Greys", vmin=0, vmax=1)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def _mismatch(ax: Any, final: np.ndarray, target: np.ndarray) -> None:
    """Green: matched live cells; red: missing or extra cells."""
    image = np.ones((*target.shape, 3))
    image[(final == 1) & (target == 1)] = (0.2, 0.6, 0.2)
    image[final != target] = (0.85, 0.1, 0.1)
    ax.imshow(image)
    ax.set_title(f"vs target: {int(np.sum(final != target))} wrong", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


# ---- main ---------------------------------------------------------------------------------------


def run(args: argparse.Namespace, progress: bool) -> Result:
    """Build the target, reverse it with the chosen strategy, time it."""
    target = hard_evolve(known_board(args.size), args.steps)[-1]
    print(f"target: a glider and an R-pentomino on a {args.size}×{args.size} torus after ", end="")
    print(f"{args.steps} hard step(s), {int(target.sum())} live cells")
    print(f"{args.strategy} reversal: adam on logits, {args.restarts} restarts at once, ", end="")
    print(f"temperature {TEMPERATURE[0]} → {TEMPERATURE[1]}")
    start = time.perf_counter()
    iterations = args.iterations * (args.steps if args.strategy == "stepwise" else 1)
    with _progress(iterations, progress) as bar:
        counter = iter(range(iterations))
        options = {"iterations": args.iterations, "restarts": args.restarts, "seed": args.seed}
        options["report"] = lambda _, loss: bar(next(counter), loss)
        if args.strategy == "stepwise":
            result = reverse_stepwise(target, args.steps, **options)
        else:
            result = reverse(target, args.steps, **options)
    result.seconds = time.perf_counter() - start
    return result


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=12, help="board size N (N×N torus)")
    parser.add_argument("--steps", type=int, default=1, help="k: steps between board and target")
    parser.add_argument("--iterations", type=int, default=1000, help="adam steps per reversal")
    parser.add_argument("--restarts", type=int, default=64, help="boards optimized at once")
    parser.add_argument("--strategy", choices=("stepwise", "direct"), default="stepwise")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out/game_of_life"), help="plots")
    parser.add_argument("--no-plots", action="store_true")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the reversal; 0 iff the found board reproduces at least AIM of the target."""
    args = parse(argv)
    result = run(args, progress=sys.stdout.isatty())
    report(result)
    if not args.no_plots:
        print("plots: " + ", ".join(str(f) for f in plot(result, args.out)))
    return 0 if result.matched >= AIM else 1


if __name__ == "__main__":
    sys.exit(main())
