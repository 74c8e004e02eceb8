"""Planned call sites (issue 17): the flat host callbacks of `chainrule._bindings.jax.fast`.

A call site of a flat-schema component, outside vmap, runs a `Plan`: the lane's apply and
the author's own vjp/jvp, with nothing generic on the way. These tests hold it to the
generic path's promises: the same answers (central finite differences in float64), errors
naming the field, calls counted, `check_finite` honoured, and XLA's buffers lent to author
code only while it keeps none of them (`lending`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chainrule as cr
import chainrule.jax as crj
from chainrule._bindings.jax import fast

pytestmark = pytest.mark.usefixtures("x64")

BIG = 20_000  # 160 kB of float64: above fast.LEND_BYTES, lent once nothing is kept
assert BIG * 8 >= fast.LEND_BYTES


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    scale: float = 1.0


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


def _component(seen: list[Any], keep: dict[str, Any] | None = None) -> cr.Component:
    """y = scale·sin(x) with a written vjp and jvp; `keep` says what to keep, when."""
    keep = keep if keep is not None else {}

    @cr.component(inputs=In, outputs=Out, backend="numpy", name="sines")
    def sines(inputs: In) -> Out:
        x = inputs.x
        seen.append((x.__array_interface__["data"][0], x.flags.writeable))
        if keep.get("array"):
            keep.setdefault("arrays", []).append(x)
        if keep.get("instance"):
            keep.setdefault("instances", []).append(inputs)
        return Out(y=inputs.scale * np.sin(x))

    @sines.def_vjp
    def _vjp(inputs: In, cotangents: dict[str, Any]) -> dict[str, Any]:
        if keep.get("cotangents"):
            keep.setdefault("dicts", []).append(cotangents)
        return {"x": inputs.scale * np.cos(inputs.x) * cotangents["y"]}

    @sines.def_jvp
    def _jvp(inputs: In, tangents: dict[str, Any]) -> dict[str, Any]:
        return {"y": inputs.scale * np.cos(inputs.x) * tangents["x"]}

    return sines


def _loss(comp: cr.Component, scale: float = 1.0) -> Any:
    return lambda v: jnp.sum(crj.call(comp, {"x": v, "scale": scale})["y"] ** 2)


def _check_fd(f: Any, g: Any, x: jax.Array, seed: int = 0) -> None:
    d = jax.random.normal(jax.random.key(seed), x.shape)
    eps = 1e-6
    fd = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
    np.testing.assert_allclose(jnp.vdot(g(x), d), fd, rtol=1e-6, atol=1e-8)


def test_a_planned_site_answers_as_finite_differences_and_counts_its_calls() -> None:
    comp = _component([])
    for scale in (1.0, 2.5):
        f = _loss(comp, scale)
        g = jax.jit(jax.grad(f))
        for seed in range(3):
            _check_fd(f, g, jax.random.normal(jax.random.key(seed), (7,)), seed)
    before = dict(comp.calls)
    g(jnp.ones(7))
    assert comp.calls["apply"] == before["apply"] + 1
    assert comp.calls["vjp"] == before["vjp"] + 1
    # jvp: the written one, forward mode through jit
    x, t = jnp.linspace(0.1, 1.0, 7), jnp.linspace(-1.0, 1.0, 7)
    jvp = jax.jit(lambda v, w: jax.jvp(lambda u: crj.call(comp, {"x": u})["y"], (v,), (w,)))
    y, dy = jvp(x, t)
    np.testing.assert_allclose(y, np.sin(np.asarray(x)), rtol=1e-15)
    np.testing.assert_allclose(dy, np.cos(np.asarray(x)) * np.asarray(t), rtol=1e-15)
    assert comp.calls["jvp"] >= 1


def test_buffers_are_lent_once_a_first_call_shows_nothing_is_kept() -> None:
    seen: list[Any] = []
    comp = _component(seen)
    g = jax.jit(jax.grad(_loss(comp)))
    x = jnp.linspace(0.0, 1.0, BIG)
    g(x)
    assert seen[-1][0] != x.unsafe_buffer_pointer(), "the first call gets a copy"
    g(x)
    g(x)
    assert seen[-1] == (x.unsafe_buffer_pointer(), False), "then XLA's buffer, read-only"
    want = 2 * np.sin(np.asarray(x)) * np.cos(np.asarray(x))
    np.testing.assert_allclose(g(x), want, rtol=1e-14)
    _check_fd(_loss(comp), g, jax.random.normal(jax.random.key(1), (BIG,)))


def test_small_inputs_are_copied() -> None:
    seen: list[Any] = []
    comp = _component(seen)
    g = jax.jit(jax.grad(_loss(comp)))
    x = jnp.linspace(0.0, 1.0, 10)
    for _ in range(3):
        g(x)
    assert all(address != x.unsafe_buffer_pointer() for address, _ in seen)
    assert all(writeable is False for _, writeable in seen)


def test_an_input_kept_after_lending_began_is_a_loud_error_then_copies() -> None:
    keep: dict[str, Any] = {}
    comp = _component([], keep)
    g = jax.jit(jax.grad(_loss(comp)))
    x = jnp.linspace(0.0, 1.0, BIG)
    for _ in range(3):
        g(x)  # lending by now
    keep["array"] = True
    kept = r"kept 'x' \(given to its apply\).*np.array"
    with pytest.raises(cr.ComponentError, match=kept), crj.errors():
        g(x)
    keep.pop("arrays")
    jax.block_until_ready(g(x + 1.0))  # the site copies from now on: what it keeps stays right
    jax.block_until_ready(g(x + 2.0))
    kept = keep["arrays"]
    np.testing.assert_array_equal(kept[0], np.asarray(x + 1.0))
    np.testing.assert_array_equal(kept[1], np.asarray(x + 2.0))


def test_an_input_kept_by_code_that_also_fails_is_named_too() -> None:
    """The author's code keeps a lent array and then raises: the error says both (a kept
    array would later show other values), and the site copies from then on."""
    keep: dict[str, Any] = {}

    @cr.component(inputs=In, outputs=Out, backend="numpy", name="keeps_and_fails")
    def fails(inputs: In) -> Out:
        if keep.get("on"):
            keep.setdefault("arrays", []).append(inputs.x)
            raise FloatingPointError("diverged")
        return Out(y=np.sin(inputs.x))

    @fails.def_vjp
    def _vjp(inputs: In, cotangents: dict[str, Any]) -> dict[str, Any]:
        return {"x": np.cos(inputs.x) * cotangents["y"]}

    g = jax.jit(jax.grad(_loss(fails)))
    x = jnp.linspace(0.0, 1.0, BIG)
    for _ in range(3):
        g(x)  # lending by now
    keep["on"] = True
    with pytest.raises(cr.ComponentError, match=r"diverged.*kept an input array"), crj.errors():
        jax.block_until_ready(g(x))
    keep["arrays"].clear()
    with pytest.raises(cr.ComponentError, match="diverged") as info, crj.errors():
        jax.block_until_ready(g(x + 1.0))  # copies now: its own error; what it kept stays right
    assert "kept" not in str(info.value)
    np.testing.assert_array_equal(keep["arrays"][0], np.asarray(x + 1.0))


def test_a_kept_inputs_instance_gets_copies_of_the_lent_arrays() -> None:
    keep: dict[str, Any] = {}
    comp = _component([], keep)
    g = jax.jit(jax.grad(_loss(comp)))
    x = jnp.linspace(0.0, 1.0, BIG)
    for _ in range(3):
        g(x)
    keep["instance"] = True
    values = [x + 1.0, x + 2.0, x + 3.0]
    for v in values:
        jax.block_until_ready(g(v))  # no error: the kept instance's arrays are swapped for copies
    for instance, v in zip(keep["instances"], values, strict=True):
        np.testing.assert_array_equal(instance.x, np.asarray(v))


def test_a_kept_cotangents_dict_gets_copies_of_the_lent_arrays() -> None:
    keep: dict[str, Any] = {}
    comp = _component([], keep)
    f = jax.jit(lambda v, c: jax.vjp(lambda u: crj.call(comp, {"x": u})["y"], v)[1](c))
    x = jnp.linspace(0.0, 1.0, BIG)
    for _ in range(3):
        f(x, jnp.ones(BIG))
    keep["cotangents"] = True
    cts = [jnp.full(BIG, 2.0), jnp.full(BIG, 3.0)]
    for c in cts:
        jax.block_until_ready(f(x, c))
    for kept, c in zip(keep["dicts"], cts, strict=True):
        np.testing.assert_array_equal(kept["y"], np.asarray(c))


def test_outputs_that_are_not_exact_go_through_the_output_check() -> None:
    class Shaped(cr.Schema):
        y: cr.Differentiable[cr.Array[("n",), cr.Float64]]

    @cr.component(inputs=In, outputs=Shaped, backend="numpy", name="loose")
    def loose(inputs: In) -> Any:
        return {"y": (2.0 * inputs.x).astype(np.float32)}  # a dict, float32: converted

    @loose.def_vjp
    def _vjp(inputs: In, cotangents: dict[str, Any]) -> dict[str, Any]:
        return {"x": 2.0 * cotangents["y"]}

    x = jnp.linspace(0.0, 1.0, 5)
    y = jax.jit(lambda v: crj.call(loose, {"x": v})["y"])(x)
    np.testing.assert_allclose(y, 2.0 * np.asarray(x), rtol=1e-7)

    @cr.component(inputs=In, outputs=Shaped, backend="numpy", name="short")
    def short(inputs: In) -> Shaped:
        return Shaped(y=inputs.x[:-1])  # n - 1 elements where the inputs say n

    with pytest.raises(cr.OutputValidationError, match=r"outputs\.y"), crj.errors():
        jax.jit(lambda v: crj.call(short, {"x": v})["y"])(x)


def test_a_written_vjp_answering_the_wrong_shape_is_a_clear_error() -> None:
    @cr.component(inputs=In, outputs=Out, backend="numpy", name="wrong")
    def wrong(inputs: In) -> Out:
        return Out(y=np.sin(inputs.x))

    @wrong.def_vjp
    def _vjp(inputs: In, cotangents: dict[str, Any]) -> dict[str, Any]:
        return {"x": cotangents["y"][:-1]}

    g = jax.jit(jax.grad(_loss(wrong)))
    with pytest.raises(cr.ComponentError, match=r"float64\[4\].*float64\[5\]"), crj.errors():
        g(jnp.ones(5))


def test_an_error_in_written_code_keeps_its_cause() -> None:
    comp = _component([])

    @comp.def_vjp
    def _vjp(inputs: In, cotangents: dict[str, Any]) -> dict[str, Any]:
        raise FloatingPointError("vjp diverged")

    g = jax.jit(jax.grad(_loss(comp)))
    with pytest.raises(cr.ComponentError, match="vjp diverged") as info, crj.errors():
        g(jnp.ones(3))
    assert isinstance(info.value.__cause__, FloatingPointError)


def test_check_finite_runs_the_generic_path_of_a_planned_site() -> None:
    @cr.component(inputs=In, outputs=Out, backend="numpy", name="blowup")
    def blowup(inputs: In) -> Out:
        return Out(y=np.sin(inputs.x))

    @blowup.def_vjp
    def _vjp(inputs: In, cotangents: dict[str, Any]) -> dict[str, Any]:
        return {"x": cotangents["y"] * np.inf}

    g = jax.jit(jax.grad(_loss(blowup)))
    g(jnp.ones(3))  # compiled, unchecked: inf, no error
    with cr.check_finite(), pytest.raises(cr.NonFiniteError, match="'x'"), crj.errors():
        g(jnp.ones(3))


# ---- a forward nothing reads is not made (`dce`) ------------------------------------------


def _torch_square() -> cr.Component:
    @cr.component(inputs=In, outputs=Out, backend="torch", name="square")
    def square(inputs: In) -> Out:
        return Out(y=inputs.scale * inputs.x**2)

    return square


def test_a_gradient_that_reads_no_output_makes_no_forward_call() -> None:
    """grad(sum f) reads none of f's outputs: one host call (the vjp, recording its own
    graph), no kept linearization; the answer is the same as through a kept one."""
    comp = _torch_square()
    x = jnp.linspace(-1.0, 1.0, 6)
    g = jax.jit(jax.grad(lambda v: jnp.sum(crj.call(comp, {"x": v, "scale": 3.0})["y"])))
    assert g.lower(x).as_text().count("custom_call") == 1  # the vjp's host call alone
    np.testing.assert_allclose(g(x), 6.0 * np.asarray(x), rtol=1e-15)
    assert len(comp.residuals) == 0 and comp.calls["apply"] == 1  # recorded within the vjp
    # the same gradient when the loss reads the outputs too: the forward keeps its graph
    both = jax.jit(jax.value_and_grad(lambda v: jnp.sum(crj.call(comp, {"x": v})["y"] ** 2)))
    hits = comp.residuals.hits
    value, grad = both(x)
    np.testing.assert_allclose(value, np.sum(np.asarray(x) ** 4), rtol=1e-14)
    np.testing.assert_allclose(grad, 4.0 * np.asarray(x) ** 3, rtol=1e-14)
    assert comp.residuals.hits == hits + 1
    f = lambda v: jnp.sum(crj.call(comp, {"x": v})["y"] ** 2)  # noqa: E731
    _check_fd(f, jax.jit(jax.grad(f)), x)


def test_a_served_component_gets_one_request_when_nothing_reads_its_outputs() -> None:
    from chainrule._transport.remote import RemoteBackend

    comp = _torch_square()
    with cr.serve(comp) as server:
        remote = cr.connect(server.url)
        assert isinstance(remote.backend, RemoteBackend)
        sent: list[str] = []
        transport = remote.backend.transport
        call = transport.call

        def counting(endpoint: str, tree: Any) -> Any:
            sent.append(endpoint)
            return call(endpoint, tree)

        transport.call = counting  # type: ignore[method-assign]
        x = jnp.linspace(-1.0, 1.0, 5)
        g = jax.jit(jax.grad(lambda v: jnp.sum(crj.call(remote, {"x": v})["y"])))
        np.testing.assert_allclose(g(x), 2.0 * np.asarray(x), rtol=1e-15)
        assert sent == ["vjp"]
        sent.clear()
        jac = jax.jit(jax.jacrev(lambda v: crj.call(remote, {"x": v})["y"]))(x)
        np.testing.assert_allclose(jac, np.diag(2.0 * np.asarray(x)), rtol=1e-15)
        assert sent == ["batched_vjp"]
        remote.close()
