"""Layer 3, transports: ways to reach a component (the wire codec, HTTP server and client,
managed processes in their own environments)."""
