"""tesseract-torch drives a chainrule component (docs/tesseract/torch_component.py, served at
CHAINRULE_URL) through its Tesseract API. Run it where tesseract-torch is installed:
    pip install tesseract-torch
"""

import os

import torch
import torch.autograd.forward_ad as fwad
from tesseract_core import Tesseract
from tesseract_torch import apply_tesseract

url = os.environ.get("CHAINRULE_URL", "http://127.0.0.1:8000")
component = Tesseract.from_url(url + "/tesseract")  # any chainrule server, at /tesseract

v = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64, requires_grad=True)
b = torch.ones(3, dtype=torch.float64)
two, one = torch.tensor(2.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)

y = apply_tesseract(component, {"a": {"v": v, "s": two}, "b": {"v": b, "s": one}})["y"]
y.sum().backward()  # one /apply, one /vector_jacobian_product: one forward pass on the server
print(v.grad)  # 2·cos(v) = [ 2.0000,  1.0806, -0.8323]
torch.testing.assert_close(v.grad, 2 * torch.cos(v.detach()))

with fwad.dual_level():  # forward mode: /apply, then /jacobian_vector_product
    dual = fwad.make_dual(v.detach(), torch.ones(3, dtype=torch.float64))
    y = apply_tesseract(component, {"a": {"v": dual, "s": two}, "b": {"v": b, "s": one}})["y"]
    print(fwad.unpack_dual(y).tangent)  # the same, as a column sum of the Jacobian
