"""Layer 4, framework bindings: components inside JAX (`jax/`) and PyTorch (`torch/`) code."""
