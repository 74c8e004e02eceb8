"""JAX's 64-bit mode belongs to the program: chainrule never turns it on for the process."""

import jax
import jax.numpy as jnp
import numpy as np

import chainrule as cr
import chainrule.jax as crj


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="jax")
def expm1(inputs: Inputs) -> Outputs:
    return Outputs(y=jnp.exp(inputs.x) - 1)  # cancels badly: float32 gives 0 at x = 1e-10


x = np.array([1e-10, 1e-3])
# --8<-- [start:in_process]
print(expm1.apply({"x": x}).y)  # [1.00000008e-10 1.00050017e-03]: float64 in process
assert not jax.config.read("jax_enable_x64")  # and the process's setting is left alone
# --8<-- [end:in_process]

# --8<-- [start:program]
program = jax.jit(lambda v: crj.call(expm1, {"x": v})["y"])
try:
    program(x)  # this program is in 32-bit mode (JAX's default)
except cr.ValidationError as e:
    print(e)  # input 'x' of component 'expm1' is declared float64[n], but JAX's 64-bit mode
    # is off in this program, so JAX would carry it as float32. Fix: turn 64-bit mode on ...

with jax.enable_x64(True):  # or jax.config.update("jax_enable_x64", True) at the start
    y = program(x)
print(y.dtype, y)  # float64 [1.00000008e-10 1.00050017e-03]
# --8<-- [end:program]
assert y.dtype == jnp.float64 and abs(float(y[0]) - 1e-10) < 1e-16
