"""A chainrule component written in PyTorch, for Tesseract's clients to call.

Serve it (chainrule's routes at /, the Tesseract API at /tesseract):
    chainrule serve docs/tesseract/torch_component.py:scaled_sum --port 8000
"""

import torch

import chainrule as cr


class Scaled(cr.Schema):
    v: cr.Differentiable[cr.Array[("n",), cr.Float64]]
    s: cr.Differentiable[cr.Array[(), cr.Float64]]


class Inputs(cr.Schema):
    a: Scaled
    b: Scaled


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[("n",), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="torch")
def scaled_sum(x: Inputs) -> Outputs:
    return Outputs(y=x.a.s * torch.sin(x.a.v) + x.b.s * x.b.v)
