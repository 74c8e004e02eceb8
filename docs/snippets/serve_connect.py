"""serve and connect: any component over HTTP; the client is a component with the same methods."""

import numpy as np

import chainrule as cr


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def double(inputs: Inputs) -> Outputs:
    return Outputs(y=2.0 * inputs.x)


x, c = np.array([1.0, 2.0]), np.array([1.0, 1.0])
with cr.serve(double, port=0) as server:  # 127.0.0.1, a free port, a background thread
    print(server.url)  # http://127.0.0.1:<port>
    remote = cr.connect(server.url)  # binary wire format by default
    print(remote.endpoints["vjp"])  # remote: finite-difference
    np.testing.assert_allclose(remote.apply({"x": x}).y, [2.0, 4.0])
    np.testing.assert_allclose(remote.vjp({"x": x}, {"y": c})["x"], [2.0, 2.0], rtol=1e-6)

    out, handle = remote.apply({"x": x}, keep=True)  # the server keeps the linearization
    grad = remote.vjp({"x": x}, {"y": c}, handle=handle)
    remote.release(handle)

    try:  # a bad request: same exception class, same message as in-process
        remote.apply({"x": [[1.0]]})
    except cr.ValidationError as e:
        print(e)
    else:
        raise AssertionError("expected a ValidationError")
    np.testing.assert_allclose(remote.apply({"x": x}).y, [2.0, 4.0])  # still serving
    remote.close()
