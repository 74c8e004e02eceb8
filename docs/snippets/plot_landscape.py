"""Plots: objective vs step and a 2-D landscape with the optimization path on top."""

import tempfile
from pathlib import Path

import numpy as np

import chainrule.plot as crplot


def rosenbrock(x, y):
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def gradient(p):
    x, y = p
    return np.array([-2 * (1 - x) - 400 * x * (y - x**2), 200 * (y - x**2)])


# Plain gradient descent, keeping the iterates and objective values.
path, values = [np.array([-1.2, 1.0])], []
for _ in range(2000):
    values.append(rosenbrock(*path[-1]))
    path.append(path[-1] - 1e-3 * gradient(path[-1]))

with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp)
    crplot.objective(values, log=True, save=out / "objective.png")
    crplot.landscape(rosenbrock, (-2, 2), (-1, 3), path=np.array(path), log=True,
                     save=out / "landscape.png")  # fmt: skip
    assert (out / "objective.png").stat().st_size > 1000
    assert (out / "landscape.png").stat().st_size > 1000
