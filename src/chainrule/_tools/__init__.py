"""Layer 5, tools built on the layers above: gradient checks, optimization, soft control flow,
plots and the pipeline graph."""
