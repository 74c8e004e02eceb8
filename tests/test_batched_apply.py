"""`batched_apply` (issue 17): B points that differ only in some inputs, in one call.

jax and torch answer with vmap, numpy with a loop; a served component answers the batch in
ONE request, and `jax.vmap` over a call's primals sends that request (its derivatives are
one request too: `tests/test_batched_derivatives.py`). Every answer is checked against the
per-point answers, gradients against central finite differences in float64.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chainrule as cr
import chainrule.jax as crj

pytestmark = pytest.mark.usefixtures("x64")  # these JAX programs compute in float64

B = 5


class Design(cr.Schema):
    x: cr.Differentiable[cr.Array[(3,), cr.Float64]]
    w: cr.Differentiable[cr.Array[(3,), cr.Float64]]
    scale: float = 1.0


class Response(cr.Schema):
    y: cr.Differentiable[cr.Array[(3,), cr.Float64]]
    total: cr.Array[(), cr.Float64]


def _small(backend: str) -> cr.Component:
    import torch

    m: Any = {"numpy": np, "jax": jnp, "torch": torch}[backend]

    def small(inputs: Design) -> Response:
        y = (m.tanh(inputs.x) * inputs.w + 0.1 * inputs.x**2) * inputs.scale
        return Response(y=y, total=m.sum(y))

    return cr.component(small, inputs=Design, outputs=Response, backend=backend, name="small")


def _reference(x: Any, w: Any, scale: float = 1.0) -> Any:
    return (jnp.tanh(x) * w + 0.1 * x**2) * scale


XS = np.linspace(-1.0, 1.0, B * 3).reshape(B, 3)
W = np.array([0.5, 1.5, -2.0])


@pytest.mark.parametrize("backend", ["numpy", "jax", "torch"])
def test_batched_apply_gives_the_per_point_answers(backend: str) -> None:
    comp = _small(backend)
    found = comp.call("batched_apply", {"x": XS, "w": W, "scale": 2.0}, batched=["x"])
    for b in range(B):
        one = comp.apply({"x": XS[b], "w": W, "scale": 2.0})
        np.testing.assert_allclose(found["y"][b], one.y, rtol=1e-14)
        np.testing.assert_allclose(found["total"][b], one.total, rtol=1e-14)
    assert found["y"].shape == (B, 3) and found["total"].shape == (B,)
    ways = {"numpy": "loop", "jax": "native (jax.vmap)", "torch": "native (torch.func.vmap)"}
    assert comp.endpoints["batched_apply"] == ways[backend]


def test_batched_apply_names_what_is_wrong_with_a_batch() -> None:
    comp = _small("numpy")
    with pytest.raises(cr.ValidationError, match=r"'inputs.w' must be a leading batch axis of"):
        comp.call("batched_apply", {"x": XS, "w": np.ones((B + 1, 3))}, batched=["x", "w"])
    with pytest.raises(cr.ValidationError, match=r"'batched' must be paths of array inputs"):
        comp.call("batched_apply", {"x": XS, "w": W}, batched=["nope"])
    with pytest.raises(cr.ValidationError, match=r"expected float64\[3\]"):
        comp.call("batched_apply", {"x": XS[:, :2], "w": W}, batched=["x"])


# ---- served: one request -------------------------------------------------------------------


@pytest.fixture(scope="module")
def remote() -> Iterator[cr.Component]:
    with cr.serve(_small("torch")) as server:
        client = cr.connect(server.url)
        yield client
        client.close()


@pytest.fixture
def sent(remote: cr.Component) -> Iterator[Counter[str]]:
    """Every request the remote component sends, by endpoint."""
    transport = remote.backend.transport  # type: ignore[attr-defined]
    counted: Counter[str] = Counter()
    call = transport.call

    def counting(endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        counted[endpoint] += 1
        return call(endpoint, request)

    transport.call = counting
    yield counted
    del transport.call


def test_a_served_component_answers_a_batch_in_one_request(
    remote: cr.Component, sent: Counter[str]
) -> None:
    found = remote.call("batched_apply", {"x": XS, "w": W, "scale": 3.0}, batched=["x"])
    assert sent == Counter({"batched_apply": 1})
    np.testing.assert_allclose(found["y"], _reference(XS, W, 3.0), rtol=1e-14)
    assert remote.endpoints["batched_apply"] == "remote: native (torch.func.vmap)"


def _through(remote: cr.Component) -> Any:
    return lambda x, w: crj.call(remote, {"x": x, "w": w})["y"]


def test_vmap_over_primals_of_a_served_component_is_one_request(
    remote: cr.Component, sent: Counter[str]
) -> None:
    f = jax.jit(jax.vmap(_through(remote), in_axes=(0, None)))
    found = f(jnp.asarray(XS), jnp.asarray(W))
    assert sent == Counter({"batched_apply": 1})
    each = [_through(remote)(jnp.asarray(x), jnp.asarray(W)) for x in XS]
    np.testing.assert_allclose(found, np.stack(each), rtol=1e-14)
    np.testing.assert_allclose(found, _reference(XS, W), rtol=1e-14)


def _loss(remote: cr.Component) -> Any:
    return lambda x, w: jnp.sum(jnp.sin(_through(remote)(x, w)))


def _fd(f: Any, args: tuple[Any, ...], i: int, d: Any, eps: float = 1e-6) -> Any:
    plus = [a + eps * d if k == i else a for k, a in enumerate(args)]
    minus = [a - eps * d if k == i else a for k, a in enumerate(args)]
    return (f(*plus) - f(*minus)) / (2 * eps)


def test_gradients_under_vmap_over_primals_match_finite_differences(
    remote: cr.Component, sent: Counter[str]
) -> None:
    """grad of a vmapped call (one batched_apply forward, one vjp at all the points) and vmap
    of grad,
    against central differences of the batch's loss and the per-point gradients."""
    loss = _loss(remote)
    batch = lambda xs, w: jnp.sum(jax.vmap(loss, in_axes=(0, None))(xs, w))  # noqa: E731
    xs, w = jnp.asarray(XS), jnp.asarray(W)
    gx, gw = jax.jit(jax.grad(batch, argnums=(0, 1)))(xs, w)
    assert sent["batched_apply"] == 1 and sent["apply"] == 0 and sent["vjp"] == 1
    for i, g in ((0, gx), (1, gw)):
        d = jax.random.normal(jax.random.key(i), g.shape)
        np.testing.assert_allclose(jnp.vdot(g, d), _fd(batch, (xs, w), i, d), rtol=1e-7)
    per_point = [jax.grad(loss, argnums=(0, 1))(x, w) for x in xs]
    np.testing.assert_allclose(gx, np.stack([p[0] for p in per_point]), rtol=1e-13)
    np.testing.assert_allclose(gw, sum(p[1] for p in per_point), rtol=1e-13)
    each = jax.jit(jax.vmap(jax.grad(loss), in_axes=(0, None)))(xs, w)
    np.testing.assert_allclose(each, gx, rtol=1e-13)


def test_jvp_under_vmap_over_primals_matches_finite_differences(remote: cr.Component) -> None:
    f = jax.vmap(_through(remote), in_axes=(0, None))
    xs, w = jnp.asarray(XS), jnp.asarray(W)
    t = jax.random.normal(jax.random.key(3), xs.shape)
    _, found = jax.jit(lambda a, b: jax.jvp(lambda u: f(u, w), (a,), (b,)))(xs, t)
    np.testing.assert_allclose(found, _fd(f, (xs, w), 0, t), rtol=1e-7, atol=1e-9)


def test_a_server_refuses_a_batch_over_its_batch_limit() -> None:
    with cr.serve(_small("numpy"), max_batch=4) as server:
        client = cr.connect(server.url)
        with pytest.raises(cr.ChainruleError, match=r"batch of 5 points.*inputs\.x"):
            client.call("batched_apply", {"x": XS, "w": W}, batched=["x"])
        found = client.call("batched_apply", {"x": XS[:4], "w": W}, batched=["x"])
        np.testing.assert_allclose(found["y"], _reference(XS[:4], W), rtol=1e-14)
        client.close()
