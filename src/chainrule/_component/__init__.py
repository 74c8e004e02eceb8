"""Layer 2, components: the endpoint table and its derivation rules, validated points, the
`Component` itself, residuals, NaN checks and the backends (jax, torch, numpy)."""
