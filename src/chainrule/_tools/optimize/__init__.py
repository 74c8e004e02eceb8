"""`chainrule.optimize`: drivers (optax, scipy), the problem, the history."""
