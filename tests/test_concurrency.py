"""Concurrent calls give the serial answers: every endpoint × backend × transport under load.

Each call has its own point and vectors, so an answer computed with another call's state
(torch's process-global forward-AD levels were one such state) shows as a wrong value, not
only as an error. The calls run from a thread pool in-process, and over HTTP against a server
in this process (its worker threads run them), mixed in a random order, and every answer is
compared with the one the same call gave alone.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

import chainrule as cr
from cases import CASES, build

VECTOR = CASES[0]  # y = scale·sin(x) + x², s = Σx³, n = len(x)
CALLS = 24  # per endpoint: enough to overlap on 8 threads, few enough to stay fast
THREADS = 8

Call = Callable[[cr.Component], Any]


def _calls(comp: cr.Component, rng: np.random.Generator) -> dict[str, list[Call]]:
    """`{endpoint: [call, ...]}`, each call at its own point with its own vectors."""
    calls: dict[str, list[Call]] = {}

    def add(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        calls.setdefault(name, []).append(lambda c: fn(c, *args, **kwargs))

    for _ in range(CALLS):
        # two static values: the jax backend compiles per static signature, once each
        x = {"x": rng.uniform(-1, 1, 5), "scale": float(rng.choice([1.0, 2.0]))}
        t, t2 = {"x": rng.standard_normal(5)}, {"x": rng.standard_normal((3, 5))}
        c = {"y": rng.standard_normal(5), "s": float(rng.standard_normal())}
        c2 = {"y": rng.standard_normal((2, 5)), "s": rng.standard_normal(2)}
        add("apply", lambda comp, x: comp.apply(x).model_dump(), x)
        add("eval_shape", lambda comp, x: str(comp.eval_shape(x)), x)
        add("jvp", lambda comp, x, t: comp.jvp(x, t), x, t)
        add("vjp", lambda comp, x, c: comp.vjp(x, c), x, c)
        add("jacobian", lambda comp, x: comp.jacobian(x), x)
        add("batched_jvp", lambda comp, x, t: comp.batched_jvp(x, t), x, t2)
        add("batched_vjp", lambda comp, x, c: comp.batched_vjp(x, c), x, c2)
        add("kept jvp", _kept("jvp"), x, t)
        add("kept vjp", _kept("vjp"), x, c)
        if "hvp" in comp.endpoints:
            add("hvp", lambda comp, x, t, c: comp.hvp(x, t, cotangents=c), x, t, c)
    return calls


def _kept(endpoint: str) -> Callable[..., Any]:
    """apply(keep=True), then the endpoint with the handle: the kept linearization's path."""

    def call(comp: cr.Component, x: Any, v: Any) -> Any:
        out, handle = comp.apply(x, keep=True)
        try:
            return out.model_dump(), getattr(comp, endpoint)(x, v, handle=handle)
        finally:
            comp.release(handle)

    return call


def _same(got: Any, want: Any, where: str) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for k in want:
            _same(got[k], want[k], f"{where}.{k}")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for k, (a, b) in enumerate(zip(got, want, strict=True)):
            _same(a, b, f"{where}.{k}")
    elif isinstance(want, (np.ndarray, float)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=where)
    else:
        assert got == want, where


@pytest.fixture(params=["jax", "torch", "numpy", "written"])
def component(request: pytest.FixtureRequest) -> cr.Component:
    return build(VECTOR, str(request.param))


@pytest.fixture(params=["in-process", "http"])
def target(request: pytest.FixtureRequest, component: cr.Component) -> Iterator[cr.Component]:
    if request.param == "in-process":
        yield component
        return
    with cr.serve(component) as server:
        client = cr.connect(server.url)
        yield client
        client.close()


def _outcome(call: Call, comp: cr.Component) -> tuple[str, Any]:
    """What a call gives: its answer, or the class and message of the error it raises."""
    try:
        return "answer", call(comp)
    except cr.ChainruleError as e:  # e.g. eval_shape of a NumPy component needs apply
        return type(e).__name__, str(e)


def test_concurrent_calls_give_the_serial_answers(target: cr.Component) -> None:
    calls = _calls(target, np.random.default_rng(0))
    jobs = [(name, k, call) for name, group in calls.items() for k, call in enumerate(group)]
    serial = {(name, k): _outcome(call, target) for name, k, call in jobs}
    random.Random(1).shuffle(jobs)
    with ThreadPoolExecutor(THREADS) as pool:
        futures = {(name, k): pool.submit(_outcome, call, target) for name, k, call in jobs}
        answers = {key: future.result() for key, future in futures.items()}
    for key, want in serial.items():
        _same(answers[key], want, f"{key[0]} #{key[1]}")
