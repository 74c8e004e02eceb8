"""The backends that derive a component's endpoints (`base.Backend`; jax, torch, numpy)."""
