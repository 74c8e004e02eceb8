"""Schemas: array fields with shapes, dtypes and a differentiable mark; nesting; paths."""

import numpy as np

import chainrule as cr


class Layer(cr.Schema):
    w: cr.Differentiable[cr.Array[("n", "m"), cr.Float64]]  # named dims tie shapes together
    b: cr.Differentiable[cr.Array[("m",), cr.Float64]]


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("batch", "n"), cr.Float64]]
    layers: list[Layer]  # nested models and lists: leaves "layers.0.w", "layers.0.b", ...
    mask: cr.Array[(None,), cr.Bool]  # None: any size; not Differentiable: no derivatives
    labels: cr.Array[(...,), cr.Float32, "same_kind"]  # any rank; float64 -> float32 allowed
    name: str = "net"  # non-array fields are static


class Outputs(cr.Schema):
    z: cr.Differentiable[cr.Array[("batch", "m"), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def dense(inputs: Inputs) -> Outputs:
    layer = inputs.layers[0]
    return Outputs(z=np.tanh(inputs.x @ layer.w + layer.b))


rng = np.random.default_rng(0)
inputs = {
    "x": rng.normal(size=(4, 3)),
    "layers": [{"w": rng.normal(size=(3, 2)), "b": np.zeros(2)}],
    "mask": [True, False, True, True],  # nested lists are fine
    "labels": np.zeros((2, 2)),  # float64, cast to float32 because the field says "same_kind"
}

# Output shapes follow from the named dims ("batch" = 4, "m" = 2), without running `dense`.
shapes = dense.eval_shape(inputs)
print(shapes.z)  # float64[4,2]
assert (shapes.z.shape, shapes.z.dtype) == ((4, 2), np.dtype("float64"))

# Leaves are addressed by dotted paths.
jac = dense.jacobian(inputs, wrt=["layers.0.b"], of=["z"])
assert jac["z"]["layers.0.b"].shape == (4, 2, 2)  # out.shape + in.shape

# Shapes that disagree with a named dimension are refused, naming the field.
bad = inputs | {"layers": [{"w": np.ones((5, 2)), "b": np.zeros(2)}]}
try:
    dense.apply(bad)
except cr.ValidationError as e:
    print(e)
    assert "layers.0.w" in str(e)
else:
    raise AssertionError("expected a ValidationError")

# Unsafe casts are refused unless the field allows them: complex128 -> float64 here.
try:
    dense.apply(inputs | {"x": np.ones((4, 3), dtype=np.complex128)})
except cr.ValidationError as e:
    print(e)
    assert "'x'" in str(e)
else:
    raise AssertionError("expected a ValidationError")
