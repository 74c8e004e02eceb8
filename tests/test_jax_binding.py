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
from chainrule._bindings.jax import call as _jax_call
from transports import reach

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
    assert report.ok, str(report)  # hvp is reported n/a: the finite-difference part has none
    assert any(c.detail.startswith("n/a") for c in report.checks if c.endpoint == "hvp")
    with pytest.raises(cr.EndpointUnavailableError, match="'vector_numpy' need its hvp"):
        pipeline.hvp({"x": X}, {"x": T}, of="total")

    # Without it, the pipeline's hvp goes through the parts' vector outputs 'y'.
    @cr.component(inputs=In, outputs=Out, backend="jax")
    def curved(inputs: In) -> Out:
        total = sum(loss(crj.call(p, {"x": inputs.x, "scale": SCALE})) for p in parts[::2])
        return Out(total=total)

    hv = curved.hvp({"x": X}, {"x": T}, of="total")["x"]
    want_hv = jax.jvp(jax.grad(lambda x: 2 * loss(reference(x))), (X,), (T,))[1]
    np.testing.assert_allclose(hv, want_hv, rtol=1e-10)
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
    from chainrule._bindings.jax import primitives as _jax_primitives

    assert _jax_primitives.emitter() is not None, "the fast host-callback path is not in use"
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
    from chainrule._bindings.jax import primitives as _jax_primitives

    forced = os.environ.get("CHAINRULE_JAX_PURE_CALLBACK", "") not in ("", "0")
    assert (_jax_primitives.emitter() is None) == forced


# ---- the torch host lane (jitted JAX calling a torch component) ------------------------------


def _torch_lane_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the lane's apply calls (a spy that still runs it)."""
    from chainrule._component.backends.torch_lane import HostLane

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
    for spec in _jax_call.sites(comp):
        if spec.component is comp:
            monkeypatch.setitem(spec.__dict__, "plan", None)  # the cached property's slot
    # Compiled afresh: a planned site's callbacks are fixed when it is lowered.
    f = jax.jit(jax.value_and_grad(lambda x: loss(through(comp)(x))))
    forward = jax.jit(lambda x: through(comp)(x)["y"])
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

    from chainrule._bindings.jax import primitives as _jax_primitives

    comp = build(CASES[0], name)
    through(comp)(X)
    spec = next(s for s in _jax_call.sites(comp) if s.component is comp)
    arrays = [np.array(X)]
    alive = weakref.ref(arrays[0])
    token = _jax_primitives._host_apply(spec, True, arrays)[-1]
    assert int(token) != 0
    del arrays
    comp.residuals.clear()
    gc.collect()
    assert alive() is None


# ---- every order of composition with vmap, for every backend and transport -----------------
#
# Each kind computes the `vector` case, in-process ("local") or served over HTTP ("http"):
# torch, numpy (finite differences), numpy with an author's Jacobian ("written") or vjp
# ("numpy-vjp"), and JAX with an author's vjp ("jax-vjp", called through the primitive).

XS = np.stack([X, 2 * X])  # numpy: jnp at import would be float32 (x64 is on only in tests)
TS = np.stack([T, -T])
COMPOSED = ["torch", "numpy", "written", "numpy-vjp", "jax-vjp"]


def make(kind: str) -> cr.Component:
    """`build(CASES[0], kind)`, or a component with a written vjp (or vjp and hvp, "-hvp")."""
    if not kind.endswith(("-vjp", "-hvp")):
        return build(CASES[0], kind)
    backend = kind.split("-")[0]
    xp = jnp if backend == "jax" else np
    comp = cr.component(
        CASES[0].make(xp),
        inputs=CASES[0].inputs,
        outputs=CASES[0].outputs,
        backend=backend,
        name=f"vector_{kind}",
    )
    twin = build(CASES[0], "jax")  # stands in for the author's hand-written derivatives
    comp.def_vjp(lambda inputs, cotangents, wrt: twin.vjp(inputs, cotangents, wrt=wrt))
    if kind.endswith("-hvp"):

        @comp.def_hvp
        def hvp(inputs: Any, tangents: Any, cotangents: Any, wrt: Any) -> Any:
            return twin.hvp(inputs, tangents, cotangents=cotangents, wrt=wrt)

    return comp


@pytest.fixture(scope="module")
def pool() -> Iterator[dict[str, tuple[cr.Component, cr.Component]]]:
    """`{kind: (component doing the work, component to call)}`, each served once on demand."""
    import contextlib

    made: dict[str, tuple[cr.Component, cr.Component]] = {}
    with contextlib.ExitStack() as stack:

        class Pool(dict):  # type: ignore[type-arg]
            def __missing__(self, key: str) -> tuple[cr.Component, cr.Component]:
                kind, transport = key.split("/")
                comp = make(kind)
                made[key] = (comp, stack.enter_context(reach(comp, transport)))
                through(made[key][1])(X)  # output shapes of free-shaped NumPy outputs
                return made[key]

        yield Pool()


def _tol_of(kind: str) -> dict[str, float]:
    return _tol("numpy") if kind.startswith("numpy") else _tol("exact")


def _vmap_compositions(f: Any) -> dict[str, Any]:
    y = lambda x: f(x)["y"]  # noqa: E731
    s = lambda x: loss(f(x))  # noqa: E731
    total = lambda xs: jnp.sum(jax.vmap(s)(xs))  # noqa: E731
    return {
        "grad(vmap)": lambda: jax.grad(total)(XS),
        "jit(grad(vmap))": lambda: jax.jit(jax.grad(total))(XS),
        "jvp(vmap)": lambda: jax.jvp(jax.vmap(y), (XS,), (TS,))[1],
        "jacfwd(vmap)": lambda: jax.jacfwd(jax.vmap(y))(XS),
        "jacrev(vmap, in_axes=1)": lambda: jax.jacrev(jax.vmap(y, in_axes=1, out_axes=1))(XS.T),
        "vmap(grad)": lambda: jax.vmap(jax.grad(s))(XS),
        "vmap(jvp)": lambda: jax.vmap(lambda x, t: jax.jvp(y, (x,), (t,))[1])(XS, TS),
        "vmap(jacfwd)": lambda: jax.vmap(jax.jacfwd(y))(XS),
        "jit(vmap(jacrev))": lambda: jax.jit(jax.vmap(jax.jacrev(y)))(XS),
        "vmap(vjp)": lambda: jax.vmap(lambda c: jax.vjp(y, X)[1](c)[0])(TS),
    }


@pytest.mark.parametrize("kind", COMPOSED)
def test_every_order_of_batching_and_differentiation(
    kind: str, transport: str, pool: dict[str, tuple[cr.Component, cr.Component]]
) -> None:
    worker, comp = pool[f"{kind}/{transport}"]
    mine, theirs = _vmap_compositions(through(comp)), _vmap_compositions(reference)
    for name, run in mine.items():
        np.testing.assert_allclose(run(), theirs[name](), **_tol_of(kind), err_msg=name)
    # grad of vmap against central finite differences of the pipeline itself
    total = lambda xs: jnp.sum(jax.vmap(lambda x: loss(through(comp)(x)))(xs))  # noqa: E731
    eps, grad = 1e-6, np.asarray(jax.grad(total)(XS))
    for k in np.ndindex(XS.shape):
        e = np.zeros(XS.shape)
        e[k] = eps
        fd = (total(XS + e) - total(XS - e)) / (2 * eps)
        np.testing.assert_allclose(grad[k], fd, rtol=1e-5, atol=1e-6)
    # Rows of a Jacobian stay one batched vjp per vmapped element, not one per row; torch
    # answers the elements at once (torch.func.vmap: one call; the others loop over them).
    worker.calls.clear()
    mine["jacrev(vmap, in_axes=1)"]()
    each = 1 if kind == "torch" else len(XS)
    assert worker.calls["batched_vjp"] == each and worker.calls["vjp"] == 0, worker.calls


# ---- second order through vector outputs -------------------------------------------------------


def _second_orders(f: Any) -> dict[str, Any]:
    y = lambda x: f(x)["y"]  # noqa: E731
    s = lambda x: loss(f(x))  # noqa: E731
    return {
        "hessian(y)": lambda: jax.hessian(y)(X),
        "hessian(loss)": lambda: jax.hessian(s)(X),
        "jit(hessian(loss))": lambda: jax.jit(jax.hessian(s))(X),
        "grad(grad)": lambda: jax.grad(lambda x: jnp.sum(jax.grad(s)(x) ** 2))(X),
        "jvp(grad)": lambda: jax.jvp(jax.grad(s), (X,), (T,))[1],
        "jacfwd(jacrev(y))": lambda: jax.jacfwd(jax.jacrev(y))(X),
        "jacfwd(jacfwd(y))": lambda: jax.jacfwd(jax.jacfwd(y))(X),
        "jacrev(jacrev(y))": lambda: jax.jacrev(jax.jacrev(y))(X),
        "vmap(hessian(loss))": lambda: jax.vmap(jax.hessian(s))(XS),
    }


@pytest.mark.parametrize("kind", ["torch", "jax-vjp", "numpy-hvp"])
def test_second_order_through_vector_outputs(
    kind: str, transport: str, pool: dict[str, tuple[cr.Component, cr.Component]]
) -> None:
    _, comp = pool[f"{kind}/{transport}"]
    mine, theirs = _second_orders(through(comp)), _second_orders(reference)
    for name, run in mine.items():
        np.testing.assert_allclose(run(), theirs[name](), rtol=1e-10, atol=1e-10, err_msg=name)
    # the Hessian against central differences of chainrule's own gradient
    grad = jax.grad(lambda x: loss(through(comp)(x)))
    eps = 1e-5
    fd = np.stack([(grad(X + eps * e) - grad(X - eps * e)) / (2 * eps) for e in jnp.eye(3)])
    np.testing.assert_allclose(mine["hessian(loss)"](), fd, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["numpy", "written", "numpy-vjp"])
def test_second_order_needs_an_hvp(
    kind: str, transport: str, pool: dict[str, tuple[cr.Component, cr.Component]]
) -> None:
    _, comp = pool[f"{kind}/{transport}"]
    with pytest.raises(cr.EndpointUnavailableError, match="hvp"):
        jax.hessian(lambda x: loss(through(comp)(x)))(X)


def test_mixed_second_derivatives(transport: str) -> None:
    """∂²f/∂a∂b: the hvp moves a but answers for b (this cross term used to come out zero)."""
    comp = build(CASES[1], "torch")  # matrix: norm = Σ (tanh(a @ b) + offset)²
    point = CASES[1].point()
    a, b, offset = (jnp.asarray(point[k]) for k in ("a", "b", "offset"))

    def norm(call: Any) -> Any:
        return lambda a, b: call({"a": a, "b": b, "offset": offset})["norm"]

    def twin(i: dict[str, Any]) -> dict[str, Any]:
        return {"norm": jnp.sum((jnp.tanh(i["a"] @ i["b"]) + i["offset"]) ** 2)}

    with reach(comp, transport) as target:
        call = lambda i: crj.call(target, i)  # noqa: E731
        for f in (jax.jacfwd, jax.jacrev):
            got = f(jax.grad(norm(call), argnums=1))(a, b)
            want = f(jax.grad(norm(twin), argnums=1))(a, b)
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
            assert np.abs(want).max() > 1  # a real cross term


# ---- zero-size arrays and declared shapes ------------------------------------------------------


class Sized(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Squared(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Emptied(cr.Schema):
    y: cr.Differentiable[cr.Array[(None,), cr.Float64]]


def _square(xp: Any) -> Any:
    return lambda i: Squared(y=i.x**2)


def _empty(xp: Any) -> Any:
    return lambda i: Emptied(y=i.x[:0] * 2.0)


@pytest.mark.parametrize("backend", ["torch", "numpy", "remote"])
def test_zero_size_jacobians_match_pure_jax(backend: str) -> None:
    """jacrev of a zero-size output is an empty batch: no call, a (0, ...) array as in JAX."""
    import torch

    def comps(make_fn: Any, out: type[cr.Schema], name: str) -> cr.Component:
        xp = torch if backend == "torch" else np
        kind = "numpy" if backend == "numpy" else "torch"
        return cr.component(make_fn(xp), inputs=Sized, outputs=out, backend=kind, name=name)

    square, empty = comps(_square, Squared, "square"), comps(_empty, Emptied, "empty")
    with cr.serve(square) as s1, cr.serve(empty) as s2:
        if backend == "remote":
            square, empty = cr.connect(s1.url), cr.connect(s2.url)
        sq = lambda x: crj.call(square, {"x": x})["y"]  # noqa: E731
        em = lambda x: crj.call(empty, {"x": x})["y"]  # noqa: E731
        crj.call(empty, {"x": X})  # learn the free output shape once
        cases = [
            (sq, lambda x: x**2, jnp.zeros(0)),
            (em, lambda x: x[:0] * 2.0, X),
        ]
        for mine, twin, x in cases:
            for transform in (jax.jacrev, jax.jacfwd, lambda f: jax.jit(jax.jacrev(f))):
                got, want = transform(mine)(x), transform(twin)(x)
                assert got.shape == want.shape and got.dtype == want.dtype
            got = jax.grad(lambda x, f=mine: jnp.sum(f(x)))(x)
            np.testing.assert_array_equal(got, jax.grad(lambda x, f=twin: jnp.sum(f(x)))(x))
        np.testing.assert_array_equal(jax.vmap(sq)(jnp.zeros((0, 3))), jnp.zeros((0, 3)))
        if backend == "remote":
            square.close()
            empty.close()


class Fixed(cr.Schema):
    x: cr.Differentiable[cr.Array[(100,), cr.Float64]]


class FixedOut(cr.Schema):
    y: cr.Differentiable[cr.Array[(100,), cr.Float64]]


class FixedWithCount(cr.Schema):
    y: cr.Differentiable[cr.Array[(100,), cr.Float64]]
    count: int


def test_declared_shapes_need_no_eager_call_nor_eval_shape() -> None:
    """Output shapes fixed by the schema are used as they are (jit(jacrev) of a remote
    component works before any eager call, without an eval_shape round trip)."""
    comp = cr.component(
        lambda i: FixedOut(y=np.sin(i.x)), inputs=Fixed, outputs=FixedOut, backend="numpy"
    )
    counted = cr.component(
        lambda i: FixedWithCount(y=np.sin(i.x), count=7),
        inputs=Fixed,
        outputs=FixedWithCount,
        backend="numpy",
        name="counted",
    )
    x = jnp.linspace(0.0, 1.0, 100)
    with cr.serve(comp) as s1, cr.serve(counted) as s2:
        remote, remote_counted = cr.connect(s1.url), cr.connect(s2.url)
        jac = jax.jit(jax.jacrev(lambda x: crj.call(remote, {"x": x})["y"]))(x)
        np.testing.assert_allclose(jac, jnp.diag(jnp.cos(x)), atol=1e-8)
        # jacrev reads none of the outputs: no forward at all (`dce`), the vjp recomputes
        assert comp.calls["eval_shape"] == 0 and comp.calls["apply"] == 0
        # With a static output the arrays are still known; the static value needs a run.
        f = jax.jit(jax.jacrev(lambda x: crj.call(remote_counted, {"x": x})["y"]))
        np.testing.assert_allclose(f(x), jnp.diag(jnp.cos(x)), atol=1e-8)
        with pytest.raises(cr.EndpointUnavailableError, match="output 'count' of component"):
            jax.jit(lambda x: crj.call(remote_counted, {"x": x})["count"] * x)(x)
        assert crj.call(remote_counted, {"x": x})["count"] == 7  # eager: known
        remote.close()
        remote_counted.close()


def test_nested_vmaps_over_cotangents_are_one_batched_call() -> None:
    comp = build(CASES[0], "torch")
    cts = jnp.arange(18.0).reshape(2, 3, 3) / 10
    _, pull = jax.vjp(lambda x: through(comp)(x)["y"], X)
    _, twin = jax.vjp(lambda x: reference(x)["y"], X)
    comp.calls.clear()
    got = jax.vmap(jax.vmap(lambda c: pull(c)[0]), in_axes=1)(cts)
    want = jax.vmap(jax.vmap(lambda c: twin(c)[0]), in_axes=1)(cts)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert comp.calls == {"batched_vjp": 1}  # 6 rows, one request


def test_call_sites_are_kept_by_their_component(monkeypatch: pytest.MonkeyPatch) -> None:
    """A component's call sites (and the output shapes learnt for them) live on the component:
    another one never reads them, even at an address `id()` gives again (they were keyed by
    `id(component)` in a module-level table, so a new component could run an old one's)."""

    class In(cr.Schema):
        x: cr.Differentiable[cr.Array[("n",), cr.Float64]]

    class Out(cr.Schema):
        y: cr.Differentiable[cr.Array[(None,), cr.Float64]]

    def doubled(i: In) -> Out:
        return Out(y=i.x * 2.0)

    def repeated(i: In) -> Out:
        return Out(y=np.concatenate([i.x, i.x]))

    once = cr.component(doubled, inputs=In, outputs=Out, backend="numpy")
    twice = cr.component(repeated, inputs=In, outputs=Out, backend="numpy")
    binding = sys.modules[crj.call.__module__]
    monkeypatch.setattr(binding, "id", lambda obj: 7, raising=False)  # one address for all
    x = jnp.array([1.0, 2.0])
    np.testing.assert_array_equal(crj.call(once, {"x": x})["y"], [2.0, 4.0])
    np.testing.assert_array_equal(crj.call(twice, {"x": x})["y"], [1.0, 2.0, 1.0, 2.0])
    assert [s.component for s in _jax_call.sites(twice)] == [twice]
