"""`chainrule.ray`: components deployed as Ray actors, on one simulated cluster of two nodes
bound to 127.0.0.1 (`ray.cluster_utils.Cluster`: two raylets and object stores, in a child
process of ours that shuts them down) shared by the whole module.

The `chainrule.jax.call` transformation table (tests/test_jax_binding.py) runs again here,
through a deployed component of each backend: its tests are imported, and this module's `kind`
fixture gives them deployed components. (`raycluster` sets what Ray reads when it is imported:
nothing here imports Ray before it.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chainrule as cr
import chainrule.jax as crj
import raycluster
from cases import CASES, build
from chainrule._scale.transport import PUT_BYTES, RayTransport
from ray_components import in_place, where
from test_jax_binding import (  # noqa: F401  (collected again, over deployed components)
    X,
    test_checkpoint_scan_and_fori_loop,
    test_jacobians,
    test_jvp_vjp_linearize,
    test_second_order,
    test_value_and_grad_under_jit,
    test_vmap,
    through,
)

pytestmark = pytest.mark.usefixtures("x64")
FIXTURES = Path(__file__).parent / "fixtures"
BACKENDS = ("jax", "torch", "numpy", "written")


@pytest.fixture(scope="module")
def cluster() -> Iterator[raycluster.Nodes]:
    with raycluster.simulated_nodes(count=2, num_cpus=1) as nodes:
        yield nodes


@pytest.fixture(scope="module")
def deployed(cluster: raycluster.Nodes) -> Iterator[dict[str, cr.Component]]:
    """The `vector` case of each backend, deployed (one replica each)."""
    with (
        cr.ray.deploy(build(CASES[0], "jax")) as jax_,
        cr.ray.deploy(build(CASES[0], "torch")) as torch_,
        cr.ray.deploy(build(CASES[0], "numpy")) as numpy_,
        cr.ray.deploy(build(CASES[0], "written")) as written,
    ):
        yield {"jax": jax_, "torch": torch_, "numpy": numpy_, "written": written}


@pytest.fixture(params=BACKENDS)
def kind(
    request: pytest.FixtureRequest, deployed: dict[str, cr.Component]
) -> tuple[str, cr.Component]:
    """Overrides test_jax_binding's `kind`: the same backends, each deployed on Ray."""
    name = str(request.param)
    comp = deployed[name]
    through(comp)(X)  # a numpy component learns its output shapes from one eager call
    return name, comp


@pytest.fixture(scope="module")
def pids(cluster: raycluster.Nodes) -> Iterator[cr.Component]:
    """`where` (says which process ran it) on 4 replicas."""
    with cr.ray.deploy(where, replicas=4) as comp:
        yield comp


def transport_of(component: cr.Component) -> RayTransport:
    transport = component.backend.transport  # type: ignore[attr-defined]
    assert isinstance(transport, RayTransport)
    return transport


def replica_pid(component: cr.Component, index: int) -> int:
    import ray

    return int(ray.get(transport_of(component).actors[index].pid.remote()))


# ---- batches over the replicas


def test_vmap_of_64_designs_is_one_batched_apply_split_over_the_replicas(
    pids: cr.Component, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = transport_of(pids)
    sent: list[str] = []
    call = transport.call
    monkeypatch.setattr(transport, "call", lambda e, r: sent.append(e) or call(e, r))
    designs = np.linspace(-1.0, 1.0, 64 * 3).reshape(64, 3)

    def f(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = crj.call(pids, {"x": x})
        return out["y"], out["process"]

    serial = np.stack([np.asarray(f(d)[0]) for d in designs])
    sent.clear()
    ys, processes = jax.vmap(f)(designs)
    assert sent == ["batched_apply"]  # one request for the 64 designs
    np.testing.assert_array_equal(np.asarray(ys), serial)
    np.testing.assert_allclose(serial, designs**3 - designs, rtol=1e-15)
    rows = np.asarray(processes).tolist()  # which replica's process answered each design
    assert [rows.count(p) for p in dict.fromkeys(rows)] == [16] * 4, rows


def test_jit_vmap_grad_over_the_replicas_matches_finite_differences(
    pids: cr.Component, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One batched_apply and one vjp at the 16 points, each split over the 4 replicas."""
    transport = transport_of(pids)
    sent: list[str] = []
    submit = transport._submit
    monkeypatch.setattr(
        transport, "_submit", lambda i, e, r, *a: sent.append(e) or submit(i, e, r, *a)
    )
    designs = np.linspace(-1.0, 1.0, 16 * 3).reshape(16, 3)
    loss = lambda x: jnp.sum(crj.call(pids, {"x": x})["y"] ** 2)  # noqa: E731
    grads = np.asarray(jax.jit(jax.vmap(jax.grad(loss)))(designs))
    assert sent == ["batched_apply"] * 4 + ["vjp"] * 4  # a slice of the points per replica
    monkeypatch.undo()
    batch = jax.vmap(loss)  # central differences, each shift of the 16 designs one batch
    h = 1e-6
    fd = np.stack(
        [(batch(designs + h * e) - batch(designs - h * e)) / (2 * h) for e in np.eye(3)], axis=1
    )
    np.testing.assert_allclose(grads, fd, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(grads, 2 * (designs**3 - designs) * (3 * designs**2 - 1), rtol=1e-13)


def test_vmap_of_jvp_over_the_replicas_slices_the_tangents_with_the_points(
    pids: cr.Component, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = transport_of(pids)
    sent: list[str] = []
    submit = transport._submit
    monkeypatch.setattr(
        transport, "_submit", lambda i, e, r, *a: sent.append(e) or submit(i, e, r, *a)
    )
    designs = np.linspace(-1.0, 1.0, 8 * 3).reshape(8, 3)
    ts = np.cos(3 * designs)
    f = lambda x: crj.call(pids, {"x": x})["y"]  # noqa: E731
    _, found = jax.jit(jax.vmap(lambda x, t: jax.jvp(f, (x,), (t,))))(designs, ts)
    assert sent == ["batched_apply"] * 4 + ["jvp"] * 4
    monkeypatch.undo()
    np.testing.assert_allclose(found, (3 * designs**2 - 1) * ts, rtol=1e-13)
    h = 1e-6
    fd = (jax.vmap(f)(designs + h * ts) - jax.vmap(f)(designs - h * ts)) / (2 * h)
    np.testing.assert_allclose(found, fd, rtol=1e-7, atol=1e-9)


def test_the_replicas_are_spread_over_both_nodes_and_answer_from_each(
    cluster: raycluster.Nodes, pids: cr.Component
) -> None:
    import ray

    def node_of(actor: Any) -> str:  # the node the replica's actor runs on
        found = actor.__ray_call__.remote(lambda _: ray.get_runtime_context().get_node_id())
        return str(ray.get(found, timeout=60))

    nodes = set(cluster.node_ids)
    placed = [node_of(a) for a in transport_of(pids).actors]
    assert len(nodes) == 2 and set(placed) == nodes, (placed, nodes)
    x = np.linspace(-2.0, 2.0, 8 * 3).reshape(8, 3)
    ys, processes = jax.vmap(
        lambda v: tuple(crj.call(pids, {"x": v})[k] for k in ("y", "process"))
    )(x)
    np.testing.assert_array_equal(np.asarray(ys), x**3 - x)
    on = {replica_pid(pids, i): node for i, node in enumerate(placed)}
    assert {on[int(p)] for p in np.asarray(processes)} == nodes  # both nodes answered
    grad = jax.grad(lambda v: jnp.sum(crj.call(pids, {"x": v})["y"]))(x[0])
    np.testing.assert_allclose(grad, 3 * x[0] ** 2 - 1, rtol=1e-15)


def test_map_spreads_the_inputs_over_the_replicas_in_order(pids: cr.Component) -> None:
    xs = [np.full(2, float(i)) for i in range(16)]
    outs = cr.map(pids, [{"x": x, "delay": 0.05} for x in xs])
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out.y, x**3 - x)
    assert len({out.pid for out in outs}) >= 2, "every call ran on the same replica"
    plain = cr.map(build(CASES[0], "numpy"), [{"x": x} for x in xs[:3]])  # not deployed
    assert [o.n for o in plain] == [2, 2, 2]


def test_a_batched_apply_is_split_across_the_replicas_in_order(pids: cr.Component) -> None:
    x = np.arange(24.0).reshape(8, 3)
    request = {"inputs": {"x": x, "delay": 0.0}, "batched": ["x"]}
    answer = transport_of(pids).call("batched_apply", request)
    np.testing.assert_array_equal(answer["result"]["y"], x**3 - x)
    rows = list(answer["result"]["process"])
    assert rows == sorted(rows, key=rows.index)  # each replica answered one contiguous slice
    assert len(set(rows)) == 4 and [rows.count(p) for p in dict.fromkeys(rows)] == [2] * 4


def test_the_starts_of_a_multistart_optimize_run_at_once_over_the_replicas(
    pids: cr.Component, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = transport_of(pids)
    most = [0]  # the most calls in flight at once, over all replicas
    route = transport._route

    def counting(handle: object) -> int:
        index = route(handle)
        most[0] = max(most[0], sum(transport._busy))
        return index

    monkeypatch.setattr(transport, "_route", counting)
    loss = lambda x: jnp.sum(crj.call(pids, {"x": x, "delay": 0.01})["y"] ** 2)  # noqa: E731
    starts = [np.array([s, -s]) for s in (0.2, 0.5, 1.3, -1.6)]
    run = lambda workers: cr.optimize(  # noqa: E731
        loss, starts, method="sgd", learning_rate=0.05, max_steps=8, tol=None,
        multistart=True, workers=workers, progress=False,
    )  # fmt: skip
    alone = run(1)
    assert most[0] == 1
    together = run(4)
    assert most[0] >= 2, "the starts did not overlap"
    for a, b in zip(alone.runs, together.runs, strict=True):
        np.testing.assert_array_equal(a.history.objective, b.history.objective)
        np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(together.x, alone.x)  # the same best start


# ---- data


def test_a_large_input_is_put_once_for_apply_and_vjp(
    pids: cr.Component, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = transport_of(pids)
    puts: list[int] = []
    real_put = transport._ray.put
    monkeypatch.setattr(transport._ray, "put", lambda v: puts.append(1) or real_put(v))
    x = np.linspace(0.0, 1.0, PUT_BYTES // 8 + 5)  # just over the threshold
    out, handle = pids.apply({"x": x}, keep=True)
    assert len(puts) == 1
    pids.apply({"x": x})
    grad = pids.vjp({"x": x}, {"y": np.ones_like(x)}, handle=handle)
    np.testing.assert_allclose(grad["x"], 3 * x**2 - 1, rtol=1e-15)
    assert len(puts) == 2  # x once for all three calls, and the (as large) cotangent
    assert not out.y.flags.writeable  # outputs are views of the object store (documented)


def test_inputs_are_read_only_unless_deployed_writable(cluster: raycluster.Nodes) -> None:
    x = np.array([1.0, 2.0])
    with cr.ray.deploy(in_place) as strict, cr.ray.deploy(in_place, writable_inputs=True) as free:
        with pytest.raises(cr.ComponentError, match="is read-only"):
            strict.apply({"x": x})
        np.testing.assert_array_equal(free.apply({"x": x}).x, [2.0, 4.0])
    np.testing.assert_array_equal(x, [1.0, 2.0])  # the caller's array is never written


def test_torch_call_through_a_deployed_component(deployed: dict[str, cr.Component]) -> None:
    import torch

    import chainrule.torch as crt

    x = torch.tensor([0.3, -0.7, 1.2], dtype=torch.float64, requires_grad=True)
    out = crt.call(deployed["jax"], {"x": x, "scale": 1.5})
    (out["y"].sum() + out["s"]).backward()
    want = 1.5 * torch.cos(x.detach()) + 2 * x.detach() + 3 * x.detach() ** 2
    torch.testing.assert_close(x.grad, want, rtol=1e-12, atol=1e-12)


# ---- residuals on replicas


def test_a_handle_is_used_on_its_replica_and_recomputed_if_it_died(
    pids: cr.Component, monkeypatch: pytest.MonkeyPatch
) -> None:
    transport = transport_of(pids)
    sent: list[tuple[int, str]] = []
    submit = transport._submit
    monkeypatch.setattr(
        transport, "_submit", lambda i, e, r: sent.append((i, e)) or submit(i, e, r)
    )
    x = np.array([0.5, -1.5, 2.0])
    out, handle = pids.apply({"x": x}, keep=True)
    index = sent[-1][0]
    assert out.pid == replica_pid(pids, index)
    want = 3 * x**2 - 1
    for _ in range(3):  # vjps named by the handle go where it lives, whatever the load
        grad = pids.vjp({"x": x}, {"y": np.ones(3)}, handle=handle)["x"]
        np.testing.assert_array_equal(grad, want)
    assert sent[1:] == [(index, "vjp")] * 3
    os.kill(out.pid, signal.SIGKILL)  # the replica, and the handle with it, is gone
    grad = pids.vjp({"x": x}, {"y": np.ones(3)}, handle=handle)["x"]  # recomputed: the same
    np.testing.assert_array_equal(grad, want)
    assert replica_pid(pids, index) != out.pid


# ---- faults


def _descend(component: cr.Component, steps: int, kill_after: float | None) -> np.ndarray:
    """Gradient descent on Σy² through `component`; optionally kill -9 its replica mid-way."""
    loss = jax.jit(
        jax.value_and_grad(
            lambda x: jnp.sum(crj.call(component, {"x": x, "delay": 0.02})["y"] ** 2)
        )
    )
    killer = None
    if kill_after is not None:
        pid = replica_pid(component, 0)
        killer = threading.Timer(kill_after, os.kill, (pid, signal.SIGKILL))
        killer.start()
    x = jnp.array([0.9, -0.4, 0.2])
    for _ in range(steps):
        _, g = loss(x)
        x = x - 0.05 * g
    if killer is not None:
        killer.join()
    return np.asarray(x)


def test_kill_9_mid_optimization_gives_the_undisturbed_answer(cluster: raycluster.Nodes) -> None:
    with cr.ray.deploy(where) as comp:
        calm = _descend(comp, 40, None)
        before = replica_pid(comp, 0)
        disturbed = _descend(comp, 40, kill_after=0.5)
        after = replica_pid(comp, 0)
    assert after != before, "the replica was not killed and restarted"
    np.testing.assert_array_equal(disturbed, calm)


def test_a_hung_replica_hits_the_call_timeout(cluster: raycluster.Nodes) -> None:
    with cr.ray.deploy(where, timeout=2.0) as comp:
        x = {"x": np.ones(2)}
        first = comp.apply(x).pid
        with pytest.raises(
            cr.TransportError,
            match=r"replica 0 did not answer /apply within the call timeout of 2 s, so it was "
            "restarted",
        ):
            comp.apply({**x, "delay": 1000.0})
        again = comp.apply(x)  # the restarted replica answers
        np.testing.assert_array_equal(again.y, np.zeros(2))
        assert again.pid != first


DRIVER = """
import sys
import numpy as np
import chainrule as cr
from ray_components import where

with cr.ray.deploy(where, replicas=2, address=sys.argv[1], num_cpus=0.5) as comp:
    out = comp.apply({"x": np.array([2.0])})
    assert out.y.tolist() == [6.0], out
print("joined", out.pid)
"""


def test_a_new_driver_joins_an_existing_cluster_by_address(cluster: raycluster.Nodes) -> None:
    env = {**os.environ, **raycluster.LOOPBACK, "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, cluster.address], env=env, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and "joined" in done.stdout, done.stderr[-3000:]


# ---- folders in their own environments


def test_a_folder_runs_in_its_own_environment_with_the_other_numpy_major(
    cluster: raycluster.Nodes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """numpy1 pins numpy<2, against this process's numpy 2: arrays cross as raw buffers."""
    assert int(np.__version__.split(".")[0]) == 2
    cache = tmp_path_factory.mktemp("envs")
    with cr.ray.deploy(FIXTURES / "numpy1", replicas=1, cache_dir=cache) as comp:
        x = np.array([1.0, -2.0, 3.0])
        out = comp.apply({"x": x})
        assert out.numpy_major == 1
        np.testing.assert_array_equal(out.y, x**2)
        grad = jax.grad(lambda v: jnp.sum(crj.call(comp, {"x": v})["y"]))(x)
        np.testing.assert_allclose(grad, 2 * x, rtol=1e-6)


def test_another_python_minor_is_refused_before_anything_is_built(
    cluster: raycluster.Nodes, tmp_path: Path
) -> None:
    folder = tmp_path / "py312"
    shutil.copytree(FIXTURES / "numpy2", folder)
    toml = folder / "chainrule.toml"
    toml.write_text(toml.read_text() + 'python = "3.12"\n')
    refused = pytest.raises(cr.LaunchError, match=r"key 'python'.*expected 3\.11, got 3\.12. Fix")
    with refused, cr.ray.deploy(folder, cache_dir=tmp_path / "envs"):
        pass
    assert not (tmp_path / "envs").exists()


def test_an_environment_with_another_ray_is_refused(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "lib" / "python3.11" / "site-packages" / "ray-2.59.0.dist-info").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\nversion = 3.11.7\n")
    with pytest.raises(
        cr.LaunchError,
        match=r"expected Python 3\.11 and ray 9\.9\.9, got Python 3\.11 and ray 2\.59\.0\. "
        r"Fix: add 'ray==9\.9\.9'",
    ):
        cr.ray.check_ray_env(venv / "bin" / "python", "9.9.9")
