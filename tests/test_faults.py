"""Faults: a killed server mid-optimization, a hung component, a raising component.

(A component returning NaN is `tests/test_finite.py`; bad input is `tests/test_server.py`
and `tests/test_fuzz.py`.)
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import chainrule as cr
import chainrule.jax as crj

FIXTURES = Path(__file__).parent / "fixtures"


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


def _descend(square: cr.Component, steps: int, on_step: Any = None) -> np.ndarray:
    """Gradient descent on Σ(x² - t)² through a remote component under jit(value_and_grad)."""
    target = jnp.array([2.0, 3.0, 0.5])

    def loss(x: jax.Array) -> jax.Array:
        return jnp.sum((crj.call(square, {"x": x})["y"] - target) ** 2)

    step = jax.jit(jax.value_and_grad(loss))
    x = jnp.array([1.0, 1.0, 1.0])
    for i in range(steps):
        _, g = step(x)
        x = x - 0.05 * g
        if on_step is not None:
            on_step(i)
    return np.asarray(x)


@pytest.mark.usefixtures("x64")  # a JAX program in float64
@pytest.mark.slow
def test_a_server_killed_mid_optimization_is_restarted_and_the_answer_is_unchanged(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    cache = tmp_path_factory.mktemp("fault-envs")
    launched = cr.launch(FIXTURES / "numpy2", cache_dir=cache, quiet=True)
    with launched as square:
        crj.call(square, {"x": jnp.ones(3)})  # one eager call: output shapes, for jit
        undisturbed = _descend(square, 30)
        killed = threading.Event()

        def kill_soon(i: int) -> None:
            if i == 10:  # kill from another thread, so it lands mid-call or between calls

                def kill() -> None:
                    time.sleep(0.01)
                    assert launched.process is not None
                    os.killpg(launched.process.pid, signal.SIGKILL)
                    killed.set()

                threading.Thread(target=kill).start()

        disturbed = _descend(square, 30, kill_soon)
    assert killed.is_set() and launched.restarts == 1
    assert "restarting it on port" in launched.log
    # kept linearizations died with the server: the next vjp recomputed, same numbers
    np.testing.assert_array_equal(disturbed, undisturbed)


def test_a_hung_component_hits_the_client_timeout_and_the_server_keeps_serving() -> None:
    release = threading.Event()

    def maybe_hang(inputs: In) -> Out:
        if inputs.x[0] > 0:
            release.wait(60)  # hangs until the test lets it go
        return Out(y=inputs.x)

    comp = cr.component(maybe_hang, inputs=In, outputs=Out, backend="numpy", name="hangs")
    try:
        with cr.serve(comp) as server:
            remote = cr.connect(server.url, timeout=0.5)
            start = time.monotonic()
            with pytest.raises(cr.TransportError, match=r"did not answer within 0.5 s"):
                remote.apply({"x": np.ones(2)})
            assert time.monotonic() - start < 5, "the timeout did not stop the wait"
            # the hung call holds one worker thread; everything else is still answered
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as answer:
                assert answer.status == 200
            np.testing.assert_array_equal(remote.apply({"x": -np.ones(2)}).y, -np.ones(2))
    finally:
        release.set()


@pytest.mark.usefixtures("x64")  # a JAX program in float64
def test_a_raising_component_returns_its_message_and_keeps_serving() -> None:
    def fragile(inputs: In) -> Out:
        if inputs.x[0] < 0:
            raise ArithmeticError(f"the model is undefined at x = {inputs.x[0]}")
        return Out(y=inputs.x * 2)

    comp = cr.component(fragile, inputs=In, outputs=Out, backend="numpy", name="fragile")
    with cr.serve(comp) as server:
        remote = cr.connect(server.url)
        for _ in range(3):
            with pytest.raises(cr.ComponentError) as caught:
                remote.apply({"x": [-1.5, 0.0]})
            assert "component 'fragile' raised in apply" in str(caught.value)
            assert "ArithmeticError: the model is undefined at x = -1.5" in str(caught.value)
            np.testing.assert_array_equal(remote.apply({"x": [1.0]}).y, [2.0])
        # and inside jitted JAX code, as itself
        with pytest.raises(cr.ComponentError, match=r"undefined at x = -1\.5"), crj.errors():
            remote.apply({"x": [1.0, 1.0]})  # shapes for jit
            jax.jit(lambda x: crj.call(remote, {"x": x})["y"])(jnp.array([-1.5, 1.0]))


def test_an_error_message_no_encoder_can_write_still_gets_a_json_answer() -> None:
    """An author's exception message holding a lone surrogate once broke the error response
    itself (a plain-text 500); it is sent with `\\u` escapes, and the client re-raises it."""

    def odd(inputs: In) -> Out:
        raise ValueError("half a pair: \ud800")

    comp = cr.component(odd, inputs=In, outputs=Out, backend="numpy", name="odd")
    with cr.serve(comp) as server:
        request = urllib.request.Request(
            f"{server.url}/apply",
            data=b'{"inputs": {"x": [1.0]}}',
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=10)
        assert caught.value.code == 500
        assert caught.value.headers["content-type"] == "application/json"
        error = json.loads(caught.value.read())["error"]
        assert error["type"] == "ComponentError" and error["message"].endswith("\ud800")
        with pytest.raises(cr.ComponentError, match="half a pair"):
            cr.connect(server.url).apply({"x": np.ones(1)})


def _hanging(release: threading.Event, name: str = "hangs") -> cr.Component:
    """A component whose apply hangs (until `release`) for inputs with a positive x[0]."""

    def maybe_hang(inputs: In) -> Out:
        if inputs.x.size and inputs.x[0] > 0:
            release.wait(120)
        return Out(y=inputs.x)

    return cr.component(maybe_hang, inputs=In, outputs=Out, backend="numpy", name=name)


def _post(url: str, body: bytes, timeout: float = 30) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


HANG = json.dumps({"inputs": {"x": [1.0]}}).encode()
QUICK = json.dumps({"inputs": {"x": [-1.0]}}).encode()


def test_hung_calls_do_not_block_other_clients_and_time_out_with_a_504() -> None:
    """Once, four hung calls took the pool's four threads and every other client waited
    forever. Now the pool grows (to max_threads), a call past call_timeout is answered 504
    naming the component and endpoint, and when every thread is hung the answer is 503."""
    release = threading.Event()
    answers: list[tuple[int, dict[str, Any]]] = []

    def hang(url: str, count: int) -> list[threading.Thread]:
        calls = [
            threading.Thread(target=lambda: answers.append(_post(f"{url}/apply", HANG)))
            for _ in range(count)
        ]
        for call in calls:
            call.start()
        return calls

    try:
        with cr.serve(_hanging(release), call_timeout=2.0, max_threads=6) as server:
            hung = hang(server.url, 4)
            time.sleep(0.5)
            start = time.monotonic()
            status, answer = _post(f"{server.url}/apply", QUICK, timeout=10)
            assert status == 200 and answer["outputs"]["y"] == [-1.0], answer  # not blocked
            assert time.monotonic() - start < 1.5, "a call waited behind the hung ones"
            hung += hang(server.url, 2)  # 6 threads, all hung within 2 s
            for thread in hung:
                thread.join(10)
            assert [status for status, _ in answers] == [504] * 6, answers
            error = answers[0][1]["error"]
            assert error["type"] == "TransportError"
            assert "/apply of component 'hangs' did not finish within" in error["message"]
            assert "call_timeout of 2.0 s" in error["message"]
            # all 6 threads are hung: a new call is refused at once, and /health says so
            with pytest.raises(cr.TransportError, match="all 6 worker threads are running"):
                cr.connect(server.url).apply({"x": -np.ones(1)})  # the client re-raises it
            start = time.monotonic()
            status, answer = _post(f"{server.url}/apply", QUICK, timeout=10)
            assert status == 503 and time.monotonic() - start < 1.0, answer
            assert "all 6 worker threads are running calls past" in answer["error"]["message"]
            with urllib.request.urlopen(f"{server.url}/health", timeout=5) as health:
                assert json.loads(health.read())["hung"] == 6
            release.set()  # the hung calls return: their threads serve again
            time.sleep(0.5)
            status, answer = _post(f"{server.url}/apply", QUICK, timeout=10)
            assert status == 200, answer
    finally:
        release.set()


def test_a_call_waiting_for_a_busy_pool_gets_a_503_at_its_timeout() -> None:
    release = threading.Event()
    try:
        with cr.serve(_hanging(release), call_timeout=1.0, max_threads=1) as server:
            first = threading.Thread(target=_post, args=(f"{server.url}/apply", HANG))
            first.start()
            time.sleep(0.3)  # the one thread runs the hanging call, not yet past its timeout
            status, answer = _post(f"{server.url}/apply", QUICK)
            first.join(10)
        assert status == 503, answer
        assert "no worker thread became free within 1.0 s" in answer["error"]["message"]
    finally:
        release.set()


SERVE_HANG = """
import time

import chainrule as cr


class In(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Out(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


def fn(inputs: In) -> Out:
    if inputs.x[0] > 0:
        time.sleep(600)
    return Out(y=inputs.x)


hang = cr.component(fn, inputs=In, outputs=Out, backend="numpy", name="hang")
"""


def test_serve_exits_on_sigterm_while_a_call_hangs(tmp_path: Path) -> None:
    """`chainrule serve` once waited forever on SIGTERM for a hung call whose client had
    left; it now waits `--shutdown-timeout` seconds for calls in progress, then exits."""
    import socket
    import subprocess
    import sys

    from chainrule._transport.launch.launch import free_port

    (tmp_path / "hang.py").write_text(SERVE_HANG)
    port = free_port()
    command = [sys.executable, "-m", "chainrule", "serve", f"{tmp_path / 'hang.py'}:hang"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--shutdown-timeout", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "no server"
                time.sleep(0.1)
        client = socket.create_connection(("127.0.0.1", port))  # a call that hangs...
        head = f"POST /apply HTTP/1.1\r\nHost: x\r\nContent-Length: {len(HANG)}\r\n"
        client.sendall(f"{head}Content-Type: application/json\r\n\r\n".encode() + HANG)
        time.sleep(0.5)
        client.close()  # ... and its client leaves
        time.sleep(0.2)
        start = time.monotonic()
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
        assert time.monotonic() - start < 10, "the shutdown deadline was not kept"
        assert code in (0, -signal.SIGTERM), server.stdout.read() if server.stdout else ""
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout:
            server.stdout.close()
