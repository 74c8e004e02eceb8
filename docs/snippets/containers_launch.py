"""launch(folder, runtime="podman"): the folder's image, built if missing or out of date, run
in a container on loopback; the same client, the same calls (needs podman)."""

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
requirements = ["numpy"]      # the image's requirements layer
os_packages = []              # Debian packages, one apt-get layer (none here)
entry = "component.py:band"
"""

with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp, "band")
    folder.mkdir()
    (folder / "component.py").write_text(textwrap.dedent(COMPONENT))
    (folder / "chainrule.toml").write_text(textwrap.dedent(TOML))
    data = Path(tmp, "data")
    data.mkdir()
    # --8<-- [start:launch]
    with cr.launch(folder, runtime="podman", mounts=[f"{data}:/data:ro"], quiet=True) as band:
        x = np.array([0.0, 1.0])
        np.testing.assert_allclose(band.apply({"x": x}).y, np.exp(x))
        grad = band.vjp({"x": x}, {"y": np.ones(2)})["x"]
        np.testing.assert_allclose(grad, np.exp(x), rtol=1e-6)
    # --8<-- [end:launch]
