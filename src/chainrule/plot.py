"""`chainrule.plot`: pictures of optimizations, landscapes, pipelines and gradient checks.

Each function returns a matplotlib `Figure` (nothing global is touched, nothing is shown) and
saves it when given `save=path`. matplotlib is an optional extra
(`pip install 'chainrule[plot]'`), imported when a function is called.
"""

from chainrule._tools.plot import (
    Node,
    PipelineGraph,
    gradient_check,
    landscape,
    objective,
    pipeline,
    pipeline_graph,
)

__all__ = [
    "Node",
    "PipelineGraph",
    "gradient_check",
    "landscape",
    "objective",
    "pipeline",
    "pipeline_graph",
]
