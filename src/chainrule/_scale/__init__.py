"""Layer 6, scale: components on many machines (Ray actors, parallel batches). Empty until the
Ray transport lands; it will import only the layers above it."""
