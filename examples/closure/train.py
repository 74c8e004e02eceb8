"""A learned closure: a PyTorch network trained *through* a JAX Burgers solver component.

A coarse Burgers simulation (32 cells, dt = 0.05) smears and misplaces the shocks that a fine
one (256 cells, dt = 0.05/8) resolves. A small PyTorch network looks at four neighbouring
coarse cells and outputs a correction to the flux through the face between them; the JAX
solver (`burgers.py`, a chainrule component) takes one coarse step with that flux added. The
time loop runs in PyTorch:

    for each coarse step:  g = net(u)                              # torch
                           u = chainrule.torch.call(burgers, {"u": u, "flux": g})   # JAX

and `loss.backward()` sends the gradient of the rollout error back through every JAX step
(one `vjp` each) into the network, which torch.optim.Adam trains. The error is the relative
L2 distance to the fine solution averaged onto the coarse cells, over the whole horizon.

Run: `python examples/closure/train.py [--epochs N] [--out DIR]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

import chainrule.torch as crt

sys.path.insert(0, str(Path(__file__).parent))  # run as a script or loaded by the tests
from burgers import LENGTH, burgers, simulate


@dataclass(frozen=True)
class Setup:
    """Grid, time step, viscosity and data sizes (the fine grid refines the coarse one)."""

    coarse: int = 32
    refine: int = 8  # fine cells per coarse cell, and fine steps per coarse step
    dt: float = 0.05
    nu: float = 0.02
    steps: int = 40  # horizon: 40 coarse steps, t = 2
    train: int = 16  # initial conditions to train on
    test: int = 8  # held-out initial conditions
    modes: int = 3  # Fourier modes of the random initial conditions

    @property
    def fine(self) -> int:
        return self.coarse * self.refine


# ---- data: random initial conditions and the fine reference ---------------------------------


def initial_conditions(setup: Setup, count: int, seed: int) -> np.ndarray:
    """`count` smooth periodic states on the fine grid: random modes 1..3, amplitude ~1/k."""
    rng = np.random.default_rng(seed)
    x = (np.arange(setup.fine) + 0.5) * LENGTH / setup.fine
    u = np.zeros((count, setup.fine))
    for k in range(1, setup.modes + 1):
        amplitude = rng.normal(size=(count, 1)) / k
        u += amplitude * np.sin(k * x + rng.uniform(0, 2 * np.pi, (count, 1)))
    return u


def coarsen(u: np.ndarray, refine: int) -> np.ndarray:
    """Averages over groups of `refine` fine cells: what a coarse finite volume holds."""
    return u.reshape(*u.shape[:-1], -1, refine).mean(-1)


def fine_reference(setup: Setup, u0: np.ndarray) -> np.ndarray:
    """The fine solution at every coarse step, averaged onto the coarse cells: (b, steps, n)."""
    solve = jax.jit(simulate, static_argnums=(2, 3, 4, 5))
    dt = setup.dt / setup.refine
    fine = solve(jnp.asarray(u0), jnp.zeros_like(u0), setup.steps, dt, setup.nu, setup.refine)
    return coarsen(np.asarray(fine), setup.refine)


@dataclass
class Data:
    """Coarse initial states and the fine reference trajectories, for training and testing."""

    u0: np.ndarray
    reference: np.ndarray
    fine0: np.ndarray  # fine initial states (kept for the plots)

    @classmethod
    def make(cls, setup: Setup, count: int, seed: int) -> Data:
        fine0 = initial_conditions(setup, count, seed)
        return cls(coarsen(fine0, setup.refine), fine_reference(setup, fine0), fine0)


# ---- the closure network and the corrected rollout ------------------------------------------


class Closure(torch.nn.Module):
    """Flux correction at face i+1/2 from the cells u_{i-2} .. u_{i+3} around it.

    Acting locally (a convolution, periodic padding), it is the same function at every face,
    so it does not depend on the grid position and generalizes to unseen states. The last
    layer starts at zero: before training the corrected model *is* the plain coarse one.
    """

    def __init__(self, width: int = 32, half: int = 3) -> None:
        super().__init__()
        self.half = half  # cells seen on each side of the face
        self.stencil = torch.nn.Conv1d(1, width, kernel_size=2 * half, dtype=torch.float64)
        self.hidden = torch.nn.Conv1d(width, width, kernel_size=1, dtype=torch.float64)
        self.out = torch.nn.Conv1d(width, 1, kernel_size=1, dtype=torch.float64)
        torch.nn.init.zeros_(self.out.weight)
        torch.nn.init.zeros_(self.out.bias)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        # Pad half-1 cells on the left, half on the right: output i sees u[i-half+1 .. i+half].
        pad = (self.half - 1, self.half)
        x = torch.nn.functional.pad(u[:, None, :], pad, mode="circular")
        x = torch.tanh(self.hidden(torch.tanh(self.stencil(x))))
        return self.out(x)[:, 0, :]


def rollout(setup: Setup, u0: torch.Tensor, closure: Closure | None) -> torch.Tensor:
    """Coarse trajectory (b, steps, n); the JAX solver takes each step, the network (if any)
    gives the flux correction from the current state."""
    u, states = u0, []
    for _ in range(setup.steps):
        flux = closure(u) if closure is not None else torch.zeros_like(u)
        step = {"u": u, "flux": flux, "steps": 1, "dt": setup.dt, "nu": setup.nu}
        u = crt.call(burgers, step)["u"][:, 0]
        states.append(u)
    return torch.stack(states, dim=1)


def relative_error(trajectory: torch.Tensor | np.ndarray, reference: np.ndarray) -> float:
    """‖u − u_ref‖ / ‖u_ref‖ over all cells, steps and initial conditions."""
    u = trajectory.detach().numpy() if isinstance(trajectory, torch.Tensor) else trajectory
    return float(np.linalg.norm(u - reference) / np.linalg.norm(reference))


# ---- training ---------------------------------------------------------------------------------


@dataclass
class Training:
    """The loss (relative squared error over the horizon) per epoch, and the time it took."""

    loss: list[float] = field(default_factory=list)
    seconds: float = 0.0


def train(setup: Setup, data: Data, closure: Closure, epochs: int, lr: float = 1e-2) -> Training:
    """Adam on the rollout error; the gradient reaches the network through every JAX step."""
    optimizer = torch.optim.Adam(closure.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1))
    u0, reference = torch.from_numpy(data.u0), torch.from_numpy(data.reference)
    scale = reference.square().mean()
    history, start = Training(), time.perf_counter()
    for epoch in range(epochs):
        optimizer.zero_grad()
        loss = (rollout(setup, u0, closure) - reference).square().mean() / scale
        loss.backward()
        optimizer.step()
        schedule.step()
        history.loss.append(loss.item())
        if epoch % 25 == 0 or epoch == epochs - 1:
            print(f"  epoch {epoch:4d}  loss {history.loss[-1]:.3e}", flush=True)
    history.seconds = time.perf_counter() - start
    return history


# ---- the report -------------------------------------------------------------------------------


@dataclass
class Errors:
    """Relative L2 errors vs the fine solution, without and with the learned closure."""

    coarse: float
    corrected: float

    @property
    def factor(self) -> float:
        return self.coarse / self.corrected


def evaluate(setup: Setup, data: Data, closure: Closure) -> tuple[Errors, np.ndarray, np.ndarray]:
    """Errors of the plain and corrected coarse models, and both trajectories."""
    u0 = torch.from_numpy(data.u0)
    with torch.no_grad():
        plain = rollout(setup, u0, None).numpy()
        corrected = rollout(setup, u0, closure).numpy()
    errors = Errors(
        relative_error(plain, data.reference), relative_error(corrected, data.reference)
    )
    return errors, plain, corrected


def report(name: str, errors: Errors) -> None:
    print(
        f"{name:<9} coarse {errors.coarse:.4f}  corrected {errors.corrected:.4f}"
        f"  -> {errors.factor:.1f}x smaller"
    )


@dataclass
class Result:
    """What `run` returns: errors on the training and held-out sets, and the training."""

    train: Errors
    test: Errors
    training: Training
    files: list[Path] = field(default_factory=list)


def run(setup: Setup, epochs: int, out: Path | None, seed: int = 0) -> Result:
    """Make data, train the closure, report errors before/after, and plot (if `out`)."""
    torch.manual_seed(seed)
    # The tensors are tiny (16 × 32): extra intra-op threads only add synchronization.
    torch.set_num_threads(1)
    print(f"fine reference: {setup.fine} cells, dt={setup.dt / setup.refine:g}; coarse model:")
    print(
        f"  {setup.coarse} cells, dt={setup.dt:g}; horizon {setup.steps} coarse steps, ν={setup.nu}"
    )
    train_data = Data.make(setup, setup.train, seed=seed)
    test_data = Data.make(setup, setup.test, seed=seed + 1000)
    closure = Closure()
    print(f"training the closure ({epochs} epochs of Adam, {setup.train} initial conditions):")
    training = train(setup, train_data, closure, epochs)
    print(f"trained in {training.seconds:.1f} s; relative L2 error vs the fine solution:")
    train_errors, *_ = evaluate(setup, train_data, closure)
    test_errors, plain, corrected = evaluate(setup, test_data, closure)
    report("train", train_errors)
    report("held-out", test_errors)
    result = Result(train_errors, test_errors, training)
    if out is not None:
        from closure_plots import plot_all  # a sibling module: matplotlib only when plotting

        result.files = plot_all(out, setup, test_data, plain, corrected, training.loss)
        print("plots: " + ", ".join(str(f) for f in result.files))
    return result


def main(argv: list[str] | None = None) -> int:
    """Train and report; 0 iff the closure cuts the held-out error by at least 2x."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=300, help="Adam steps (full batch)")
    parser.add_argument("--out", type=Path, default=Path("out/closure"), help="folder for plots")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    result = run(Setup(), args.epochs, None if args.no_plots else args.out, args.seed)
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0 if result.test.factor >= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
