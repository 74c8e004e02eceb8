"""Schema classes rebuilt from a model's JSON schema (what `connect` does with `GET /schema`)
keep every array spec, static field, default and nesting of the original, and validate the
same inputs the same way."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chainrule as cr
from chainrule._schema import tree as _tree
from chainrule._schema.jsonschema import schema_from_json
from chainrule._transport.http.client import Connection, HttpTransport

F64 = cr.Float64


class Arrays(cr.Schema):
    fixed: cr.Differentiable[cr.Array[(2, 3), cr.Float32]]
    free: cr.Array[(None,), cr.Int64]
    named: cr.Differentiable[cr.Array[("n", "m"), F64]]
    tied: cr.Array[("m",), cr.Complex128]
    rest: cr.Array[(..., 2), cr.Bool]
    scalar: cr.Differentiable[float]
    flag: cr.Array[(), cr.UInt8]


class Inner(cr.Schema):
    w: cr.Differentiable[cr.Array[("n",), F64]]
    label: str = "inner"


class Nested(cr.Schema):
    inner: Inner
    count: int
    rate: float = 0.5
    name: str = "x"
    enabled: bool = True
    note: str | None = None
    size: int | None = 3


class Containers(cr.Schema):
    layers: list[Inner]
    table: dict[str, cr.Differentiable[cr.Array[(2,), F64]]]
    maybe: cr.Array[("n",), F64] | None = None
    tags: list[str] = []  # noqa: RUF012 (pydantic copies defaults)
    pair: tuple[int, float] = (1, 2.0)


def _rebuilt(model: type[cr.Schema]) -> type[cr.Schema]:
    return schema_from_json(model.model_json_schema())


def _outcome(model: type[cr.Schema], value: dict[str, Any]) -> Any:
    """What validation makes of `value`: its leaves and static values, or the error paths."""
    try:
        instance = model.model_validate(value)
    except Exception as e:  # pydantic's error; compare where it points
        return ("error", sorted(str(err["loc"]) for err in e.errors()))  # type: ignore[attr-defined]
    leaves = {
        x.path: (x.spec, x.value.dtype, x.value.shape, x.value.tobytes())
        for x in _tree.leaves(instance)
    }
    return leaves, _tree.static_values(instance)


@pytest.mark.parametrize("model", [Arrays, Inner, Nested])
def test_class_leaves_round_trip(model: type[cr.Schema]) -> None:
    assert _tree.class_leaves(_rebuilt(model)) == _tree.class_leaves(model)


def test_instance_dependent_leaves_stay_instance_dependent() -> None:
    assert _tree.class_leaves(_rebuilt(Containers)) is None


def test_fields_defaults_and_requiredness_round_trip() -> None:
    for model in (Arrays, Nested, Containers, Inner):
        rebuilt = _rebuilt(model)
        assert list(rebuilt.model_fields) == list(model.model_fields)
        for name, field in model.model_fields.items():
            other = rebuilt.model_fields[name]
            assert other.is_required() == field.is_required(), (model, name)
            if not field.is_required():
                # JSON has no tuples: compare as JSON (validated values are compared below)
                want, got = field.get_default(), other.get_default()
                assert json.dumps(got) == json.dumps(want), (model, name)


def _arrays_value(**change: Any) -> dict[str, Any]:
    value = {
        "fixed": np.ones((2, 3), np.float32),
        "free": np.arange(4),
        "named": np.ones((3, 2)),
        "tied": np.ones(2, np.complex128),
        "rest": np.zeros((4, 5, 2), bool),
        "scalar": 1.5,
        "flag": np.uint8(1),
    }
    return value | change


def _nested_value(**change: Any) -> dict[str, Any]:
    return {"inner": {"w": np.arange(3.0)}, "count": 2} | change


def _containers_value(**change: Any) -> dict[str, Any]:
    value = {
        "layers": [{"w": np.ones(3)}, {"w": np.zeros(2), "label": "b"}],
        "table": {"a": np.ones(2), "b": np.zeros(2)},
        "maybe": np.ones(4),
    }
    return value | change


CASES = [
    (Arrays, _arrays_value()),
    (Arrays, _arrays_value(fixed=np.ones((3, 2), np.float32))),  # wrong fixed shape
    (Arrays, _arrays_value(fixed=np.ones((2, 3)))),  # float64 -> float32 is not safe
    (Arrays, _arrays_value(tied=np.ones(3, np.complex128))),  # 'm' disagrees
    (Arrays, _arrays_value(free=np.ones(3))),  # float -> int64 refused
    (Arrays, _arrays_value(rest=np.zeros((2,), bool))),  # ellipsis then 2
    (Arrays, _arrays_value(rest=np.zeros((3,), bool))),
    (Arrays, _arrays_value(named=[[1, 2], [3, 4], [5, 6]])),  # nested lists accepted
    (Arrays, {k: v for k, v in _arrays_value().items() if k != "flag"}),  # missing
    (Arrays, _arrays_value(extra=1)),  # unknown field
    (Nested, _nested_value()),
    (Nested, _nested_value(rate=2, name="y", enabled=False, note="n", size=None)),
    (Nested, _nested_value(count="many")),
    (Nested, _nested_value(inner={"w": np.ones((2, 2))})),
    (Nested, _nested_value(inner={"w": np.ones(2), "label": 3})),
    (Containers, _containers_value()),
    (Containers, _containers_value(maybe=None, tags=["a"], pair=(3, 4.5))),
    (Containers, _containers_value(table={"a": np.ones(3)})),
    (Containers, _containers_value(layers=[{"w": np.ones((1, 1))}])),
    (Containers, _containers_value(tags="abc")),
]


@pytest.mark.parametrize(
    ("model", "value"), CASES, ids=[f"{m.__name__}-{i}" for i, (m, _) in enumerate(CASES)]
)
def test_rebuilt_schema_validates_like_the_original(model: type[cr.Schema], value: Any) -> None:
    assert _outcome(_rebuilt(model), value) == _outcome(model, value)


def test_named_dimensions_tie_across_nested_models() -> None:
    rebuilt = _rebuilt(Containers)
    with pytest.raises(Exception, match="'n'"):
        cr.component(lambda i: i, inputs=rebuilt, outputs=rebuilt, backend="numpy").point(
            _containers_value(maybe=np.ones(5), layers=[{"w": np.ones(3)}])
        )


class Loose(cr.Schema):
    x: cr.Array[(None,), cr.Float32, "unsafe"]


def test_casting_rule_is_read_when_published() -> None:
    schema = Loose.model_json_schema()
    schema["properties"]["x"]["x-chainrule-array"]["casting"] = "unsafe"
    value = {"x": np.ones(3)}  # float64 into float32: only 'unsafe' allows it
    assert _outcome(schema_from_json(schema), value) == _outcome(Loose, value)


def test_casting_rule_round_trips() -> None:
    value = {"x": np.ones(3)}
    assert _outcome(_rebuilt(Loose), value) == _outcome(Loose, value)


# ---- an untrusted document: a server's GET /schema answer ------------------------------------

# derandomize: the same examples on every run; database=None: no .hypothesis/ folder.
FUZZ = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
VALID = {
    "name": "fuzzed",
    "backend": "numpy",
    "inputs": Containers.model_json_schema(),
    "outputs": Arrays.model_json_schema(),
    "endpoints": {"apply": "author", "vjp": "derived"},
}
# Words that mean something to the builder, so that fuzzed documents get past the first check.
WORDS = [
    "type", "properties", "items", "prefixItems", "anyOf", "$ref", "$defs", "required", "title",
    "default", "additionalProperties", "x-chainrule-array", "shape", "dtype", "differentiable",
    "casting", "enum", "object", "array", "number", "integer", "string", "null", "float64",
    "int8", "object", "...", "n", "#/$defs/Inner", "Inner", "model_config", "_private", "",
]  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.sampled_from(WORDS)
)
JSON = st.recursive(
    SCALARS,
    lambda kids: (
        st.lists(kids, max_size=4)
        | st.dictionaries(st.text(max_size=6) | st.sampled_from(WORDS), kids, max_size=4)
    ),
    max_leaves=25,
)
# Never used: building a component sends nothing.
CONN = HttpTransport(Connection("http://127.0.0.1:9"))


def _paths(tree: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    items = (
        tree.items()
        if isinstance(tree, dict)
        else enumerate(tree)
        if isinstance(tree, list)
        else ()
    )
    for key, value in items:
        yield from _paths(value, (*prefix, key))


PATHS = list(_paths(VALID))[1:]


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    """The valid document with one to three of its nodes replaced by arbitrary JSON."""
    doc = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 3))):
        *head, last = draw(st.sampled_from(PATHS))
        node: Any = doc
        for key in head:
            if not isinstance(node, dict | list) or key not in (
                node if isinstance(node, dict) else range(len(node))
            ):
                break
            node = node[key]
        else:
            # an earlier mutation may have put a list where this path had a dict
            if isinstance(node, dict) or (
                isinstance(node, list) and isinstance(last, int) and last < len(node)
            ):
                node[last] = draw(JSON)
    return doc


@st.composite
def deep(draw: st.DrawFn) -> Any:
    """A field nested 0 to 300 levels deep in lists, dicts, unions or $ref chains."""
    levels = draw(st.integers(0, 300))
    kind = draw(st.sampled_from(["items", "additionalProperties", "anyOf", "$ref"]))
    node: dict[str, Any] = {"type": "number"}
    defs: dict[str, Any] = {}
    for i in range(levels):
        if kind == "anyOf":
            node = {"anyOf": [node, {"type": "null"}]}
        elif kind == "$ref":
            defs[f"M{i}"] = {"type": "object", "properties": {"v": node}}
            node = {"$ref": f"#/$defs/M{i}"}
        else:
            node = {"type": "object" if kind != "items" else "array", kind: node}
    inputs = {"type": "object", "properties": {"x": node}, "$defs": defs}
    return {**VALID, "inputs": inputs}


def _built_or_refused(document: Any) -> None:
    from chainrule._transport.remote import remote_component

    try:
        component = remote_component(CONN, document)
    except cr.TransportError as e:  # anything else fails the test
        assert e.message.startswith("http://127.0.0.1:9/schema is not a valid chainrule schema: ")
        assert e.__cause__ is not None
    else:
        assert isinstance(component, cr.Component)


@settings(FUZZ)
@given(document=JSON | st.dictionaries(st.sampled_from(list(VALID)), JSON))
def test_arbitrary_json_is_refused_as_a_schema_saying_why(document: Any) -> None:
    _built_or_refused(document)


@settings(FUZZ)
@given(document=mutated())
def test_a_fuzzed_schema_builds_or_is_refused_saying_why(document: Any) -> None:
    _built_or_refused(document)


@settings(FUZZ, max_examples=60)
@given(document=deep())
def test_deeply_nested_schemas_build_or_are_refused_saying_why(document: Any) -> None:
    _built_or_refused(document)


def test_the_valid_document_builds() -> None:
    from chainrule._transport.remote import remote_component

    component = remote_component(CONN, VALID)
    assert component.name == "fuzzed"
    assert list(component.inputs.model_fields) == list(Containers.model_fields)
