"""Layer 6, scale: components on many machines: Ray actors serving a component in its own
environment (`deploy`, `replica`, `transport`), and many inputs spread over them (`fanout`)."""
