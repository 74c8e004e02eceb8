"""HTTP: the FastAPI app serving a component, its edge (bodies, errors, limits), the client."""
