"""`chainrule.jax.call` under every JAX transformation × every kind of component.

Each kind computes the same `vector` case (tests/cases.py): y = scale·sin(x) + x², s = Σx³.
Results are compared with the same function written in plain JAX (exact for AD backends,
1e-6 for finite differences) and, for gradients, with finite differences.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chainrule as cr
import chainrule.jax as crj
from cases import CASES, build

pytestmark = pytest.mark.usefixtures("x64")  # these JAX programs compute in float64

KINDS = ["jax", "torch", "numpy", "written", "remote"]
SCALE = 1.5


@pytest.fixture(scope="module")
def served() -> Iterator[cr.Component]:
    """A torch component served over HTTP and connected (the remote kind)."""
    with cr.serve(build(CASES[0], "torch")) as server:
        remote = cr.connect(server.url)
        yield remote
        remote.close()


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest, served: cr.Component) -> tuple[str, cr.Component]:
    name = str(request.param)
    comp = served if name == "remote" else build(CASES[0], name)
    # NumPy components whose output shapes are not declared learn them from one eager call;
    # under jit alone there is no value to run them on (see test_shapes_unknown_under_jit).
    through(comp)(X)
    return name, comp


def _tol(name: str) -> dict[str, float]:
    return {"rtol": 1e-6, "atol": 1e-7} if name in ("numpy",) else {"rtol": 1e-11, "atol": 1e-12}


def reference(x: jax.Array) -> dict[str, jax.Array]:
    return {"y": SCALE * jnp.sin(x) + x**2, "s": jnp.sum(x**3)}


def through(comp: cr.Component) -> Any:
    def f(x: jax.Array) -> dict[str, Any]:
        return crj.call(comp, {"x": x, "scale": SCALE})

    return f


def loss(outputs: dict[str, Any]) -> jax.Array:
    return jnp.sum(outputs["y"] ** 2) + 0.5 * outputs["s"]


X = np.array([0.3, -0.7, 1.2])  # float64 (JAX turns it float32 in 32-bit mode)
T = np.array([1.0, 0.5, -2.0])


def test_value_and_grad_under_jit(kind: tuple[str, cr.Component]) -> None:
    name, comp = kind
    f = jax.jit(jax.value_and_grad(lambda x: loss(through(comp)(x))))
    g = jax.value_and_grad(lambda x: loss(reference(x)))
    comp.calls.clear()
    (v, dv), (w, dw) = f(X), g(X)
    if name != "jax":  # one forward (keeping its linearization) and one backward, no more
        assert (comp.calls["apply"], comp.calls["vjp"]) == (1, 1), comp.calls
    np.testing.assert_allclose(v, w, **_tol(name))
    np.testing.assert_allclose(dv, dw, **_tol(name))
    eps = 1e-6  # and against central finite differences of the pipeline itself
    fd = [
        (loss(through(comp)(X + eps * e)) - loss(through(comp)(X - eps * e))) / (2 * eps)
        for e in jnp.eye(3)
    ]
    np.testing.assert_allclose(dv, fd, rtol=1e-5, atol=1e-6)


def test_jvp_vjp_linearize(kind: tuple[str, cr.Component]) -> None:
    name, comp = kind
    f = lambda x: through(comp)(x)["y"]  # noqa: E731
    r = lambda x: reference(x)["y"]  # noqa: E731
    np.testing.assert_allclose(jax.jvp(f, (X,), (T,))[1], jax.jvp(r, (X,), (T,))[1], **_tol(name))
    _, pull = jax.vjp(f, X)
    np.testing.assert_allclose(pull(T)[0], jax.vjp(r, X)[1](T)[0], **_tol(name))
    np.testing.assert_allclose(pull(2 * T)[0], jax.vjp(r, X)[1](2 * T)[0], **_tol(name))
    _, lin = jax.linearize(f, X)
    np.testing.assert_allclose(lin(T), jax.jvp(r, (X,), (T,))[1], **_tol(name))
    # the dot-product test through the binding: <v, J u> = <Jᵀ v, u>
    np.testing.assert_allclose(jnp.vdot(T, lin(T)), jnp.vdot(pull(T)[0], T), rtol=1e-6)


def test_jacobians(kind: tuple[str, cr.Component]) -> None:
    name, comp = kind
    f = lambda x: through(comp)(x)["y"]  # noqa: E731
    want = jax.jacrev(lambda x: reference(x)["y"])(X)
    comp.calls.clear()
    np.testing.assert_allclose(jax.jacrev(f)(X), want, **_tol(name))
    if name != "jax":  # one batched request answers all rows (the inline path makes none)
        assert comp.calls["batched_vjp"] == 1 and comp.calls["vjp"] == 0
    np.testing.assert_allclose(jax.jit(jax.jacfwd(f))(X), want, **_tol(name))


def test_vmap(kind: tuple[str, cr.Component]) -> None:
    name, comp = kind
    xs = jnp.stack([X, 2 * X, -X])
    f = lambda x: loss(through(comp)(x))  # noqa: E731
    r = lambda x: loss(reference(x))  # noqa: E731
    np.testing.assert_allclose(jax.vmap(f)(xs), jax.vmap(r)(xs), **_tol(name))
    np.testing.assert_allclose(
        jax.jit(jax.vmap(jax.grad(f)))(xs), jax.vmap(jax.grad(r))(xs), **_tol(name)
    )
    # tangents alone batched: one batched_jvp request
    comp.calls.clear()
    g = lambda t: jax.jvp(lambda x: through(comp)(x)["y"], (X,), (t,))[1]  # noqa: E731
    got = jax.vmap(g)(jnp.stack([T, 2 * T]))
    want = jax.vmap(lambda t: jax.jvp(lambda x: reference(x)["y"], (X,), (t,))[1])(
        jnp.stack([T, 2 * T])
    )
    np.testing.assert_allclose(got, want, **_tol(name))
    if name != "jax":
        assert comp.calls["batched_jvp"] == 1 and comp.calls["jvp"] == 0


def test_second_order(kind: tuple[str, cr.Component]) -> None:
    name, comp = kind
    s = lambda x: through(comp)(x)["s"]  # noqa: E731
    if name in ("numpy", "written"):
        with pytest.raises(cr.EndpointUnavailableError, match="hvp"):
            jax.hessian(s)(X)
        return
    np.testing.assert_allclose(jax.hessian(s)(X), jnp.diag(6 * X), **_tol(name))
    np.testing.assert_allclose(jax.grad(lambda x: jnp.sum(jax.grad(s)(x)))(X), 6 * X, **_tol(name))
    np.testing.assert_allclose(jax.jit(jax.jacrev(jax.grad(s)))(X), jnp.diag(6 * X), **_tol(name))


def test_checkpoint_scan_and_fori_loop(kind: tuple[str, cr.Component]) -> None:
    name, comp = kind

    def step(x: jax.Array, get: Any) -> jax.Array:
        return 0.5 * x + 0.1 * get(x)["y"]

    def run(get: Any) -> Any:
        def scanned(x: jax.Array) -> jax.Array:
            out, _ = jax.lax.scan(lambda c, _: (step(c, get), None), x, None, length=3)
            return jnp.sum(out)

        def looped(x: jax.Array) -> jax.Array:
            return jnp.sum(jax.lax.fori_loop(0, 2, lambda i, c: step(c, get), x))

        return scanned, looped, jax.checkpoint(lambda x: loss(get(x)))

    for mine, theirs in zip(run(through(comp)), run(reference), strict=True):
        np.testing.assert_allclose(jax.jit(jax.grad(mine))(X), jax.grad(theirs)(X), **_tol(name))


def test_shapes_unknown_under_jit() -> None:
    comp = build(CASES[0], "numpy")  # y: Array[(None,)] and n: int — shapes need apply
    with pytest.raises(cr.EndpointUnavailableError, match="call it once outside jit"):
        jax.jit(lambda x: through(comp)(x)["y"])(X)
    through(comp)(X)
    np.testing.assert_allclose(jax.jit(lambda x: through(comp)(x)["y"])(X), reference(X)["y"])


def test_static_inputs_and_static_outputs(kind: tuple[str, cr.Component]) -> None:
    _, comp = kind
    for scale in (1.0, 3.0):  # each static signature learns its shapes once (numpy kinds)
        crj.call(comp, {"x": X, "scale": scale})

    @jax.jit
    def f(x: jax.Array) -> jax.Array:
        a = crj.call(comp, {"x": x, "scale": 1.0})
        b = crj.call(comp, {"x": x, "scale": 3.0})
        assert a["n"] == 3  # a static output is a Python value even under jit
        return b["y"] - a["y"]

    np.testing.assert_allclose(f(X), 2.0 * jnp.sin(X), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["jax", "torch", "numpy"])
def test_non_differentiable_input_and_output(name: str) -> None:
    comp = build(CASES[1], name)  # matrix: 'offset' input and 'count' output are not marked
    a, b = jnp.ones((3, 2)) * 0.3, jnp.array([0.4, -0.7])

    def f(offset: jax.Array) -> jax.Array:
        return jnp.sum(crj.call(comp, {"a": a, "b": b, "offset": offset})["y"])

    with pytest.raises(cr.NotDifferentiableError, match="'offset'"):
        jax.grad(f)(jnp.zeros(3))
    value = f(jnp.zeros(3))  # no derivative asked: fine
    assert np.isfinite(value)

    def g(b: jax.Array) -> jax.Array:  # through a non-differentiable output: zero
        out = crj.call(comp, {"a": a, "b": b, "offset": jnp.zeros(3)})
        return jnp.sum(out["y"]) + out["count"].astype(jnp.float64)

    np.testing.assert_allclose(
        jax.grad(g)(b),
        jax.grad(lambda b: jnp.sum(jnp.tanh(a @ b)))(b),
        rtol=1e-6,
    )


def test_component_errors_surface_as_themselves() -> None:
    class In(cr.Schema):
        x: cr.Differentiable[cr.Array[("n",), cr.Float64]]

    class Out(cr.Schema):
        y: cr.Differentiable[cr.Array[("n",), cr.Float64]]  # shapes known without running

    @cr.component(inputs=In, outputs=Out, backend="numpy", name="diverging")
    def diverging(inputs: In) -> Out:
        if inputs.x[0] > 1:
            raise FloatingPointError("the solver diverged")
        return Out(y=inputs.x)

    f = lambda x: jnp.sum(crj.call(diverging, {"x": x})["y"])  # noqa: E731
    with pytest.raises(cr.ComponentError, match="the solver diverged"):
        f(jnp.array([2.0]))
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"ComponentError.*the solver diverged"):
        jax.jit(f)(jnp.array([2.0]))
    with pytest.raises(cr.ComponentError, match="the solver diverged"), crj.errors():
        jax.jit(f)(jnp.array([2.0]))
    # a pipeline component around it raises the same error class
    pipeline = cr.component(
        lambda i: Out(y=crj.call(diverging, {"x": i.x})["y"] * 2),
        inputs=In,
        outputs=Out,
        backend="jax",
        name="pipeline",
    )
    with pytest.raises(cr.ComponentError, match="the solver diverged"):
        pipeline.apply({"x": [2.0]})


def test_pipeline_is_a_component(served: cr.Component) -> None:
    """A JAX function of components, wrapped, has every endpoint and is right."""

    class In(cr.Schema):
        x: cr.Differentiable[cr.Array[(3,), cr.Float64]]

    class Out(cr.Schema):
        total: cr.Differentiable[cr.Array[(), cr.Float64]]

    parts = [build(CASES[0], "torch"), build(CASES[0], "numpy"), served]

    @cr.component(inputs=In, outputs=Out, backend="jax")
    def pipeline(inputs: In) -> Out:
        total = sum(loss(crj.call(p, {"x": inputs.x, "scale": SCALE})) for p in parts)
        return Out(total=total)

    report = cr.check_gradients(pipeline, {"x": np.asarray(X)}, n_random=1, rtol=1e-5)
    assert report.ok, str(report)  # hvp is reported n/a (second order needs scalar parts)
    assert any(c.detail.startswith("n/a") for c in report.checks if c.endpoint == "hvp")
    # second order would need the curvature of the vector output 'y' of each part
    with pytest.raises(cr.EndpointUnavailableError, match="scalar outputs; 'y'"):
        pipeline.hvp({"x": X}, {"x": T}, of="total")
    want = 3 * jax.grad(lambda x: loss(reference(x)))(X)
    np.testing.assert_allclose(pipeline.vjp({"x": X}, {"total": 1.0})["x"], want, rtol=1e-6)
    with cr.serve(pipeline) as server:  # servable, and nestable through the client
        remote = cr.connect(server.url)
        np.testing.assert_allclose(remote.vjp({"x": X}, {"total": 1.0})["x"], want, rtol=1e-6)
        remote.close()


def test_errors_from_an_already_compiled_function() -> None:
    class In(cr.Schema):
        x: cr.Differentiable[cr.Array[("n",), cr.Float64]]

    class Out(cr.Schema):
        y: cr.Differentiable[cr.Array[("n",), cr.Float64]]

    @cr.component(inputs=In, outputs=Out, backend="numpy", name="flaky")
    def flaky(inputs: In) -> Out:
        if inputs.x[0] > 1:
            raise FloatingPointError("diverged late")
        return Out(y=inputs.x)

    f = jax.jit(lambda x: jnp.sum(crj.call(flaky, {"x": x})["y"]))
    f(jnp.array([0.0]))  # compiled and cached: the next failure takes JAX's fast path
    with pytest.raises(cr.ComponentError, match="diverged late") as info, crj.errors():
        f(jnp.array([2.0]))
    assert isinstance(info.value.__cause__, FloatingPointError)


def test_host_callbacks_skip_pure_callback_and_fall_back_to_it() -> None:
    """Under the pinned JAX the primitives emit their host callbacks directly (no device_put
    of every argument); with CHAINRULE_JAX_PURE_CALLBACK=1 (or a JAX without that internal
    emitter) they go through pure_callback, and the transformation tests pass there too."""
    from chainrule import _jax_primitives

    assert _jax_primitives._EMIT is not None, "the fast host-callback path is not in use"
    selection = "value_and_grad or jvp_vjp or vmap or scan or errors_surface or callback_path"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k", selection],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "CHAINRULE_JAX_PURE_CALLBACK": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "deselected" in done.stdout


def test_callback_path_matches_the_environment() -> None:
    from chainrule import _jax_primitives

    forced = os.environ.get("CHAINRULE_JAX_PURE_CALLBACK", "") not in ("", "0")
    assert (_jax_primitives._EMIT is None) == forced


# ---- the torch host lane (jitted JAX calling a torch component) ------------------------------


def _torch_lane_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the lane's apply calls (a spy that still runs it)."""
    from chainrule._backends._torch import HostLane

    calls: list[int] = []
    original = HostLane.apply

    def spy(self: Any, *args: Any) -> Any:
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(HostLane, "apply", spy)
    return calls


def test_torch_lane_gives_the_generic_paths_results_bit_for_bit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    comp = build(CASES[0], "torch")  # a static input (scale) and a static output (n) too
    f = jax.jit(jax.value_and_grad(lambda x: loss(through(comp)(x))))
    forward = jax.jit(lambda x: through(comp)(x)["y"])  # keeps no linearization
    calls = _torch_lane_calls(monkeypatch)
    fast = (*f(X), forward(X))
    assert len(calls) == 2, "the lane did not serve the calls"
    served = len(calls)
    for spec in crj._SPECS.values():
        if spec.component is comp:
            monkeypatch.setitem(spec.__dict__, "lane", None)  # the cached property's slot
    generic = (*f(X), forward(X))
    assert len(calls) == served, "the generic path was not taken"
    for a, b in zip(fast, generic, strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    np.testing.assert_allclose(fast[1], jax.grad(lambda x: loss(reference(x)))(X), rtol=1e-12)


def test_torch_lane_converts_outputs_of_another_dtype_and_keeps_their_graph(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An author returning float32 for a Float64 output: the lane has the component's check
    convert it, and the gradient still flows through the float32 graph (a fallback that
    differentiated the converted copy would answer zeros)."""
    import torch

    class In(cr.Schema):
        x: cr.Differentiable[cr.Array[("n",), cr.Float64]]

    class Out(cr.Schema):
        y: cr.Differentiable[cr.Array[("n",), cr.Float64]]

    @cr.component(inputs=In, outputs=Out, backend="torch", name="single")
    def single(inputs: In) -> dict[str, Any]:
        return {"y": (inputs.x**2).to(torch.float32)}

    calls = _torch_lane_calls(monkeypatch)
    f = jax.jit(jax.value_and_grad(lambda x: jnp.sum(crj.call(single, {"x": x})["y"] * T)))
    value, grad = f(X)
    assert calls
    np.testing.assert_allclose(value, jnp.sum(X**2 * T), rtol=1e-6)
    np.testing.assert_allclose(grad, 2 * X * T, rtol=1e-6)


def test_torch_lane_reports_component_errors() -> None:
    class In(cr.Schema):
        x: cr.Differentiable[cr.Array[("n",), cr.Float64]]

    class Out(cr.Schema):
        y: cr.Differentiable[cr.Array[("n",), cr.Float64]]

    @cr.component(inputs=In, outputs=Out, backend="torch", name="fragile")
    def fragile(inputs: In) -> Out:
        if inputs.x.device.type != "meta":  # shapes still come out of meta tensors
            raise ArithmeticError("no convergence")
        return Out(y=inputs.x)

    f = jax.jit(jax.grad(lambda x: jnp.sum(crj.call(fragile, {"x": x})["y"])))
    expected = r"'fragile' raised in apply.*no convergence"
    with pytest.raises(cr.ComponentError, match=expected), crj.errors():
        f(X)


@pytest.mark.parametrize("name", ["torch", "numpy"])
def test_kept_linearizations_do_not_keep_their_inputs_alive(name: str) -> None:
    """A token names a residual, not the input arrays: once the component's bounded cache
    drops the residual, the arrays are freed (a long optimization over big arrays otherwise
    keeps every step's inputs)."""
    import gc
    import weakref

    from chainrule import _jax_primitives

    comp = build(CASES[0], name)
    through(comp)(X)
    spec = next(s for s in crj._SPECS.values() if s.component is comp)
    arrays = [np.array(X)]
    alive = weakref.ref(arrays[0])
    token = _jax_primitives._host_apply(spec, True, arrays)[-1]
    assert int(token) != 0
    del arrays
    comp.residuals.clear()
    gc.collect()
    assert alive() is None
