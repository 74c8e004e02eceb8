"""Tokens and limits: a bearer token guards a server; request bodies are bounded."""

import numpy as np

import chainrule as cr


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[(None,), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[(None,), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def negate(inputs: Inputs) -> Outputs:
    return Outputs(y=-inputs.x)


# A token is required for any non-loopback host; it can guard a loopback server too.
with cr.serve(negate, port=0, token="s3cret", max_body_bytes=64 * 1024) as server:
    try:
        cr.connect(server.url)  # no token
    except cr.AuthenticationError as e:
        print(e)
    else:
        raise AssertionError("expected an AuthenticationError")

    remote = cr.connect(server.url, token="s3cret")
    np.testing.assert_allclose(remote.apply({"x": [1.0, 2.0]}).y, [-1.0, -2.0])
    try:
        remote.apply({"x": np.zeros(100_000)})  # 800 kB > max_body_bytes
    except cr.ChainruleError as e:
        print(type(e).__name__, e)
    else:
        raise AssertionError("expected the body to be refused")
    remote.close()

# Binding beyond loopback without a token is refused before anything listens.
try:
    cr.serve(negate, host="0.0.0.0", port=0)
except cr.LaunchError as e:
    print(e)
else:
    raise AssertionError("expected a LaunchError")
