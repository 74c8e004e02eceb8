"""`chainrule.torch`: components inside PyTorch code, in reverse and forward mode.

`call(component, inputs)` calls any component from PyTorch code (backward, forward-mode AD,
`torch.func`). How the binding works is told in `chainrule._bindings.torch`.
"""

from chainrule._bindings.torch.call import call

__all__ = ["call"]
