"""The wire codec: request and response trees as binary (`application/x-chainrule`) or JSON
bodies. `encode` is the format's public face and re-exports what `decode` and `format` hold
(the byte-exact specification is `docs/wire-format.md`)."""

from .encoder import *  # noqa: F403
from .encoder import __all__ as __all__
