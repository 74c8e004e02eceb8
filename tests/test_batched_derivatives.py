"""Derivatives at B points in one call (issue 17): the `batched` keyword of a derivative row.

`vjp`, `jvp`, `batched_vjp` and `batched_jvp` at B points that differ in some inputs answer
row b as the endpoint at point b (jax: vmap; torch's vjp: torch.func.vmap; numpy and written
derivatives: a loop); a served component answers in ONE request, and JAX's transformations at
batched primals of a served component (vmap of grad, grad of a vmapped sum, vmap of jvp,
jacrev and jacfwd under vmap, jacrev of vmap, vmap over some inputs only) send one
`batched_apply` and ONE derivative request, or the derivative request alone where jit drops
an apply whose outputs are unused. Every answer is checked against the per-point answers, a
pure-JAX twin and central finite differences in float64, on every backend (numpy with a
written vjp and with finite differences) in-process, over the wire and over HTTP.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chainrule as cr
import chainrule.jax as crj
from transports import reach

pytestmark = pytest.mark.usefixtures("x64")  # these JAX programs compute in float64

B = 4
KINDS = ("jax", "torch", "written", "numpy")  # numpy: its derivatives by finite differences


class Design(cr.Schema):
    x: cr.Differentiable[cr.Array[(3,), cr.Float64]]
    w: cr.Differentiable[cr.Array[(3,), cr.Float64]]
    scale: float = 1.0


class Response(cr.Schema):
    y: cr.Differentiable[cr.Array[(3,), cr.Float64]]
    total: cr.Array[(), cr.Float64]


def _twin(x: Any, w: Any, scale: float = 1.0) -> Any:
    return (jnp.tanh(x) * w + 0.1 * x**2) * scale


def _make(kind: str) -> cr.Component:
    import torch

    m: Any = {"numpy": np, "written": np, "jax": jnp, "torch": torch}[kind]

    def small(inputs: Design) -> Response:
        y = (m.tanh(inputs.x) * inputs.w + 0.1 * inputs.x**2) * inputs.scale
        return Response(y=y, total=m.sum(y))

    backend = "numpy" if kind == "written" else kind
    comp = cr.component(small, inputs=Design, outputs=Response, backend=backend, name=kind)
    if kind == "written":

        @comp.def_vjp
        def vjp(inputs: Design, cotangents: dict[str, Any]) -> dict[str, Any]:
            ct, t = cotangents["y"] * inputs.scale, np.tanh(inputs.x)
            return {"x": ct * ((1 - t**2) * inputs.w + 0.2 * inputs.x), "w": ct * t}

    return comp


def _tol(kind: str) -> dict[str, float]:
    """A backend's agreement with exact derivatives (numpy's are finite differences)."""
    return {"rtol": 1e-7, "atol": 1e-9} if kind == "numpy" else {"rtol": 1e-12, "atol": 1e-14}


XS = np.linspace(-1.0, 1.2, B * 3).reshape(B, 3)
W = np.array([0.5, 1.5, -2.0])
RNG = np.random.default_rng(17)
DX, DW = RNG.normal(size=(B, 3)), RNG.normal(size=3)


@pytest.fixture(scope="module")
def reached() -> Iterator[Callable[[str, str], cr.Component]]:
    """`reached(kind, transport)`: the component, reached over the transport (module-wide)."""
    with ExitStack() as stack:
        made: dict[tuple[str, str], cr.Component] = {}

        def get(kind: str, transport: str) -> cr.Component:
            if (kind, transport) not in made:
                made[kind, transport] = stack.enter_context(reach(_make(kind), transport))
            return made[kind, transport]

        yield get


def _counting(comp: cr.Component) -> Counter[str]:
    """Every request `comp` sends from now on, by endpoint (none in-process)."""
    counted: Counter[str] = Counter()
    transport = getattr(comp.backend, "transport", None)
    if transport is None:
        return counted
    call = transport.call

    def counting(endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        counted[endpoint] += 1
        return call(endpoint, request)

    transport.call = counting  # the instance attribute shadows the method; removed below
    return counted


def _stop_counting(comp: cr.Component) -> None:
    transport = getattr(comp.backend, "transport", None)
    if transport is not None and "call" in vars(transport):
        del transport.call


# ---- the endpoint: B points in one call ----------------------------------------------------

ROWS = {
    "vjp": ("cotangents", {"y": RNG.normal(size=(B, 3))}),
    "jvp": ("tangents", {"x": RNG.normal(size=(B, 3)), "w": RNG.normal(size=(B, 3))}),
    "batched_vjp": ("cotangents", {"y": RNG.normal(size=(B, 2, 3))}),
    "batched_jvp": ("tangents", {"w": RNG.normal(size=(B, 2, 3))}),
}


@pytest.mark.parametrize("endpoint", list(ROWS))
@pytest.mark.parametrize("kind", KINDS)
def test_a_derivative_at_b_points_gives_the_per_point_answers(
    reached: Callable[[str, str], cr.Component], transport: str, kind: str, endpoint: str
) -> None:
    comp = reached(kind, transport)
    key, linear = ROWS[endpoint]
    inputs = {"x": XS, "w": W, "scale": 2.0}
    sent = _counting(comp)
    try:
        found = comp.call(endpoint, inputs, batched=["x"], **{key: linear})
    finally:
        _stop_counting(comp)
    assert sent == (Counter() if transport == "in-process" else Counter({endpoint: 1}))
    for b in range(B):
        at_b = {key: {k: v[b] for k, v in linear.items()}}
        one = comp.call(endpoint, {**inputs, "x": XS[b]}, **at_b)
        assert found.keys() == one.keys()
        for path in one:
            assert found[path].shape == (B, *one[path].shape)
            np.testing.assert_allclose(found[path][b], one[path], rtol=1e-13, atol=1e-15)


def test_a_derivative_at_b_points_names_what_is_wrong_with_it() -> None:
    comp = _make("written")
    ct = {"y": np.ones((B + 1, 3))}
    with pytest.raises(cr.ValidationError, match=r"'cotangents.y' must be a leading axis of 4"):
        comp.call("vjp", {"x": XS, "w": W}, cotangents=ct, batched=["x"])
    with pytest.raises(cr.ValidationError, match=r"vjp of component 'written': 'inputs.w' must"):
        comp.call("vjp", {"x": XS, "w": np.ones((2, 3))}, cotangents=ct, batched=["x", "w"])
    with pytest.raises(cr.ValidationError, match=r"'batched' must be paths of array inputs"):
        comp.call("vjp", {"x": XS, "w": W}, cotangents=ct, batched=["scale"])
    _, handle = comp.apply({"x": XS[0], "w": W}, keep=True)
    with pytest.raises(cr.ValidationError, match=r"'handle' must be null when 'batched'"):
        comp.call("vjp", {"x": XS, "w": W}, cotangents={"y": XS}, batched=["x"], handle=handle)
    with pytest.raises(cr.ValidationError, match=r"batched cotangents.*\[3\]|expected float64"):
        comp.call("batched_vjp", {"x": XS, "w": W}, cotangents={"y": XS}, batched=["x"])


# ---- JAX at batched primals: one batched_apply, one derivative request ---------------------


def _loss(f: Callable[..., Any]) -> Callable[..., Any]:
    return lambda x, w: jnp.sum(jnp.sin(f(x, w)))


def _sum_loss(f: Callable[..., Any]) -> Callable[..., Any]:
    return lambda xs, w: jnp.sum(jax.vmap(_loss(f), in_axes=(0, None))(xs, w))


def _mapped(f: Callable[..., Any]) -> Callable[..., Any]:
    return jax.vmap(f, in_axes=(0, None))


def _vmap_grad(f: Callable[..., Any]) -> Any:
    gx, gw = jax.jit(jax.vmap(jax.grad(_loss(f), (0, 1)), in_axes=(0, None)))(XS, W)
    return (gx, gw), jnp.vdot(gx, DX) + jnp.vdot(gw.sum(0), DW)


def _grad_vmap(f: Callable[..., Any]) -> Any:
    gx, gw = jax.jit(jax.grad(_sum_loss(f), (0, 1)))(XS, W)
    return (gx, gw), jnp.vdot(gx, DX) + jnp.vdot(gw, DW)


def _vmap_jvp(f: Callable[..., Any]) -> Any:
    one = lambda x, dx: jax.jvp(f, (x, W), (dx, DW))  # noqa: E731
    _, t = jax.jit(jax.vmap(one))(XS, DX)
    return (t,), t


def _vmap_jac(jac: Callable[..., Any]) -> Callable[..., Any]:
    def run(f: Callable[..., Any]) -> Any:
        jx, jw = jax.jit(jax.vmap(jac(f, (0, 1)), in_axes=(0, None)))(XS, W)
        return (jx, jw), jnp.einsum("bij,bj->bi", jx, DX) + jnp.einsum("bij,j->bi", jw, DW)

    return run


def _jacrev_vmap(f: Callable[..., Any]) -> Any:
    jx, jw = jax.jit(jax.jacrev(_mapped(f), (0, 1)))(XS, W)
    return (jx, jw), jnp.einsum("bikj,kj->bi", jx, DX) + jnp.einsum("bij,j->bi", jw, DW)


def _vmap_some(f: Callable[..., Any]) -> Any:
    """vmap over w alone (x shared): here XS are B values of w, and W the shared x."""
    gx, gw = jax.jit(jax.vmap(jax.grad(_loss(f), (0, 1)), in_axes=(None, 0)))(W, XS)
    return (gx, gw), jnp.vdot(gx.sum(0), DW) + jnp.vdot(gw, DX)


def _shared_x_loss(f: Callable[..., Any]) -> Callable[..., Any]:
    return lambda ws, x: jnp.sum(jax.vmap(_loss(f), in_axes=(None, 0))(x, ws))


def _vmap_grad_of_sum(f: Callable[..., Any]) -> Any:
    """The gradient of a plain sum does not read the outputs: jit drops the batched apply."""
    loss = lambda x, w: jnp.sum(f(x, w))  # noqa: E731
    gx, gw = jax.jit(jax.vmap(jax.grad(loss, (0, 1)), in_axes=(0, None)))(XS, W)
    return (gx, gw), jnp.vdot(gx, DX) + jnp.vdot(gw.sum(0), DW)


def _sum_of_sums(f: Callable[..., Any]) -> Callable[..., Any]:
    return lambda xs, w: jnp.sum(_mapped(f)(xs, w))


def _sent(*endpoints: str) -> Counter[str]:
    return Counter(endpoints)


# name: (transformation, the requests it sends, the function its directional derivative
# along (DX, DW) is of, as a function of (XS, W)). Where the outputs are not read (a Jacobian,
# the gradient of a sum), jit drops the batched apply: one request.
CASES: dict[str, tuple[Callable[..., Any], Counter[str], Callable[..., Any]]] = {
    "vmap(grad)": (_vmap_grad, _sent("batched_apply", "vjp"), _sum_loss),
    "vmap(grad(sum∘f))": (_vmap_grad_of_sum, _sent("vjp"), _sum_of_sums),
    "grad(sum∘vmap)": (_grad_vmap, _sent("batched_apply", "vjp"), _sum_loss),
    "vmap(jvp)": (_vmap_jvp, _sent("batched_apply", "jvp"), _mapped),
    "jit(vmap(jacrev))": (_vmap_jac(jax.jacrev), _sent("batched_vjp"), _mapped),
    "vmap(jacfwd)": (_vmap_jac(jax.jacfwd), _sent("batched_jvp"), _mapped),
    "jacrev(vmap)": (_jacrev_vmap, _sent("batched_vjp"), _mapped),
    "vmap over some inputs": (_vmap_some, _sent("batched_apply", "vjp"), _shared_x_loss),
}


def _through(comp: cr.Component) -> Callable[..., Any]:
    return lambda x, w: crj.call(comp, {"x": x, "w": w})["y"]


def _central(g: Callable[..., Any], eps: float = 1e-6) -> Any:
    """Central finite difference of `g(XS, W)` along (DX, DW)."""
    return (g(XS + eps * DX, W + eps * DW) - g(XS - eps * DX, W - eps * DW)) / (2 * eps)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("where", ["in-process", "wire", "http"])
def test_derivatives_at_batched_primals_are_one_or_two_requests_and_right(
    reached: Callable[[str, str], cr.Component], where: str, kind: str, case: str
) -> None:
    comp = reached(kind, where)
    transform, requests, of = CASES[case]
    sent, before = _counting(comp), Counter(comp.calls)
    try:
        found, directional = transform(_through(comp))
    finally:
        _stop_counting(comp)
    if where != "in-process":
        assert sent == requests
    elif kind == "torch":  # in-process too: torch.func.vmap of the vjp, one call
        vjps = {k: n for k, n in (comp.calls - before).items() if k.endswith("vjp")}
        assert vjps == {k: 1 for k in requests if k.endswith("vjp")}
    expected, _ = transform(_twin)
    for a, b in zip(found, expected, strict=True):
        np.testing.assert_allclose(a, b, **_tol(kind))
    fd = _central(of(_through(comp)))
    np.testing.assert_allclose(directional, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("kind", ["torch", "written"])
def test_a_zero_size_batch_sends_nothing(
    reached: Callable[[str, str], cr.Component], kind: str
) -> None:
    comp = reached(kind, "http")
    sent = _counting(comp)
    try:
        gx, gw = jax.jit(jax.vmap(jax.grad(_loss(_through(comp)), (0, 1)), in_axes=(0, None)))(
            XS[:0], W
        )
        _, t = jax.vmap(lambda x, dx: jax.jvp(_through(comp), (x, W), (dx, DW)))(XS[:0], DX[:0])
    finally:
        _stop_counting(comp)
    assert sent == Counter()
    assert gx.shape == (0, 3) and gw.shape == (0, 3) and t.shape == (0, 3)


def test_a_batch_over_the_servers_limit_is_refused_naming_it() -> None:
    with cr.serve(_make("written"), max_batch=B - 1) as server:
        client = cr.connect(server.url)
        ct = {"y": np.ones((B, 3))}
        with pytest.raises(cr.ChainruleError, match=r"batch of 4 points.*inputs\.x.*max_batch"):
            client.call("vjp", {"x": XS, "w": W}, cotangents=ct, batched=["x"])
        rows = {"y": np.ones((B, B, 3))}  # B points fit, B rows each do not
        fine = {"x": XS[: B - 1], "w": W}
        with pytest.raises(cr.ChainruleError, match=r"batch of 4 rows.*cotangents\.y.*max_batch"):
            client.call("batched_vjp", fine, cotangents={"y": rows["y"][: B - 1]}, batched=["x"])
        grad = jax.jit(jax.vmap(jax.grad(_loss(_through(client)), (0, 1)), in_axes=(0, None)))
        with pytest.raises(jax.errors.JaxRuntimeError, match=r"batch of 4 points.*max_batch"):
            grad(XS, W)  # the batched_apply is refused first, carried out of the program
        gx, _ = grad(XS[: B - 1], W)
        expected, _ = jax.vmap(jax.grad(_loss(_twin), (0, 1)), in_axes=(0, None))(XS[: B - 1], W)
        np.testing.assert_allclose(gx, expected, rtol=1e-12)
        client.close()


def test_an_older_server_without_the_keyword_gets_a_request_per_point(
    reached: Callable[[str, str], cr.Component],
) -> None:
    """A server that does not declare `batched_points` is asked per point (never refused)."""
    comp = reached("written", "wire")
    backend: Any = comp.backend
    backend.batches_points = False
    sent = _counting(comp)
    try:
        found, _ = _vmap_grad(_through(comp))
    finally:
        _stop_counting(comp)
        backend.batches_points = True
    assert sent == Counter({"batched_apply": 1, "vjp": B})
    expected, _ = _vmap_grad(_twin)
    for a, b in zip(found, expected, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12)


# ---- torch: vmap of reverse mode, a loop where vmap cannot map -----------------------------


def test_torch_answers_a_vjp_at_b_points_by_vmap_safely_from_many_threads() -> None:
    """`torch.func.vmap` of `torch.func.vjp` (reverse mode only: no process-global dual
    levels), from 4 threads at once, each answer its own points' per-point vjps."""
    from concurrent.futures import ThreadPoolExecutor

    comp = _make("torch")
    backend: Any = comp.backend
    request = {"cotangents": {"y": DX}, "wrt": ("x",)}
    assert backend.points("vjp", comp.point({"x": XS[0], "w": W}), {"x": XS}, request)

    def job(seed: int) -> None:
        rng = np.random.default_rng(seed)
        xs, ct = rng.normal(size=(B, 3)), rng.normal(size=(B, 3))
        for _ in range(10):
            found = comp.call("vjp", {"x": xs, "w": W}, cotangents={"y": ct}, batched=["x"])
            for b in range(B):
                one = comp.vjp({"x": xs[b], "w": W}, {"y": ct[b]})
                np.testing.assert_allclose(found["x"][b], one["x"], rtol=1e-13)
                np.testing.assert_allclose(found["w"][b], one["w"], rtol=1e-13)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(job, range(8)))


def test_a_torch_function_vmap_cannot_map_is_answered_point_by_point() -> None:
    import torch

    def itemised(inputs: Design) -> Response:
        k = float(inputs.x[0].item())  # data-dependent: torch.func.vmap refuses it
        y = torch.tanh(inputs.x) * inputs.w * k
        return Response(y=y, total=torch.sum(y))

    comp = cr.component(itemised, inputs=Design, outputs=Response, backend="torch")
    backend: Any = comp.backend
    request = {"cotangents": {"y": DX}, "wrt": ("w",)}
    assert backend.points("vjp", comp.point({"x": XS[0], "w": W}), {"x": XS}, request) is None
    found = comp.call("vjp", {"x": XS, "w": W}, cotangents={"y": DX}, wrt=["w"], batched=["x"])
    expected = jax.vmap(lambda x, c: jax.vjp(lambda w: jnp.tanh(x) * w * x[0], W)[1](c)[0])(XS, DX)
    np.testing.assert_allclose(found["w"], expected, rtol=1e-13)
