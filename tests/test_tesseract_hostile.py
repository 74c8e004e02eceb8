"""Bad input to the Tesseract routes of a chainrule server: a 4xx naming the field, never a
500, and work bounded by the server's limits before anything is allocated."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import chainrule as cr


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[(None,), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[(None,), cr.Float64]]


def _double(inputs: Inputs) -> Outputs:
    return Outputs(y=2 * inputs.x)


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    comp = cr.component(_double, inputs=Inputs, outputs=Outputs, backend="numpy")
    with cr.serve(comp, max_elements=1000) as server:
        yield server.url + "/tesseract"


def _post(url: str, body: Any) -> tuple[int, str]:
    data = json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _array(x: np.ndarray, **changes: Any) -> dict[str, Any]:
    buffer = base64.b64encode(x.tobytes()).decode()
    node = {"object_type": "array", "shape": list(x.shape), "dtype": "float64",
            "data": {"buffer": buffer, "encoding": "base64"}}  # fmt: skip
    return node | changes


X = np.arange(3.0)


def test_a_well_formed_request_is_answered(url: str) -> None:
    status, text = _post(f"{url}/apply", {"inputs": {"x": _array(X)}})
    assert status == 200, text
    y = json.loads(text)["y"]
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(y["data"]["buffer"])), 2 * X)


@pytest.mark.parametrize(
    "node",
    [
        _array(X, shape=[10**12]),  # a shape its buffer does not hold
        _array(X, data={"buffer": "!!!", "encoding": "base64"}),  # not base64
        _array(X, data={"buffer": [1, "a", 3], "encoding": "json"}),  # not numbers
        _array(X, dtype="float77"),  # no such dtype
        _array(X, data={"encoding": "base64"}),  # no buffer
    ],
    ids=["shape", "base64", "json", "dtype", "buffer"],
)
def test_a_malformed_array_is_a_422_naming_its_path(url: str, node: dict[str, Any]) -> None:
    for route, body in [
        ("apply", {"inputs": {"x": node}}),
        ("vector_jacobian_product", {"inputs": {"x": _array(X)}, "vjp_inputs": ["x"],
                                     "vjp_outputs": ["y"], "cotangent_vector": {"y": node}}),
    ]:  # fmt: skip
        status, text = _post(f"{url}/{route}", body)
        assert status == 422, (route, status, text)
        assert "x" in json.dumps(json.loads(text)["detail"][0]["loc"]) or "y" in text


def test_abstract_shapes_over_the_limit_are_refused_before_allocating(url: str) -> None:
    huge = {"x": {"shape": [10**12], "dtype": "float64"}}  # 8 TB of zeros, if allocated
    status, text = _post(f"{url}/abstract_eval", {"inputs": huge})
    assert status == 413, text
    detail = json.loads(text)["detail"][0]
    assert detail["loc"] == ["body", "inputs", "x"] and "<= 1000 elements" in detail["msg"]
    status, text = _post(f"{url}/abstract_eval", {"inputs": {"x": {"shape": [-1], "dtype": "f8"}}})
    assert status == 422, text
    status, text = _post(f"{url}/abstract_eval", {"inputs": {"x": {"shape": [3], "dtype": "f8"}}})
    assert status == 200, text
    assert json.loads(text)["y"]["shape"] == [3]


@pytest.mark.parametrize(
    ("route", "changes", "named"),
    [
        ("jacobian", {"jac_inputs": 5}, "jac_inputs"),
        ("jacobian", {"jac_outputs": ["nope"]}, "nope"),
        ("jacobian_vector_product", {"tangent_vector": [1, 2]}, "tangent_vector"),
        ("vector_jacobian_product", {"cotangent_vector": {"y": _array(X), "zz": _array(X)}}, "zz"),
        ("vector_jacobian_product", {"vjp_inputs": "x"}, "vjp_inputs"),
    ],
)
def test_a_malformed_derivative_request_is_a_422_naming_the_field(
    url: str, route: str, changes: dict[str, Any], named: str
) -> None:
    body = {
        "inputs": {"x": _array(X)},
        **{"jac_inputs": ["x"], "jac_outputs": ["y"], "jvp_inputs": ["x"], "jvp_outputs": ["y"]},
        **{"vjp_inputs": ["x"], "vjp_outputs": ["y"]},
        **{"tangent_vector": {"x": _array(X)}, "cotangent_vector": {"y": _array(X)}},
    }
    keys = {
        "jacobian": ("jac_inputs", "jac_outputs"),
        "jacobian_vector_product": ("jvp_inputs", "jvp_outputs", "tangent_vector"),
        "vector_jacobian_product": ("vjp_inputs", "vjp_outputs", "cotangent_vector"),
    }[route]
    request = {"inputs": body["inputs"], **{k: body[k] for k in keys}, **changes}
    status, text = _post(f"{url}/{route}", request)
    assert status == 422, (status, text)
    assert json.loads(text)["detail"][0]["loc"] == ["body", named], text
