"""Lorenz-96 integrated with RK4, in NumPy, with its adjoint written by hand.

    dx_i/dt = (x_{i+1} − x_{i−2}) x_{i−1} − x_i + F        (indices periodic)

`l96` returns the whole trajectory x_0, x_1, ..., x_steps of one window, so a caller can
compare any step with observations. Its `jvp` is the tangent-linear model and its `vjp` the
discrete adjoint of RK4: the trajectory
is recomputed (x_s and the three inner stage points of every step are needed), then the
cotangents are swept backward step by step through the transposed stage Jacobians. One vjp
costs about two forward runs — whatever the dimension, unlike 2·N finite differences.

This module imports only numpy and chainrule: its environment holds nothing else.
"""

import numpy as np

import chainrule as cr


class Window(cr.Schema):
    """The initial state and how far to integrate it."""

    x0: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    steps: int = 50
    dt: float = 0.01
    forcing: float = 8.0


class Trajectory(cr.Schema):
    """States at steps 0..steps: (steps + 1, n); row 0 is x0 itself."""

    states: cr.Differentiable[cr.Array[(None, "n"), cr.Float64]]


def tendency(x: np.ndarray, forcing: float) -> np.ndarray:
    """dx/dt of Lorenz-96 (np.roll(x, k)[i] is x[i − k])."""
    return (np.roll(x, -1) - np.roll(x, 2)) * np.roll(x, 1) - x + forcing


def tendency_linear(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """J·v for the Jacobian J of `tendency` at x (the tangent-linear model)."""
    r = np.roll
    return (r(v, -1) - r(v, 2)) * r(x, 1) + (r(x, -1) - r(x, 2)) * r(v, 1) - v


def tendency_transpose(x: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Jᵀ·v for the Jacobian J of `tendency` at x.

    f_i depends on x_{i+1} (∂ = x_{i−1}), x_{i−2} (∂ = −x_{i−1}), x_{i−1} (∂ = x_{i+1} − x_{i−2})
    and x_i (∂ = −1); collecting the terms that land on x_j:
    (Jᵀv)_j = v_{j−1} x_{j−2} − v_{j+2} x_{j+1} + v_{j+1} (x_{j+2} − x_{j−1}) − v_j.
    """
    r = np.roll
    return r(v, 1) * r(x, 2) - r(v, -2) * r(x, -1) + r(v, -1) * (r(x, -2) - r(x, 1)) - v


def rk4_stages(x: np.ndarray, dt: float, forcing: float) -> tuple[np.ndarray, ...]:
    """The four points RK4 evaluates the tendency at, and the four tendencies."""
    a1 = x
    k1 = tendency(a1, forcing)
    a2 = x + 0.5 * dt * k1
    k2 = tendency(a2, forcing)
    a3 = x + 0.5 * dt * k2
    k3 = tendency(a3, forcing)
    a4 = x + dt * k3
    k4 = tendency(a4, forcing)
    return a1, a2, a3, a4, k1, k2, k3, k4


def rk4_step(x: np.ndarray, dt: float, forcing: float) -> np.ndarray:
    """One classical Runge–Kutta step."""
    *_, k1, k2, k3, k4 = rk4_stages(x, dt, forcing)
    return x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


def rk4_step_linear(x: np.ndarray, v: np.ndarray, dt: float, forcing: float) -> np.ndarray:
    """Tangent of rk4_step(x) along v: RK4 differentiated stage by stage."""
    a1, a2, a3, a4, *_ = rk4_stages(x, dt, forcing)
    d1 = tendency_linear(a1, v)
    d2 = tendency_linear(a2, v + 0.5 * dt * d1)
    d3 = tendency_linear(a3, v + 0.5 * dt * d2)
    d4 = tendency_linear(a4, v + dt * d3)
    return v + dt / 6 * (d1 + 2 * d2 + 2 * d3 + d4)


def rk4_step_transpose(x: np.ndarray, ct: np.ndarray, dt: float, forcing: float) -> np.ndarray:
    """Cotangent of x from the cotangent `ct` of rk4_step(x): the stages in reverse order."""
    a1, a2, a3, a4, *_ = rk4_stages(x, dt, forcing)
    # x' = x + dt/6 (k1 + 2k2 + 2k3 + k4): each stage tendency receives its weight of ct.
    g1, g2, g3, g4 = dt / 6 * ct, dt / 3 * ct, dt / 3 * ct, dt / 6 * ct
    lam = ct.copy()
    lam4 = tendency_transpose(a4, g4)  # a4 = x + dt k3
    g3 = g3 + dt * lam4
    lam3 = tendency_transpose(a3, g3)  # a3 = x + dt/2 k2
    g2 = g2 + 0.5 * dt * lam3
    lam2 = tendency_transpose(a2, g2)  # a2 = x + dt/2 k1
    g1 = g1 + 0.5 * dt * lam2
    return lam + lam4 + lam3 + lam2 + tendency_transpose(a1, g1)


def integrate(x0: np.ndarray, steps: int, dt: float, forcing: float) -> np.ndarray:
    """The trajectory (steps + 1, n) from x0."""
    states = np.empty((steps + 1, x0.shape[0]))
    states[0] = x0
    for s in range(steps):
        states[s + 1] = rk4_step(states[s], dt, forcing)
    return states


@cr.component(inputs=Window, outputs=Trajectory, backend="numpy")
def l96(inputs: Window) -> Trajectory:
    """Integrate Lorenz-96 from x0 for `steps` RK4 steps of size dt."""
    return Trajectory(states=integrate(inputs.x0, inputs.steps, inputs.dt, inputs.forcing))


@l96.def_jvp
def l96_jvp(inputs: Window, tangents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Forward sweep of the tangent-linear model along the trajectory.
    states = integrate(inputs.x0, inputs.steps, inputs.dt, inputs.forcing)
    out = np.empty_like(states)
    out[0] = np.asarray(tangents["x0"], dtype=np.float64)
    for s in range(inputs.steps):
        out[s + 1] = rk4_step_linear(states[s], out[s], inputs.dt, inputs.forcing)
    return {"states": out}


@l96.def_vjp
def l96_vjp(inputs: Window, cotangents: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    # Reverse sweep: λ_steps = c_steps, λ_s = (∂x_{s+1}/∂x_s)ᵀ λ_{s+1} + c_s; ∂/∂x0 = λ_0.
    states = integrate(inputs.x0, inputs.steps, inputs.dt, inputs.forcing)
    ct = np.asarray(cotangents["states"], dtype=np.float64)
    lam = ct[-1].copy()
    for s in range(inputs.steps - 1, -1, -1):
        lam = rk4_step_transpose(states[s], lam, inputs.dt, inputs.forcing) + ct[s]
    return {"x0": lam}
