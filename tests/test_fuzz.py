"""Fuzzing the HTTP face of components and the binary wire format.

- Schemathesis reads the OpenAPI document that served components publish and sends every
  operation bodies generated from it (valid and invalid by the schema), as JSON and again
  re-encoded as `application/x-chainrule`; a copy of the document whose array fields are
  turned into JSON Schema arrays of their declared shapes makes many requests reach the
  component itself. No answer may be a 5xx, every error must be structured, and the server
  keeps serving.
- Hypothesis builds valid binary bodies and corrupts them (truncations, header lengths,
  offsets, huge or negative shapes, bad dtypes, invalid headers, deep nesting): the decoder
  raises nothing but `WireFormatError`, and the live server answers 4xx, never 5xx.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

import chainrule as cr
from cases import CASES, NestIn, NestOut, Pair, build
from chainrule._transport import wire as _wire

# Examples per schemathesis operation and mode (the binary tests below ask for more).
# derandomize: the same examples on every run (CI stays deterministic); database=None: no
# .hypothesis/ folder in the work tree.
FUZZ = settings(
    max_examples=8,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
ERROR_TYPES = {
    "ChainruleError",
    "ValidationError",
    "UnknownPathError",
    "NotDifferentiableError",
    "WireFormatError",
    "EndpointUnavailableError",
    "ShapesUnknownError",
    "AuthenticationError",
}


# --------------------------------------------------------------------------------------------
# Served components


def _nested_numpy() -> cr.Component:
    """Nested schema (a list of models), numpy finite differences; total for any valid input."""

    def fn(inputs: NestIn) -> NestOut:
        h = np.ones(2)
        for layer in inputs.layers:
            h = h * np.tanh(layer.w @ inputs.x + layer.b)
        return NestOut(pair=Pair(first=h, total=(h**2).sum()), layers_used=len(inputs.layers))

    return cr.component(fn, inputs=NestIn, outputs=NestOut, backend="numpy", name="nested_fd")


COMPONENTS: dict[str, Callable[[], cr.Component]] = {
    "nested_fd": _nested_numpy,
    "matrix_jax": lambda: build(CASES[1], "jax"),  # named dimensions n, m
    "vector_torch": lambda: build(CASES[0], "torch"),  # every endpoint, hvp included
}


class Servers:
    """Each component served once per module, started on first use."""

    def __init__(self) -> None:
        self.servers: dict[str, cr.Server] = {}

    def __getitem__(self, name: str) -> cr.Server:
        if name not in self.servers:
            self.servers[name] = cr.serve(COMPONENTS[name]())
        return self.servers[name]

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.stop()


def _check_answer(status: int, ctype: str, content: bytes, what: str) -> None:
    """No 5xx; errors are structured chainrule errors; successes decode."""
    assert status < 500, f"{what}: {status} {content[:600]!r}"
    if status >= 400:
        error = json.loads(content)["error"]
        assert set(error) == {"type", "message", "errors"}, (what, error)
        assert error["type"] in ERROR_TYPES and error["message"], (what, error)
    elif "json" in ctype:
        json.loads(content)
    else:
        _wire.decode(content, ctype)


def _healthy(server: cr.Server) -> None:
    response = requests.get(f"{server.url}/health", timeout=10)
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok" and health["name"] == server.component.name, health


# --------------------------------------------------------------------------------------------
# Schemathesis


def _arrayify(value: Any) -> Any:
    """Numeric rectangular lists become numpy arrays (so the binary body carries arrays)."""
    if isinstance(value, dict):
        return {k: _arrayify(v) for k, v in value.items()}
    if isinstance(value, list) and value:
        try:
            array = np.asarray(value)
        except (ValueError, OverflowError, TypeError):
            array = None
        if array is not None and array.dtype.name in _wire.DTYPES and array.ndim <= 32:
            return array
        return [_arrayify(v) for v in value]
    return value


def _shaped(spec: dict[str, Any]) -> dict[str, Any] | None:
    """JSON Schema of nested lists with an array field's shape and dtype: free dimensions get
    0 to 2 items, named ones 2 (so that they agree across fields), fixed ones their size."""
    dtype = np.dtype(spec["dtype"])
    schema: dict[str, Any]
    if dtype.kind == "f":
        schema = {"type": "number"}
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        schema = {"type": "integer", "minimum": int(info.min), "maximum": int(info.max)}
    elif dtype.kind == "b":
        schema = {"type": "boolean"}
    else:
        return None
    for dim in reversed(spec["shape"]):
        if dim == "...":
            return None
        low, high = (dim, dim) if isinstance(dim, int) else (0, 2) if dim is None else (2, 2)
        schema = {"type": "array", "items": schema, "minItems": low, "maxItems": high}
    return schema


def _constrain(node: Any) -> Any:
    """The OpenAPI document with every `x-chainrule-array` field given a JSON Schema shape."""
    if isinstance(node, dict):
        out = {k: _constrain(v) for k, v in node.items()}
        spec = node.get("x-chainrule-array")
        shaped = _shaped(spec) if isinstance(spec, dict) else None
        return {**out, **shaped} if shaped else out
    if isinstance(node, list):
        return [_constrain(v) for v in node]
    return node


def _run_operation(
    operation: Any, mode: GenerationMode, server: cr.Server, session: requests.Session
) -> Counter[int]:
    """Fuzz one operation (JSON bodies, then the same as binary); the statuses seen."""
    statuses: Counter[int] = Counter()

    @FUZZ
    @given(case=operation.as_strategy(mode))
    def fuzz(case: Any) -> None:
        what = f"{case.method} {case.path} ({mode.value}) body={case.body!r:.300}"
        response = case.call(base_url=server.url, session=session, timeout=30)
        ctype = (response.headers.get("content-type") or [""])[0]
        _check_answer(response.status_code, ctype, response.content, what)
        statuses[response.status_code] += 1
        if case.method.upper() != "POST" or not isinstance(case.body, (dict, list)):
            return
        try:  # the same body, arrays and all, as application/x-chainrule
            body = _wire.encode(_arrayify(case.body), _wire.BINARY)
        except cr.WireFormatError:
            return
        answer = session.post(
            f"{server.url}{case.path}",
            data=body,
            headers={"Content-Type": _wire.BINARY, "Accept": _wire.BINARY},
            timeout=30,
        )
        ctype = answer.headers.get("content-type", "")
        _check_answer(answer.status_code, ctype, answer.content, f"binary {what}")
        statuses[answer.status_code] += 1
        if not isinstance(case.body, dict):
            return
        kind = HOSTILE[sum(statuses.values()) % len(HOSTILE)]
        answer = session.post(  # and a hostile variant of it (issue 12)
            f"{server.url}{case.path}",
            data=json.dumps(_hostile(case.body, kind, case.path)).encode(),  # ASCII escapes
            headers={"Content-Type": _wire.JSON},
            timeout=30,
        )
        ctype = answer.headers.get("content-type", "")
        _check_answer(answer.status_code, ctype, answer.content, f"{kind} {what}")

    fuzz()
    return statuses


HOSTILE = ("surrogate", "flood", "empty-batch")


def _hostile(body: dict[str, Any], kind: str, path: str) -> dict[str, Any]:
    """`body` with a lone surrogate key, 2,000 made-up keys, or (on batched routes) a batch of
    2**40 empty rows, where its inputs are (or at its top level)."""
    body = copy.deepcopy(body)
    inputs = body.get("inputs")
    target = inputs if isinstance(inputs, dict) else body
    if kind == "surrogate":
        target["\ud800"] = 1
    elif kind == "flood":
        target.update({f"k{i}": i for i in range(2000)})
    elif path.startswith("/batched"):
        key = "tangents" if path == "/batched_jvp" else "cotangents"
        rows = {"$array": {"dtype": "float64", "shape": [2**40, 0], "data": ""}}
        given = body.get(key)
        body[key] = {name: rows for name in (given if isinstance(given, dict) else "xy")}
    return body


def _ok(result: Any) -> Any:
    """The operation of a schemathesis `Result` (an invalid operation fails the test)."""
    return result.ok()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow in the component's own math
@pytest.mark.parametrize("name", list(COMPONENTS))
def test_schemathesis_finds_no_server_error(servers: Servers, name: str) -> None:
    server = servers[name]
    served = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    shaped = schemathesis.openapi.from_dict(_constrain(copy.deepcopy(document)))
    operations = [_ok(result) for result in served.get_all_operations()]
    labels = {op.label for op in operations}
    assert {f"POST /{e}" for e in server.component.endpoints} | {
        "GET /health",
        "GET /schema",
    } <= labels
    with requests.Session() as session:
        for operation in operations:
            _run_operation(operation, GenerationMode.POSITIVE, server, session)
            if operation.method.upper() == "POST":
                _run_operation(operation, GenerationMode.NEGATIVE, server, session)
        reached: Counter[int] = Counter()
        for result in shaped.get_all_operations():
            operation = _ok(result)
            if operation.method.upper() == "POST":
                reached += _run_operation(operation, GenerationMode.POSITIVE, server, session)
    assert reached[200] >= 10, reached  # the shaped document does reach the component
    _healthy(server)


# --------------------------------------------------------------------------------------------
# Bugs the fuzzing found (each answered 500 before its fix): regression tests


def _vjp_only() -> cr.Component:
    """`cases.vector` on numpy whose only derivative is a written vjp: every other one is
    derived from it by chainrule."""
    case = CASES[0]
    comp = cr.component(
        case.make(np), inputs=case.inputs, outputs=case.outputs, backend="numpy", name="vjp_only"
    )

    @comp.def_vjp
    def vjp(inputs: Any, cotangents: dict[str, Any]) -> dict[str, Any]:
        x, scale = inputs.x, inputs.scale
        y, s = cotangents.get("y", 0.0), cotangents.get("s", 0.0)  # either may be left out
        return {"x": (scale * np.cos(x) + 2 * x) * y + 3 * x**2 * s}

    return comp


COMPONENTS.update(
    {
        "vector_fd": lambda: build(CASES[0], "numpy"),
        "vector_jax": lambda: build(CASES[0], "jax"),
        "vjp_only": _vjp_only,
    }
)
X3 = {"x": [0.1, 0.5, 0.9]}


@pytest.mark.parametrize(
    ("name", "route", "body", "status"),
    [
        pytest.param(
            "vector_fd",
            "vjp",
            {"inputs": {"x": []}, "cotangents": {"y": []}},
            200,
            id="fd-vjp-empty-input",
        ),
        pytest.param(
            "vector_fd",
            "batched_vjp",
            {"inputs": {"x": []}, "cotangents": {"y": [[], []]}},
            200,
            id="fd-batched-vjp-empty-input",
        ),
        pytest.param(
            "vector_fd",
            "vjp",
            {"inputs": X3, "cotangents": {}},
            200,
            id="fd-vjp-no-cotangent",
        ),
        # derived from a written vjp, at an empty input: once a 500 "KeyError 'x'" blaming
        # the author (the derived Jacobian's basis was a batch of 0 rows)
        *[
            pytest.param(
                "vjp_only",
                route,
                {"inputs": {"x": []}, **extra},
                200,
                id=f"vjp-only-{route}-empty-input",
            )
            for route, extra in [
                ("jvp", {"tangents": {"x": []}, "of": ["y"]}),
                ("jacobian", {"of": ["y"]}),
                ("jacobian", {}),
                ("batched_jvp", {"tangents": {"x": [[], []]}, "of": "y"}),
                ("batched_jvp", {"tangents": {"x": [[]]}}),
            ]
        ],
        pytest.param(
            "vector_fd",
            "batched_vjp",
            {"inputs": X3, "cotangents": {"y": np.zeros((0, 3))}},
            422,
            id="fd-batch-of-0",
        ),
        pytest.param(
            "vector_torch",
            "batched_vjp",
            {"inputs": X3, "cotangents": {"y": np.zeros((0, 3))}},
            422,
            id="torch-batch-of-0",
        ),
        pytest.param(
            "vector_jax",
            "batched_jvp",
            {"inputs": X3, "tangents": {}},
            422,
            id="jax-batched-no-tangent",
        ),
        pytest.param(
            "vector_torch",
            "batched_jvp",
            {"inputs": X3, "tangents": {}},
            422,
            id="torch-batched-no-tangent",
        ),
        pytest.param(
            "vector_torch",
            "jvp",
            {"inputs": X3, "tangents": {}},
            200,
            id="torch-jvp-no-tangent",
        ),
        pytest.param(
            "vector_jax",
            "jacobian",
            {"inputs": X3, "wrt": []},
            200,
            id="jax-jacobian-wrt-nothing",
        ),
        pytest.param(
            "vector_torch",
            "jacobian",
            {"inputs": X3, "of": []},
            200,
            id="torch-jacobian-of-nothing",
        ),
    ],
)
@pytest.mark.parametrize("ctype", [_wire.JSON, _wire.BINARY], ids=["json", "binary"])
def test_edge_case_requests_are_answered_not_500(
    servers: Servers, name: str, route: str, body: dict[str, Any], status: int, ctype: str
) -> None:
    """Empty arrays, empty selections and batches of 0 are requests a client may send: the
    answer is a result or a 422, never a 500 blaming the component's author."""
    server = servers[name]
    tree = _arrayify(body) if ctype == _wire.BINARY else body
    payload = _wire.encode(tree, ctype)
    answer = requests.post(
        f"{server.url}/{route}", data=payload, headers={"Content-Type": ctype}, timeout=30
    )
    assert answer.status_code == status, answer.content[:400]
    if status == 200:
        result = _wire.decode(answer.content, answer.headers["content-type"])
        for leaf in _leaves(result):
            assert not np.any(leaf), result  # empty, or zeros for a zero tangent/cotangent
    _healthy(server)


def _leaves(tree: Any) -> Iterator[Any]:
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _leaves(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _leaves(value)
    else:
        yield tree


# --------------------------------------------------------------------------------------------
# Hypothesis: corrupted binary bodies


def _frame(header: bytes, data: bytes = b"", *, length: int | None = None) -> bytes:
    """A binary body around raw header bytes: magic, length, zero padding to 64, data."""
    prefix = _wire.MAGIC + struct.pack("<Q", len(header) if length is None else length) + header
    return prefix + bytes(-len(prefix) % 64) + data


def _split(body: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack_from("<Q", body, 8)
    start = -(-(16 + length) // 64) * 64
    return json.loads(body[16 : 16 + length]), body[start:]


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


BAD_DTYPES = [
    "O",
    "|O",
    "object",
    "O8",
    "V",
    "V8",
    "|V16",
    "void",
    "<f8",
    ">f8",
    "=f8",
    "f8",
    "d",
    "float",
    "float128",
    "longdouble",
    "U4",
    "<U4",
    "S3",
    "str",
    "bytes",
    "datetime64[ns]",
    "M8[s]",
    "timedelta64",
    "m8",
    "b1",
    "?",
    "bool_",
    "",
    " float64",
    "FLOAT64",
    "float64\u0000",
    "int64,int64",
    "(2,)f8",
    7,
    None,
    True,
    [],
    {},
    [["a", "<f8"]],
    [["a", "O"]],
    {"names": ["a"], "formats": ["<f8"]},
    {"descr": "<f8", "shape": [1]},
]
HUGE = [2**31, 2**32, 2**62, 2**63 - 1, 2**63, 2**64, 2**64 + 1, 10**30, 10**400]
BAD_SHAPES: list[Any] = [
    [2**62],
    [2**62, 4],
    [2**63],
    [2**64],
    [10**400],
    [0, 2**63],
    [2**62, 0],
    [2**31, 2**31, 2**31],
    [-1],
    [3, -1],
    [-(2**63)],
    [1] * 33,
    [0] * 40,
    [1] * 10_000,
    [1.0],
    [True],
    ["3"],
    [None],
    [[3]],
    {},
    "3",
    3,
    None,
]
INTS = st.sampled_from([-1, -64, 1, 8, 63, 65, *HUGE, *[-h for h in HUGE]]) | st.integers(
    -(2**70), 2**70
)
ODD_VALUES = st.sampled_from([None, True, 1.5, "0", [0], {"a": 0}, float("1e300")])

# Raw headers that must be refused: not UTF-8, not JSON, non-standard JSON, nesting deeper than
# the format or the parser allows, numbers beyond limits, BOMs, other encodings.
RAW_HEADERS = [
    b"\xff\xfe{}",
    b'{"tree":"\xc3\x28","arrays":[]}',
    b'{"tree":"\xed\xa0\x80","arrays":[]}',
    b"\xef\xbb\xbf" + _json({"tree": 1, "arrays": []}),
    json.dumps({"tree": 1, "arrays": []}).encode("utf-16"),
    json.dumps({"tree": 1, "arrays": []}).encode("utf-32"),
    b'{"tree":NaN,"arrays":[]}',
    b'{"tree":-Infinity,"arrays":[]}',
    b'{"tree":1e400,"arrays":[]}',
    b'{"tree":' + b"9" * 5000 + b',"arrays":[]}',
    b'{"tree":1,"tree":2,"arrays":[]}',
    b'{"tree":1,"arrays":[],}',
    b'{"tree":1,"arrays":[]} {}',
    b'{"tree":1}',
    b'{"arrays":[]}',
    b"[]",
    b"null",
    b"",
    b"\x00" * 8,
    b'{"tree":' + b"[" * 65 + b"]" * 65 + b',"arrays":[]}',
    b'{"tree":' + b"[" * 100_000 + b"]" * 100_000 + b',"arrays":[]}',
    b'{"tree":' + b'{"a":' * 3000 + b"1" + b"}" * 3000 + b',"arrays":[]}',
    b'{"tree":' + b"[" * 100_000 + b',"arrays":[]}',
    b'{"tree":{"$array":0},"arrays":[' + b"[" * 50_000 + b"]" * 50_000 + b"]}",
]


@st.composite
def valid_bodies(draw: st.DrawFn) -> tuple[Any, bytes]:
    """A request-like tree with a few arrays, and its binary body."""
    dtypes = st.sampled_from(_wire.DTYPES)
    shapes = st.lists(st.integers(0, 3), max_size=3).map(tuple)
    arrays = st.builds(lambda d, s: np.ones(s, dtype=d), dtypes, shapes)
    leaves = arrays | st.integers(-5, 5) | st.text(max_size=3) | st.none()
    tree = draw(
        st.dictionaries(
            st.sampled_from(["inputs", "x", "$array", "$$k", "tangents"]),
            leaves | st.lists(leaves, max_size=3) | st.dictionaries(st.text(max_size=2), leaves),
            min_size=1,
            max_size=4,
        )
    )
    return tree, _wire.encode(tree, _wire.BINARY)


@st.composite
def corrupted(draw: st.DrawFn, valid: st.SearchStrategy[tuple[Any, bytes]]) -> bytes:
    """A valid body, then one corruption of its framing, header or data."""
    _, body = draw(valid)
    header, data = _split(body)
    arrays: list[dict[str, Any]] = header["arrays"]
    kind = draw(
        st.sampled_from(
            [
                "field",
                "huge_consistent",
                "offsets",
                "markers",
                "keys",
                "raw_header",
                "deep_tree",
                "header_length",
                "padding",
                "flip",
                "extend",
                "truncate",
            ]
        )
    )
    if kind == "truncate":
        return body[: draw(st.integers(0, max(len(body) - 1, 0)))]
    if kind == "extend":
        return body + draw(st.binary(min_size=1, max_size=130))
    if kind == "flip":
        flipped = bytearray(body)
        for _ in range(draw(st.integers(1, 4))):
            flipped[draw(st.integers(0, len(body) - 1))] ^= draw(st.integers(1, 255))
        return bytes(flipped)
    if kind == "header_length":
        raw = _json(header)
        length = draw(st.integers(0, 2**64 - 1) | st.integers(0, len(raw) + 130))
        return _frame(raw, data, length=length)
    if kind == "padding":
        raw = _json(header) + b" " * draw(st.integers(0, 3))
        framed = bytearray(_frame(raw, data))
        pad_start, pad_end = 16 + len(raw), len(framed) - len(data)
        if pad_end > pad_start:
            framed[draw(st.integers(pad_start, pad_end - 1))] = draw(st.integers(1, 255))
        return bytes(framed)
    if kind == "raw_header":
        return _frame(draw(st.sampled_from(RAW_HEADERS)), data)
    if kind == "deep_tree":
        depth = draw(st.sampled_from([64, 65, 66, 500, 5000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = '{"$array":0}' if arrays else "1"
        tree = opener * depth + inner + closer * depth
        raw = ('{"tree":' + tree + ',"arrays":' + json.dumps(arrays) + "}").encode()
        return _frame(raw, data)
    if kind == "keys":
        target = draw(st.sampled_from(["header", "descriptor"])) if arrays else "header"
        node = header if target == "header" else arrays[draw(st.integers(0, len(arrays) - 1))]
        if draw(st.booleans()) and node:
            del node[draw(st.sampled_from(sorted(node)))]
        else:
            node[draw(st.sampled_from(["extra", "Tree", "dtype ", "$array"]))] = 0
        return _frame(_json(header), data)
    if kind == "markers":
        header["tree"] = draw(
            st.lists(
                st.builds(
                    lambda i: {"$array": i},
                    INTS | ODD_VALUES | st.integers(-1, len(arrays) + 1),
                ),
                min_size=1,
                max_size=3,
            )
            | st.just({"$array": 0, "other": 1})
            | st.just({"$bad": 1})
        )
        return _frame(_json(header), data)
    if not arrays:
        header["arrays"] = draw(
            st.sampled_from([{}, "x", None, 1, [None], [[]], [{"dtype": "float64"}]])
        )
        return _frame(_json(header), data)
    i = draw(st.integers(0, len(arrays) - 1))
    if kind == "field":
        field = draw(st.sampled_from(["dtype", "shape", "offset", "nbytes"]))
        values = {
            "dtype": st.sampled_from(BAD_DTYPES),
            "shape": st.sampled_from(BAD_SHAPES),
            "offset": INTS | ODD_VALUES,
            "nbytes": INTS | ODD_VALUES,
        }[field]
        arrays[i][field] = draw(values)
        return _frame(_json(header), data)
    if kind == "huge_consistent":  # a huge shape with a matching nbytes: caught by size checks
        shape = draw(st.sampled_from([[2**62], [2**40, 2**20], [2**61, 2], [2**32] * 3, [2**63]]))
        itemsize = np.dtype(arrays[i]["dtype"]).itemsize
        arrays[i]["shape"] = shape
        arrays[i]["nbytes"] = int(np.prod(shape, dtype=object)) * itemsize
        return _frame(_json(header), data)
    # offsets: point arrays at each other (overlap), past the end, or off alignment
    for descriptor in arrays:
        descriptor["offset"] = draw(
            st.sampled_from([0, 64, len(data), len(data) + 64, 2**63, 2**64 - 64, 32])
            | st.sampled_from([d["offset"] for d in arrays])
        )
    return _frame(_json(header), data)


def _check_decoded(tree: Any, body: bytes | bytearray) -> None:
    """Whatever decodes holds only plain data, and arrays are views no larger than the body."""
    for leaf in _leaves(tree):
        if isinstance(leaf, np.ndarray):
            assert leaf.dtype.name in _wire.DTYPES and not leaf.dtype.hasobject
            assert leaf.nbytes <= len(body)
        else:
            assert leaf is None or isinstance(leaf, (bool, int, float, str)), type(leaf)


def _decodes_or_refuses(body: bytes | bytearray, ctype: str = _wire.BINARY) -> None:
    try:
        tree = _wire.decode(body, ctype)
    except cr.WireFormatError as e:  # anything else fails the test
        assert e.message and e.errors and e.errors[0]["path"], e
        return
    _check_decoded(tree, body)


@settings(FUZZ, max_examples=400)
@given(body=corrupted(valid_bodies()))
def test_corrupted_binary_bodies_raise_only_wire_format_errors(body: bytes) -> None:
    _decodes_or_refuses(body)
    _decodes_or_refuses(bytearray(body))
    _decodes_or_refuses(body, _wire.JSON)  # the wrong content type is refused cleanly too


@pytest.mark.parametrize("raw", RAW_HEADERS, ids=range(len(RAW_HEADERS)))
def test_invalid_headers_are_refused(raw: bytes) -> None:
    with pytest.raises(cr.WireFormatError):
        _wire.decode(_frame(raw), _wire.BINARY)


@pytest.mark.parametrize("dtype", BAD_DTYPES, ids=[repr(d) for d in BAD_DTYPES])
@pytest.mark.parametrize("ctype", [_wire.BINARY, _wire.JSON], ids=["binary", "json"])
def test_unsupported_dtypes_are_refused(dtype: Any, ctype: str) -> None:
    if ctype == _wire.BINARY:
        descriptor = {"dtype": dtype, "shape": [1], "offset": 0, "nbytes": 8}
        body = _frame(_json({"tree": {"$array": 0}, "arrays": [descriptor]}), bytes(8))
    else:
        body = _json({"$array": {"dtype": dtype, "shape": [1], "data": "AAAAAAAAAAA="}})
    with pytest.raises(cr.WireFormatError, match="unknown dtype"):
        _wire.decode(body, ctype)


@pytest.mark.parametrize("shape", BAD_SHAPES, ids=range(len(BAD_SHAPES)))
@pytest.mark.parametrize("ctype", [_wire.BINARY, _wire.JSON], ids=["binary", "json"])
def test_bad_and_huge_shapes_are_refused_without_allocating(shape: Any, ctype: str) -> None:
    try:
        nbytes = int(np.prod(shape, dtype=object)) * 8
    except (TypeError, ValueError):
        nbytes = 8
    if ctype == _wire.BINARY:
        descriptor = {"dtype": "float64", "shape": shape, "offset": 0, "nbytes": nbytes}
        body = _frame(_json({"tree": {"$array": 0}, "arrays": [descriptor]}), bytes(8))
    else:
        data = "A" * max(0, min(4 * -(-nbytes // 3), 64))
        body = _json({"$array": {"dtype": "float64", "shape": shape, "data": data}})
    with pytest.raises(cr.WireFormatError):
        _wire.decode(body, ctype)


@settings(FUZZ, max_examples=150)
@given(
    dtype=st.sampled_from(list(_wire.DTYPES) + BAD_DTYPES[:12]),
    shape=st.sampled_from(BAD_SHAPES) | st.lists(st.integers(-2, 2**63), max_size=4),
    data=st.text(alphabet="AB+/=\n8-_", max_size=40) | ODD_VALUES,
    extra=st.dictionaries(st.sampled_from(["x", "$array", "data"]), ODD_VALUES, max_size=1),
)
def test_fuzzed_json_arrays_raise_only_wire_format_errors(
    dtype: Any, shape: Any, data: Any, extra: dict[str, Any]
) -> None:
    spec = {"dtype": dtype, "shape": shape, "data": data, **extra}
    _decodes_or_refuses(_json({"x": {"$array": spec}}), _wire.JSON)
    descriptor = {"dtype": dtype, "shape": shape, "offset": 0, "nbytes": 8, **extra}
    _decodes_or_refuses(_frame(_json({"tree": {"$array": 0}, "arrays": [descriptor]}), bytes(8)))


# ---- the same bodies against a live server ----------------------------------------------------


def _valid_requests(point: dict[str, Any]) -> st.SearchStrategy[tuple[Any, bytes]]:
    """Valid /vjp request bodies of matrix_jax (binary)."""
    tree = {"inputs": point, "cotangents": {"y": np.ones(3)}}
    return st.just((tree, _wire.encode(tree, _wire.BINARY)))


MATRIX_POINT = {k: np.asarray(v, dtype=np.float64) for k, v in CASES[1].point().items()}


def test_corrupted_bodies_get_4xx_from_a_live_server(servers: Servers) -> None:
    server = servers["matrix_jax"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def post(route: str, body: bytes, ctype: str) -> None:
        try:
            conn.request("POST", route, body=body, headers={"Content-Type": ctype})
            response = conn.getresponse()
        except (ConnectionError, http.client.HTTPException):  # the server closed it: reopen
            conn.close()
            conn.request("POST", route, body=body, headers={"Content-Type": ctype})
            response = conn.getresponse()
        content = response.read()
        what = f"{route} {body[:200]!r}"
        _check_answer(response.status, response.getheader("content-type") or "", content, what)

    @settings(FUZZ, max_examples=150)
    @given(
        body=corrupted(_valid_requests(MATRIX_POINT) | valid_bodies()),
        route=st.sampled_from(["/apply", "/vjp", "/jacobian"]),
    )
    def fuzz(body: bytes, route: str) -> None:
        post(route, body, _wire.BINARY)

    try:
        fuzz()
        for raw in RAW_HEADERS:
            post("/apply", _frame(raw), _wire.BINARY)
            post("/apply", raw, _wire.JSON)
    finally:
        conn.close()
    _healthy(server)


# --------------------------------------------------------------------------------------------
# Hostile requests: lone surrogates, empty batches, key floods (issue 12)

SURROGATE = "\ud800"
# Where a request carries a name: (route, body with SURROGATE at that place, the path named).
NAMED: list[tuple[str, dict[str, Any], str]] = [
    ("apply", {"inputs": {"x": [0.5], SURROGATE: 1}}, "inputs"),
    ("apply", {"inputs": {"x": [0.5]}, SURROGATE: 1}, "<root>"),
    ("vjp", {"inputs": {"x": [0.5]}, "cotangents": {"y": [1.0]}, "wrt": SURROGATE}, "wrt"),
    ("vjp", {"inputs": {"x": [0.5]}, "cotangents": {"y": [1.0]}, "wrt": [SURROGATE]}, "wrt[0]"),
    ("jvp", {"inputs": {"x": [0.5]}, "tangents": {"x": [1.0]}, "of": [SURROGATE]}, "of[0]"),
    ("vjp", {"inputs": {"x": [0.5]}, "cotangents": {SURROGATE: [1.0]}}, "cotangents"),
    ("jvp", {"inputs": {"x": [0.5]}, "tangents": {SURROGATE: [1.0]}}, "tangents"),
    ("vjp", {"inputs": {"x": [0.5]}, "cotangents": {"y": [1.0]}, "handle": SURROGATE}, "handle"),
]


def _ascii_body(tree: Any, ctype: str) -> bytes:
    """`tree` as a body whose JSON escapes every non-ASCII character (`\\ud800` for a lone
    surrogate, which `_wire.encode` refuses to write): JSON text, or a binary header of it."""
    text = json.dumps(tree).encode()  # ensure_ascii: lone surrogates become \\udxxx escapes
    return text if ctype == _wire.JSON else _frame(_json({"tree": tree, "arrays": []}))


@pytest.mark.parametrize(("route", "body", "path"), NAMED, ids=[n[2] + "-" + n[0] for n in NAMED])
@pytest.mark.parametrize("ctype", [_wire.JSON, _wire.BINARY], ids=["json", "binary"])
def test_lone_surrogates_get_a_4xx_naming_the_field(
    servers: Servers, route: str, body: dict[str, Any], path: str, ctype: str
) -> None:
    """A `\\ud800` escape decodes to a string no encoder can write: once a plain-text 500
    (the error message naming it could not be encoded), now a 400 naming where it is."""
    server = servers["vector_fd"]
    answer = requests.post(
        f"{server.url}/{route}",
        data=_ascii_body(body, ctype),
        headers={"Content-Type": ctype},
        timeout=30,
    )
    assert answer.status_code == 400, answer.content[:300]
    error = answer.json()["error"]
    assert error["type"] == "WireFormatError" and "not valid Unicode" in error["message"]
    assert error["errors"][0]["path"] == path, error
    assert "\\ud800" in error["errors"][0]["got"], error


NAMES = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2)
NAMES = NAMES | st.builds(lambda a, b: a + b, st.text(max_size=3), NAMES)


@settings(FUZZ, max_examples=60)
@given(
    name=NAMES,
    where=st.sampled_from(["inputs", "top", "wrt", "of", "cotangents", "tangents", "value"]),
    route=st.sampled_from(["apply", "vjp", "jvp", "jacobian", "batched_vjp"]),
    ctype=st.sampled_from([_wire.JSON, _wire.BINARY]),
)
def test_surrogates_anywhere_get_4xx(
    servers: Servers, name: str, where: str, route: str, ctype: str
) -> None:
    server = servers["vector_fd"]
    body: dict[str, Any] = {"inputs": {"x": [0.5, 1.0]}, "cotangents": {"y": [1.0, 1.0]}}
    if where in ("inputs", "cotangents"):
        body[where][name] = [1.0]
    elif where == "tangents":
        body["tangents"] = {name: [1.0, 1.0]}
    elif where == "top":
        body[name] = 0
    elif where == "value":
        body["inputs"]["scale"] = name
    else:
        body[where] = [name]
    answer = requests.post(
        f"{server.url}/{route}",
        data=_ascii_body(body, ctype),
        headers={"Content-Type": ctype},
        timeout=30,
    )
    _check_answer(answer.status_code, answer.headers["content-type"], answer.content, repr(body))
    assert answer.status_code < 500


def _flood(where: str, n: int, duplicate: bool) -> bytes:
    """A JSON /vjp body with `n` made-up keys at `where` (each twice if `duplicate`)."""
    keys = "".join(f',"k{i}":0' * (2 if duplicate else 1) for i in range(n))
    inputs, cotangents, top = '"x":[0.5]', '"y":[1.0]', ""
    if where == "inputs":
        inputs += keys
    elif where == "cotangents":
        cotangents += keys
    else:
        top = keys
    return f'{{"inputs":{{{inputs}}},"cotangents":{{{cotangents}}}{top}}}'.encode()


@pytest.mark.parametrize("where", ["inputs", "top", "cotangents"])
@pytest.mark.parametrize("duplicate", [False, True], ids=["unknown", "duplicate"])
def test_a_flood_of_50000_keys_is_refused_fast_with_a_bounded_answer(
    servers: Servers, where: str, duplicate: bool
) -> None:
    """50,000 unknown (or duplicate) keys, a 0.6-1.3 MB body, once took minutes to refuse:
    the errors were collected with quadratic searches. Now linear, and the answer lists the
    first problems and says how many more."""
    server = servers["vector_fd"]
    start = time.monotonic()
    answer = requests.post(
        f"{server.url}/vjp",
        data=_flood(where, 50_000, duplicate),
        headers={"Content-Type": _wire.JSON},
        timeout=60,
    )
    assert time.monotonic() - start < 15, "refusing a key flood took too long"
    assert answer.status_code in (400, 422) and len(answer.content) < 16_384, answer.content[:300]
    error = answer.json()["error"]
    assert len(error["errors"]) <= 20
    if where == "inputs" and not duplicate:
        assert error["message"].endswith("and 49980 more errors"), error["message"][-200:]
    if where == "top" and not duplicate:
        assert "and 49980 more" in error["message"], error["message"][-300:]
    _healthy(server)


@settings(FUZZ, max_examples=12)
@given(
    n=st.integers(1, 20_000),
    where=st.sampled_from(["inputs", "top", "cotangents"]),
    duplicate=st.booleans(),
    ctype=st.sampled_from([_wire.JSON, _wire.BINARY]),
)
def test_key_floods_get_a_bounded_4xx(
    servers: Servers, n: int, where: str, duplicate: bool, ctype: str
) -> None:
    server = servers["vector_fd"]
    body = _flood(where, n, duplicate)
    if ctype == _wire.BINARY:  # the same tree as a binary header (duplicates and all)
        body = _frame(b'{"tree":' + body + b',"arrays":[]}')
    answer = requests.post(
        f"{server.url}/vjp", data=body, headers={"Content-Type": ctype}, timeout=60
    )
    _check_answer(answer.status_code, answer.headers["content-type"], answer.content, str(n))
    assert answer.status_code >= 400 and len(answer.content) < 16_384


BATCHES = [0, 1, 2, 3, 2**16, 2**16 + 1, 2**28, 2**40, 2**62]


@settings(FUZZ, max_examples=60)
@given(
    route=st.sampled_from(["batched_vjp", "batched_jvp"]),
    batch=st.sampled_from(BATCHES),
    size=st.sampled_from([0, 0, 1, 3]),
    ctype=st.sampled_from([_wire.JSON, _wire.BINARY]),
    name=st.sampled_from(["vector_fd", "vjp_only"]),
)
def test_empty_batch_shapes_are_answered_quickly_and_never_500(
    servers: Servers, route: str, batch: int, size: int, ctype: str, name: str
) -> None:
    """Batches of 0 to 2**62 rows of x (size 0..3; empty rows when 0) declared in a body
    that holds no data when the rows are empty: a result, a 422 or a 413, at once."""
    server = servers[name]
    key, path = ("cotangents", "y") if route == "batched_vjp" else ("tangents", "x")
    rows = {"dtype": "float64", "shape": [batch, size], "data": ""}
    if batch * size:  # rows with data: keep them few enough to send
        assume(batch * size <= 3 * 2**16)
        rows["data"] = base64.b64encode(bytes(8 * batch * size)).decode()
    x = {"dtype": "float64", "shape": [size], "data": base64.b64encode(bytes(8 * size)).decode()}
    tree = {"inputs": {"x": {"$array": x}}, key: {path: {"$array": rows}}}
    body = json.dumps(tree).encode()
    if ctype == _wire.BINARY:  # the same arrays, described in a binary header
        offset = -(-8 * size // 64) * 64
        arrays = [
            {"dtype": "float64", "shape": [size], "offset": 0, "nbytes": 8 * size},
            {"dtype": "float64", "shape": [batch, size], "offset": offset, "nbytes": 0},
        ]
        arrays[1]["nbytes"] = 8 * batch * size
        header = {"inputs": {"x": {"$array": 0}}, key: {path: {"$array": 1}}}
        data = bytes(offset + 8 * batch * size) if batch * size else bytes(8 * size)
        body = _frame(_json({"tree": header, "arrays": arrays}), data)
    start = time.monotonic()
    answer = requests.post(
        f"{server.url}/{route}", data=body, headers={"Content-Type": ctype}, timeout=60
    )
    what = f"{route} {batch}x{size} {ctype}"
    _check_answer(answer.status_code, answer.headers["content-type"], answer.content, what)
    assert time.monotonic() - start < 10, what
    # 2**62 rows of float64 overflow numpy's sizes even when empty: refused as malformed
    expected = 400 if batch == 2**62 else 413 if batch > 2**16 else 200 if batch else 422
    assert answer.status_code == expected, (what, answer.content[:300])
