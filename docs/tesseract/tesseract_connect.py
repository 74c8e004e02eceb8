"""A Tesseract served by tesseract-runtime, in a JAX pipeline (Tesseract's vectoradd_jax example).

Start it first, from a venv with tesseract-core[runtime] installed:
    TESSERACT_API_PATH=examples/vectoradd_jax/tesseract_api.py tesseract-runtime serve --port 8000
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

import chainrule as cr
import chainrule.jax as crj

url = os.environ.get("TESSERACT_URL", "http://127.0.0.1:8000")
peer = cr.connect(url)  # recognised as a Tesseract by its /openapi.json
print(peer.endpoints["vjp"])  # remote: tesseract: /vector_jacobian_product

b = np.array([0.5, -1.0, 2.0], np.float32)


def loss(v: jax.Array) -> jax.Array:
    out = crj.call(peer, {"a": {"v": v, "s": 2.0}, "b": {"v": b, "s": 1.0}})
    return (out["vector_add.result"] ** 2).sum()  # nested outputs, by path


v = jnp.array([1.0, 2.0, 3.0], jnp.float32)
print(jax.jit(jax.grad(loss))(v))  # 2·2·(2v + b) = [10. 12. 32.]

# Paths are chainrule's (`a.v`), translated to Tesseract's for each request (`layers.[0].w`
# for `layers.0.w`, `fields.{temp}` for `fields.temp`).
print(peer.vjp({"a": {"v": v, "s": 2.0}, "b": {"v": b}}, {"vector_add.result": np.ones(3)}))

# A bad input comes back as chainrule's ValidationError, naming the field:
try:
    peer.apply({"a": {"v": v}, "b": {"v": np.ones(4, np.float32)}})
except cr.ValidationError as e:
    print(e)
peer.close()
