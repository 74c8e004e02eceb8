"""The JAX binding behind `chainrule.jax` (primitives, their rules, the call entry point)."""
