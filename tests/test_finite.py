"""`check_finite`: the component, endpoint and path where a NaN or inf first appears."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chainrule as cr
import chainrule.jax as crj
from chainrule._component import finite


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


def _sqrt() -> cr.Component:
    """y = sqrt(x): NaN for x < 0; its gradient is inf at x = 0."""

    @cr.component(inputs=In, outputs=Out, backend="numpy", name="root")
    def root(inputs: In) -> Out:
        with np.errstate(invalid="ignore"):
            return Out(y=np.sqrt(inputs.x))

    @root.def_vjp
    def _vjp(inputs: In, cotangents: dict[str, Any]) -> dict[str, Any]:
        with np.errstate(all="ignore"):
            return {"x": cotangents["y"] * 0.5 / np.sqrt(inputs.x)}

    return root


def _shift() -> cr.Component:
    @cr.component(inputs=In, outputs=Out, backend="torch", name="shift")
    def shift(inputs: In) -> Out:
        return Out(y=inputs.x - 1.0)

    return shift


def _pipeline(shift: cr.Component, root: cr.Component) -> Any:
    def loss(x: jax.Array) -> jax.Array:
        y = crj.call(shift, {"x": x})["y"]
        return jnp.sum(crj.call(root, {"x": y})["y"])

    return loss


@pytest.mark.usefixtures("x64")  # a JAX program in float64
def test_off_by_default_nan_flows_silently() -> None:
    loss = _pipeline(_shift(), _sqrt())
    assert not finite.active()
    assert np.isnan(jax.jit(loss)(jnp.array([0.5, 2.0])))


@pytest.mark.usefixtures("x64")  # a JAX program in float64
def test_names_the_component_and_output_where_nan_first_appears() -> None:
    shift, root = _shift(), _sqrt()
    loss = _pipeline(shift, root)
    x = jnp.array([2.0, 0.5, 3.0])  # shift is finite everywhere; root gets -0.5
    with cr.check_finite(), pytest.raises(cr.NonFiniteError) as caught, crj.errors():
        jax.jit(jax.value_and_grad(loss))(x)
    message = str(caught.value)
    assert "component 'root' produced a non-finite output 'y' in apply" in message
    assert "1 NaN of 3; first at index [1]" in message
    assert caught.value.errors[0]["path"] == "y"
    assert not finite.active(), "the context manager restores the previous setting"
    # the same point without the check: NaN in the value, no error
    value, _ = jax.jit(jax.value_and_grad(loss))(x)
    assert np.isnan(value)


@pytest.mark.usefixtures("x64")  # a JAX program in float64
def test_a_gradient_that_blows_up_is_named_with_its_endpoint() -> None:
    root = _sqrt()
    loss = lambda x: jnp.sum(crj.call(root, {"x": x})["y"])  # noqa: E731
    with cr.check_finite(), pytest.raises(cr.NonFiniteError) as caught, crj.errors():
        jax.grad(loss)(jnp.array([4.0, 0.0]))
    assert "component 'root' produced a non-finite result 'x' in vjp" in str(caught.value)
    assert "1 inf of 2" in str(caught.value)


def test_nan_made_by_the_callers_code_is_reported_at_the_door() -> None:
    shift = _shift()
    with cr.check_finite(), pytest.raises(cr.NonFiniteError) as caught:
        shift.apply({"x": np.array([1.0, np.nan])})
    assert "reached component 'shift' (apply) through input 'x'" in str(caught.value)
    with cr.check_finite(), pytest.raises(cr.NonFiniteError, match="through cotangent 'y'"):
        shift.vjp({"x": [1.0, 2.0]}, {"y": [np.inf, 0.0]})


def test_a_served_pipeline_names_the_component_inside_the_server() -> None:
    shift, root = _shift(), _sqrt()
    root.apply({"x": [1.0]})  # learn its output shapes (NumPy)

    def inner(inputs: In) -> Out:
        return Out(y=crj.call(root, {"x": crj.call(shift, {"x": inputs.x})["y"]})["y"])

    pipeline = cr.component(inner, inputs=In, outputs=Out, backend="jax", name="pipeline")
    with cr.serve(pipeline) as server:
        remote = cr.connect(server.url)
        assert np.isnan(remote.apply({"x": [0.5, 2.0]}).y[0])  # unchecked: NaN comes back
        with cr.check_finite(), pytest.raises(cr.NonFiniteError) as caught:
            remote.apply({"x": [0.5, 2.0]})
    assert "component 'root' produced a non-finite output 'y'" in str(caught.value)


def test_environment_variable_turns_it_on_for_a_process() -> None:
    code = "import chainrule; from chainrule._component import finite; print(finite.active())"
    env = {**os.environ, "CHAINRULE_CHECK_FINITE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "True", out.stderr
