"""launch: a component folder in its own uv environment, served on loopback and supervised."""

import tempfile
import textwrap
from pathlib import Path

import numpy as np

import chainrule as cr

COMPONENT = """
import numpy as np
import chainrule as cr


class Inputs(cr.Schema):
    x: cr.Differentiable[cr.Array[("n",), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def band(inputs: Inputs) -> Outputs:
    return Outputs(y=np.exp(inputs.x))
"""

TOML = """
name = "band"
version = "0.1.0"
backend = "numpy"
requirements = ["numpy"]    # installed into the folder's own environment
entry = "component.py:band"
"""

with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp, "band")
    folder.mkdir()
    (folder / "component.py").write_text(textwrap.dedent(COMPONENT))
    (folder / "chainrule.toml").write_text(textwrap.dedent(TOML))

    print(cr.load_spec(folder))  # the validated chainrule.toml
    # Build (or reuse the cached) environment, start the server, connect; stop it at the end.
    with cr.launch(folder, quiet=True) as band:
        x = np.array([0.0, 1.0])
        np.testing.assert_allclose(band.apply({"x": x}).y, np.exp(x))
        grad = band.vjp({"x": x}, {"y": np.ones(2)})["x"]
        np.testing.assert_allclose(grad, np.exp(x), rtol=1e-6)
        print(band.endpoints["vjp"])  # remote: finite-difference
