"""`chainrule.torch.call` under autograd, forward AD and torch.func × every kind of component.

Every case of tests/cases.py is called through the binding for each kind of component and
compared with the torch backend's own `vjp`/`jvp` endpoints (torch.func on the same function):
exactly for AD backends, to 1e-5 for finite differences.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwad

import chainrule as cr
import chainrule.torch as crt
from cases import CASES, Case, build
from chainrule._schema.tree import leaves

KINDS = ["jax", "torch", "numpy", "written", "torch-written"]
VECTOR = CASES[0]
MATRIX = CASES[1]


def make(case: Case, kind: str) -> cr.Component:
    """`build(case, kind)`, plus "torch-written": a torch component with written derivatives
    (so it crosses through the autograd Function instead of being called directly)."""
    if kind != "torch-written":
        return build(case, kind)
    comp, ref = build(case, "torch"), build(case, "torch")
    comp.def_vjp(lambda inputs, cotangents, wrt: ref.vjp(inputs, cotangents, wrt=wrt))

    @comp.def_jvp
    def jvp(inputs: Any, tangents: Any, of: Any) -> Any:
        # Called inside the caller's forward_ad.dual_level: the torch backend's jvp uses no
        # forward-mode AD of its own (torch allows one dual level at a time, process-wide).
        return ref.jvp(inputs, tangents, of=of)

    return comp


def tol(kind: str) -> dict[str, float]:
    return {"rtol": 1e-5, "atol": 1e-5} if kind == "numpy" else {"rtol": 1e-10, "atol": 1e-10}


def put(tree: Any, path: str, value: Any) -> None:
    *head, last = path.split(".")
    for key in head:
        tree = tree[int(key)] if isinstance(tree, list) else tree[key]
    if isinstance(tree, list):
        tree[int(last)] = value
    else:
        tree[last] = value


class Setup:
    """A case's point, its differentiable leaves and fixed random output weights."""

    def __init__(self, case: Case) -> None:
        self.case = case
        self.ref = build(case, "torch")
        self.point = case.point()
        instance = case.inputs.model_validate(self.point)
        self.diff_in = {x.path: x.value for x in leaves(instance) if x.spec.differentiable}
        out = self.ref.apply(self.point)
        rng = np.random.default_rng(7)
        self.weights = {
            x.path: rng.standard_normal(np.shape(x.value))
            for x in leaves(out)
            if x.spec.differentiable
        }
        self.tangents = {p: rng.standard_normal(v.shape) for p, v in self.diff_in.items()}

    def inputs(self, values: dict[str, Any]) -> dict[str, Any]:
        tree = copy.deepcopy(self.point)
        for path, value in values.items():
            put(tree, path, value)
        return tree

    def leaves_of(self, requires_grad: bool = True) -> dict[str, torch.Tensor]:
        return {p: torch.tensor(v, requires_grad=requires_grad) for p, v in self.diff_in.items()}

    def loss(self, out: dict[str, Any]) -> torch.Tensor:
        terms = [(torch.from_numpy(w) * out[p]).sum() for p, w in self.weights.items()]
        return torch.stack(terms).sum()

    def diff_outputs(self, comp: cr.Component) -> Callable[..., tuple[torch.Tensor, ...]]:
        paths = list(self.diff_in)

        def f(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = crt.call(comp, self.inputs(dict(zip(paths, xs, strict=True))))
            return tuple(out[p] for p in self.weights)

        return f


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def setup(case: Case) -> Setup:
    return Setup(case)


def _check(got: dict[str, Any], want: dict[str, Any], kind: str) -> None:
    assert set(got) == set(want)
    for p, v in want.items():
        np.testing.assert_allclose(got[p].detach().numpy(), v, **tol(kind), err_msg=p)


# ---- reverse mode ---------------------------------------------------------------------------


def test_backward_matches_reference(setup: Setup, kind: str) -> None:
    comp = make(setup.case, kind)
    xs = setup.leaves_of()
    setup.loss(crt.call(comp, setup.inputs(xs))).backward()
    want = setup.ref.vjp(setup.point, setup.weights)
    _check({p: x.grad for p, x in xs.items()}, want, kind)


def test_autograd_grad_matches_reference(setup: Setup, kind: str) -> None:
    comp = make(setup.case, kind)
    xs = setup.leaves_of()
    grads = torch.autograd.grad(setup.loss(crt.call(comp, setup.inputs(xs))), list(xs.values()))
    want = setup.ref.vjp(setup.point, setup.weights)
    _check(dict(zip(xs, grads, strict=True)), want, kind)


def test_outputs_match_reference(setup: Setup, kind: str) -> None:
    out = crt.call(make(setup.case, kind), setup.inputs(setup.leaves_of(False)))
    want = setup.ref.apply(setup.point)
    for x in leaves(want):
        np.testing.assert_allclose(out[x.path].numpy(), x.value, rtol=1e-12, atol=1e-12)
        assert out[x.path].requires_grad is False


# ---- forward mode ---------------------------------------------------------------------------


def test_forward_ad_matches_reference(setup: Setup, kind: str) -> None:
    comp = make(setup.case, kind)
    with fwad.dual_level():
        duals = {
            p: fwad.make_dual(torch.tensor(v), torch.tensor(setup.tangents[p]))
            for p, v in setup.diff_in.items()
        }
        out = crt.call(comp, setup.inputs(duals))
        got = {p: fwad.unpack_dual(out[p]).tangent for p in setup.weights}
    _check(got, setup.ref.jvp(setup.point, setup.tangents), kind)


def test_func_jvp_matches_reference(setup: Setup, kind: str) -> None:
    comp = make(setup.case, kind)
    primals = tuple(torch.tensor(v) for v in setup.diff_in.values())
    tangents = tuple(torch.tensor(t) for t in setup.tangents.values())
    _, got = torch.func.jvp(setup.diff_outputs(comp), primals, tangents)
    want = setup.ref.jvp(setup.point, setup.tangents)
    _check(dict(zip(setup.weights, got, strict=True)), want, kind)


@pytest.mark.parametrize("kind", ["jax", "torch", "torch-written"])
def test_gradcheck(setup: Setup, kind: str) -> None:
    comp = make(setup.case, kind)
    xs = tuple(setup.leaves_of().values())
    assert torch.autograd.gradcheck(setup.diff_outputs(comp), xs, check_forward_ad=True)


# ---- torch.func ---------------------------------------------------------------------------


def _vector(comp: cr.Component, out: str = "s") -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: crt.call(comp, {"x": x, "scale": 1.5})[out]


X = torch.tensor(np.linspace(0.3, 1.7, 4))


def _ref_y(x: torch.Tensor) -> torch.Tensor:
    return 1.5 * torch.sin(x) + x**2


@pytest.mark.parametrize("kind", KINDS)
def test_func_grad_vjp_jacrev_jacfwd(kind: str) -> None:
    comp = make(VECTOR, kind)
    t = tol(kind)
    torch.testing.assert_close(torch.func.grad(_vector(comp))(X), 3 * X**2, **t)
    _, pull = torch.func.vjp(_vector(comp, "y"), X)
    torch.testing.assert_close(pull(torch.ones(4, dtype=torch.float64))[0], 1.5 * X.cos() + 2 * X)
    want = torch.diag(1.5 * X.cos() + 2 * X)
    torch.testing.assert_close(torch.func.jacrev(_vector(comp, "y"))(X), want, **t)
    torch.testing.assert_close(torch.func.jacfwd(_vector(comp, "y"))(X), want, **t)


@pytest.mark.parametrize("kind", ["jax", "numpy", "written", "torch-written"])
def test_jacobians_are_one_batched_call(kind: str) -> None:
    comp = make(VECTOR, kind)
    torch.func.jacrev(_vector(comp, "y"))(X)
    assert comp.calls == {"apply": 1, "batched_vjp": 1}
    comp.calls.clear()
    torch.func.jacfwd(_vector(comp, "y"))(X)
    assert comp.calls == {"apply": 1, "batched_jvp": 1}


@pytest.mark.parametrize("kind", KINDS)
def test_vmap_over_inputs(kind: str) -> None:
    comp = make(VECTOR, kind)
    xs = torch.stack([X, 2 * X, X - 1])
    torch.testing.assert_close(torch.func.vmap(_vector(comp, "y"))(xs), _ref_y(xs), **tol(kind))
    grads = torch.func.vmap(torch.func.grad(_vector(comp)))(xs)
    torch.testing.assert_close(grads, 3 * xs**2, **tol(kind))


# ---- cost: one forward and one backward call per gradient ----------------------------------


@pytest.mark.parametrize("kind", ["jax", "numpy", "written", "torch-written"])
def test_one_apply_and_one_vjp_per_gradient(kind: str) -> None:
    setup = Setup(MATRIX)
    comp = make(MATRIX, kind)
    setup.loss(crt.call(comp, setup.inputs(setup.leaves_of()))).backward()
    assert comp.calls == {"apply": 1, "vjp": 1}


@pytest.mark.parametrize("kind", ["jax", "numpy", "written"])
def test_no_linearization_kept_without_gradient(kind: str) -> None:
    comp = make(VECTOR, kind)
    crt.call(comp, {"x": X})
    with torch.no_grad():
        crt.call(comp, {"x": X.clone().requires_grad_()})
    assert len(comp.residuals) == 0
    crt.call(comp, {"x": X.clone().requires_grad_()})
    assert len(comp.residuals) == 1


def test_inline_torch_is_called_directly() -> None:
    comp = make(VECTOR, "torch")
    x = X.clone().requires_grad_()
    out = crt.call(comp, {"x": x, "scale": 1.5})
    assert out["y"].grad_fn is not None and "Host" not in type(out["y"].grad_fn).__name__
    (g,) = torch.autograd.grad(out["s"], x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)  # double backward: d/dx Σ 3x² = 6x
    torch.testing.assert_close(h, 6 * X)
    assert comp.calls == {"apply": 1}


def test_second_order_needs_the_components_hvp() -> None:
    comp = make(VECTOR, "numpy")  # finite differences: no hvp
    x = X.clone().requires_grad_()
    (g,) = torch.autograd.grad(_vector(comp)(x), x, create_graph=True)
    with pytest.raises(cr.EndpointUnavailableError, match=r"has no hvp.*def_hvp"):
        torch.autograd.grad(g.sum(), x)


# ---- a served component ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote() -> Iterator[tuple[cr.Component, cr.Component]]:
    served = build(VECTOR, "jax")
    with cr.serve(served, port=0) as server:
        client = cr.connect(server.url)
        yield served, client
        client.close()


def test_served_component(remote: tuple[cr.Component, cr.Component]) -> None:
    served, client = remote
    served.calls.clear()
    x = X.clone().requires_grad_()
    out = crt.call(client, {"x": x, "scale": 1.5})
    (out["y"].sum() + out["s"]).backward()
    torch.testing.assert_close(x.grad, 1.5 * X.cos() + 2 * X + 3 * X**2, rtol=1e-10, atol=1e-10)
    assert out["n"] == 4
    assert served.calls == {"apply": 1, "vjp": 1}
    torch.testing.assert_close(
        torch.func.jacrev(_vector(client, "y"))(X), torch.diag(1.5 * X.cos() + 2 * X)
    )


# ---- inputs, outputs and errors ------------------------------------------------------------


def test_static_outputs_and_plain_inputs() -> None:
    out = crt.call(make(CASES[3], "jax"), {"x": [0.5, 1.2, -0.7], "power": 3, "mode": "sum"})
    assert out["label"] == "sum-3"
    torch.testing.assert_close(out["y"], torch.tensor([0.5, 1.2, -0.7], dtype=torch.float64) ** 3)
    out = crt.call(make(VECTOR, "numpy"), {"x": np.linspace(0.3, 1.7, 4)})
    assert out["n"] == 4 and out["y"].dtype == torch.float64


@pytest.mark.parametrize("kind", ["jax", "torch"])
def test_float32_tensor_is_cast_and_gets_float32_grad(kind: str) -> None:
    x = X.float().requires_grad_()
    out = crt.call(make(VECTOR, kind), {"x": x, "scale": 1.5})
    assert out["y"].dtype == torch.float64
    out["s"].backward()
    assert x.grad is not None and x.grad.dtype == torch.float32


def test_wrong_dtype_is_a_validation_error() -> None:
    with pytest.raises(cr.ValidationError, match=r"'x': expected float64\[\?\], got complex128"):
        crt.call(make(VECTOR, "jax"), {"x": torch.ones(3, dtype=torch.complex128)})


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_wrt_non_differentiable_input(kind: str) -> None:
    setup = Setup(MATRIX)
    comp = make(MATRIX, kind)
    offset = torch.tensor(setup.point["offset"], requires_grad=True)
    msg = "input 'offset' of component .* is not differentiable.*requires grad"
    with pytest.raises(cr.NotDifferentiableError, match=msg):
        crt.call(comp, setup.inputs({"offset": offset}))
    tangent = "'offset'.*carries a forward-mode tangent"
    with fwad.dual_level(), pytest.raises(cr.NotDifferentiableError, match=tangent):
        dual = fwad.make_dual(offset.detach(), torch.ones(3, dtype=torch.float64))
        crt.call(comp, setup.inputs({"offset": dual}))
    with pytest.raises(cr.NotDifferentiableError, match="'offset'"):
        torch.func.grad(lambda o: crt.call(comp, setup.inputs({"offset": o}))["norm"])(
            offset.detach()
        )
    with pytest.raises(cr.NotDifferentiableError, match=tangent):
        torch.func.jvp(
            lambda o: crt.call(comp, setup.inputs({"offset": o}))["norm"],
            (offset.detach(),),
            (torch.ones(3, dtype=torch.float64),),
        )
    # Without gradient (detached, or under no_grad) it is an ordinary input.
    with torch.no_grad():
        crt.call(comp, setup.inputs({"offset": offset}))
    out = crt.call(comp, setup.inputs({"offset": offset.detach()}))
    assert out["count"].dtype == torch.int64 and not out["count"].requires_grad


def _raising(backend: str) -> cr.Component:
    def fn(inputs: Any) -> Any:
        raise ValueError("boom: negative offset")

    return cr.component(fn, inputs=VECTOR.inputs, outputs=VECTOR.outputs, backend=backend)


@pytest.mark.parametrize("backend", ["jax", "torch", "numpy"])
def test_component_error_surfaces(backend: str) -> None:
    with pytest.raises(cr.ComponentError, match="raised in apply: ValueError: boom") as info:
        crt.call(_raising(backend), {"x": X.clone().requires_grad_()})
    assert isinstance(info.value.__cause__, ValueError)


def test_component_error_in_backward_surfaces() -> None:
    comp = make(VECTOR, "numpy")

    @comp.def_vjp
    def vjp(inputs: Any, cotangents: Any) -> Any:
        raise RuntimeError("no adjoint today")

    x = X.clone().requires_grad_()
    out = crt.call(comp, {"x": x})
    with pytest.raises(cr.ComponentError, match="raised in vjp: RuntimeError: no adjoint today"):
        out["s"].backward()


def test_served_component_error_keeps_its_class() -> None:
    with cr.serve(_raising("numpy"), port=0) as server:
        client = cr.connect(server.url)
        try:
            with pytest.raises(cr.ComponentError, match="boom: negative offset"):
                crt.call(client, {"x": X.clone().requires_grad_()})
        finally:
            client.close()


# ---- vmap in every order of composition ------------------------------------------------------


XS = torch.stack([X, 2 * X, X - 1])


def _compositions(f: Callable[[torch.Tensor], dict[str, Any]]) -> dict[str, Any]:
    y = lambda x: f(x)["y"]  # noqa: E731
    s = lambda x: f(x)["s"]  # noqa: E731
    vf = torch.func

    def backward_of_vmap() -> torch.Tensor:
        xs = XS.clone().requires_grad_()
        vf.vmap(s)(xs).sum().backward()
        assert xs.grad is not None
        return xs.grad

    return {
        "grad(vmap)": lambda: vf.grad(lambda xs: vf.vmap(s)(xs).sum())(XS),
        "vmap(grad)": lambda: vf.vmap(vf.grad(s))(XS),
        "backward(vmap)": backward_of_vmap,
        "jacrev(vmap)": lambda: vf.jacrev(vf.vmap(y))(XS),
        "jacfwd(vmap)": lambda: vf.jacfwd(vf.vmap(y))(XS),
        "vmap(jacrev)": lambda: vf.vmap(vf.jacrev(y))(XS),
        "vmap(jacfwd)": lambda: vf.vmap(vf.jacfwd(y))(XS),
        "jvp(vmap)": lambda: vf.jvp(vf.vmap(y), (XS,), (XS.cos(),))[1],
        "vmap(jvp)": lambda: vf.vmap(lambda x, t: vf.jvp(y, (x,), (t,))[1])(XS, XS.cos()),
    }


def _twin(x: torch.Tensor) -> dict[str, Any]:
    return {"y": 1.5 * torch.sin(x) + x**2, "s": (x**3).sum()}


@pytest.fixture(scope="module")
def served_torch_written() -> Iterator[cr.Component]:
    """A served torch component with written derivatives (an HTTP kind)."""
    with cr.serve(make(VECTOR, "torch-written"), port=0) as server:
        client = cr.connect(server.url)
        yield client
        client.close()


@pytest.mark.parametrize("kind", [*KINDS, "http"])
def test_vmap_composes_with_every_transformation(
    kind: str, served_torch_written: cr.Component
) -> None:
    comp = served_torch_written if kind == "http" else make(VECTOR, kind)
    mine, theirs = _compositions(_vector_all(comp)), _compositions(_twin)
    for name, run in mine.items():
        torch.testing.assert_close(run(), theirs[name](), **tol(kind), msg=name)
    # against central finite differences of the pipeline itself
    total = lambda xs: torch.func.vmap(_vector(comp))(xs).sum()  # noqa: E731
    grad, eps = mine["grad(vmap)"](), 1e-6
    for k in np.ndindex(tuple(XS.shape)):
        e = torch.zeros_like(XS)
        e[k] = eps
        fd = (total(XS + e) - total(XS - e)) / (2 * eps)
        torch.testing.assert_close(grad[k], fd, rtol=1e-5, atol=1e-6)
    if kind not in ("torch", "http"):  # rows of a Jacobian: one batched call per element
        comp.calls.clear()
        mine["jacrev(vmap)"]()
        assert comp.calls["batched_vjp"] == len(XS) and comp.calls["vjp"] == 0, comp.calls


def _vector_all(comp: cr.Component) -> Callable[[torch.Tensor], dict[str, Any]]:
    return lambda x: crt.call(comp, {"x": x, "scale": 1.5})


# ---- second order through the component's hvp ----------------------------------------------


def _second_orders(f: Callable[[torch.Tensor], dict[str, Any]]) -> dict[str, Any]:
    y = lambda x: f(x)["y"]  # noqa: E731
    loss = lambda x: (torch.sin(f(x)["y"]) * f(x)["y"]).sum() + f(x)["s"] ** 2  # noqa: E731
    vf = torch.func

    def double_backward() -> torch.Tensor:
        x = X.clone().requires_grad_()
        (g,) = torch.autograd.grad(loss(x), x, create_graph=True)
        (h,) = torch.autograd.grad((g**2).sum(), x)
        return h

    return {
        "hessian(loss)": lambda: vf.hessian(loss)(X),
        "hessian(y)": lambda: vf.hessian(y)(X),
        "jacrev(jacrev(y))": lambda: vf.jacrev(vf.jacrev(y))(X),
        "jacfwd(jacfwd(y))": lambda: vf.jacfwd(vf.jacfwd(y))(X),
        "jacrev(jacfwd(y))": lambda: vf.jacrev(vf.jacfwd(y))(X),
        "grad(grad)": lambda: vf.grad(lambda x: (vf.grad(loss)(x) ** 2).sum())(X),
        "double backward": double_backward,
        "jvp(grad)": lambda: vf.jvp(vf.grad(loss), (X,), (X.cos(),))[1],
        "vmap(hessian)": lambda: vf.vmap(vf.hessian(loss))(XS),
    }


@pytest.mark.parametrize("kind", ["jax", "torch-written", "http"])
def test_second_order_through_vector_outputs(
    kind: str, remote: tuple[cr.Component, cr.Component]
) -> None:
    comp = remote[1] if kind == "http" else make(VECTOR, kind)
    mine, theirs = _second_orders(_vector_all(comp)), _second_orders(_twin)
    for name, run in mine.items():
        torch.testing.assert_close(run(), theirs[name](), rtol=1e-10, atol=1e-10, msg=name)


def test_mixed_second_derivatives() -> None:
    """∂²f/∂a∂b through a host component: an hvp along a answered for b."""
    setup = Setup(MATRIX)
    comp = make(MATRIX, "jax")
    a, b = (torch.tensor(setup.point[k]) for k in ("a", "b"))
    offset = torch.tensor(setup.point["offset"])

    def norm(call: Any) -> Any:
        return lambda a, b: call({"a": a, "b": b, "offset": offset})["norm"]

    def twin(i: dict[str, Any]) -> dict[str, Any]:
        return {"norm": ((torch.tanh(i["a"] @ i["b"]) + i["offset"]) ** 2).sum()}

    mine = norm(lambda i: crt.call(comp, i))
    for f in (torch.func.jacfwd, torch.func.jacrev):
        got = f(torch.func.grad(mine, argnums=1))(a, b)
        want = f(torch.func.grad(norm(twin), argnums=1))(a, b)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_third_order_is_refused() -> None:
    comp = make(VECTOR, "jax")
    s = _vector(comp)
    with pytest.raises(cr.EndpointUnavailableError, match="third derivatives"):
        torch.func.jacrev(torch.func.hessian(s))(X)


# ---- zero-size arrays --------------------------------------------------------------------------


class _Sized(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class _Squared(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class _Emptied(cr.Schema):
    y: cr.Differentiable[cr.Array[(None,), cr.Float64]]


@pytest.mark.parametrize("backend", ["jax", "numpy"])
def test_zero_size_jacobians_match_pure_torch(backend: str) -> None:
    square = cr.component(
        lambda i: _Squared(y=i.x**2), inputs=_Sized, outputs=_Squared, backend=backend
    )
    empty = cr.component(
        lambda i: _Emptied(y=i.x[:0] * 2.0), inputs=_Sized, outputs=_Emptied, backend=backend
    )
    none, some = torch.zeros(0, dtype=torch.float64), X
    cases = [
        (lambda x: crt.call(square, {"x": x})["y"], lambda x: x**2, none),
        (lambda x: crt.call(empty, {"x": x})["y"], lambda x: x[:0] * 2.0, some),
    ]
    for mine, twin, x in cases:
        for transform in (torch.func.jacrev, torch.func.jacfwd):
            got, want = transform(mine)(x), transform(twin)(x)
            assert got.shape == want.shape and got.dtype == want.dtype
    got = torch.func.vmap(cases[0][0])(torch.zeros(0, 3, dtype=torch.float64))
    assert got.shape == (0, 3)


def test_nested_vmaps_over_cotangents_are_one_batched_call() -> None:
    comp = make(VECTOR, "jax")
    _, pull = torch.func.vjp(_vector(comp, "y"), X)
    _, twin = torch.func.vjp(lambda x: _twin(x)["y"], X)
    cts = torch.arange(24.0, dtype=torch.float64).reshape(2, 3, 4) / 10
    comp.calls.clear()
    got = torch.func.vmap(torch.func.vmap(lambda c: pull(c)[0]), in_dims=1)(cts)
    want = torch.func.vmap(torch.func.vmap(lambda c: twin(c)[0]), in_dims=1)(cts)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert comp.calls == {"batched_vjp": 1}  # 6 rows, one request
