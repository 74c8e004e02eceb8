"""chainrule.ray: a component deployed on a local Ray cluster, used from JAX and chainrule.map."""

import os
import shutil
import tempfile

# --8<-- [start:cluster]
# On a machine with several network interfaces, keep a local cluster on 127.0.0.1: Ray reads
# this when it is imported. Token auth off, for the cluster and this driver alike.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

import ray

ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
         _temp_dir=(temp := tempfile.mkdtemp(prefix="ray-")))  # fmt: skip
# --8<-- [end:cluster]

# --8<-- [start:deploy]
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import chainrule as cr  # noqa: E402
import chainrule.jax as crj  # noqa: E402

jax.config.update("jax_enable_x64", True)  # the component computes in float64


class Inputs(cr.Schema):
    p: cr.Differentiable[cr.Array[(3,), cr.Float64]]


class Outputs(cr.Schema):
    y: cr.Differentiable[cr.Array[(3,), cr.Float64]]


@cr.component(inputs=Inputs, outputs=Outputs, backend="numpy")
def solver(inputs: Inputs) -> Outputs:
    return Outputs(y=np.tanh(inputs.p) * 2.0)


designs = np.linspace(-1.0, 1.0, 24).reshape(8, 3)
with cr.ray.deploy(solver, replicas=4) as deployed:  # 4 actors, one Component
    outputs = cr.map(deployed, [{"p": p} for p in designs])  # spread over the replicas, in order
    ys = jax.vmap(lambda p: crj.call(deployed, {"p": p})["y"])(designs)
    grad = jax.grad(lambda p: jnp.sum(crj.call(deployed, {"p": p})["y"]))(designs[0])
# --8<-- [end:deploy]

assert np.allclose([o.y for o in outputs], 2 * np.tanh(designs))
assert np.allclose(ys, 2 * np.tanh(designs))
assert np.allclose(grad, 2 / np.cosh(designs[0]) ** 2, rtol=1e-5)
ray.shutdown()
shutil.rmtree(temp, ignore_errors=True)
print("ok")
