"""Tests of flattening schema instances into leaves by path (`chainrule._schema.tree`)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
import pytest
from pydantic import Field

import chainrule as cr
from chainrule._schema.tree import (
    Leaf,
    bind_dims,
    class_leaves,
    leaves,
    replace_leaves,
    signature,
    static_values,
)


class Mesh(cr.Schema):
    points: cr.Differentiable[cr.Array[("n", 3), cr.Float64]]
    cells: cr.Array[(None, 3), cr.Int64]


class Layer(cr.Schema):
    w: cr.Differentiable[cr.Array[(None, None), cr.Float64]]
    act: str = "tanh"


class Model(cr.Schema):
    mesh: Mesh
    layers: list[Layer]
    params: dict[str, cr.Differentiable[cr.Array[(), cr.Float64]]]
    xs: list[cr.Array[("n",), cr.Float64]]
    maybe: Optional[cr.Array[(None,), cr.Float64]] = None  # noqa: UP045 (both spellings)
    maybe2: cr.Array[(None,), cr.Float64] | None = None
    k: int = 3
    names: list[str] = Field(default_factory=list)


def make(n: int = 4, k: int = 3, **kw: Any) -> Model:
    fields: dict[str, Any] = {
        "mesh": {"points": np.arange(3.0 * n).reshape(n, 3), "cells": [[0, 1, 2]]},
        "layers": [{"w": np.ones((2, 2))}, Layer(w=np.ones((3, 2)), act="relu")],
        "params": {"a": 1.0, "b": 2},
        "xs": [np.zeros(n), np.ones(n)],
        "maybe2": [5.0],
        "k": k,
    }
    return Model(**(fields | kw))


PATHS = [
    "mesh.points",
    "mesh.cells",
    "layers.0.w",
    "layers.1.w",
    "params.a",
    "params.b",
    "xs.0",
    "xs.1",
    "maybe2",
]


def fail(message: str, errors: list[dict[str, Any]]) -> cr.ValidationError:
    return cr.ValidationError(message, errors=errors)


# --------------------------------------------------------------------------------------------
# leaves and static values


def test_leaf_paths_in_field_order() -> None:
    assert [leaf.path for leaf in leaves(make())] == PATHS


def test_leaf_specs_and_values() -> None:
    m = make()
    by_path = {leaf.path: leaf for leaf in leaves(m)}
    assert all(isinstance(x, Leaf) for x in by_path.values())
    assert str(by_path["mesh.points"].spec) == "float64[n,3]"
    assert by_path["mesh.points"].spec.differentiable
    assert not by_path["mesh.cells"].spec.differentiable
    assert by_path["mesh.points"].value is m.mesh.points
    assert by_path["layers.1.w"].value.shape == (3, 2)
    assert by_path["params.b"].value.dtype == cr.Float64  # validated: int -> float64
    assert str(by_path["xs.1"].spec) == "float64[n]"
    assert [p for p, x in by_path.items() if x.spec.differentiable] == [
        "mesh.points",
        "layers.0.w",
        "layers.1.w",
        "params.a",
        "params.b",
    ]


def test_static_values() -> None:
    assert static_values(make()) == [
        ("layers.0.act", "tanh"),
        ("layers.1.act", "relu"),
        ("maybe", None),
        ("k", 3),
        ("names", []),
    ]


def test_optional_array_present_or_absent() -> None:
    m = make(maybe=[1.0, 2.0], maybe2=None)
    paths = [leaf.path for leaf in leaves(m)]
    assert "maybe" in paths
    assert "maybe2" not in paths
    assert ("maybe2", None) in static_values(m)


def test_empty_containers_have_no_leaves() -> None:
    m = make(layers=[], params={}, xs=[])
    assert [leaf.path for leaf in leaves(m)] == ["mesh.points", "mesh.cells", "maybe2"]


def test_nested_containers() -> None:
    class Deep(cr.Schema):
        grid: list[list[cr.Array[(None,), cr.Float64]]]
        groups: dict[str, list[Layer]]
        opt: Optional[dict[str, list[cr.Array[(), cr.Float64]]]] = None  # noqa: UP045
        sub: Optional[Mesh] = None  # noqa: UP045

    d = Deep(
        grid=[[[1.0], [2.0]], [[3.0]]],
        groups={"enc": [{"w": [[1.0]]}]},
        opt={"k": [1.0, 2.0]},
        sub={"points": np.zeros((1, 3)), "cells": np.zeros((0, 3), np.int64)},
    )
    assert [leaf.path for leaf in leaves(d)] == [
        "grid.0.0",
        "grid.0.1",
        "grid.1.0",
        "groups.enc.0.w",
        "opt.k.0",
        "opt.k.1",
        "sub.points",
        "sub.cells",
    ]


def test_heterogeneous_tuple_items_get_their_own_spec() -> None:
    class T(cr.Schema):
        pair: tuple[cr.Differentiable[cr.Array[(2,), cr.Float64]], cr.Array[("m",), cr.Float64]]
        many: tuple[cr.Array[(None,), cr.Float64], ...]

    t = T(pair=([1.0, 2.0], [1.0, 2.0, 3.0]), many=([1.0], [2.0, 3.0]))
    specs = {leaf.path: leaf.spec for leaf in leaves(t)}
    assert [str(s) for s in specs.values()] == ["float64[2]", "float64[m]", *["float64[?]"] * 2]
    assert specs["pair.0"].differentiable
    assert not specs["pair.1"].differentiable
    assert bind_dims([leaves(t)], fail) == {"m": 3}
    new = replace_leaves(t, {"pair.1": "b", "many.1": "c"})
    assert isinstance(new, T)
    assert new.pair[1] == "b"
    assert new.many[1] == "c"
    assert isinstance(new.pair, tuple)


def test_union_of_arrays_picks_the_arm_that_fits() -> None:
    class U(cr.Schema):
        u: cr.Array[(3,), cr.Float64] | cr.Differentiable[cr.Array[("a", "b"), cr.Float64]]
        v: cr.Array[(None,), cr.Float64] | float

    (leaf,) = leaves(U(u=np.zeros((2, 2)), v=1.0))
    assert str(leaf.spec) == "float64[a,b]"
    assert leaf.spec.differentiable
    assert [str(x.spec) for x in leaves(U(u=np.zeros(3), v=[1.0]))] == ["float64[3]", "float64[?]"]
    assert ("v", 1.0) in static_values(U(u=np.zeros(3), v=1.0))


@pytest.mark.parametrize("key", ["a.b", ".", 1])
def test_dict_keys_that_cannot_be_paths(key: Any) -> None:
    class D(cr.Schema):
        d: dict[Any, cr.Array[(), cr.Float64]]

    with pytest.raises(cr.ValidationError) as info:
        leaves(D(d={key: 1.0}))
    assert f"dict key {key!r} at 'd' cannot be part of a path" in str(info.value)
    assert info.value.errors[0]["path"] == "d"


def test_static_dicts_and_lists_are_one_value() -> None:
    class S(cr.Schema):
        x: cr.Array[(), cr.Float64]
        opts: dict[str, int] = Field(default_factory=dict)
        tags: list[str] = Field(default_factory=list)

    s = S(x=1.0, opts={"a.b": 1}, tags=["t"])  # dotted key is fine: no arrays below it
    assert static_values(s) == [("opts", {"a.b": 1}), ("tags", ["t"])]


# --------------------------------------------------------------------------------------------
# replace_leaves


def test_replace_leaves_round_trip() -> None:
    m = make()
    same = replace_leaves(m, {leaf.path: leaf.value for leaf in leaves(m)})
    assert type(same) is Model
    assert signature(same) == signature(m)
    for a, b in zip(leaves(same), leaves(m), strict=True):
        assert a.path == b.path
        assert a.value is b.value
    assert static_values(same) == static_values(m)


def test_replace_leaves_puts_new_values_at_paths() -> None:
    m = make()
    new = {p: f"new-{p}" for p in ("mesh.points", "layers.1.w", "params.a", "xs.0", "maybe2")}
    r = replace_leaves(m, new)
    assert r.mesh.points == "new-mesh.points"
    assert r.layers[1].w == "new-layers.1.w"
    assert r.params["a"] == "new-params.a"
    assert r.xs[0] == "new-xs.0"
    assert r.maybe2 == "new-maybe2"
    # Everything else is kept, with its type, and the original is untouched.
    assert isinstance(r.mesh, Mesh)
    assert isinstance(r.layers[1], Layer)
    assert r.layers[1].act == "relu"
    assert r.mesh.cells is m.mesh.cells
    assert r.params["b"] is m.params["b"]
    assert r.k == 3
    assert isinstance(m.mesh.points, np.ndarray)
    assert r.model_fields_set == m.model_fields_set


def test_replace_leaves_under_optional_containers() -> None:
    class Opt(cr.Schema):
        f: Optional[dict[str, list[cr.Array[(None,), cr.Float64]]]] = None  # noqa: UP045
        g: list[list[cr.Array[(None,), cr.Float64]]] | None = None

    o = Opt(f={"k": [[1.0]]}, g=[[[1.0]]])
    r = replace_leaves(o, {"f.k.0": "F", "g.0.0": "G"})
    assert r.f == {"k": ["F"]}
    assert r.g == [["G"]]


def test_replace_leaves_nothing() -> None:
    m = make()
    assert signature(replace_leaves(m, {})) == signature(m)


@pytest.mark.parametrize("path", ["mesh.nope", "k", "maybe", "layers.2.w", "mesh", "layers.0"])
def test_replace_leaves_unknown_path(path: str) -> None:
    with pytest.raises(cr.UnknownPathError) as info:
        replace_leaves(make(), {path: 1.0, "mesh.points": 0.0})
    assert str(info.value) == f"no array leaf at {[path]}; leaves are {PATHS}"
    assert isinstance(info.value, cr.ValidationError)
    assert isinstance(info.value, KeyError)


# --------------------------------------------------------------------------------------------
# signature


def test_signature_is_hashable_and_ignores_array_values() -> None:
    a, b = make(), make(mesh={"points": -np.ones((4, 3)), "cells": [[2, 1, 0]]})
    assert signature(a) == signature(b)
    assert hash(signature(a)) == hash(signature(b))
    assert len({signature(a), signature(b)}) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"k": 4},
        {"n": 5},
        {"layers": [{"w": np.ones((2, 2))}, {"w": np.ones((3, 2))}]},  # act differs
        {"layers": [{"w": np.ones((2, 3))}, Layer(w=np.ones((3, 2)), act="relu")]},
        {"params": {"a": 1.0}},
        {"params": {"b": 1.0, "a": 2.0}},  # order of dict keys is part of the structure
        {"maybe": [1.0]},
        {"names": ["x"]},
        {"xs": [np.zeros(4)]},
    ],
)
def test_signature_changes_with_statics_and_shapes(change: dict[str, Any]) -> None:
    assert signature(make(**change)) != signature(make())


def test_signature_distinguishes_dtypes_and_static_types() -> None:
    class S(cr.Schema):
        x: cr.Array[(None,), cr.Float32] | cr.Array[(None,), cr.Float64]
        c: float | int = 1

    assert signature(S(x=np.zeros(2))) != signature(S(x=np.zeros(2, np.float32)))
    assert signature(S(x=np.zeros(2), c=1)) != signature(S(x=np.zeros(2), c=1.0))


def test_signature_of_unhashable_statics() -> None:
    class S(cr.Schema):
        cfg: dict[str, list[int]]

    a, b = S(cfg={"a": [1, 2]}), S(cfg={"a": [1, 3]})
    hash(signature(a))
    assert signature(a) == signature(S(cfg={"a": [1, 2]}))
    assert signature(a) != signature(b)


# --------------------------------------------------------------------------------------------
# class_leaves


def test_class_leaves_of_fixed_structure() -> None:
    class Fixed(cr.Schema):
        mesh: Mesh
        t: cr.Differentiable[float]
        label: str = ""

    specs = class_leaves(Fixed)
    assert specs is not None
    assert {k: str(v) for k, v in specs.items()} == {
        "mesh.points": "float64[n,3]",
        "mesh.cells": "int64[?,3]",
        "t": "float64[]",
    }
    assert specs["t"].differentiable


def test_class_leaves_matches_instance_leaves() -> None:
    m = Mesh(points=np.zeros((2, 3)), cells=np.zeros((1, 3), np.int64))
    assert class_leaves(Mesh) == {leaf.path: leaf.spec for leaf in leaves(m)}


def test_class_leaves_without_arrays() -> None:
    class Static(cr.Schema):
        k: int
        names: list[str]

    assert class_leaves(Static) == {}


@pytest.mark.parametrize(
    "annotation",
    [
        list[Layer],
        list[cr.Array[(), cr.Float64]],
        dict[str, cr.Array[(), cr.Float64]],
        Optional[cr.Array[(), cr.Float64]],  # noqa: UP045
        cr.Array[(), cr.Float64] | None,
        Optional[Mesh],  # noqa: UP045
        tuple[cr.Array[(), cr.Float64], cr.Array[(), cr.Float64]],
    ],
)
def test_class_leaves_none_when_instance_dependent(annotation: Any) -> None:
    class Varies(cr.Schema):
        x: annotation  # type: ignore[valid-type]

    class Outer(cr.Schema):
        inner: Varies

    assert class_leaves(Varies) is None
    assert class_leaves(Outer) is None
    assert class_leaves(Model) is None


# --------------------------------------------------------------------------------------------
# bind_dims


def test_bind_dims_consistent() -> None:
    assert bind_dims([leaves(make(n=5))], fail) == {"n": 5}
    assert bind_dims([], fail) == {}


def test_bind_dims_across_groups() -> None:
    class Out(cr.Schema):
        y: cr.Array[("n", "n"), cr.Float64]

    inputs = leaves(make(n=2))
    assert bind_dims([inputs, leaves(Out(y=np.zeros((2, 2))))], fail) == {"n": 2}
    with pytest.raises(cr.ValidationError) as info:
        bind_dims([inputs, leaves(Out(y=np.zeros((3, 3))))], fail)
    assert str(info.value) == (
        "dimension 'n' is 2 in 'mesh.points' but 3 in 'y' (float64[3,3], expected "
        "float64[n,n]); named dimensions must agree across all fields"
    )


def test_bind_dims_mismatch_names_both_paths() -> None:
    m = make(xs=[np.zeros(4), np.zeros(5)])
    with pytest.raises(cr.ValidationError) as info:
        bind_dims([leaves(m)], fail)
    msg = str(info.value)
    assert "dimension 'n' is 4 in 'mesh.points' but 5 in 'xs.1'" in msg
    assert "(float64[5], expected float64[n])" in msg
    assert info.value.errors == [{"path": "xs.1", "expected": "n=4", "got": 5}]


def test_bind_dims_uses_the_given_error_class() -> None:
    m = make(xs=[np.zeros(3)])

    def out_fail(message: str, errors: list[dict[str, Any]]) -> cr.OutputValidationError:
        return cr.OutputValidationError(message, errors=errors)

    with pytest.raises(cr.OutputValidationError):
        bind_dims([leaves(m)], out_fail)


def test_bind_dims_with_ellipsis_and_shape_dtype_leaves() -> None:
    class E(cr.Schema):
        a: cr.Array[(..., "n"), cr.Float64]
        b: cr.Array[("n", ...), cr.Float64]

    assert bind_dims([leaves(E(a=np.zeros((7, 1, 3)), b=np.zeros((3, 9))))], fail) == {"n": 3}
    with pytest.raises(cr.ValidationError, match="'n' is 3 in 'a' but 2 in 'b'"):
        bind_dims([leaves(E(a=np.zeros(3), b=np.zeros((2,))))], fail)
    shapes = E.model_construct(
        a=cr.ShapeDtype((4,), cr.Float64), b=cr.ShapeDtype((4, 1), cr.Float64)
    )
    assert bind_dims([leaves(shapes)], fail) == {"n": 4}


def test_schema_classes_built_at_run_time_are_not_kept_alive() -> None:
    """What chainrule memoizes per schema class (its leaves, its plans) is held weakly: a
    class built at run time (a remote component's schemas, one set per connect) goes when
    nothing else holds it."""
    import gc
    import weakref

    def used() -> list[weakref.ref[type]]:
        class In(cr.Schema):
            x: cr.Differentiable[cr.Array[("n",), cr.Float64]]

        class Out(cr.Schema):
            y: cr.Differentiable[cr.Array[("n",), cr.Float64]]

        def double(i: In) -> Out:
            return Out(y=i.x * 2)

        comp = cr.component(double, inputs=In, outputs=Out, backend="numpy")
        comp.apply({"x": np.ones(2)})
        comp.vjp({"x": np.ones(2)}, {"y": np.ones(2)})
        return [weakref.ref(In), weakref.ref(Out)]

    refs = used()
    gc.collect()
    assert [r() for r in refs] == [None, None]
