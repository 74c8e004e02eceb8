"""The handle rule: a kept linearization is used only when its point provably equals the call's
point (every array and static leaf, by value); otherwise the endpoint recomputes. Checked per
backend × transport × case, each answer against a fresh call without a handle."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import chainrule as cr
from chainrule._transport import wire as _wire
from handle_components import BACKENDS, exact_vjp, make
from transports import TRANSPORTS, reach

pytestmark = pytest.mark.usefixtures("x64")  # its JAX programs compute in float64

HERE = Path(__file__).parent
X = np.array([0.3, 1.2, 2.0, -0.7])
CT = np.array([1.0, -1.0, 0.5, 2.0])
P = {"x": X, "scale": 2.0, "copies": 1}
Q = {"x": X, "scale": 3.0, "copies": 2}  # other static values: another point, other shapes
CT_Q = np.concatenate([CT, -CT / 3])
RTOL = {"jax": 1e-12, "torch": 1e-12, "numpy": 1e-6, "written": 1e-12}


@contextmanager
def endpoint(backend: str, transport: str, **options: Any) -> Iterator[tuple[Any, Any]]:
    """(what the caller calls, the component that keeps residuals) for a transport."""
    if transport == "in-process":
        comp = make(backend, **options)
        yield comp, comp
        return
    comp = make(backend)
    with reach(comp, transport, **options) as remote:
        yield remote, comp


def _same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], backend: str) -> None:
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL[backend], atol=1e-12)


def _check(caller: Any, backend: str, inputs: dict[str, Any], ct: np.ndarray, h: Any) -> None:
    """vjp with the handle == vjp without one == the exact vjp (FD within its error)."""
    got = caller.vjp(inputs, {"y": ct}, handle=h)
    fresh = caller.vjp({**inputs, "x": np.array(inputs["x"])}, {"y": ct})
    _same(got, fresh, backend)
    np.testing.assert_allclose(got["x"], exact_vjp(inputs, ct), rtol=RTOL[backend], atol=1e-7)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_point_hits_and_answers_as_without(backend: str, transport: str) -> None:
    with endpoint(backend, transport) as (caller, comp):
        _, h = caller.apply(P, keep=True)
        hits = comp.residuals.hits
        got = caller.vjp(P, {"y": CT}, handle=h)
        assert comp.residuals.hits == hits + 1, "a handle at its own point was not used"
        # Identical to a call without the handle (the same backward pass, one forward fewer).
        _same(got, caller.vjp(P, {"y": CT}), backend)
        _same(
            caller.jvp(P, {"x": CT}, handle=h), caller.jvp(P, {"x": CT}), backend
        )  # forward mode from the same residual


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_other_static_value_recomputes(backend: str, transport: str) -> None:
    """Static inputs are part of the point: a handle kept at scale=2, copies=1 is not used
    at scale=3, copies=2 (on main: the scale=2 answer, a shape error or a tree-structure
    ValueError, depending on the backend)."""
    with endpoint(backend, transport) as (caller, comp):
        _, h = caller.apply(P, keep=True)
        _check(caller, backend, P, CT, h)  # used once (a finite-difference Jacobian memoized)
        misses = _misses(caller, comp)
        _check(caller, backend, Q, CT_Q, h)
        assert _misses(caller, comp) > misses
        _check(caller, backend, {**P, "scale": 2.0000000000000004}, CT, h)  # one ulp away


def _misses(caller: Any, comp: Any) -> int:
    """Misses of the caller's cache and, over HTTP, of the server's."""
    return int(caller.residuals.misses + (comp.residuals.misses if comp is not caller else 0))


def _post(url: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _plain(inputs: dict[str, Any]) -> dict[str, Any]:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in inputs.items()}


@pytest.mark.parametrize("backend", BACKENDS)
def test_server_checks_the_point_of_a_handle_it_is_sent(backend: str) -> None:
    """The server applies the rule itself, whatever the client checked: its handle sent with
    other static values (by a client that does not check, e.g. curl) is not used."""
    comp = make(backend)
    with cr.serve(comp) as server:
        status, kept = _post(f"{server.url}/apply", {"inputs": _plain(P), "keep": True})
        assert status == 200, kept
        for inputs, ct in [(P, CT), (Q, CT_Q), ({**P, "x": X - 0.5}, CT)]:
            body = {"inputs": _plain(inputs), "cotangents": {"y": ct.tolist()}}
            status, got = _post(f"{server.url}/vjp", {**body, "handle": kept["handle"]})
            assert status == 200, got
            want = comp.vjp(inputs, {"y": ct})["x"]
            np.testing.assert_allclose(_array(got["result"]["x"]), want, rtol=RTOL[backend])


def _array(wire: Any) -> np.ndarray:
    return np.asarray(_wire.decode(json.dumps(wire).encode(), _wire.JSON))


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_in_place_change_of_the_callers_array(backend: str, transport: str) -> None:
    """The caller changes the array after keeping: the handle is not used at the new values,
    and is still right at the old ones (given in another array): the residual holds its own
    copies, not views of the caller's memory."""
    x = X.copy()
    inputs = {**P, "x": x}
    with endpoint(backend, transport) as (caller, _):
        _, h = caller.apply(inputs, keep=True)
        _check(caller, backend, inputs, CT, h)
        x -= 0.5  # the same array object, new values
        _check(caller, backend, inputs, CT, h)
        _check(caller, backend, P, CT, h)  # the kept values, in another array


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_evicted_handle_recomputes(backend: str, transport: str) -> None:
    with endpoint(backend, transport, residual_bytes=1) as (caller, comp):
        _, first = caller.apply(P, keep=True)
        caller.apply({**P, "x": X + 1}, keep=True)
        if backend != "written":  # (its residual is empty: 0 bytes fit any budget)
            assert len(comp.residuals) == 0, "nothing fits a 1-byte budget"
        _check(caller, backend, P, CT, first)
        _check(caller, backend, {**P, "x": X + 1}, CT, first)


def test_unknown_and_malformed_handles_over_http() -> None:
    """A well-formed handle the server does not know is a miss (recompute); a malformed one
    is refused with a 422 that names `handle`."""
    comp = make("numpy")
    with cr.serve(comp) as server:
        body = {"inputs": {"x": X.tolist()}, "cotangents": {"y": CT.tolist()}}
        for handle, status in [("h" + "0" * 32, 200), ("h7", 422), ("../etc", 422), (7, 422)]:
            data = json.dumps({**body, "handle": handle}).encode()
            request = urllib.request.Request(
                f"{server.url}/vjp", data, {"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request) as response:
                    got, answer = response.status, json.loads(response.read())
            except urllib.error.HTTPError as e:
                got, answer = e.code, json.loads(e.read())
            assert got == status, (handle, answer)
            if status == 422:
                assert "'handle'" in answer["error"]["message"], answer
                assert answer["error"]["errors"][0]["path"] == "handle", answer


# ---- a handle from a server that was restarted --------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(backend: str, port: int) -> Iterator[str]:
    """`chainrule serve` of the `backend` component in its own process on `port`."""
    target = f"{HERE / 'handle_components.py'}:{backend}"
    argv = [sys.executable, "-m", "chainrule", "serve", target, "--port", str(port)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        proc.stderr.read().decode() if proc.stderr else ""
                    ) from None
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(30)
        if proc.stderr:
            proc.stderr.close()


def _restarted(backend: str, keep: Any, use: Any) -> None:
    """`keep(remote)` on a server, restart it on the same port, let another client keep at
    another point on the new server (where a handle id could repeat), then `use(remote)`."""
    port = _free_port()
    with served(backend, port) as url:
        remote = cr.connect(url)
        kept = keep(remote)
    with served(backend, port) as url:
        other = cr.connect(url)
        _, h = other.apply(Q, keep=True)
        other.vjp(Q, {"y": CT_Q}, handle=h)  # memoizes on that residual
        use(remote, other, kept)
        remote.close()
        other.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_handle_from_a_restarted_server(backend: str) -> None:
    def keep(remote: Any) -> Any:
        return remote.apply(P, keep=True)[1]

    def use(remote: Any, other: Any, h: Any) -> None:
        got = remote.vjp(P, {"y": CT}, handle=h)
        _same(got, other.vjp(P, {"y": CT}), backend)
        np.testing.assert_allclose(got["x"], exact_vjp(P, CT), rtol=RTOL[backend])

    _restarted(backend, keep, use)


# ---- inside the framework bindings ----------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "written", "torch"])
def test_jax_binding_uses_its_handle_under_jit_grad(backend: str) -> None:
    import jax
    import jax.numpy as jnp

    import chainrule.jax as crj

    comp = make(backend)
    crj.call(comp, {**P, "x": jnp.asarray(X)})  # output shapes known before tracing

    # value_and_grad: the loss's value reads the outputs, so the forward runs and keeps its
    # linearization (a gradient alone would not need the forward at all: `dce`)
    @jax.jit
    @jax.value_and_grad
    def loss(x: jax.Array) -> jax.Array:
        return jnp.sum(crj.call(comp, {"x": x, "scale": 2.0, "copies": 1})["y"] * CT)

    hits = comp.residuals.hits
    got = np.asarray(loss(jnp.asarray(X))[1])
    if backend != "written":  # a written vjp needs no residual
        assert comp.residuals.hits == hits + 1, "the backward pass did not use its token"
    _same({"x": got}, comp.vjp(P, {"y": CT}), backend)


@pytest.mark.parametrize("backend", ["numpy", "written", "torch"])
def test_jax_binding_recomputes_after_eviction(backend: str) -> None:
    import jax
    import jax.numpy as jnp

    import chainrule.jax as crj

    comp = make(backend, residual_bytes=1)
    crj.call(comp, {**P, "x": jnp.asarray(X)})
    grad = jax.jit(jax.grad(lambda x: jnp.sum(crj.call(comp, {**P, "x": x})["y"] * CT)))
    _same({"x": np.asarray(grad(jnp.asarray(X)))}, comp.vjp(P, {"y": CT}), backend)


def test_jax_binding_with_a_handle_from_a_restarted_server() -> None:
    """Forward (keep) on one server, backward after it was restarted: recompute, right."""
    import jax
    import jax.numpy as jnp

    import chainrule.jax as crj

    def keep(remote: Any) -> Any:
        remote.apply(P)
        f = lambda x: crj.call(remote, {**P, "x": x})["y"]  # noqa: E731
        return jax.vjp(f, jnp.asarray(X))[1]  # the forward ran: a kept linearization

    def use(remote: Any, other: Any, pull: Any) -> None:
        got = np.asarray(pull(jnp.asarray(CT))[0])
        _same({"x": got}, other.vjp(P, {"y": CT}), "numpy")

    _restarted("numpy", keep, use)


def test_torch_binding_uses_its_handle_in_backward() -> None:
    import torch

    import chainrule.torch as crt

    comp = make("jax")
    x = torch.tensor(X, requires_grad=True)
    y = crt.call(comp, {"x": x, "scale": 2.0, "copies": 1})["y"]
    hits = comp.residuals.hits
    (y * torch.tensor(CT)).sum().backward()
    assert comp.residuals.hits == hits + 1
    assert x.grad is not None
    _same({"x": x.grad.numpy()}, comp.vjp(P, {"y": CT}), "jax")


def test_torch_binding_with_a_handle_from_a_restarted_server() -> None:
    import torch

    import chainrule.torch as crt

    def keep(remote: Any) -> Any:
        x = torch.tensor(X, requires_grad=True)
        return x, crt.call(remote, {**P, "x": x})["y"]

    def use(remote: Any, other: Any, kept: Any) -> None:
        x, y = kept
        (y * torch.tensor(CT)).sum().backward()
        _same({"x": x.grad.numpy()}, other.vjp(P, {"y": CT}), "numpy")

    _restarted("numpy", keep, use)
