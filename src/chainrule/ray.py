"""Scaling out on Ray: components as Ray actors, in their own environments.

`deploy(component_or_folder, replicas=N)` runs a component (or a component folder, in the
environment `chainrule.launch` builds for it) as N Ray actors, and gives one `Component` over
them: call it from JAX or PyTorch as any other, spread many inputs over the replicas with
`chainrule.map`, and split batched applies across them. Needs the `ray` extra
(`pip install 'chainrule[ray]'`); see the guide page "Scaling out with Ray".
"""

from chainrule._scale.deploy import check_ray_env, deploy

__all__ = ["check_ray_env", "deploy"]
